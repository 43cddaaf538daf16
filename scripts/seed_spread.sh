#!/usr/bin/env bash
# How much DSSM's Dice depends on the Markov chain's noise: evaluate a model at its default K with seeds
# 1..N (seed 0 is results/<model>/K4) and write results/<model>/K4-seed<S>/. `python scripts/results_table.py`
# prints the spread. Usage: bash scripts/seed_spread.sh MODEL [N]   (default N = 4)
set -euo pipefail
cd "$(dirname "$0")/.."
DSSM=${DSSM:-.venv/bin/dssm}
declare -A DATA=([heart-cine-mri]=acdc [left-atrium-lge-mri]=la2018 [lungs-cxr]=cxr_lung
                 [skin-lesion-dermoscopy]=isic2018+ph2)
m=$1; n=${2:-4}
for s in $(seq 1 "$n"); do
  $DSSM evaluate "${DATA[$m]}" --model "$m" --seed "$s" -o "results/$m/K4-seed$s"
done
