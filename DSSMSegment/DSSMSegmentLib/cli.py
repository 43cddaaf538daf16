"""The ``dssm`` command: segment, train, evaluate, calibrate, familiarity, benchmark, models, cache.

Every user-facing problem is a :class:`~DSSMSegmentLib.errors.DSSMError`: it is printed as one line,
``dssm: error: ...``, and the exit status is 2 (1 for an unexpected internal error, 130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

from .errors import Cancelled, DSSMError
from .files import check_writable, refuse_unsafe_outputs

# Argument values are checked by argparse itself, before anything heavy (PyTorch) is imported: a typo costs
# a fraction of a second, and the message names the option.


_SEED_MAX = 2 ** 63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed


def _count(minimum: int, maximum: Optional[int] = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be {maximum} or less, got {value}")
        return value

    parse.__name__ = "number"  # argparse names the type in its messages
    return parse


def _named(what: str):
    """A name that may not be empty (an empty -o would mean the current folder, an empty --timings nothing, without
    saying so)."""
    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"is empty; name {what}")
        return text

    parse.__name__ = "name"
    return parse


def _probability(text: str) -> float:
    """A probability in [0, 1), for --stage1-dropout."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {value:g}")
    return value


def _device(text: str) -> str:
    value = text.strip().lower()
    if value == "gpu":
        value = "cuda"
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise argparse.ArgumentTypeError(f"'{text}' is not a device: use auto (a GPU if there is one), cpu, cuda "
                                     "(or gpu), or cuda:N for the N-th GPU")


