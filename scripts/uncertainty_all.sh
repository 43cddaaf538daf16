#!/usr/bin/env bash
# Reproduce docs/uncertainty.md:
#   calibrate    the familiarity warning of each bundled DSSM model, on its TRAINING cases, into its model.json;
#   evaluate     the uncertainty maps on the validation cases: DSSM (2 Markov chains, and 3) and its baseline,
#                each plain and with --tta, into runs/uncertainty/<model>/<row>/ (masks and all), summarised in
#                results/uncertainty/<model>/<row>.json (K4, K4-3chains, baseline, each also -tta);
#   familiarity  each model's own validation images against every other model's data,
#                into results/uncertainty/familiarity.json;
# then print the tables (scripts/uncertainty_tables.py).
# Usage: bash scripts/uncertainty_all.sh [MODEL ...]     PARTS="evaluate" limits the parts.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
PARTS=${PARTS:-"calibrate evaluate familiarity"}
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(heart-cine-mri left-atrium-lge-mri lungs-cxr skin-lesion-dermoscopy)
for part in $PARTS; do
  case $part in
    calibrate)
      for m in "${models[@]}" prostate-t2-mri; do $DSSM calibrate --model "$m" --update-bundle; done ;;
    evaluate)
      for m in "${models[@]}"; do
        d=$(model_data "$m")
        $DSSM evaluate "$d" --model "$m" --uncertainty -o "runs/uncertainty/$m/K4" --overwrite
        $DSSM evaluate "$d" --model "$m" --uncertainty --uncertainty-chains 3 -o "runs/uncertainty/$m/K4-3chains" --overwrite
        $DSSM evaluate "$d" --model "$m-baseline" --uncertainty -o "runs/uncertainty/$m/baseline" --overwrite
        $DSSM evaluate "$d" --model "$m" --uncertainty --tta -o "runs/uncertainty/$m/K4-tta" --overwrite
        $DSSM evaluate "$d" --model "$m-baseline" --uncertainty --tta -o "runs/uncertainty/$m/baseline-tta" --overwrite
      done
      collect="--collect runs/uncertainty" ;;
    familiarity)
      $DSSM familiarity -o results/uncertainty/familiarity.json ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
python3 scripts/uncertainty_tables.py ${collect:-}
