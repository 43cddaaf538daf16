#!/usr/bin/env bash
# Equal extra training for DSSM and its discriminative baseline, on the CPU: both bundles of MODEL go on
# training ITERATIONS more iterations (batch 32) with the same learning rate (warm-up, cosine decay), seed and
# validation split (a fine-tune keeps its source bundle's split), then each is evaluated on that split at native
# resolution, through the `dssm segment` path. Resumes from runs/cpu/MODEL-KIND/checkpoint.pt.
# Usage: bash scripts/cpu_finetune.sh MODEL [ITERATIONS]      e.g. left-atrium-lge-mri 800 (about 70 min, 2 cores)
# Results: results/MODEL/cpu-ft/{K4,K0,K4-s4,baseline}/metrics.{csv,json}; the bundles in runs/cpu/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
model=${1:?usage: cpu_finetune.sh MODEL [ITERATIONS]}
iterations=${2:-800}
LR=${LR:-2e-4}
cache=cache/$model.npz
[ -f "$cache" ] || $DSSM cache --recipe "$model" --out "$cache"   # once, before the two runs share it
data=$(model_data "$model")
# both runs side by side on the 2 cores: DSSM with 2 threads, the baseline with 1 (a DSSM iteration costs about
# twice a baseline's, so they end at similar times)
OMP_NUM_THREADS=2 $DSSM train --recipe "$model" --init "DSSMSegment/Resources/Models/$model" --cache "$cache" \
  --iterations "$iterations" --lr "$LR" --seed 3 --device cpu --val-every 0.25 --out "runs/cpu/$model-dssm" &
OMP_NUM_THREADS=1 $DSSM train --recipe "$model" --baseline --init "Baselines/$model-baseline" --cache "$cache" \
  --iterations "$iterations" --lr "$LR" --seed 3 --device cpu --val-every 0.25 --out "runs/cpu/$model-baseline" &
wait
out=results/$model/cpu-ft
tuned=runs/cpu/$model-dssm/bundle/$model
$DSSM evaluate "$data" --model "$tuned" -o "$out/K4"
$DSSM evaluate "$data" --model "$tuned" --steps 0 -o "$out/K0"
$DSSM evaluate "$data" --model "$tuned" --samples 4 -o "$out/K4-s4"
$DSSM evaluate "$data" --model "runs/cpu/$model-baseline/bundle/$model-baseline" -o "$out/baseline"