def _encoding(text: str) -> str:
    """A training cache's image encoding: raw, jpeg[:QUALITY] or webp[:QUALITY], QUALITY from 1 to 100."""
    kind, colon, quality = text.strip().lower().partition(":")
    if kind == "raw" and not colon:
        return kind
    if kind in ("jpeg", "webp") and (not colon or (quality.isdigit() and 1 <= int(quality) <= 100)):
        return f"{kind}:{int(quality)}" if colon else kind
    raise argparse.ArgumentTypeError(f"'{text}' is not an encoding: use raw, jpeg, webp, or jpeg:QUALITY or "
                                     "webp:QUALITY with QUALITY from 1 to 100")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default in ``--help`` where it has a meaningful one (not None, not a bare switch)."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        default = action.default
        if ("%(default)" not in help_text and default is not None and default is not False
                and default is not argparse.SUPPRESS and action.option_strings and action.nargs != 0):
            help_text += " (default: %(default)s)"
        return help_text


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", help="segment images or volumes with a model", formatter_class=_HelpFormatter,
                       description="Segment images, DICOM series folders or folders of images. Each input X gets "
                       "OUTPUT/X.png (a 2D picture: PNG, JPG, BMP, TIFF; label values 0, 1, ..., so it looks black in "
                       "an image viewer) or OUTPUT/X.nii.gz (anything else: a volume, a DICOM series, a 2D NIfTI, NRRD "
                       "or MHA image, whose geometry a PNG could not keep). Existing outputs are never replaced "
                       "without --overwrite, and an input is never replaced. Files in a folder that are label maps "
                       "(names ending _gt, _seg, _label, _mask, ...; or a few integer values) or earlier outputs are "
                       "skipped.")
    p.add_argument("inputs", nargs="+", help="image files, DICOM series folders, or folders of images")
    p.add_argument("-o", "--output", type=_named("the output folder (-o . for the current one)"), required=True,
                   help="output folder (created if missing; a missing parent folder too, with a note)")
    p.add_argument("--model", type=_named("a model from 'dssm models' or a bundle folder"), required=True,
                   help="model name (see 'dssm models') or bundle folder")
    p.add_argument("--steps", type=_count(0), default=None,
                   help="Markov steps K (0 = no refinement; default: the model's own, see 'dssm models')")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda (or gpu) or cuda:N")
    p.add_argument("--batch-size", type=_count(1), default=16, help="slices per network batch")
    p.add_argument("--overlay", action="store_true", help="also write X_overlay.png, the mask over the image")
    p.add_argument("--no-postprocess", action="store_true", help="keep every connected component")
    p.add_argument("--seed", type=_count(0, _SEED_MAX), default=0, help="seed of the Markov chain's noise")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: also segment the image flipped and zoomed 1.2x as the model was "
                        "trained, and average (4-10x the network time)")
    p.add_argument("--samples", type=_count(1), default=1,
                   help="Markov chains per slice, each from its own noise; their latents are averaged (DSSM at "
                        "K > 0 only; 4 samples: about 1.8x the time of one)")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write X_uncertainty.nii.gz (X_uncertainty.png for a 2D picture, 16-bit: value/65535), "
                        "the per-voxel uncertainty from several Markov chains (and every --tta pass), 0 certain to 1, "
                        "and print per structure the volume of uncertain voxels; with --overlay also "
                        "X_uncertainty_overlay.png (docs/uncertainty.md)")
    _add_uncertainty_chains(p)
    p.add_argument("--timings", type=_named("the JSON file to write"), default=None,
                   help="write per-case timings, familiarity scores and warnings to this JSON file (a missing "
                        "folder is created for it, with a note)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace outputs that already exist (never an input file)")
    p.add_argument("--fail-fast", action="store_true",
                   help="stop at the first input that fails (default: segment the others, list the failures, exit 2)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model from a recipe and write a bundle", formatter_class=_HelpFormatter)
    p.add_argument("--recipe", required=True, help="recipe name, e.g. heart-cine-mri")
    p.add_argument("--out", required=True, help="run folder (checkpoint, log.csv, curves.png, bundle/)")
    p.add_argument("--baseline", action="store_true", help="train the discriminative baseline instead of DSSM")
    p.add_argument("--data", default=None, help="dataset name(s) joined by '+', or NAME=FOLDER")
    p.add_argument("--cache", default=None, help="preprocessed cache (.npz); built if missing")
    from .recipes import AUGMENT_PRESETS  # plain data: no PyTorch

    p.add_argument("--augment", default=None, choices=list(AUGMENT_PRESETS),
                   help="a named augmentation in place of the recipe's own (for comparison runs)")
    p.add_argument("--iterations", type=_count(0), default=0, help="budget in iterations")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="budget in minutes of training time (the learning-rate schedule then follows the clock; "
                        "prefer --iterations, whose schedule is the same however often the run resumes)")
    p.add_argument("--stop-after", type=float, default=0.0, metavar="MINUTES",
                   help="stop this call after MINUTES (checkpointed); the same command resumes it (0: never)")
    p.add_argument("--checkpoint-every", type=float, default=5.0, metavar="MINUTES",
                   help="also checkpoint every MINUTES of training, so that a lost run loses at most that")
    p.add_argument("--batch-size", type=_count(1), default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the augmentation")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the validation split (a fine-tune with --init keeps its source bundle's split)")
    p.add_argument("--widths", default=None, help="U-Net widths, e.g. 8,16,32,64")
    p.add_argument("--val-patients", default=None, help="comma-separated validation patients (overrides the split)")
    p.add_argument("--val-every", type=float, default=0.1, help="fraction of the budget between validations")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda (or gpu) or cuda:N")
    p.add_argument("--steps", type=_count(0), default=4, help="default Markov steps written into the bundle")
    p.add_argument("--name", default=None, help="bundle name (default: the recipe's)")
    p.add_argument("--init", default=None, help="start from this bundle's weights (fine-tuning)")
    p.add_argument("--init-semantic", default=None,
                   help="take the semantic module and its pixel classifier from this bundle of the same recipe, "
                        "e.g. the trained baseline (discriminative pretraining); the rest from --init or new")
    p.add_argument("--refiner", choices=["bayes", "residual"], default="bayes",
                   help="DSSM's output: 'bayes', the Bayesian head's posterior, trained end to end; 'residual', a "
                        "two-stage DSSM: the generative half trains on top of the frozen --init-semantic baseline and "
                        "corrects its logits, so that K = 0 is exactly that baseline")
    p.add_argument("--stage1-dropout", type=_probability, default=0.0, metavar="P",
                   help="two-stage DSSM: for half of each batch, drop whole channels of the frozen first stage's "
                        "decoder with probability P, so that stage 2 learns from first-stage mistakes (which the first "
                        "stage rarely makes on its own training images)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step: a two-stage DSSM's stage 2 trains 1.2-1.6x faster on the CPU "
                        "(results/train-cost/speedups.md; a baseline gains nothing), after a minute or two of "
                        "compiling at each start; needs a C++ compiler (without one, the run goes on uncompiled)")
    p.add_argument("--likelihood-loss", type=float, default=0.0,
                   help="DSSM: weight of an extra loss on the Bayesian head's likelihood alone, without its prior")
    p.add_argument("--install", action="store_true", help="copy the bundle to ~/.dssm/models when done")


