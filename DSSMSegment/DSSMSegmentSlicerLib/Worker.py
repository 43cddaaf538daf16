"""The child-process side of a Slicer run: segment one image file with the engine, reporting as it goes.

Run as ``python -m DSSMSegmentSlicerLib.Worker --model NAME --input IN.nrrd --output OUT.nrrd
[--steps K] [--samples S] [--device auto|cpu|cuda] [--tta] [--uncertainty U.nrrd] [--findings F.json]
[--name NAME]`` with the module folder on ``PYTHONPATH``. It imports neither Qt nor Slicer, so Slicer's
``PythonSlicer`` or any Python with the engine's requirements can run it.

Beside the labels it can write the uncertainty map (float NRRD on the same grid) and a findings file (JSON):
the familiarity score and warnings (:func:`DSSMSegmentLib.familiarity.assess`, naming the volume by ``--name``),
and with the map, the uncertain volume of each structure and the slices with the most uncertain voxels.

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
    parser.add_argument("--uncertainty", default=None, help="also write the uncertainty map to this file (.nrrd)")
    parser.add_argument("--findings", default=None, help="write the warnings and uncertainty summary to this JSON file")
    parser.add_argument("--name", default=None, help="the image's name in warnings (default: the input file's)")
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
    name = args.name or Path(args.input).name
    result = segmenter.run(image, steps=args.steps, name=name, uncertainty=bool(args.uncertainty),
                           progress=lambda stage, fraction: emit("progress", stage=stage, fraction=fraction))
    emit("progress", stage="writing result", fraction=1.0)
    if args.uncertainty:
        write_image_atomically(result.uncertainty, Path(args.uncertainty))
    if args.findings:
        writeFindings(segmenter, image, result, name, Path(args.findings))
    write_image_atomically(result.labels, Path(args.output))  # last: the labels' presence means all is written
    emit("done", device=str(segmenter.device), seconds=round(time.perf_counter() - start, 3))


def writeFindings(segmenter, image, result, name: str, path: Path) -> None:
    """The familiarity judgement and warnings, and with the uncertainty map its summary, as JSON."""
    from DSSMSegmentLib import uncertainty as unc
    from DSSMSegmentLib.familiarity import assess
    from DSSMSegmentLib.imageio import atomic_output, spacing_zyx

    findings = assess(segmenter.bundle, result, name).record()
    if result.uncertainty is not None:
        level = unc.threshold(segmenter.bundle.architecture.num_classes)
        values = result.uncertainty_maps[unc.MEASURE]
        flat = values.shape[0] == 1  # one slice: a 2D image, its uncertain areas in mm2
        findings["uncertainty"] = {
            "measure": unc.MEASURE, "threshold": level, "chains": result.uncertainty_chains,
            "slice_axis": result.axis,  # array axis of (K, J, I)
            "slices": unc.most_uncertain_slices(values, result.axis, level),
            "unit": "mm2" if flat else "mL",
            "volumes": unc.uncertain_volumes(values, result.likely_structure, spacing_zyx(image),
                                             segmenter.bundle.labels, level, is_2d=flat)}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(findings, indent=2))


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
