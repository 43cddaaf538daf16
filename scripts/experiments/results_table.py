"""Makes the accuracy tables of docs/models.md from results/ (and, with --readme, the README's models table).

With --two-stage, the two-stage DSSM's CPU runs (left atrium, skin, heart, lungs; prostate, leave one case out) at each K. With --targets, issue 12's
targets model by model (DSSM against its baseline, against K = 0 and
against the paper). Otherwise prints the accuracy comparison from results/: DSSM at its default K, at K = 0 and with test-time
flips (TTA), the discriminative baseline plain and with TTA, and the paper; then DSSM with 4 Markov samples per
slice, each model before and after the same extra CPU training for DSSM and its baseline
(``scripts/experiments/cpu_finetune.sh``), DSSM training variants after the same extra iterations (the same script with
``VARIANT=...``), and the spread over Markov noise seeds.

The numbers are those written by ``scripts/evaluate_all.sh`` and ``scripts/prostate_loocv.sh``
(``dssm evaluate ... -o results/...``). Usage: .venv/bin/python scripts/experiments/results_table.py
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2] / "results"

PAPER = {  # Liu et al. 2025, abstract (shared/docs/paper-abstract.md)
    ("heart-cine-mri", "left ventricle cavity"): 0.9451,
    ("left-atrium-lge-mri", "left atrium"): 0.8871,
    ("lungs-cxr", "lungs"): 0.9647,
    ("prostate-t2-mri", "whole gland"): 0.8731,
    ("skin-lesion-dermoscopy", "isic2018"): 0.8869,
    ("skin-lesion-dermoscopy", "ph2"): 0.9421,
}
MODELS = ("heart-cine-mri", "left-atrium-lge-mri", "lungs-cxr", "skin-lesion-dermoscopy")  # with a validation split (prostate: loocv_rows)
# results/<model>/<row>/ for the validation-split models; results/prostate-t2-mri/loocv/<case>-<fold row>/
ROWS = ("K4", "K0", "K4-tta", "baseline", "baseline-tta")
FOLD_ROWS = {"K4": "dssm", "K0": "dssm-K0", "K4-tta": "dssm-tta", "baseline": "baseline",
             "baseline-tta": "baseline-tta"}
SAMPLE_ROWS = ("K4", "K4-s4", "K0", "baseline")
SAMPLE_FOLD_ROWS = {"K4-s4": "dssm-s4"}
# scripts/experiments/cpu_finetune.sh: each model before and after the same extra CPU iterations for DSSM and baseline
FINETUNE_ROWS = ("K4", "cpu-ft/K4", "K4-s4", "cpu-ft/K4-s4", "K0", "cpu-ft/K0", "baseline", "cpu-ft/baseline")
FINETUNE_HEADER = ["model", "structure", "DSSM K=4", "after", "DSSM K=4, 4 samples", "after", "DSSM K=0", "after",
                   "baseline", "after"]
# VARIANT=... scripts/experiments/cpu_finetune.sh: DSSM training variants, each after the same extra CPU iterations as the
# baseline's run
VARIANTS = {"": "DSSM (plain fine-tune)", "semantic-": "DSSM on the baseline's semantic module (--init-semantic)",
            "likelihood-": "DSSM + likelihood loss (--likelihood-loss 1)"}
VARIANT_HEADER = ["model", "structure", "DSSM variant", "K=4", "K=0", "K=4, 4 samples", "baseline, same extra iterations",
                  "paper"]
SAMPLE_HEADER = ["model", "structure", "DSSM K=4", "DSSM K=4, 4 samples", "DSSM K=0", "baseline"]
HEADER = ["model", "structure", "cases", "DSSM K=4", "DSSM K=0", "DSSM K=4 + TTA", "baseline", "baseline + TTA",
          "paper", "DSSM HD95 (K=4 + TTA)", "baseline HD95 (+ TTA)"]


DIGITS = 3  # of every Dice printed; --targets computes its differences from 6


def fmt(stat, digits: int = None) -> str:
    digits = DIGITS if digits is None else digits
    if stat is None or stat["mean"] is None or (isinstance(stat["mean"], float) and math.isnan(stat["mean"])):
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def hd95_of(stats: dict):
    """A structure's HD95 summary and its unit: ``hd95_mm`` for volumes, ``hd95_px`` for picture files (which have
    no pixel size; ``dssm evaluate`` measures them in pixels); ``(None, "")`` if neither is there."""
    for unit in ("mm", "px"):
        if f"hd95_{unit}" in stats:
            return stats[f"hd95_{unit}"], unit
    return None, ""


def fmt_hd95(stats) -> str:
    """HD95's mean ± sd with its unit, e.g. ``4.24 ± 3.73 mm`` or ``5.64 ± 7.05 px``."""
    stat, unit = hd95_of(stats or {})
    cell = fmt(stat, 2)
    return f"{cell} {unit}" if stat is not None and cell != "n/a" else cell


