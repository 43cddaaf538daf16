#!/usr/bin/env bash
# The two-stage DSSM on the prostate, validated as the prostate always is here: leave one case out (4 real cases).
# Per held-out CASE, on the CPU: stage 1, a baseline trained without CASE (as scripts/prostate_loocv.sh trains one,
# 900 iterations), then stage 2 on it, frozen (--refiner residual, as docs/models.md's two-stage runs: batch 32,
# learning rate 1e-3, ITERATIONS, default 900), then dssm evaluate on CASE at K = 0 (the fold's baseline) and 4.
# Every run checkpoints every 5 minutes and resumes where it stopped: run the same command again after a stop
# (what is finished, a bundle or an evaluation, is skipped).
# At the rates of results/train-cost/cpu.md (2 threads), a fold's baseline takes about 28 minutes and its stage 2
# about 37, so all four folds take about 4.4 hours.
# Usage: bash scripts/experiments/prostate_two_stage_loocv.sh [CASE ...]      (default: 001 002 020 021)
# Results: results/prostate-t2-mri/two-stage-loocv/CASE-K{0,4}/metrics.json; the runs in runs/stage2-loocv/.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
cases=("$@"); [ ${#cases[@]} -gt 0 ] || cases=(001 002 020 021)
cache=cache/prostate-t2-mri.npz
[ -f "$cache" ] || $DSSM cache --recipe prostate-t2-mri --out "$cache"
common=(--recipe prostate-t2-mri --cache "$cache" --device cpu --checkpoint-every 5)
for case in "${cases[@]}"; do
  run=runs/stage2-loocv/$case
  [ -d "$run-baseline/bundle" ] || $DSSM train "${common[@]}" --baseline --val-patients "$case" --iterations 900 \
    --out "$run-baseline"
  [ -d "$run/bundle" ] || $DSSM train "${common[@]}" --refiner residual \
    --init-semantic "$run-baseline/bundle/prostate-t2-mri-baseline" --val-patients "$case" \
    --iterations "${ITERATIONS:-900}" --batch-size 32 --lr 1e-3 --val-every 0.25 --out "$run"
  for k in 0 4; do
    out=results/prostate-t2-mri/two-stage-loocv/$case-K$k
    [ -f "$out/metrics.json" ] || $DSSM evaluate prostate158 --model "$run/bundle/prostate-t2-mri" --steps "$k" -o "$out" --overwrite
  done
done