def _add_cache(sub) -> None:
    p = sub.add_parser("cache", help="build the compact preprocessed training cache of a recipe",
                       formatter_class=_HelpFormatter)
    p.add_argument("--recipe", required=True)
    p.add_argument("--data", default=None)
    p.add_argument("--out", default=None, help="default: cache/RECIPE.npz")
    p.add_argument("--encoding", type=_encoding, default=None,
                   help="raw, jpeg (quality 95), jpeg:QUALITY, webp (quality 80) or webp:QUALITY (default: the "
                        "recipe's). WebP is lossier and about a third of the size: for carrying caches to a GPU host")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="segment a dataset's validation cases and report metrics",
                       formatter_class=_HelpFormatter)
    p.add_argument("data", help="dataset name (as for train), NAME=FOLDER, or a folder of images with labels/")
    p.add_argument("--model", required=True)
    p.add_argument("--split", default="val", choices=["val", "train", "all"],
                   help="which cases: the model's own validation split (default), its training split, or all")
    p.add_argument("--steps", type=_count(0), default=None, help="Markov steps K (default: the model's own)")
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda (or gpu) or cuda:N")
    p.add_argument("--batch-size", type=_count(1), default=16, help="slices per network batch")
    p.add_argument("-o", "--output", type=_named("the folder for the metrics and the masks"), default=None,
                   help="folder for metrics.csv, metrics.json and the masks (created if missing, as for segment)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier evaluation's files in -o (metrics.csv, metrics.json, masks/), as for "
                        "segment")
    p.add_argument("--limit", type=_count(0), default=0, help="evaluate at most this many cases (0: all)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation, as for segment")
    p.add_argument("--seed", type=_count(0, _SEED_MAX), default=0, help="seed of the Markov chain's noise, as for segment")
    p.add_argument("--samples", type=_count(1), default=1, help="Markov chains per slice, as for segment")
    p.add_argument("--no-postprocess", action="store_true", help="keep every connected component")
    p.add_argument("--update-bundle", action="store_true", help="record the summary in the bundle's model.json")
    p.add_argument("--choose-steps", type=_steps_list, default=None, metavar="K,K,...",
                   help="evaluate at each of these K, record each in model.json, and make the most accurate the "
                        "model's default (a larger K only where it adds more than 0.002 mean Dice)")
    p.add_argument("--uncertainty", action="store_true",
                   help="also measure each uncertainty map: voxel AUROC for finding wrong voxels, per-case Spearman "
                        "correlation with 1 - Dice (docs/uncertainty.md)")
    _add_uncertainty_chains(p)


def _steps_list(text: str) -> List[int]:
    try:
        steps = sorted({int(k) for k in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected Markov step counts such as 0,1,4, not {text!r}") from None
    if not steps or steps[0] < 0:
        raise argparse.ArgumentTypeError(f"expected Markov step counts of 0 or more, not {text!r}")
    return steps


def _add_uncertainty_chains(p) -> None:
    from .uncertainty import UNCERTAINTY_SAMPLES

    p.add_argument("--uncertainty-chains", type=_count(1), default=UNCERTAINTY_SAMPLES,
                   help="Markov chains per slice for the uncertainty map (at least --samples; the mask is the same "
                        "whatever this is); each chain beyond the first adds about half the network time of a plain "
                        "run")


def _add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="calibrate a model's familiarity warning on its training cases",
                       formatter_class=_HelpFormatter,
                       description="Run a DSSM model on its own training cases and compute what its familiarity "
                       "warning needs: the per-class feature levels, the score threshold, the training geometry and "
                       "the structures it always finds (docs/uncertainty.md). Never uses the validation cases.")
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=None, help="dataset (default: the one the model was trained on)")
    _add_run_options(p, "use at most this many training cases (0: all)")
    p.add_argument("--update-bundle", action="store_true", help="record the calibration in the bundle's model.json")