def load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def summary_of(report: dict, dataset):
    """A ``dssm evaluate`` report's per-structure summary: of one dataset, or of all cases (``dataset`` None)."""
    return report["by_dataset"][dataset] if dataset else report["summary"]


def rows_for(model: str, rows=ROWS, extra=True):
    """One line per structure (and dataset) of ``model``: the Dice of each of ``rows``; with ``extra``, the
    paper and the HD95 columns of the main table."""
    reports = {row: load(ROOT / model / row / "metrics.json") for row in rows}
    k4 = reports[rows[0]]  # lists the structures
    if not k4:
        return []
    groups = [(name, None) for name in k4["by_dataset"]] if k4.get("by_dataset") else [(None, None)]
    out = []
    for dataset, _ in groups:
        summary = summary_of(k4, dataset)
        for structure in summary:
            def pick(row, key="dice"):
                report = reports[row]
                if not report:
                    return None
                stats = summary_of(report, dataset).get(structure, {})
                return stats if key is None else stats.get(key)
            name = model + (f" ({dataset})" if dataset else "")
            if not extra:
                out.append([name, structure, *(fmt(pick(row)) for row in rows)])
                continue
            paper = PAPER.get((model, dataset or structure))
            n = summary[structure]["dice"]["n"]
            out.append([name, structure, str(n), *(fmt(pick(row)) for row in rows), f"{paper:.4f}" if paper else "",
                        fmt_hd95(pick("K4-tta", None)), fmt_hd95(pick("baseline-tta", None))])
    return out


LOOCV_CASES = ("001", "002", "020", "021")  # the prostate's cases, one fold each held out


def mean_sd(values, digits: int = None) -> str:
    """Mean ± sd over folds of one number per fold."""
    digits = DIGITS if digits is None else digits
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def loocv_rows(rows=ROWS, extra=True):
    """Prostate: one fold per held-out case; mean ± sd over the 4 folds of each fold's Dice."""
    folder = ROOT / "prostate-t2-mri" / "loocv"
    if not folder.is_dir():
        return []
    per = {}
    for row, kind in {**FOLD_ROWS, **SAMPLE_FOLD_ROWS}.items():
        vals = {}
        for case in LOOCV_CASES:
            rep = load(folder / f"{case}-{kind}" / "metrics.json")
            if rep:
                for s, v in rep["summary"].items():
                    vals.setdefault((s, "dice"), []).append(v["dice"]["mean"])
                    hd95, unit = hd95_of(v)
                    vals.setdefault((s, f"hd95 {unit}"), []).append(hd95["mean"])
        per[row] = vals

    def f(row, structure, key="dice", digits=None):
        v = per.get(row, {}).get((structure, key))
        return mean_sd(v, digits) if v else "n/a"

    def f_hd95(row, structure):
        for unit in ("mm", "px"):
            if per.get(row, {}).get((structure, f"hd95 {unit}")):
                return f"{f(row, structure, f'hd95 {unit}', 2)} {unit}"
        return "n/a"

    out = []
    for structure in [s for s, key in per.get("K4", {}) if key == "dice"]:
        if not extra:
            out.append(["prostate-t2-mri (LOOCV, 4 folds)", structure, *(f(row, structure) for row in rows)])
            continue
        out.append(["prostate-t2-mri (LOOCV, 4 folds)", structure, str(len(per["K4"][(structure, "dice")])),
                    *(f(row, structure) for row in rows),
                    f"{PAPER[('prostate-t2-mri', 'whole gland')]:.4f}" if structure == "whole gland" else "",
                    f_hd95("K4-tta", structure), f_hd95("baseline-tta", structure)])
    return out


def seed_rows():
    """Mean Dice of DSSM at K = 4 for each Markov-noise seed (scripts/experiments/seed_spread.sh; seed 0 = K4, or K4-s4
    with 4 Markov samples)."""
    out = []
    for model in MODELS:
        for row, samples in (("K4", 1), ("K4-s4", 4)):
            out += _seed_rows(model, row, samples)
    return out


