"""The heart models on ACDC's validation patients and on the M&Ms-1 Philips subjects that the heart recipe holds
back (another vendor and country than ACDC), per structure, beside issue 23's targets.

    .venv/bin/python scripts/experiments/heart_vendors.py [--readme] [MODEL_OR_BUNDLE ...]

Default models: the bundled heart DSSM and its baseline, and every heart run of the training campaign
(runs/campaign/heart-*/bundle/*). A campaign run is read from its own evaluation at its default K
(runs/campaign/NAME/eval/, of acdc+mnms1); any other model is scored at its default K with ``dssm evaluate`` into
``results/heart-vendors/LABEL/{acdc,mnms1}/``, once (folders already written are read again: delete one to score
a changed model again). A model that never trained on M&Ms-1 (the bundled ones) is scored on all its subjects
(``--split all``) and then on the held-back ones alone, the same subjects as every other row.
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


def campaign_report(model: str):
    """The campaign's own evaluation of a bundle in runs/campaign/NAME/bundle/ (at its default K), or None."""
    bundle = Path(model)
    if not bundle.is_dir() or bundle.parents[2] != ROOT / "runs" / "campaign":
        return None
    default = json.loads((bundle / "model.json").read_text()).get("default_steps")
    for folder in (bundle.parents[1] / "eval", bundle.parents[1] / "eval" / f"K{default}"):
        if (folder / "metrics.json").exists():
            report = json.loads((folder / "metrics.json").read_text())
            if report["steps"] == default:
                return report
    return None


def evaluate(model: str, label: str, data: str, split: str) -> dict:
    """``dssm evaluate data --split split`` of ``model`` into results/heart-vendors/LABEL/DATA (once)."""
    target = OUT / label / data
    if not (target / "metrics.json").exists():
        command = [DSSM, "evaluate", data, "--model", model, "--split", split, "-o", str(target), "--device", "cpu",
                   "--overwrite"]
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}")
    return json.loads((target / "metrics.json").read_text())


def per_case(model: str, label: str) -> tuple:
    """``(ACDC's validation cases, M&Ms-1's cases)``: each ``{case id: {structure: metrics}}``; M&Ms-1's are the
    model's validation cases there, or all of its subjects for a model that never trained on them."""
    report = campaign_report(model)
    if report is not None:
        cases = report["per_case"]
        return ({c: m for c, m in cases.items() if "_sa_" not in c}, {c: m for c, m in cases.items() if "_sa_" in c})
    from DSSMSegmentLib.bundle import resolve_model

    split = resolve_model(model).meta.get("training", {}).get("split", {})
    trained_on_mnms = any(p.startswith("mnms1:") for p in split.get("train", []))
    return (evaluate(model, label, "acdc", "val")["per_case"],
            evaluate(model, label, "mnms1", "val" if trained_on_mnms else "all")["per_case"])


def structure_dice(cases: dict, subjects=None) -> tuple:
    """``({structure: mean Dice over the cases (those of subjects only, when given)}, number of cases)``."""
    kept = [c for cid, c in cases.items() if subjects is None or cid.split("_sa_")[0] in subjects]
    return {s: float(np.nanmean([c[s]["dice"] for c in kept])) for s in STRUCTURES}, len(kept)


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
        from DSSMSegmentLib.bundle import resolve_model

        label = Path(model).parents[1].name if campaign_report(model) is not None else resolve_model(model).name
        acdc_cases, mnms_cases = per_case(model, label)
        acdc, n_acdc = structure_dice(acdc_cases)
        mnms, n_mnms = structure_dice(mnms_cases, philips)
        everyone, n_all = structure_dice(mnms_cases)
        if n_all > n_mnms:
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
