#!/usr/bin/env bash
# Train several recipes at once on one lent GPU, DSSM and baseline side by side, from the carried cache.
# Usage (on the GPU host, from the repository root):
#   bash scripts/gpu_train.sh MINUTES RECIPE[:EXTRA-ARGS] ...
# Each run writes runs/gpu/<recipe>[-baseline]/ (log.csv, curves.png, bundle/); the bundles and logs are
# packed per recipe and arguments into $OUT/<tag>.tar.gz (the device returns at most 8 files).
set -u
minutes=$1; shift
export PYTHONPATH="$PWD/DSSMSegment${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
out=${OUT:-/tmp/out}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
pids=()
for spec in "$@"; do
  recipe=${spec%%:*}; extra=""; [[ "$spec" == *:* ]] && extra=${spec#*:}
  tag=${recipe}${extra:+-$(echo "${extra//\{kind\}/}" | tr -c 'a-zA-Z0-9' '_' | sed 's/__*/_/g;s/_$//')}
  for kind in dssm baseline; do
    flag=""; [ $kind = baseline ] && flag="--baseline"
    args=${extra//\{kind\}/$kind}  # "{kind}" in the extra arguments becomes dssm or baseline
    run="runs/gpu/$tag-$kind"; mkdir -p "$run"
    python3 -m DSSMSegmentLib.cli train --recipe "$recipe" --cache "cache/$recipe.npz" --out "$run" \
      --minutes "$minutes" $flag $args >"$run/train.out" 2>&1 &
    pids+=($!)
  done
done
for p in "${pids[@]}"; do wait "$p"; done
for d in runs/gpu/*/; do tail -c 600 "$d/train.out" | tr '\r' '\n' | tail -3; echo "== $d"; tail -2 "$d/log.csv"; done
cd runs/gpu && for spec in "$@"; do
  recipe=${spec%%:*}; extra=""; [[ "$spec" == *:* ]] && extra=${spec#*:}
  tag=${recipe}${extra:+-$(echo "${extra//\{kind\}/}" | tr -c 'a-zA-Z0-9' '_' | sed 's/__*/_/g;s/_$//')}
  tar czf "$out/${tag:0:80}.tar.gz" --exclude=checkpoint.pt "$tag-dssm" "$tag-baseline"; done
ls -la "$out"