def _seed_rows(model: str, row: str, samples: int):
    folders = [ROOT / model / row] + sorted((ROOT / model).glob(f"{row}-seed*"),
                                            key=lambda p: int(p.name.rsplit("seed", 1)[1]))
    reports = [r for r in (load(f / "metrics.json") for f in folders) if r]
    if len(reports) < 2:
        return []
    out = []
    for structure in reports[0]["summary"]:
        means = [r["summary"][structure]["dice"]["mean"] for r in reports]
        per_case = np.array([[r["per_case"][c][structure]["dice"] for c in reports[0]["per_case"]]
                             for r in reports], dtype=float)
        out.append([model, str(samples), structure, str(len(reports)), " / ".join(f"{m:.3f}" for m in means),
                    f"{max(means) - min(means):.3f}",
                    f"{np.nanmax(np.nanmax(per_case, 0) - np.nanmin(per_case, 0)):.3f}"])
    return out


def table(header, rows) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


# --readme: one row per model, the default DSSM, K = 0 and its baseline beside the paper, mean Dice over the validation
# cases (prostate: over the 4 leave-one-case-out folds); the details are in docs/models.md
README_IMAGES = {"heart-cine-mri": "cine MRI, short axis", "left-atrium-lge-mri": "late gadolinium-enhanced MRI (3D)",
                 "lungs-cxr": "frontal chest X-ray", "skin-lesion-dermoscopy": "dermoscopy photograph (RGB)",
                 "prostate-t2-mri": "axial T2-weighted MRI"}
README_PARTS = {"right ventricle cavity": "RV", "left ventricle myocardium": "myocardium", "left ventricle cavity": "LV",
                "transition zone": "TZ", "peripheral zone": "PZ", "(isic2018)": "ISIC 2018", "(ph2)": "PH2",
                "(LOOCV, 4 folds)": ""}
README_HEADER = ["model", "images", "scored (validation cases)", "DSSM, K = 4", "DSSM, K = 0", "baseline", "paper"]


def readme_rows(rows):
    """The main table's rows (``HEADER``) folded into one row per model: each column's means joined by " / "."""
    groups = {}
    for row in rows:
        model, _, dataset = row[0].partition(" ")
        groups.setdefault(model, []).append((README_PARTS.get(dataset, "") or README_PARTS.get(row[1], row[1]), row))
    out = []
    for model, parts in groups.items():
        def joined(i):
            return " / ".join(row[i].split(" ± ")[0] if row[i] else "-" for _, row in parts)
        cases = list(dict.fromkeys(row[2] for _, row in parts))
        loocv = model == "prostate-t2-mri"  # loocv_rows: one fold per held-out case
        scored = " / ".join(name for name, _ in parts) + f" ({' / '.join(cases)}{' folds, one case out' if loocv else ''})"
        out.append([f"[{model}](docs/models.md#{model})", README_IMAGES.get(model, ""), scored, joined(3), joined(4),
                    joined(6), joined(8)])
    return out


# --targets: issue 12's targets, model by model, from the same rows: the mean Dice over a model's structures (per
# dataset for the skin model) of DSSM at K = 4 against its baseline and against K = 0, and the paper's structure
TARGETS_HEADER = ["model", "DSSM - baseline (target >= +0.005)", "K = 4 - K = 0 (target >= +0.005)",
                  "DSSM - paper (target >= 0)"]  # differences of the unrounded means, printed to 4 digits


def target_rows(rows):
    groups = {}
    for row in rows:
        groups.setdefault(row[0], []).append(row)

    def mean(parts, i):
        return float(np.mean([float(r[i].split(" ± ")[0]) for r in parts]))

    def verdict(delta, need):
        return f"{delta:+.4f} ({'met' if delta >= need - 1e-9 else 'not met'})"

    out = []
    for name, parts in groups.items():
        paper = [r for r in parts if r[8]]
        paper_cell = (verdict(float(paper[0][3].split(" ± ")[0]) - float(paper[0][8]), 0.0)
                      + (f", {paper[0][1]}" if len(parts) > 1 else "")) if paper else "-"
        out.append([name, verdict(mean(parts, 3) - mean(parts, 6), 0.005), verdict(mean(parts, 3) - mean(parts, 4), 0.005),
                    paper_cell])
    return out


# --two-stage: the two-stage DSSM's CPU runs (docs/models.md), mean Dice at each K; K = 0 is the frozen baseline
# itself. results/<model>/two-stage-cpu/K<K><suffix>/ ("-stage1-dropout": the run with --stage1-dropout 0.2)
TWO_STAGE_RUNS = (("left-atrium-lge-mri", "", "plain"), ("left-atrium-lge-mri", "-stage1-dropout", "--stage1-dropout 0.2"),
                  ("skin-lesion-dermoscopy", "", "plain"), ("heart-cine-mri", "", "plain"), ("lungs-cxr", "", "plain"))
TWO_STAGE_K = (0, 1, 2, 4, 8)


