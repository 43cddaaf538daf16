#!/usr/bin/env bash
# Leave-one-case-out validation of the prostate recipe (only 4 real cases exist here).
# Training each fold needs a GPU for the budget below (about 4 min per fold on an H100 with several runs
# sharing it); pass RUNS=folder-with-trained-folds to only evaluate.
#   train:    dssm train --recipe prostate-t2-mri [--baseline] --val-patients CASE --iterations 900 --out runs/loocv/CASE-KIND
#   evaluate: this script (ROWS="plain tta K0 s4" limits the evaluations; K0 and s4 are DSSM's)
set -euo pipefail
cd "$(dirname "$0")/.."
DSSM=${DSSM:-.venv/bin/dssm}
RUNS=${RUNS:-runs/loocv}
ROWS=${ROWS:-"plain tta K0 s4"}
for case in 001 002 020 021; do
  for kind in dssm baseline; do
    run="$RUNS/$case-$kind"
    if [ ! -d "$run/bundle" ]; then
      flag=""; [ $kind = baseline ] && flag="--baseline"
      $DSSM train --recipe prostate-t2-mri $flag --val-patients "$case" --iterations 900 --out "$run"
    fi
    bundle=$(ls -d "$run"/bundle/*/)
    out="results/prostate-t2-mri/loocv/$case"
    for row in $ROWS; do
      case $row in
        plain)  $DSSM evaluate prostate158 --model "$bundle" -o "$out-$kind" --overwrite ;;
        tta)    $DSSM evaluate prostate158 --model "$bundle" --tta -o "$out-$kind-tta" --overwrite ;;
        K0)     [ $kind = baseline ] || $DSSM evaluate prostate158 --model "$bundle" --steps 0 -o "$out-dssm-K0" --overwrite ;;
        s4)     [ $kind = baseline ] || $DSSM evaluate prostate158 --model "$bundle" --samples 4 -o "$out-dssm-s4" --overwrite ;;
        *) echo "unknown row $row" >&2; exit 2 ;;
      esac
    done
  done
done
# Record the pooled leave-one-case-out Dice in the bundled models (dssm models and the Slicer panel show it).
for kind in dssm baseline; do
  model=prostate-t2-mri; [ $kind = baseline ] && model=prostate-t2-mri-baseline
  .venv/bin/python - "$model" results/prostate-t2-mri/loocv/*-$kind/metrics.json <<'PY'
import sys
from DSSMSegmentLib.evaluate import record_cross_validation
record_cross_validation(sys.argv[1], sys.argv[2:], "leave-one-case-out", "bash scripts/prostate_loocv.sh")
PY
done
