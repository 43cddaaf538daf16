"""The child-process side of a Slicer run: segment one image file with the engine, reporting as it goes.

Run as ``python -m DSSMSegmentSlicerLib.Worker --model NAME --input IN.nrrd --output OUT.nrrd
[--steps K] [--samples S] [--device auto|cpu|cuda] [--tta]`` with the module folder on ``PYTHONPATH``. It imports neither Qt nor
Slicer, so Slicer's ``PythonSlicer`` or any Python with the engine's requirements can run it.

Every line it prints on stdout is one JSON event, which :mod:`.Process` parses:

* ``{"event": "progress", "stage": str, "fraction": float | null}``
* ``{"event": "done", "device": str, "seconds": float}``
* ``{"event": "error", "message": str}`` (then exit status 2)

Anything else (a library's warning, a traceback) is a log line. The result is written atomically, as
NRRD, so that an oblique grid survives exactly (NIfTI stores the direction in single precision).

Why not ``dssm segment``? That command prints one line per finished case and no progress; the panel needs
the stage and the fraction done as the work goes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

# An unexpected exception ends the process with Python's own status 1 and a traceback (a log line).
EXIT_OK, EXIT_USER_ERROR = 0, 2


def emit(event: str, **fields) -> None:
    """Print one event line and flush it, so that the parent sees it at once."""
    print(json.dumps({"event": event, **fields}), flush=True)


def buildParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="DSSMSegmentSlicerLib.Worker", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model name or bundle folder")
    parser.add_argument("--input", required=True, help="image file to segment")
    parser.add_argument("--output", required=True, help="label file to write (.nrrd)")
    parser.add_argument("--steps", type=int, default=None, help="Markov steps K (default: the model's)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation: average over flips and zooms")
    parser.add_argument("--samples", type=int, default=1, help="Markov chains per slice, averaged")
    return parser


def segmentFile(args: argparse.Namespace) -> None:
    """Read, segment and write one image, emitting progress events."""
    from DSSMSegmentLib.bundle import resolve_model
    from DSSMSegmentLib.imageio import read_image, write_image_atomically
    from DSSMSegmentLib.inference import Segmenter

    start = time.perf_counter()
    emit("progress", stage="loading model", fraction=0.0)
    segmenter = Segmenter(resolve_model(args.model), device=args.device, tta=args.tta, samples=args.samples)
    emit("progress", stage="reading image", fraction=0.0)
    image = read_image(Path(args.input))
    labels = segmenter.segment(image, steps=args.steps, name=Path(args.input).name,
                               progress=lambda stage, fraction: emit("progress", stage=stage, fraction=fraction))
    emit("progress", stage="writing result", fraction=1.0)
    write_image_atomically(labels, Path(args.output))
    emit("done", device=str(segmenter.device), seconds=round(time.perf_counter() - start, 3))


def main(argv: Optional[List[str]] = None) -> int:
    import warnings

    from DSSMSegmentLib.errors import DSSMError

    warnings.filterwarnings("ignore", category=UserWarning)
    args = buildParser().parse_args(argv)
    try:
        segmentFile(args)
    except DSSMError as exc:
        emit("error", message=str(exc))
        return EXIT_USER_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
