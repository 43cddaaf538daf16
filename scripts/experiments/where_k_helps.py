"""Where does one evaluation beat another, case by case? (e.g. a two-stage DSSM at K = 4 against its K = 0)

Reads two ``metrics.json`` written by ``dssm evaluate -o FOLDER`` on the same cases and prints, per dataset and
structure: how many cases gain or lose more than 0.01 Dice, the median change, how many cases fail (Dice < 0.5)
in each, and how much of the change of mean Dice comes from the cases that fail in the first.

    python scripts/experiments/where_k_helps.py results/skin-lesion-dermoscopy/two-stage-cpu/K0 \\
        results/skin-lesion-dermoscopy/two-stage-cpu/K4
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

FAIL = 0.5


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    first, second = (json.loads((Path(arg) / "metrics.json").read_text(encoding="utf-8")) for arg in sys.argv[1:])
    datasets = first.get("by_dataset") or {None: first["summary"]}
    for arg, report in zip(sys.argv[1:], (first, second)):
        if report.get("by_dataset") and not report.get("cases_by_dataset"):
            sys.exit(f"{arg}/metrics.json does not say which case is from which dataset (written before dssm "
                     "evaluate recorded it): run its dssm evaluate again")
    print(f"{sys.argv[1]} -> {sys.argv[2]}\n")
    print("| dataset | structure | cases | gain > 0.01 | loss > 0.01 | median change | mean change | "
          f"failures (Dice < {FAIL}) before -> after | mean change from the failures | from the rest |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dataset, summary in datasets.items():
        members = set(first["cases_by_dataset"][dataset]) if dataset else set(first["per_case"])
        for structure in summary:
            ids = [c for c, v in first["per_case"].items() if structure in v and c in second["per_case"] and c in members]
            a = np.array([first["per_case"][c][structure]["dice"] for c in ids], dtype=float)
            b = np.array([second["per_case"][c][structure]["dice"] for c in ids], dtype=float)
            keep = ~(np.isnan(a) | np.isnan(b))
            a, b = a[keep], b[keep]
            d, fails, n = b - a, a < FAIL, len(a)
            print(f"| {dataset or '-'} | {structure} | {n} | {(d > 0.01).sum()} | {(d < -0.01).sum()} | "
                  f"{np.median(d):+.4f} | {d.mean():+.4f} | {fails.sum()} -> {(b < FAIL).sum()} | "
                  f"{d[fails].sum() / n:+.4f} | {d[~fails].sum() / n:+.4f} |")


if __name__ == "__main__":
    main()
