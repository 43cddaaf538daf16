"""The CPU cost of ``dssm segment --uncertainty`` against the default run (docs/uncertainty.md, "Cost").

Runs ``dssm segment --device cpu --timings`` on the sample heart MRI (heart-cine-mri) and a chest X-ray
(lungs-cxr), each REPEATS times with and without ``--uncertainty``, interleaved so that a passing load on the
machine hits both alike, and prints the median seconds per case (the ``--timings`` total: read, network, write,
without loading the model) and their ratio. With ``--base DIR`` (a checkout's ``DSSMSegment`` folder, e.g. of the
commit before issue 14), it compares that code's default run with this one's instead: what the familiarity check
that every run now makes costs.

Usage: python scripts/uncertainty_cost.py [--repeats 7] [--base DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = (("heart-cine-mri", ROOT / "DSSMSegment" / "Resources" / "SampleData" / "acdc-patient011-ED.nii.gz"),
         ("lungs-cxr", Path(os.environ.get("DSSM_DATA", ROOT.parent / "shared" / "data")) / "cxr_lung" / "images"
          / "CHNCXR_0002_0.png"))


def seconds(code: Path, model: str, image: Path, options: list) -> float:
    with tempfile.TemporaryDirectory() as out:
        timings = Path(out) / "timings.json"
        subprocess.run([sys.executable, "-m", "DSSMSegmentLib.cli", "segment", "--model", model, "--device", "cpu",
                        "-o", out, "--timings", str(timings), str(image), *options], check=True, capture_output=True,
                       env=dict(os.environ, PYTHONPATH=str(code)))
        return json.loads(timings.read_text())["cases"][0]["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--base", type=Path, default=None, help="DSSMSegment folder of the code to compare with")
    args = parser.parse_args()
    here = ROOT / "DSSMSegment"
    runs = ({"before": (args.base, []), "now": (here, [])} if args.base else
            {"default": (here, []), "--uncertainty": (here, ["--uncertainty"])})
    names = list(runs)
    for model, image in CASES:
        times = {name: [] for name in names}
        for i in range(args.repeats):
            for name in (names if i % 2 == 0 else names[::-1]):
                code, options = runs[name]
                times[name].append(seconds(code, model, image, options))
        medians = {name: statistics.median(t) for name, t in times.items()}
        print(f"{model} on {image.name}: " + "; ".join(f"{name} {m:.3f} s" for name, m in medians.items())
              + f"; ratio {medians[names[1]] / medians[names[0]]:.2f}  (all: "
              + "; ".join(f"{name} {sorted(round(x, 3) for x in t)}" for name, t in times.items()) + ")")


if __name__ == "__main__":
    main()