def _add_run_options(p, limit_help: str) -> None:
    """``--device``, ``--batch-size`` and ``--limit`` of the commands that run a model over a dataset."""
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda (or gpu) or cuda:N")
    p.add_argument("--batch-size", type=_count(1), default=16, help="slices per network batch")
    p.add_argument("--limit", type=_count(0), default=0, help=limit_help)


def _add_familiarity(sub) -> None:
    p = sub.add_parser("familiarity", help="measure the familiarity warning: own validation images vs other data",
                       formatter_class=_HelpFormatter,
                       description="Score each model's own validation images and the validation images of every "
                       "other model's data (all cases of a dataset without a validation split), and print the AUROC "
                       "of telling them apart and how many are flagged (docs/uncertainty.md).")
    p.add_argument("--models", default=None, help="comma-separated models (default: every bundled DSSM model)")
    _add_run_options(p, "at most this many cases per dataset (0: all)")
    p.add_argument("-o", "--output", default=None, help="write the scores and the table to this JSON file")


def _add_benchmark(sub) -> None:
    p = sub.add_parser("benchmark", help="time and measure memory of inference (prints a Markdown table)",
                       formatter_class=_HelpFormatter)
    p.add_argument("--model", default="heart-cine-mri")
    p.add_argument("--devices", default="auto", help="comma-separated: cpu,cuda (auto: cpu, plus cuda if present)")
    p.add_argument("--steps", default="0,1,2,4,8,16")
    p.add_argument("--repeats", type=_count(1), default=5)
    p.add_argument("--quick", action="store_true", help="fewer cases and repeats")
    p.add_argument("-o", "--output", default="benchmark.json")
    p.add_argument("--threads", type=_count(1), default=None, help="CPU threads (default: torch's)")
    p.add_argument("--batch-size", type=_count(1), default=16, help="slices per network batch, as for segment")
    p.add_argument("--no-io", action="store_true", help="segment from in-memory images (read/write not timed)")
    p.add_argument("--cases", default=None, help="run from arrays saved with --save-cases (no SimpleITK or data needed)")
    p.add_argument("--save-cases", default=None, help="write the benchmark cases as arrays (.npz) and stop")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="dssm", description="DSSM segmentation: segment, train, evaluate, benchmark.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_segment(sub)
    _add_train(sub)
    _add_cache(sub)
    _add_evaluate(sub)
    _add_calibrate(sub)
    _add_familiarity(sub)
    _add_benchmark(sub)
    p = sub.add_parser("models", help="list the bundled and local models")
    p.add_argument("--json", action="store_true")
    return parser


def _outputs_of(path: Path, out_dir: Path, overlay: bool, is_2d: Optional[bool] = None,
                uncertainty: bool = False) -> List[Path]:
    """The files ``dssm segment`` writes for one input: its mask; its overlay with ``--overlay``; with
    ``--uncertainty`` its uncertainty map (and that map's overlay with ``--overlay``)."""
    from .imageio import output_name, stem_of

    mask = out_dir / output_name(path, is_2d)
    outputs = [mask] + ([out_dir / f"{stem_of(path)}_overlay.png"] if overlay else [])
    if uncertainty:
        outputs.append(out_dir / (stem_of(path) + "_uncertainty" + mask.name[len(stem_of(path)):]))
        if overlay:
            outputs.append(out_dir / f"{stem_of(path)}_uncertainty_overlay.png")
    return outputs


def _input_files(inputs: List[Path]) -> set:
    """Every file an input consists of (a DICOM folder: its files), resolved: none of these may be written."""
    files = set()
    for path in inputs:
        files.update(p.resolve() for p in (path.iterdir() if path.is_dir() else [path]) if p.is_file())
    return files


