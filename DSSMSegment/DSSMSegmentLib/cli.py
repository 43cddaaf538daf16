"""The ``dssm`` command: segment, train, evaluate, benchmark, models, cache.

Every user-facing problem is a :class:`~DSSMSegmentLib.errors.DSSMError`: it is printed as one line,
``dssm: error: ...``, and the exit status is 2 (1 for an unexpected internal error, 130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

from .errors import DSSMError


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", help="segment images or volumes with a model")
    p.add_argument("inputs", nargs="+", help="image files, DICOM series folders, or folders of images")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--model", default=None, help="model name (see 'dssm models') or bundle folder")
    p.add_argument("--steps", type=int, default=None, help="Markov steps K (0 = no refinement; default: the model's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=16, help="slices per network batch")
    p.add_argument("--overlay", action="store_true", help="also write X_overlay.png, the mask over the image")
    p.add_argument("--no-postprocess", action="store_true", help="keep every connected component")
    p.add_argument("--seed", type=int, default=0, help="seed of the Markov chain's noise")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: also segment the image flipped and zoomed 1.2x as the model was "
                        "trained, and average (4-10x the network time)")
    p.add_argument("--samples", type=int, default=1,
                   help="Markov chains per slice, each from its own noise; their latents are averaged (DSSM at "
                        "K > 0 only; 4 samples: about 1.8x the time of one)")
    p.add_argument("--timings", default=None, help="write per-case timings to this JSON file")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model from a recipe and write a bundle")
    p.add_argument("--recipe", required=True, help="recipe name, e.g. heart-cine-mri")
    p.add_argument("--out", required=True, help="run folder (checkpoint, log.csv, curves.png, bundle/)")
    p.add_argument("--baseline", action="store_true", help="train the discriminative baseline instead of DSSM")
    p.add_argument("--data", default=None, help="dataset name(s) joined by '+', or NAME=FOLDER")
    p.add_argument("--cache", default=None, help="preprocessed cache (.npz); built if missing")
    p.add_argument("--iterations", type=int, default=0)
    p.add_argument("--minutes", type=float, default=0.0, help="budget in minutes of training time")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the augmentation")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the validation split (a fine-tune with --init keeps its source bundle's split)")
    p.add_argument("--widths", default=None, help="U-Net widths, e.g. 8,16,32,64")
    p.add_argument("--val-patients", default=None, help="comma-separated validation patients (overrides the split)")
    p.add_argument("--val-every", type=float, default=0.1, help="fraction of the budget between validations")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=4, help="default Markov steps written into the bundle")
    p.add_argument("--name", default=None, help="bundle name (default: the recipe's)")
    p.add_argument("--init", default=None, help="start from this bundle's weights (fine-tuning)")
    p.add_argument("--init-semantic", default=None,
                   help="take the semantic module and its pixel classifier from this bundle of the same recipe, "
                        "e.g. the trained baseline (discriminative pretraining); the rest from --init or new")
    p.add_argument("--likelihood-loss", type=float, default=0.0,
                   help="DSSM: weight of an extra loss on the Bayesian head's likelihood alone, without its prior")
    p.add_argument("--install", action="store_true", help="copy the bundle to ~/.dssm/models when done")


def _add_cache(sub) -> None:
    p = sub.add_parser("cache", help="build the compact preprocessed training cache of a recipe")
    p.add_argument("--recipe", required=True)
    p.add_argument("--data", default=None)
    p.add_argument("--out", default=None, help="default: cache/RECIPE.npz")
    p.add_argument("--encoding", default=None, help="raw, jpeg (quality 95) or jpeg:QUALITY (default: the recipe's)")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="segment a dataset's validation cases and report metrics")
    p.add_argument("data", help="dataset name (as for train), NAME=FOLDER, or a folder of images with labels/")
    p.add_argument("--model", required=True)
    p.add_argument("--split", default="val", choices=["val", "train", "all"],
                   help="which cases: the model's own validation split (default), its training split, or all")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("-o", "--output", default=None, help="folder for metrics.csv, metrics.json and the masks")
    p.add_argument("--limit", type=int, default=0, help="evaluate at most this many cases")
    p.add_argument("--tta", action="store_true", help="test-time augmentation, as for segment")
    p.add_argument("--seed", type=int, default=0, help="seed of the Markov chain's noise, as for segment")
    p.add_argument("--samples", type=int, default=1, help="Markov chains per slice, as for segment")
    p.add_argument("--no-postprocess", action="store_true", help="keep every connected component")
    p.add_argument("--update-bundle", action="store_true", help="record the summary in the bundle's model.json")


def _add_benchmark(sub) -> None:
    p = sub.add_parser("benchmark", help="time and measure memory of inference (prints a Markdown table)")
    p.add_argument("--model", default="heart-cine-mri")
    p.add_argument("--devices", default="auto", help="comma-separated: cpu,cuda (auto: cpu, plus cuda if present)")
    p.add_argument("--steps", default="0,1,2,4,8,16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="fewer cases and repeats")
    p.add_argument("-o", "--output", default="benchmark.json")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--batch-size", type=int, default=16, help="slices per network batch, as for segment")
    p.add_argument("--no-io", action="store_true", help="segment from in-memory images (read/write not timed)")
    p.add_argument("--cases", default=None, help="run from arrays saved with --save-cases (no SimpleITK or data needed)")
    p.add_argument("--save-cases", default=None, help="write the benchmark cases as arrays (.npz) and stop")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dssm", description="DSSM segmentation: segment, train, evaluate, benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_segment(sub)
    _add_train(sub)
    _add_cache(sub)
    _add_evaluate(sub)
    _add_benchmark(sub)
    p = sub.add_parser("models", help="list the bundled and local models")
    p.add_argument("--json", action="store_true")
    return parser


def cmd_segment(args) -> int:
    from tqdm import tqdm

    from .bundle import default_model_name, resolve_model
    from .imageio import expand_inputs, output_name, read_image, write_image_atomically
    from .inference import Segmenter, Timings

    name = args.model or default_model_name()
    if name is None:
        raise DSSMError("no model installed; pass --model PATH_TO_BUNDLE")
    inputs = expand_inputs(args.inputs)
    # One output per input: two inputs with the same name (p1/T2 and p2/T2 DICOM folders, x.nrrd beside
    # x.nii.gz) would silently overwrite each other's mask, so refuse before doing any work.
    stems = {}
    for path in inputs:
        stem = output_name(path, False)[: -len(".nii.gz")]
        if stem in stems:
            raise DSSMError(f"{stems[stem]} and {path} would both be written as {stem}.* in {args.output}; "
                            "segment them into different output folders or rename one")
        stems[stem] = path
    # Under torchrun, each process takes every WORLD_SIZE-th input: batch work shards with no extra code.
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    inputs = inputs[rank::world]
    t_load = time.perf_counter()
    segmenter = Segmenter(resolve_model(name), device=args.device, batch_size=args.batch_size, tta=args.tta,
                          samples=args.samples)
    load_seconds = time.perf_counter() - t_load
    out_dir = Path(args.output)
    report = {"model": segmenter.bundle.name, "device": str(segmenter.device), "model_load_seconds": load_seconds,
              "tta": segmenter.tta, "samples": segmenter.samples, "cases": []}
    for path in tqdm(inputs, desc="segment", unit="image", disable=len(inputs) < 2):
        timings = Timings()
        t0 = time.perf_counter()
        image = read_image(path)
        timings.add("read", time.perf_counter() - t0)
        labels = segmenter.segment(image, steps=args.steps, seed=args.seed, timings=timings,
                                   postprocess=not args.no_postprocess, name=str(path))
        target = out_dir / output_name(path, image.GetDimension() == 2)
        t0 = time.perf_counter()
        write_image_atomically(labels, target)
        timings.add("write", time.perf_counter() - t0)
        if args.overlay:
            from .overlay import write_overlay

            t0 = time.perf_counter()
            write_overlay(image, labels, segmenter.bundle.labels, target.with_name(
                target.name.replace(".nii.gz", "").replace(".png", "") + "_overlay.png"))
            timings.add("overlay", time.perf_counter() - t0)
        stages = {k: round(v, 4) for k, v in timings.stages.items()}
        report["cases"].append({"input": str(path), "output": str(target), "seconds": round(timings.total, 4),
                                "stages": stages})
        print(f"{path} -> {target}  ({timings.total:.2f} s: "
              + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()) + ")")
    if args.timings:
        target = Path(args.timings)
        if world > 1:
            target = target.with_name(f"{target.stem}.rank{rank}{target.suffix}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def cmd_train(args) -> int:
    from .training import TrainConfig, train

    cfg = TrainConfig(
        recipe=args.recipe, out=Path(args.out), kind="baseline" if args.baseline else "dssm", data=args.data,
        cache=Path(args.cache) if args.cache else None, iterations=args.iterations, minutes=args.minutes,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, split_seed=args.split_seed,
        widths=[int(w) for w in args.widths.split(",")] if args.widths else None,
        val_patients=args.val_patients.split(",") if args.val_patients else None, val_every=args.val_every,
        device=args.device, default_steps=args.steps, name=args.name,
        init=Path(args.init) if args.init else None,
        init_semantic=Path(args.init_semantic) if args.init_semantic else None,
        likelihood_weight=args.likelihood_loss,
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
    from .datasets import build_cache
    from .preprocess import Preprocessing
    from .recipes import get_recipe

    recipe = get_recipe(args.recipe)
    out = Path(args.out) if args.out else Path("cache") / f"{args.recipe}.npz"
    build_cache(args.data or recipe["data"], Preprocessing.from_dict(recipe["preprocessing"]),
                int(recipe.get("in_channels", 1)), recipe["tile"], out, args.encoding or recipe.get("encoding", "jpeg"))
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")
    return 0


def cmd_models(args) -> int:
    from .bundle import available_models

    models = available_models()
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
        dice = m.validation_dice()
        if dice:
            print("    validation Dice: " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
        for option, _, other in m.other_settings_dice():
            print(f"      with {option}: " + ", ".join(f"{k} {v:.3f}" for k, v in other.items()))
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_command

    return evaluate_command(args)


def cmd_benchmark(args) -> int:
    from .benchmark import benchmark_command

    return benchmark_command(args)


COMMANDS = {"segment": cmd_segment, "train": cmd_train, "cache": cmd_cache, "models": cmd_models,
            "evaluate": cmd_evaluate, "benchmark": cmd_benchmark}


def main(argv: Optional[List[str]] = None) -> int:
    warnings.filterwarnings("ignore", category=UserWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
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
