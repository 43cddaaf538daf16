"""Makes the numbers behind --stage1-dropout (docs/models.md, "Two-stage DSSM: runs on the CPU"): how
accurate a frozen first stage (the bundled baseline) is on its own training slices against its validation slices,
and on the training slices with channel dropout at each rate (SemanticUNet(..., dropout=...), as stage-2 training
runs it for half of each batch).

Mean Dice of the structure over 48 random cache tiles that contain it, per split and rate.
Usage: .venv/bin/python scripts/experiments/stage1_dropout_dice.py [RECIPE]   (default: left-atrium-lge-mri)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "DSSMSegment"))

from DSSMSegmentLib.bundle import ModelBundle  # noqa: E402
from DSSMSegmentLib.datasets import load_cache  # noqa: E402

RATES = (0.0, 0.1, 0.2, 0.3, 0.5)


def main() -> None:
    recipe = sys.argv[1] if len(sys.argv) > 1 else "left-atrium-lge-mri"
    bundle = ModelBundle(ROOT / "Baselines" / f"{recipe}-baseline")
    network = bundle.load_network(torch.device("cpu")).eval()
    data = load_cache(ROOT / "cache" / f"{recipe}.npz")
    split = bundle.meta["training"]["split"]
    rng = np.random.default_rng(0)
    print(f"| {recipe}: first-stage Dice on 48 tiles | " + " | ".join(f"dropout {p:g}" for p in RATES) + " |")
    print("|---|" + "---|" * len(RATES))
    for name in ("train", "val"):
        part = data.subset(split[name])
        pick = [i for i in rng.permutation(len(part.images)) if part.labels[i].max() > 0][:48]
        x = torch.from_numpy(part.images[pick].astype(np.float32))
        truth = torch.from_numpy(part.labels[pick].astype(np.int64)) > 0
        cells = []
        with torch.no_grad():
            for rate in RATES:
                torch.manual_seed(0)
                features, _ = network.semantic(x, dropout=torch.full((len(pick),), rate))
                pred = network.head(F.leaky_relu(features, 0.01)).argmax(1) > 0
                dice = [float(2 * (p & t).sum() / max(1, p.sum() + t.sum())) for p, t in zip(pred, truth)]
                cells.append(f"{np.mean(dice):.3f}")
        print(f"| {name} slices | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