def _label_maps(inputs: List[Path], explicit: set) -> tuple:
    """``(inputs, skipped)``: an input found in a folder (not named on the command line) that holds a few integer
    values is a label map, not an image: a ground truth, or the mask another input gets in its own folder (X.png
    beside X.jpg, from an earlier run with ``-o`` that folder). It is left out with its reason before the run counts
    its inputs. A float or colour image is told by its header alone (:func:`imageio.may_be_label_map`); others are
    read once more than they are segmented."""
    from .imageio import label_map_values, may_be_label_map, output_name, read_image

    masks = {mask: path for path in inputs if (mask := path.parent / output_name(path)) != path}
    kept, skipped = [], []
    for path in inputs:
        values = None
        if path not in explicit and may_be_label_map(path):
            try:
                values = label_map_values(read_image(path))
            except DSSMError:  # not readable: its own run says so
                values = None
        if values is None:
            kept.append(path)
            continue
        source, listed = masks.get(path), ", ".join(map(str, values))
        skipped.append((path, f"a label map (values {listed}), the mask of {source.name} from an earlier run"
                        if source is not None else
                        f"a label map (values {listed}); name it on the command line to segment it anyway"))
    return kept, skipped


def _check_timings_file(timings: Path, targets: dict, protected: set, overwrite: bool) -> None:
    """``--timings`` names a file that is neither a folder, nor an input, nor one of the run's other outputs, and
    that exists only with ``--overwrite``."""
    if timings.is_dir():
        raise DSSMError(f"--timings {timings} is a folder; --timings names the JSON file to write, e.g. "
                        f"{timings / 'timings.json'}")
    if timings.exists() and not timings.is_file():
        raise DSSMError(f"--timings {timings} is not a regular file (a device or a pipe), which writing the timings "
                        "would replace; name a JSON file")
    if timings.resolve() in protected:
        raise DSSMError(f"--timings {timings} is one of the inputs; name another file for the timings")
    same = [t for t in targets if t.resolve() == timings.resolve()]  # however either is written
    if same:
        raise DSSMError(f"--timings {timings} is also the output of {targets[same[0]]}; name another file for the "
                        "timings")
    if timings.exists() and not overwrite:
        raise DSSMError(f"--timings {timings} already exists; pass --overwrite to replace it, or name another file")