def two_stage_rows():
    out = []
    for model, suffix, run in TWO_STAGE_RUNS:
        folder = ROOT / model / "two-stage-cpu"
        reports = {k: load(folder / ("K0" if k == 0 else f"K{k}{suffix}") / "metrics.json") for k in TWO_STAGE_K}
        if not any(reports.values()):
            continue
        first = next(r for r in reports.values() if r)
        groups = list(first["by_dataset"]) if first.get("by_dataset") else [None]
        for dataset in groups:
            for structure, stats in summary_of(first, dataset).items():
                def dice(report):
                    return fmt(summary_of(report, dataset)[structure]["dice"]) if report else "n/a"
                n = stats["dice"]["n"]
                name = f"{model} ({dataset or structure}, {n})"
                out.append([name, run, *(dice(reports[k]) for k in TWO_STAGE_K)])
    return out + two_stage_loocv_rows()


def two_stage_loocv_rows():
    """Prostate (scripts/experiments/prostate_two_stage_loocv.sh): each held-out case's fold, its own baseline as
    stage 1; mean ± sd over the folds written so far of each fold's Dice, at each K evaluated (K = 0 and 4)."""
    folder = ROOT / "prostate-t2-mri" / "two-stage-loocv"
    per = {}  # (structure, K) -> one Dice per fold
    folds = set()
    for k in TWO_STAGE_K:
        for case in LOOCV_CASES:
            report = load(folder / f"{case}-K{k}" / "metrics.json")
            if report:
                folds.add(case)
                for structure, stats in report["summary"].items():
                    per.setdefault((structure, k), []).append(stats["dice"]["mean"])
    structures = dict.fromkeys(s for s, _ in per)
    return [[f"prostate-t2-mri ({structure}, LOOCV, {len(folds)} of {len(LOOCV_CASES)} folds)", "plain",
             *(mean_sd(v) if (v := per.get((structure, k))) else "not run"
               for k in TWO_STAGE_K)] for structure in structures]


def main() -> None:
    global DIGITS
    if "--two-stage" in sys.argv[1:]:
        table(["model (validation cases)", "stage-2 run", *(f"K = {k}" + (" (the frozen baseline)" if k == 0 else "")
                                                         for k in TWO_STAGE_K)], two_stage_rows())
        return
    if "--targets" in sys.argv[1:]:
        if "--readme" in sys.argv[1:] or "--two-stage" in sys.argv[1:]:
            sys.exit("results_table.py: give one of --readme, --targets, --two-stage")
        DIGITS = 6
    rows = [row for model in MODELS for row in rows_for(model)] + loocv_rows()
    if "--readme" in sys.argv[1:]:
        table(README_HEADER, readme_rows(rows))
        return
    if "--targets" in sys.argv[1:]:
        table(TARGETS_HEADER, target_rows(rows))
        return
    table(HEADER, rows)
    samples = ([row for model in MODELS for row in rows_for(model, SAMPLE_ROWS, extra=False)]
               + loocv_rows(SAMPLE_ROWS, extra=False))
    print("\nDSSM with 4 Markov samples per slice (--samples 4):\n")
    table(SAMPLE_HEADER, samples)
    finetuned = [row for model in MODELS
                 if (ROOT / model / "cpu-ft" / "K4" / "metrics.json").exists()
                 for row in rows_for(model, FINETUNE_ROWS, extra=False)]
    if finetuned:
        print("\nBefore and after the same extra CPU training for DSSM and baseline (scripts/experiments/cpu_finetune.sh):\n")
        table(FINETUNE_HEADER, finetuned)
    variants = [row[:2] + [words] + row[2:] + [f"{PAPER[(model, row[1])]:.4f}" if (model, row[1]) in PAPER else ""]
                for model in MODELS for prefix, words in VARIANTS.items()
                if (ROOT / model / "cpu-ft" / f"{prefix}K4" / "metrics.json").exists()
                for row in rows_for(model, tuple(f"cpu-ft/{prefix}{r}" for r in ("K4", "K0", "K4-s4"))
                                    + ("cpu-ft/baseline",), extra=False)]
    if variants:
        print("\nDSSM training variants after the same extra CPU iterations as the baseline "
              "(VARIANT=... scripts/experiments/cpu_finetune.sh):\n")
        table(VARIANT_HEADER, variants)
    seeds = seed_rows()
    if seeds:
        print("\nDSSM K = 4, Markov noise seeds 0, 1, ...:\n")
        table(["model", "samples", "structure", "seeds", "mean Dice per seed", "range of the mean",
               "largest range of one case"], seeds)


if __name__ == "__main__":
    main()
