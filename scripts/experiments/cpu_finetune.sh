#!/usr/bin/env bash
# Makes results/MODEL/cpu-ft/: docs/models.md's tables "Equal extra training on the CPU" and "Two changes tried".
#
# Equal extra training for DSSM and its discriminative baseline, on the CPU: both bundles of MODEL go on
# training ITERATIONS more iterations (batch 32) with the same learning rate (warm-up, cosine decay), seed and
# validation split (a fine-tune keeps its source bundle's split), then each is evaluated on that split at native
# resolution, through the `dssm segment` path. Resumes from runs/cpu/MODEL-KIND/checkpoint.pt.
# Usage: bash scripts/experiments/cpu_finetune.sh MODEL [ITERATIONS]      e.g. left-atrium-lge-mri 800 (about 70 min, 2 cores)
# Results: results/MODEL/cpu-ft/{K4,K0,K4-s4,baseline}/metrics.{csv,json}; the bundles in runs/cpu/.
#
# VARIANT=semantic or VARIANT=likelihood: DSSM only (about 45-50 min for 800 iterations, 2 cores), against the
# baseline's run above; results in results/MODEL/cpu-ft/VARIANT-{K4,K0,K4-s4}, the bundle in
# runs/cpu/MODEL-dssm-VARIANT/.
#   semantic:   its semantic module and pixel classifier from the bundled baseline (--init-semantic), the
#               generative part from the bundled DSSM: the baseline's starting network and extra iterations,
#               with the generative part added.
#   likelihood: from the bundled DSSM, with an extra loss on the Bayesian head's likelihood alone
#               (--likelihood-loss 1): the plain DSSM run above plus that one term.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/common.sh
model=${1:?usage: cpu_finetune.sh MODEL [ITERATIONS]}
iterations=${2:-800}
LR=${LR:-2e-4}
VARIANT=${VARIANT:-}
cache=cache/$model.npz
[ -f "$cache" ] || $DSSM cache --recipe "$model" --out "$cache"   # once, before the runs share it
data=$(model_data "$model")
common=(--recipe "$model" --cache "$cache" --iterations "$iterations" --lr "$LR" --seed 3 --device cpu --val-every 0.25)
dssm_init=(--init "DSSMSegment/Resources/Models/$model")
out=results/$model/cpu-ft
case $VARIANT in
  semantic)   extra=(--init-semantic "Baselines/$model-baseline") ;;
  likelihood) extra=(--likelihood-loss 1) ;;
  "")         extra=() ;;
  *) echo "unknown VARIANT '$VARIANT' (semantic, likelihood or none)" >&2; exit 2 ;;
esac
run=runs/cpu/$model-dssm${VARIANT:+-$VARIANT}
if [ -n "$VARIANT" ]; then
  OMP_NUM_THREADS=2 $DSSM train "${common[@]}" "${dssm_init[@]}" "${extra[@]}" --out "$run"
else
  # both runs side by side on the 2 cores: DSSM with 2 threads, the baseline with 1 (a DSSM iteration costs
  # about twice a baseline's, so they end at similar times); each failed run is reported
  OMP_NUM_THREADS=2 $DSSM train "${common[@]}" "${dssm_init[@]}" --out "$run" &
  dssm_pid=$!
  OMP_NUM_THREADS=1 $DSSM train "${common[@]}" --init "Baselines/$model-baseline" --baseline \
    --out "runs/cpu/$model-baseline" &
  baseline_pid=$!
  wait "$dssm_pid" || { echo "DSSM training failed: see $run" >&2; exit 1; }
  wait "$baseline_pid" || { echo "baseline training failed: see runs/cpu/$model-baseline" >&2; exit 1; }
  $DSSM evaluate "$data" --model "runs/cpu/$model-baseline/bundle/$model-baseline" -o "$out/baseline" --overwrite
fi
prefix=${VARIANT:+$VARIANT-}
tuned=$run/bundle/$model
$DSSM evaluate "$data" --model "$tuned" -o "$out/${prefix}K4" --overwrite
$DSSM evaluate "$data" --model "$tuned" --steps 0 -o "$out/${prefix}K0" --overwrite
$DSSM evaluate "$data" --model "$tuned" --samples 4 -o "$out/${prefix}K4-s4" --overwrite