def _shard() -> tuple:
    """``(RANK, WORLD_SIZE)`` from the environment (torchrun sets them), checked: (0, 1) when unset."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DSSMError(f"RANK={os.environ.get('RANK')!r} and WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} in the "
                        "environment must be whole numbers (torchrun sets them; unset both to segment every input "
                        "in this process)") from None
    if world < 1 or not 0 <= rank < world:
        raise DSSMError(f"RANK={rank} and WORLD_SIZE={world} in the environment: RANK must be 0 to WORLD_SIZE - 1 "
                        "(unset both to segment every input in this process)")
    return rank, world


def cmd_segment(args) -> int:
    from .bundle import resolve_model
    from .imageio import expand_inputs

    # Everything that can be checked without PyTorch is checked before the model is loaded: a mistake in the
    # command costs a second, and nothing is written before every output is known to be safe to write.
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise DSSMError(f"-o {out_dir} is a file; -o names the output folder (created if missing)")
    bundle = resolve_model(args.model)
    inputs, skipped = expand_inputs(args.inputs)
    explicit = {Path(item) for item in args.inputs}
    inputs, label_maps = _label_maps(inputs, explicit)  # before the count: what is segmented, not what is found
    for path, reason in skipped + label_maps:
        print(f"skipped {path}: {reason}")
    if not inputs:
        raise DSSMError("nothing to segment: every file found was skipped (listed above); name a file on the "
                        "command line to segment it anyway")
    targets: dict = {}
    clashes: dict = {}  # (input, input) -> their first shared output; every pair at once, not one per retry
    for path in inputs:
        for target in _outputs_of(path, out_dir, args.overlay, uncertainty=args.uncertainty):
            if target in targets:
                clashes.setdefault((targets[target], path), target)
            else:
                targets[target] = path
    if clashes:
        pairs = "; ".join(f"{a} and {b} would both be written as {t}" for (a, b), t in clashes.items())
        raise DSSMError(f"{pairs}; segment them into different output folders or rename one")
    protected = _input_files(inputs)
    refuse_unsafe_outputs(targets, protected, args.overwrite)
    if args.timings:
        _check_timings_file(Path(args.timings), targets, protected, args.overwrite)

    check_writable(out_dir)
    if args.timings:
        given, args.timings = args.timings, str(Path(args.timings).resolve())  # a link: the file it points to gets them
        check_writable(Path(args.timings).parent, Path(given))

    # Under torchrun, each process takes every WORLD_SIZE-th input: batch work shards with no extra code.
    rank, world = _shard()
    total, inputs = len(inputs), inputs[rank::world]
    if world > 1:
        print(f"RANK {rank} of WORLD_SIZE {world}: this process segments {len(inputs)} of the {total} inputs "
              f"(every {world}-th, from number {rank + 1})")
    for path in inputs:  # an overlay or uncertainty map of an earlier run that this run does not write again
        for stale in _outputs_of(path, out_dir, True, uncertainty=True)[1:]:
            if stale not in targets and stale.is_file():
                print(f"dssm: note: {stale} is from an earlier run and will not match the new mask of {path}; "
                      "delete it, or pass the option that writes it again (--overlay, --uncertainty)", file=sys.stderr)
    from tqdm import tqdm

    from .inference import Segmenter

    t_load = time.perf_counter()
    segmenter = Segmenter(bundle, device=args.device, batch_size=args.batch_size, tta=args.tta, samples=args.samples,
                          uncertainty_samples=args.uncertainty_chains)
    load_seconds = time.perf_counter() - t_load
    steps = segmenter.checked_steps(args.steps)
    print(f"model {bundle.name} ({bundle.architecture.kind}, K={steps if bundle.architecture.kind == 'dssm' else '-'})"
          f" on {segmenter.device}: {len(inputs)} input(s) -> {out_dir}")
    report = {"model": bundle.name, "device": str(segmenter.device), "model_load_seconds": load_seconds,
              "steps": steps if bundle.architecture.kind == "dssm" else None, "seed": args.seed,
              "tta": segmenter.tta, "samples": segmenter.samples, "cases": [], "failed": [],
              "skipped": [{"input": str(path), "reason": "label map"} for path, _ in label_maps]}
    fail_fast = args.fail_fast or len(inputs) == 1  # one input: its error is the whole story
    # the bar goes to a terminal only; the per-case lines go through it, so that neither breaks the other
    bar = tqdm(inputs, desc="segment", unit="image", disable=len(inputs) < 2 or not sys.stderr.isatty())
    for path in bar:
        try:
            case = _segment_one(segmenter, path, out_dir, args, targets, protected)
        except DSSMError as exc:
            if fail_fast or isinstance(exc, Cancelled):
                raise
            report["failed"].append({"input": str(path), "error": str(exc)})
            tqdm.write(f"dssm: error: {exc}", file=sys.stderr)
            continue
        report["cases"].append(case)
        tqdm.write(case.pop("line"))
        if case.get("warnings"):
            sys.stdout.flush()  # the case's line first, also when both streams go to one file
        for warning in case.get("warnings", []):
            tqdm.write(f"dssm: warning: {warning}", file=sys.stderr)
    bar.close()
    if args.timings:
        _write_timings(report, Path(args.timings), rank, world)
    if report["failed"]:
        print(f"dssm: {len(report['failed'])} of {len(inputs)} input(s) failed (listed above); "
              f"{len(report['cases'])} segmented", file=sys.stderr)
        return 2
    return 0


def _segment_one(segmenter, path: Path, out_dir: Path, args, targets: dict, protected: set) -> dict:
    """Read, segment and write one input; the per-case record of ``--timings``, with the line to print."""
    from .imageio import read_image, slices_in_its_series, write_image_atomically
    from .inference import Timings

    timings = Timings()
    t0 = time.perf_counter()
    notes: list = []
    image = read_image(path, notes)
    timings.add("read", time.perf_counter() - t0)
    if image.GetDimension() == 2 or image.GetSize()[2] == 1:
        slices = slices_in_its_series(path)
        if slices > 1:
            notes.append(f"{path} is one slice of a DICOM series of {slices} files in {path.parent.resolve()}; "
                         "give the folder to segment the whole volume")
    for note in notes:
        print(f"dssm: note: {note}", file=sys.stderr)
    outputs = _outputs_of(path, out_dir, args.overlay, image.GetDimension() == 2, args.uncertainty)
    unplanned = {t: path for t in outputs if targets.get(t) != path}
    if unplanned:  # a picture file type that held a volume (a 3D TIFF)
        refuse_unsafe_outputs(unplanned, protected, args.overwrite)
        clash = [t for t in unplanned if t in targets]
        if clash:
            raise DSSMError(f"{path} would be written as {clash[0]}, the output of {targets[clash[0]]}; "
                            "segment them into different output folders")
    from .familiarity import assess

    result = segmenter.run(image, steps=args.steps, seed=args.seed, timings=timings,
                           postprocess=not args.no_postprocess, name=str(path), uncertainty=args.uncertainty)
    labels = result.labels
    t0 = time.perf_counter()
    write_image_atomically(labels, outputs[0], geometry_from=path if path.is_file() else None)
    timings.add("write", time.perf_counter() - t0)
    if args.overlay:
        from .overlay import write_overlay

        t0 = time.perf_counter()
        write_overlay(image, labels, segmenter.bundle.labels, outputs[1])
        timings.add("overlay", time.perf_counter() - t0)
    record = {"input": str(path), "output": str(outputs[0])}
    lines = []
    if args.uncertainty:
        record.update(_write_uncertainty(segmenter, image, result, path, outputs[-2 if args.overlay else -1],
                                         outputs[-1] if args.overlay else None, timings))
        lines.append(record.pop("line"))
    assessment = assess(segmenter.bundle, result, str(path))
    record.update(assessment.record())
    stages = {k: round(v, 4) for k, v in timings.stages.items()}
    line = (f"{path} -> {outputs[0]}  ({timings.total:.2f} s: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
            + ")")
    record.update({"seconds": round(timings.total, 4), "stages": stages, "line": "\n".join([line] + lines)})
    return record


def _write_uncertainty(segmenter, image, result, path: Path, target: Path, overlay: Optional[Path],
                       timings) -> dict:
    """Write one input's uncertainty map (and its overlay); the ``--timings`` fields and the line that gives the
    uncertain volume of each structure."""
    from . import uncertainty as unc
    from .imageio import spacing_zyx

    t0 = time.perf_counter()
    level = unc.threshold(segmenter.bundle.architecture.num_classes)
    is_2d = image.GetDimension() == 2
    unc.write_map(result, image, target, geometry_from=path if path.is_file() else None)
    timings.add("write", time.perf_counter() - t0)
    if overlay is not None:
        from .overlay import write_uncertainty_overlay

        t0 = time.perf_counter()
        write_uncertainty_overlay(image, result.uncertainty, result.labels, segmenter.bundle.labels, level, overlay)
        timings.add("overlay", time.perf_counter() - t0)
    # a picture file (PNG, JPG, ...) has no physical pixel size (at most a print resolution, which SimpleITK reads
    # as a spacing): its areas are counted in pixels
    picture = target.name.lower().endswith(".png")
    unit = ("px" if picture else "mm2") if is_2d else "mL"
    volumes = unc.uncertain_volumes(result.uncertainty_maps[unc.MEASURE], result.likely_structure,
                                    (1.0, 1.0, 1.0) if picture else spacing_zyx(image), segmenter.bundle.labels, level,
                                    is_2d)
    line = (f"    uncertain ({unc.MEASURE.replace('_', ' ')} > {level:.3f}, {result.uncertainty_chains} chain(s) x "
            f"{len(segmenter.passes())} pass(es)) -> {target.name}: "
            + ", ".join(f"{name} {value:.{0 if is_2d else 2}f} {unit}" for name, value in volumes.items()))
    return {"uncertainty": str(target), "uncertainty_threshold": round(level, 4),
            f"uncertain_{unit}": {k: round(v, 3) for k, v in volumes.items()}, "line": line}


def _write_timings(report: dict, target: Path, rank: int, world: int) -> None:
    from .imageio import atomic_output

    if world > 1:
        target = target.with_name(f"{target.stem}.rank{rank}{target.suffix}")
    with atomic_output(target) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")


def cmd_train(args) -> int:
    from .training import TrainConfig, train

    cfg = TrainConfig(
        recipe=args.recipe, out=Path(args.out), kind="baseline" if args.baseline else "dssm", data=args.data,
        augment=args.augment,
        cache=Path(args.cache) if args.cache else None, iterations=args.iterations, minutes=args.minutes,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, split_seed=args.split_seed,
        widths=[int(w) for w in args.widths.split(",")] if args.widths else None,
        val_patients=args.val_patients.split(",") if args.val_patients else None, val_every=args.val_every,
        device=args.device, default_steps=args.steps, name=args.name,
        init=Path(args.init) if args.init else None,
        init_semantic=Path(args.init_semantic) if args.init_semantic else None,
        likelihood_weight=args.likelihood_loss, refiner=args.refiner, stage1_dropout=args.stage1_dropout,
        compile=args.compile,
        checkpoint_minutes=args.checkpoint_every,
        stop_after_minutes=args.stop_after,
    )
    bundle = train(cfg)
    if bundle is not None:
        print(f"model bundle written: {bundle}")
        if args.install:
            import shutil

            dest = Path("~/.dssm/models").expanduser() / bundle.name
            shutil.copytree(bundle, dest, dirs_exist_ok=True)
            print(f"installed as {dest}")
    return 0


def cmd_cache(args) -> int:
    from .datasets import build_cache, is_cache
    from .recipes import get_recipe

    recipe = get_recipe(args.recipe)
    out = Path(args.out) if args.out else Path("cache") / f"{args.recipe}.npz"
    if out.suffix != ".npz":
        raise DSSMError(f"--out {out}: a cache is an .npz file; name one ending in .npz")
    if out.is_dir() or (out.exists() and not is_cache(out)):
        raise DSSMError(f"--out {out} exists and is not a DSSM training cache; choose another --out (only an "
                        "earlier cache is replaced)")
    from .preprocess import Preprocessing  # PyTorch: only once the command is known to be right

    # build_cache writes it beside an earlier cache and then moves it in place: a stopped build leaves that as it was
    build_cache(args.data or recipe["data"], Preprocessing.from_dict(recipe["preprocessing"]),
                int(recipe.get("in_channels", 1)), recipe["tile"], out, args.encoding or recipe.get("encoding", "jpeg"))
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")
    return 0


def cmd_models(args) -> int:
    from .bundle import available_models

    problems: List[str] = []
    models = available_models(problems)
    for problem in problems:  # on stderr, so that --json stays JSON
        print(f"dssm: warning: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps([m.summary() for m in models], indent=2))
        return 0
    if not models:
        print("no models found")
        return 0
    for m in models:
        labels = ", ".join(f"{lab.value} {lab.name}" for lab in m.labels)
        print(f"{m.name}  [{m.modality}; {m.architecture.kind}; K={m.default_steps}]  {m.path}")
        print(f"    labels: {labels}")
        if m.architecture.kind == "dssm":
            print(f"    default K = {m.default_steps}: {m.default_steps_reason()}")
        for what, dice in m.dice_rows():
            print(f"    {what}" + (": " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()) if dice else ""))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_command

    return evaluate_command(args)


def cmd_calibrate(args) -> int:
    from .bundle import META_FILE, resolve_model
    from .familiarity import calibrate, record_calibration

    calibration = calibrate(args.model, args.data, args.device, args.batch_size, args.limit)
    if args.update_bundle:
        calibration["command"] += " --update-bundle"
    print(json.dumps(calibration, indent=2))
    if args.update_bundle:
        record_calibration(args.model, calibration)
        print(f"recorded in {resolve_model(args.model).path / META_FILE}")
    return 0


def cmd_familiarity(args) -> int:
    from .familiarity import familiarity_command

    return familiarity_command(args)


def cmd_benchmark(args) -> int:
    from .benchmark import benchmark_command

    return benchmark_command(args)


COMMANDS = {"segment": cmd_segment, "train": cmd_train, "cache": cmd_cache, "models": cmd_models,
            "evaluate": cmd_evaluate, "calibrate": cmd_calibrate, "familiarity": cmd_familiarity,
            "benchmark": cmd_benchmark}


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> int:
    warnings.filterwarnings("ignore", category=UserWarning)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a mistake in the command (argparse printed it): its status
        return exc.code if isinstance(exc.code, int) else 2
    # `kill`, `timeout` and job schedulers stop a run with SIGTERM (a closed terminal: SIGHUP): the same clean
    # stop as Ctrl-C, so that whatever is being written is removed, not left half-written
    for number in (getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)):
        if signal.getsignal(number) == signal.SIG_DFL:
            try:
                signal.signal(number, _interrupt)
            except ValueError:  # not the main thread: leave the signals to whoever runs it
                break
    try:
        return COMMANDS[args.command](args)
    except DSSMError as exc:
        print(f"dssm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dssm: interrupted; nothing more was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (e.g. `dssm models | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
