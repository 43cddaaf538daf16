"""The heart models on ACDC's validation patients and on the M&Ms-1 Philips subjects that the heart recipe holds
back (another vendor and country than ACDC), per structure, beside issue 23's targets.

    .venv/bin/python scripts/experiments/heart_vendors.py [--readme] [MODEL_OR_BUNDLE ...]

Default models: the bundled heart DSSM and its baseline, and every heart run of the training campaign
(runs/campaign/heart-*/bundle/*). Each is scored at its default K with ``dssm evaluate`` into
``results/heart-vendors/LABEL/{acdc,mnms1}/`` (a campaign run's own ``eval-acdc``/``eval-mnms1`` folders are used
when they are there), once: folders already written are read again. A model that never trained on M&Ms-1 (the
bundled ones) is scored on all its subjects (``--split all``) and then on the held-back ones alone, the same
subjects as every other row.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "DSSMSegment"))

from DSSMSegmentLib.datasets import find_cases, split_cases  # noqa: E402
from DSSMSegmentLib.recipes import get_recipe  # noqa: E402

OUT = ROOT / "results" / "heart-vendors"
DSSM = str(ROOT / ".venv" / "bin" / "dssm")
STRUCTURES = ("right ventricle cavity", "left ventricle myocardium", "left ventricle cavity")
SHORT = {"right ventricle cavity": "RV", "left ventricle myocardium": "myocardium", "left ventricle cavity": "LV"}
TARGETS = {"acdc": {"left ventricle cavity": 0.9451},  # the paper's LV cavity
           "mnms1": {"left ventricle cavity": 0.92, "right ventricle cavity": 0.87, "left ventricle myocardium": 0.85}}


def held_back_philips() -> set:
    recipe = get_recipe("heart-cine-mri")
    split = split_cases(find_cases(recipe["data"]), recipe["val_fraction"])
    return {p.split(":", 1)[1] for p in split["val"] if p.startswith("mnms1:")}


def evaluation(model: str, label: str, data: str) -> dict:
    """``dssm evaluate``'s report of ``model`` on ``data``: its validation cases there, or all of them when it has
    none there (a model that never trained on that dataset)."""
    bundle = Path(model)
    if bundle.is_dir() and (bundle.parents[1] / f"eval-{data}" / "metrics.json").exists():
        return json.loads((bundle.parents[1] / f"eval-{data}" / "metrics.json").read_text())
    target = OUT / label / data
    if not (target / "metrics.json").exists():
        command = [DSSM, "evaluate", data, "--model", model, "-o", str(target), "--device", "cpu", "--overwrite"]
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0 and "none of the model's 'val' cases" in proc.stderr:
            proc = subprocess.run(command + ["--split", "all"], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}")
    return json.loads((target / "metrics.json").read_text())


def mean_dice(report: dict, subjects=None) -> dict:
    """Per structure, the mean Dice over the report's cases (those of ``subjects`` only, when given)."""
    cases = [c for cid, c in report["per_case"].items() if subjects is None or cid.split("_sa_")[0] in subjects]
    return {s: float(np.nanmean([c[s]["dice"] for c in cases])) for s in STRUCTURES}, len(cases)


def main(argv) -> None:
    readme = "--readme" in argv
    models = [a for a in argv if a != "--readme"]
    if not models:
        models = ["heart-cine-mri", "heart-cine-mri-baseline"] + sorted(
            str(p.parent) for p in (ROOT / "runs" / "campaign").glob("heart-*/bundle/*/model.json"))
    philips = held_back_philips()
    rows = ["| model | ACDC validation: RV / myocardium / LV | M&Ms-1 Philips, held back: RV / myocardium / LV "
            "| mean of the six |", "|---|---|---|---|"]
    notes = []
    for model in models:
        label = Path(model).parents[1].name if Path(model).is_dir() else model
        acdc, n_acdc = mean_dice(evaluation(model, label, "acdc"))
        report = evaluation(model, label, "mnms1")
        mnms, n_mnms = mean_dice(report, philips)
        if report["split"] == "all":
            everyone, n_all = mean_dice(report)
            notes.append(f"{label} on all {n_all} M&Ms-1 Philips volumes (none trained on): "
                         + " / ".join(f"{everyone[s]:.3f}" for s in STRUCTURES))
        six = np.mean(list(acdc.values()) + list(mnms.values()))
        rows.append(f"| {label} | {' / '.join(f'{acdc[s]:.3f}' for s in STRUCTURES)} ({n_acdc}) | "
                    f"{' / '.join(f'{mnms[s]:.3f}' for s in STRUCTURES)} ({n_mnms}) | {six:.3f} |")
    targets = "; ".join(f"{data}: " + ", ".join(f"{SHORT[s]} {v}" for s, v in t.items()) for data, t in TARGETS.items())
    print("\n".join(rows))
    if not readme:
        print("\n" + "\n".join(notes) + f"\n\ntargets (issue 23): {targets}; held-back Philips subjects: "
              + ", ".join(sorted(philips)))


if __name__ == "__main__":
    main(sys.argv[1:])
