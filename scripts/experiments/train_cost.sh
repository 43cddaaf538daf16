#!/usr/bin/env bash
# Makes results/train-cost/cpu.md: the seconds per training sample in the README's "How far DSSM gets".
#
# For each recipe: ITERATIONS iterations (batch BATCH) of stage 1 (the discriminative baseline, trained from
# scratch), of stage 2 (the two-stage DSSM's generative half on the frozen bundled baseline,
# --refiner residual), and of the end-to-end DSSM the bundled models are (for comparison), on the CPU with
# THREADS threads; the speed is the training loop's own count (log.csv, samples_per_second: forward, backward and
# optimiser step, augmentation included; validation not), with dssm train's defaults (channels-last, not
# compiled). Run it with nothing else on the machine. Caches are built first if missing (cache/RECIPE.npz).
#   bash scripts/experiments/train_cost.sh [RECIPE ...]   (default: all five; the table lists every recipe measured)
set -euo pipefail
cd "$(dirname "$0")/../.."
DSSM=${DSSM:-.venv/bin/dssm}
ITERATIONS=${ITERATIONS:-8}; BATCH=${BATCH:-16}; THREADS=${THREADS:-2}
recipes=("$@"); [ ${#recipes[@]} -gt 0 ] || recipes=(heart-cine-mri left-atrium-lge-mri lungs-cxr skin-lesion-dermoscopy prostate-t2-mri)
all=(heart-cine-mri left-atrium-lge-mri lungs-cxr skin-lesion-dermoscopy prostate-t2-mri)
work=bench/train-cost; mkdir -p "$work" results/train-cost
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
for recipe in "${recipes[@]}"; do
  [ -f "cache/$recipe.npz" ] || $DSSM cache --recipe "$recipe"
  rm -rf "$work/$recipe"-*  # this recipe's earlier runs (the others' stay, for the table)
  common=(--recipe "$recipe" --cache "cache/$recipe.npz" --iterations "$ITERATIONS" --batch-size "$BATCH"
          --val-every 1 --device cpu)
  $DSSM train "${common[@]}" --baseline --out "$work/$recipe-stage1" >"$work/$recipe-stage1.out" 2>&1
  $DSSM train "${common[@]}" --refiner residual --init-semantic "Baselines/$recipe-baseline" \
    --out "$work/$recipe-stage2" >"$work/$recipe-stage2.out" 2>&1
  $DSSM train "${common[@]}" --out "$work/$recipe-end-to-end" >"$work/$recipe-end-to-end.out" 2>&1
done
.venv/bin/python - "$work" "$THREADS" "$BATCH" "${all[@]}" <<'PY' | tee results/train-cost/cpu.md
import csv, os, sys
work, threads, batch, recipes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
# every recipe measured so far (a run of the script for some recipes keeps the others' runs)
recipes = [r for r in recipes if all(os.path.exists(f"{work}/{r}-{p}/log.csv") for p in ("stage1", "stage2", "end-to-end"))]
def speed(run):
    rows = list(csv.DictReader(open(f"{work}/{run}/log.csv")))
    return float(rows[-1]["samples_per_second"])
print(f"Training speed on this CPU ({threads} threads, batch {batch}; bash scripts/experiments/train_cost.sh)\n")
print("| recipe | stage 1: baseline, s/sample | stage 2: two-stage DSSM on the frozen baseline, s/sample | "
      "stage 2 / stage 1 | end-to-end DSSM (the bundled models' training), s/sample |")
print("|---|---|---|---|---|")
for r in recipes:
    s1, s2, e2e = (1 / speed(f"{r}-{part}") for part in ("stage1", "stage2", "end-to-end"))
    print(f"| {r} | {s1:.3f} | {s2:.3f} | {s2 / s1:.2f} | {e2e:.3f} |")
PY
