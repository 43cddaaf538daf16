"""``python -m DSSMSegmentLib.benchmark --worker SPEC OUT``: the benchmark's worker process (see
:mod:`.worker`). The benchmark itself is run by the command line: ``dssm benchmark`` or
``python -m DSSMSegmentLib.cli benchmark``."""

import sys

from .worker import worker_main

if len(sys.argv) >= 4 and sys.argv[1] == "--worker":
    sys.exit(worker_main(sys.argv[2:4]))
sys.exit("this is the benchmark's worker process; run the benchmark with: dssm benchmark (or python -m "
         "DSSMSegmentLib.cli benchmark)")
