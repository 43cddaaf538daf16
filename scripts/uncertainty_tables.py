"""docs/uncertainty.md's tables, from results/uncertainty/ (scripts/uncertainty_all.sh makes both).

1. How well each uncertainty map finds wrong voxels (voxel AUROC over all voxels, and over the voxels near the
   structures only) and follows a case's error (Spearman with 1 - Dice), for DSSM (entropy of the mean over its
   Markov chains, their mutual information, the first chain's entropy; with the default 2 chains and with 3) and
   the discriminative baseline's softmax entropy, without and with test-time augmentation.
2. The familiarity warning: own validation images against every other model's data (``dssm familiarity``).

``--collect RUNS`` first turns each ``dssm evaluate --uncertainty -o RUNS/<model>/<row>`` into the compact
``results/uncertainty/<model>/<row>.json`` (the summary of each measure, and per case 1 - Dice and the case's
uncertainty under each measure; the Dice per structure is in results/<model>/ already).

Usage: python scripts/uncertainty_tables.py [--collect runs/uncertainty] [--readme]

``--readme`` prints the README's two tables instead: the map that ``dssm segment`` writes against the baseline's
softmax entropy, per model, and the familiarity table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "results" / "uncertainty"
MODELS = ("heart-cine-mri", "left-atrium-lge-mri", "lungs-cxr", "skin-lesion-dermoscopy")
# (row, what ran, measure shown); the baseline's one map is its softmax entropy
ROWS = (("K4", "DSSM, 2 chains", "entropy"), ("K4", "DSSM, 2 chains", "mutual_information"),
        ("K4", "DSSM, 2 chains", "entropy_first_chain"), ("K4-3chains", "DSSM, 3 chains", "entropy"),
        ("K4-3chains", "DSSM, 3 chains", "mutual_information"), ("baseline", "baseline", "softmax_entropy"))
WORDS = {"entropy": "entropy of the mean", "mutual_information": "mutual information",
         "entropy_first_chain": "entropy of the first chain", "softmax_entropy": "softmax entropy"}
SUMMARY_KEYS = ("auroc", "auroc_near", "spearman", "n_cases", "wrong_voxels", "voxels", "near_wrong_voxels",
                "near_voxels")


def collect(runs: Path) -> None:
    """RUNS/<model>/<row>/metrics.json -> results/uncertainty/<model>/<row>.json (compact)."""
    for metrics in sorted(runs.glob("*/*/metrics.json")):
        report = json.loads(metrics.read_text())
        info = report["uncertainty"]
        measures = list(info["measures"])
        first = info["measures"][measures[0]]["per_case"]
        compact = {
            "model": report["model"], "data": report["data"], "split": report["split"], "steps": report["steps"],
            "tta": report["tta"], "chains": info["chains"], "passes": info["passes"], "written": info["written"],
            "measures": {m: {k: v[k] for k in SUMMARY_KEYS} for m, v in info["measures"].items()},
            "per_case_columns": ["1 - mean Dice"] + [f"{m} uncertainty" for m in measures],
            "per_case": {case: [round(first[case]["one_minus_dice"], 5)]
                         + [round(info["measures"][m]["per_case"][case]["uncertainty"], 6) for m in measures]
                         for case in first},
        }
        target = ROOT / metrics.parent.parent.name / f"{metrics.parent.name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(compact, indent=1) + "\n")


def cell(report: dict, measure: str, key: str) -> str:
    value = report["measures"].get(measure, {}).get(key)
    return "-" if value is None or value != value else f"{value:.3f}"


def uncertainty_table() -> str:
    lines = ["| model (validation cases) | what ran | measure | AUROC | near the structures | Spearman | "
             "with --tta: AUROC | near | Spearman |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for model in MODELS:
        for row, ran, shown in ROWS:
            measure = "entropy" if shown == "softmax_entropy" else shown
            plain = ROOT / model / f"{row}.json"
            if not plain.is_file():
                continue
            report = json.loads(plain.read_text())
            tta_path = ROOT / model / f"{row}-tta.json"
            tta = json.loads(tta_path.read_text()) if tta_path.is_file() else None
            name = f"{model} ({len(report['per_case'])})"
            mark = " (written)" if measure == report["written"] and row == "K4" else ""
            cells = [cell(r, measure, key) if r else "not run" for r in (report, tta)
                     for key in ("auroc", "auroc_near", "spearman")]
            lines.append(f"| {name} | {ran} | {WORDS[shown]}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_uncertainty_table() -> str:
    """The README's short table: per model, the map dssm segment writes against the baseline's softmax entropy."""
    lines = ["| model (validation cases) | DSSM map (written): AUROC | near the structures | Spearman | "
             "baseline's softmax entropy: AUROC | near | Spearman |", "|---|---:|---:|---:|---:|---:|---:|"]
    for model in MODELS:
        paths = [ROOT / model / f"{row}.json" for row in ("K4", "baseline")]
        if not all(path.is_file() for path in paths):
            continue
        dssm, base = (json.loads(path.read_text()) for path in paths)
        cells = [cell(r, m, key) for r, m in ((dssm, dssm["written"]), (base, "entropy"))
                 for key in ("auroc", "auroc_near", "spearman")]
        lines.append(f"| {model} ({len(dssm['per_case'])}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def familiarity_table() -> str:
    path = ROOT / "familiarity.json"
    if not path.is_file():
        return "(results/uncertainty/familiarity.json not found: run dssm familiarity -o it)"
    data = json.loads(path.read_text())
    return f"`{data['command']}`\n\n{data['markdown']}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", type=Path, default=None, help="folder of dssm evaluate -o outputs")
    parser.add_argument("--readme", action="store_true", help="the README's tables: the written map against the "
                        "baseline's, and the familiarity table")
    args = parser.parse_args()
    if args.collect:
        collect(args.collect)
    print(readme_uncertainty_table() if args.readme else uncertainty_table())
    print()
    print(familiarity_table())
