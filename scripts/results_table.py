"""Print the README's accuracy comparison (DSSM at default K and K = 0, baseline, paper) from results/.

The numbers are those written by ``scripts/evaluate_all.sh`` and ``scripts/prostate_loocv.sh``
(``dssm evaluate ... -o results/...``). Usage: .venv/bin/python scripts/results_table.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1] / "results"

PAPER = {  # Liu et al. 2025, abstract (shared/docs/paper-abstract.md)
    ("heart-cine-mri", "left ventricle cavity"): 0.9451,
    ("left-atrium-lge-mri", "left atrium"): 0.8871,
    ("lungs-cxr", "lungs"): 0.9647,
    ("prostate-t2-mri", "whole gland"): 0.8731,
    ("skin-lesion-dermoscopy", "isic2018"): 0.8869,
    ("skin-lesion-dermoscopy", "ph2"): 0.9421,
}


def fmt(stat: dict, digits: int = 3) -> str:
    if stat is None or stat["mean"] is None or (isinstance(stat["mean"], float) and math.isnan(stat["mean"])):
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def rows_for(model: str):
    k4, k0, base = (load(ROOT / model / sub / "metrics.json") for sub in ("K4", "K0", "baseline"))
    if not k4:
        return []
    rows = []
    groups = [(None, k4["summary"])]
    if k4.get("by_dataset"):
        groups = [(name, s) for name, s in k4["by_dataset"].items()]
    for dataset, summary in groups:
        for structure in summary:
            def pick(report):
                if not report:
                    return None
                s = report["by_dataset"][dataset] if dataset else report["summary"]
                return s.get(structure)
            paper = PAPER.get((model, dataset or structure))
            a, b, c = pick(k4), pick(k0), pick(base)
            rows.append([model + (f" ({dataset})" if dataset else ""), structure, str(k4["n_cases"] if not dataset else a["dice"]["n"]),
                         fmt(a["dice"]), fmt(b["dice"]) if b else "n/a", fmt(c["dice"]) if c else "n/a",
                         f"{paper:.4f}" if paper else "",
                         fmt(a["hd95_mm"], 2), fmt(c["hd95_mm"], 2) if c else "n/a"])
    return rows


def loocv_rows():
    folder = ROOT / "prostate-t2-mri" / "loocv"
    if not folder.is_dir():
        return []
    per = {}
    for kind in ("dssm", "dssm-K0", "baseline"):
        vals = {}
        for case in ("001", "002", "020", "021"):
            rep = load(folder / f"{case}-{kind}" / "metrics.json")
            if rep:
                for s, v in rep["summary"].items():
                    vals.setdefault(s, []).append(v["dice"]["mean"])
                    vals.setdefault(s + "/hd95", []).append(v["hd95_mm"]["mean"])
        per[kind] = vals
    rows = []
    for s in [k for k in per.get("dssm", {}) if not k.endswith("/hd95")]:
        def f(kind, key=s, d=3):
            v = per.get(kind, {}).get(key)
            return f"{np.mean(v):.{d}f} ± {np.std(v):.{d}f}" if v else "n/a"
        rows.append(["prostate-t2-mri (LOOCV, 4 folds)", s, str(len(per["dssm"][s])), f("dssm"), f("dssm-K0"), f("baseline"),
                     f"{PAPER[('prostate-t2-mri', 'whole gland')]:.4f}" if s == "whole gland" else "",
                     f("dssm", s + "/hd95", 2), f("baseline", s + "/hd95", 2)])
    return rows


def main() -> None:
    header = ["model", "structure", "cases", "DSSM Dice (K=4)", "DSSM Dice (K=0)", "baseline Dice", "paper Dice",
              "DSSM HD95 mm", "baseline HD95 mm"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for model in ("heart-cine-mri", "left-atrium-lge-mri", "lungs-cxr", "skin-lesion-dermoscopy"):
        for row in rows_for(model):
            print("| " + " | ".join(row) + " |")
    for row in loocv_rows():
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
