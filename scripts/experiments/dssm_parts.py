"""Makes results/dssm-parts/*.md: docs/models.md's tables "Where DSSM's accuracy goes".

Where a DSSM model's accuracy goes: Dice of each part of the model on its validation split, against its
discriminative baseline.

For each validation slice of the model's training cache (cache resolution, not native; slices pooled per
class, as ``log.csv`` does), the script runs the bundled model's pieces and scores each output:

- ``autoencoder(ground truth)``: the ground truth encoded to the label latent and decoded back - the best
  prior the generative path can ever give;
- ``first prediction``: the semantic module's pixel classifier (the start of the Markov chain);
- ``chain prior, K=4``: the Markov chain's fused ``z0`` decoded - the prior the Bayesian head receives;
- ``Bayesian head, no prior``: the Gaussian-mixture likelihood alone, with the chain's label features;
- ``posterior K=0`` and ``posterior K=4``: the model's output (``dssm segment --steps 0`` / default);
- ``baseline``: the discriminative baseline.

Usage: .venv/bin/python scripts/experiments/dssm_parts.py MODEL|BUNDLE-FOLDER [...] [--cache-dir DIR] [--models-dir DIR] [--baselines DIR]
(the cache is built with ``dssm cache --recipe MODEL`` if missing; the left atrium takes about 70 s on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "DSSMSegment"))

from DSSMSegmentLib.bundle import ModelBundle  # noqa: E402
from DSSMSegmentLib.datasets import load_cache  # noqa: E402
from DSSMSegmentLib.preprocess import pad_to_multiple  # noqa: E402

PARTS = ("autoencoder(ground truth)", "first prediction", "chain prior, K=4", "Bayesian head, no prior",
         "posterior K=0", "posterior K=4", "baseline")


def part_logits(dssm, baseline, x: torch.Tensor, y: torch.Tensor, steps: int, generator) -> dict:
    """Logits of every part for one padded batch ``x`` with labels ``y`` (same padding)."""
    features, quarter = dssm.semantic(x)
    first = dssm._first_logits(features)  # the model's own pieces, as its reference forward composes them
    onehot = F.one_hot(y, first.shape[1]).permute(0, 3, 1, 2).float()
    z_first = dssm.autoencoder.encode(torch.softmax(first, dim=1))
    z_hat = dssm._markov_latent(dssm.denoise, quarter, z_first, steps, generator, None, samples=1)
    chain_prior = dssm.autoencoder.decode(z_hat).float()
    return {
        "autoencoder(ground truth)": dssm.autoencoder.decode(dssm.autoencoder.encode(onehot)),
        "first prediction": first,
        "chain prior, K=4": chain_prior,
        "Bayesian head, no prior": dssm.posterior(features, quarter, z_hat, torch.zeros_like(first)),
        "posterior K=0": dssm.posterior(features, quarter, z_first, torch.log_softmax(first, dim=1)),
        "posterior K=4": dssm.posterior(features, quarter, z_hat, torch.log_softmax(chain_prior, dim=1)),
        "baseline": baseline(x),
    }


def measure(model: str, cache_dir: Path, models: Path, baselines: Path, batch: int = 32) -> dict:
    """Pooled Dice per class of every part, over the model's validation slices."""
    dssm_bundle = ModelBundle(Path(model) if Path(model).is_dir() else models / model)  # a name or a bundle folder
    model = dssm_bundle.name
    base_bundle = ModelBundle(baselines / f"{model}-baseline")
    cache = cache_dir / f"{model}.npz"
    if not cache.exists():
        subprocess.run([sys.executable, "-m", "DSSMSegmentLib.cli", "cache", "--recipe", model, "--out", str(cache)],
                       check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "DSSMSegment")})
    val = dssm_bundle.meta["training"]["split"]["val"]
    if not val:
        raise SystemExit(f"{model}: the bundle records no validation split (trained on all its cases)")
    data = load_cache(cache).subset(val)
    cpu = torch.device("cpu")
    dssm, baseline = dssm_bundle.load_network(cpu).eval(), base_bundle.load_network(cpu).eval()
    n_classes = dssm.cfg.num_classes
    inter = {p: np.zeros(n_classes) for p in PARTS}
    total = {p: np.zeros(n_classes) for p in PARTS}
    generator = torch.Generator()
    with torch.inference_mode():
        for s in range(0, len(data.images), batch):
            generator.manual_seed(s)
            x = torch.from_numpy(data.images[s:s + batch].astype(np.float32))
            x, (_, _, h, w) = pad_to_multiple(x, dssm.cfg.size_multiple)
            y = torch.zeros((x.shape[0], *x.shape[-2:]), dtype=torch.long)
            y[:, :h, :w] = torch.from_numpy(data.labels[s:s + batch].astype(np.int64))
            truth = y[:, :h, :w].numpy()
            for part, logits in part_logits(dssm, baseline, x, y, dssm_bundle.default_steps, generator).items():
                pred = logits[..., :h, :w].argmax(1).numpy()
                for c in range(1, n_classes):
                    inter[part][c] += np.logical_and(pred == c, truth == c).sum()
                    total[part][c] += (pred == c).sum() + (truth == c).sum()
    names = [label.name for label in dssm_bundle.labels]
    return {p: {names[c - 1]: 2 * inter[p][c] / max(total[p][c], 1) for c in range(1, n_classes)} for p in PARTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "cache")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "DSSMSegment" / "Resources" / "Models")
    parser.add_argument("--baselines", type=Path, default=ROOT / "Baselines")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| model | structure | " + " | ".join(PARTS) + " |")
    print("|" + "---|" * (len(PARTS) + 2))
    for model in args.models:
        dice = measure(model, args.cache_dir, args.models_dir, args.baselines)
        for structure in dice[PARTS[0]]:  # the model as given: a bundled model's name or a bundle folder
            print(f"| {model} | {structure} | " + " | ".join(f"{dice[p][structure]:.3f}" for p in PARTS) + " |")


if __name__ == "__main__":
    main()
