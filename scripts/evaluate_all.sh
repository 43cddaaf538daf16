#!/usr/bin/env bash
# Reproduce the accuracy tables of docs/models.md (and the README's model table): each bundled DSSM model at
# its default K and at K = 0, and its discriminative baseline, each also with test-time flips (--tta), and DSSM
# with 4 Markov samples per slice (--samples 4), on the model's own validation split, through the same path as
# `dssm segment` (native resolution). Results go to results/<model>/<row>/ and into each model.json; then
# `python scripts/experiments/results_table.py` prints the tables.
# Usage: bash scripts/evaluate_all.sh [MODEL ...]    (default: all four with a validation split;
#        prostate: scripts/prostate_loocv.sh).  ROWS="K4 K4-tta" limits the rows.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
ROWS=${ROWS:-"K4 K0 baseline K4-tta baseline-tta K4-s4"}   # also: K4-tta-s4 (TTA and 4 samples)
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(heart-cine-mri left-atrium-lge-mri lungs-cxr skin-lesion-dermoscopy)
for m in "${models[@]}"; do
  d=$(model_data "$m")
  for row in $ROWS; do
    case $row in
      K4)           $DSSM evaluate "$d" --model "$m" -o "results/$m/K4" --overwrite --update-bundle ;;
      K0)           $DSSM evaluate "$d" --model "$m" --steps 0 -o "results/$m/K0" --overwrite --update-bundle ;;
      baseline)     $DSSM evaluate "$d" --model "$m-baseline" -o "results/$m/baseline" --overwrite --update-bundle ;;
      K4-tta)       $DSSM evaluate "$d" --model "$m" --tta -o "results/$m/K4-tta" --overwrite --update-bundle ;;
      baseline-tta) $DSSM evaluate "$d" --model "$m-baseline" --tta -o "results/$m/baseline-tta" --overwrite --update-bundle ;;
      K4-s4)        $DSSM evaluate "$d" --model "$m" --samples 4 -o "results/$m/K4-s4" --overwrite --update-bundle ;;
      K4-tta-s4)    $DSSM evaluate "$d" --model "$m" --tta --samples 4 -o "results/$m/K4-tta-s4" --overwrite --update-bundle ;;
      *) echo "unknown row $row" >&2; exit 2 ;;
    esac
  done
done
