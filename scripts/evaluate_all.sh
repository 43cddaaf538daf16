#!/usr/bin/env bash
# Reproduce every accuracy number in the README: each bundled DSSM model at its default K and at K = 0,
# and its discriminative baseline, on the model's own validation split, through the same path as
# `dssm segment` (native resolution). Results go to results/<model>/K<k>/ and into each model.json.
# Usage: bash scripts/evaluate_all.sh [MODEL ...]    (default: all five)
set -euo pipefail
cd "$(dirname "$0")/.."
DSSM=${DSSM:-.venv/bin/dssm}
declare -A DATA=([heart-cine-mri]=acdc [left-atrium-lge-mri]=la2018 [lungs-cxr]=cxr_lung
                 [skin-lesion-dermoscopy]=isic2018+ph2)
models=("$@"); [ ${#models[@]} -gt 0 ] || models=(heart-cine-mri left-atrium-lge-mri lungs-cxr skin-lesion-dermoscopy)
for m in "${models[@]}"; do
  d=${DATA[$m]}
  $DSSM evaluate "$d" --model "$m" -o "results/$m/K4" --update-bundle
  $DSSM evaluate "$d" --model "$m" --steps 0 -o "results/$m/K0" --update-bundle
  $DSSM evaluate "$d" --model "$m-baseline" -o "results/$m/baseline" --update-bundle
done
