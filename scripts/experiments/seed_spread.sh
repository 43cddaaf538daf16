#!/usr/bin/env bash
# Makes results/MODEL/K4-seed*/ and K4-s4-seed*/: docs/models.md's table "The chain's noise".
#
# How much DSSM's Dice depends on the Markov chain's noise: evaluate a model at its default K with seeds
# 1..N (seed 0 is results/<model>/K4) and write results/<model>/K4-seed<S>/. `python scripts/experiments/results_table.py`
# prints the spread. Usage: bash scripts/experiments/seed_spread.sh MODEL [N]   (default N = 4)
# SAMPLES=4: the same with 4 Markov samples per slice (seed 0 = results/<model>/K4-s4; writes K4-s4-seed<S>/).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
m=$1; n=${2:-4}
samples=${SAMPLES:-1}
row=K4; [ "$samples" = 1 ] || row="K4-s$samples"
for s in $(seq 1 "$n"); do
  $DSSM evaluate "$(model_data "$m")" --model "$m" --samples "$samples" --seed "$s" -o "results/$m/$row-seed$s" --overwrite
done
