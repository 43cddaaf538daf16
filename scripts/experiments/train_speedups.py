"""Does channels-last memory layout or ``torch.compile`` speed up CPU training? Writes results/train-cost/speedups.md.

For each recipe and stage (stage 1: the discriminative baseline; stage 2: the two-stage DSSM's generative half on
the frozen bundled baseline), the training step alone (forward, loss, backward, AdamW step; the same code as
``dssm train``, ``TrainStep``) is timed on batches of real cached tiles, cropped to the recipe's training crop, in
four settings: plain (NCHW, eager: what ``dssm train`` did on the CPU before these measurements),
channels-last (what it does now on every device), ``torch.compile`` (``dssm train --compile``), and both.
Augmentation and validation are left out: they are the same in every setting. The first iterations (``--warmup``,
compilation included) are not timed; their time is reported on its own (a setting compiled after another reuses
some of its compiled kernels, so the later rows understate a fresh compilation). Run it with nothing else on the
machine:

    OMP_NUM_THREADS=2 .venv/bin/python scripts/experiments/train_speedups.py [--recipes heart-cine-mri ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "DSSMSegment"))

from DSSMSegmentLib.bundle import ModelBundle  # noqa: E402
from DSSMSegmentLib.datasets import load_cache  # noqa: E402
from DSSMSegmentLib.networks import ArchitectureConfig, build_model, load_semantic_state, semantic_state  # noqa: E402
from DSSMSegmentLib.recipes import get_recipe  # noqa: E402
from DSSMSegmentLib.training import TrainStep  # noqa: E402

SETTINGS = [("plain (NCHW, eager)", False, False), ("channels-last", True, False),
            ("torch.compile", False, True), ("channels-last + torch.compile", True, True)]


def make_step(recipe_name: str, stage: str, channels_last: bool, compiled: bool):
    recipe = get_recipe(recipe_name)
    in_channels = int(recipe.get("in_channels", 1))
    classes = len(recipe["labels"]) + 1
    if stage == "stage 1":
        network = build_model(ArchitectureConfig(kind="baseline", in_channels=in_channels, num_classes=classes))
    else:
        network = build_model(ArchitectureConfig(kind="dssm", in_channels=in_channels, num_classes=classes,
                                                 refiner="residual"))
        baseline = ModelBundle(ROOT / "Baselines" / f"{recipe_name}-baseline")
        load_semantic_state(network, semantic_state(baseline.load_network(torch.device("cpu"))))
        for module in (network.semantic, network.first_head):
            module.requires_grad_(False)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    network.train()
    step_module = TrainStep(network)
    opt = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=1e-4)
    forward = torch.compile(step_module) if compiled else step_module

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        loss = forward(x, y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def batches(recipe_name: str, cache: Path, batch: int, count: int, seed: int = 0):
    """``count`` batches of real cached tiles and labels, randomly cropped to the recipe's training crop."""
    data = load_cache(cache)
    crop = tuple(get_recipe(recipe_name)["crop"])
    rng = np.random.default_rng(seed)
    h, w = data.images.shape[-2:]
    out = []
    for _ in range(count):
        idx = rng.integers(0, len(data.images), batch)
        top, left = rng.integers(0, h - crop[0] + 1), rng.integers(0, w - crop[1] + 1)
        x = data.images[idx][..., top:top + crop[0], left:left + crop[1]].astype(np.float32)
        y = data.labels[idx][..., top:top + crop[0], left:left + crop[1]].astype(np.int64)
        out.append((torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["heart-cine-mri", "skin-lesion-dermoscopy"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=6, help="timed iterations per setting")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first iterations (compilation included)")
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "results" / "train-cost" / "speedups.md")
    args = parser.parse_args()
    rows = []
    for recipe_name in args.recipes:
        cache = ROOT / "cache" / f"{recipe_name}.npz"
        if not cache.exists():
            sys.exit(f"no cache {cache}: build it first with  dssm cache --recipe {recipe_name}")
        data = batches(recipe_name, cache, args.batch_size, args.warmup + args.iterations)
        for stage in ("stage 1", "stage 2"):
            plain = None
            for name, channels_last, compiled in SETTINGS:
                torch.manual_seed(0)
                step = make_step(recipe_name, stage, channels_last, compiled)
                t0 = time.perf_counter()
                for x, y in data[:args.warmup]:
                    step(x, y)
                warm = time.perf_counter() - t0
                t0 = time.perf_counter()
                for x, y in data[args.warmup:]:
                    step(x, y)
                per_sample = (time.perf_counter() - t0) / (args.iterations * args.batch_size)
                plain = plain or per_sample
                rows.append((recipe_name, stage, name, per_sample, plain / per_sample, warm))
                print(f"{recipe_name} {stage} {name}: {per_sample:.3f} s/sample, first {args.warmup} iterations "
                      f"{warm:.0f} s", flush=True)
    lines = [f"Training step on this CPU ({torch.get_num_threads()} threads, batch {args.batch_size}, real cached tiles; "
             f"`python scripts/experiments/train_speedups.py`; torch {torch.__version__})", "",
             "| recipe | stage | setting | s/sample | speed-up over plain | first iterations (compiling included), s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r} | {s} | {n} | {t:.3f} | {u:.2f}x | {w:.0f} |" for r, s, n, t, u, w in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
