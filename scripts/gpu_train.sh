#!/usr/bin/env bash
# Train several recipes at once on one lent GPU, DSSM and baseline side by side, from the carried cache.
# Usage (on the GPU host, from the repository root):
#   bash scripts/gpu_train.sh MINUTES RECIPE[:EXTRA-ARGS] ...
# Each run writes runs/gpu/<recipe>[-baseline]/ (log.csv, curves.png, bundle/); the bundles and logs are
# packed per recipe and arguments into $OUT/<tag>.tar.gz (the device returns at most 8 files).
#
# Or every stage of the two-stage DSSM (issue 12), all five recipes at once, in calls of at most 9 minutes:
#   bash scripts/gpu_train.sh stages [RECIPE ...]
# Per recipe: stage 1, the discriminative baseline (as many iterations as the bundled baseline had), then stage 2,
# the generative half on that frozen baseline (--refiner residual --stage1-dropout 0.2, as many iterations
# again; STAGE1_ITERATIONS / STAGE2_ITERATIONS override). Each call stops its runs, checkpointed, after
# CALL_MINUTES (default 5: two calls and the machine's start fit a 15-minute device budget) and packs the bundles
# and logs so far into $OUT/stages-<recipe>.tar.gz; the same command again resumes every run where it stopped
# (runs/gpu-stages/ stays on the device while it is warm: make the second call right after the first). A recipe
# trains from cache/<recipe>.npz or cache/*/<recipe>.npz, and is skipped with a message when neither was carried.
# The five caches do not fit one call's 64 MiB working tree, so the calls carry them in two halves (WebP caches,
# docs/training.md "On a lent GPU"): call 1 starts the first half, call 2 resumes it and starts the second.
# Not yet tried on a GPU.
#
# Here, where the data is, first: bash scripts/gpu_train.sh caches
# builds those halves, cache/gpu-call1/ (skin, lungs, prostate) and cache/gpu-call2/ (heart, left atrium), and
# checks that each fits a call beside the repository as it is now (run it again right before the calls: it only
# checks then); then, with the device tool:
#   run(command="bash scripts/gpu_train.sh stages", carry=["cache/gpu-call1"], timeout_s=420)
#   run(command="bash scripts/gpu_train.sh stages", carry=["cache/gpu-call2"], timeout_s=420)   # at once
set -u
if [ "${1:-}" = caches ]; then
  DSSM=${DSSM:-.venv/bin/dssm}
  # a cache already built is kept (REBUILD=1 builds it again), so that this is also the quick check before the calls
  build() { [ -z "${REBUILD:-}" ] && [ -f "cache/gpu-$1/$2.npz" ] && return
            $DSSM cache --recipe "$2" --encoding "$3" --out "cache/gpu-$1/$2.npz" || exit 1; }
  build call1 skin-lesion-dermoscopy webp:70; build call1 lungs-cxr webp; build call1 prostate-t2-mri webp
  build call2 heart-cine-mri webp:70; build call2 left-atrium-lge-mri webp
  # what travels in a call: tracked and untracked-not-ignored files, plus the carried half (at most 64 MiB)
  tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 stat -c %s | awk '{s+=$1} END {print s}')
  status=0
  for half in cache/gpu-call1 cache/gpu-call2; do
    size=$(( tree + $(du -sb "$half" | cut -f1) ))
    awk -v s="$size" -v h="$half" 'BEGIN { printf "%s: the call sends %.1f MiB of 64\n", h, s / 1048576 }'
    [ "$size" -le $(( 64 * 1048576 )) ] || { echo "$half: over the device's 64 MiB" >&2; status=1; }
  done
  exit $status
fi
export PYTHONPATH="$PWD/DSSMSegment${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
out=${OUT:-/tmp/out}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

if [ "${1:-}" = stages ]; then
  shift
  recipes=("$@"); [ ${#recipes[@]} -gt 0 ] || recipes=(heart-cine-mri left-atrium-lge-mri lungs-cxr skin-lesion-dermoscopy prostate-t2-mri)
  deadline=$(( $(date +%s) + ${CALL_MINUTES:-5} * 60 ))
  left() { awk -v d="$deadline" -v n="$(date +%s)" 'BEGIN { printf "%.2f", (d - n) / 60 }'; }  # minutes this call has left
  time_left() { awk -v m="$(left)" 'BEGIN { exit !(m >= 1) }'; }  # a stage is worth starting with a minute left
  bundled_iterations() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['training']['iterations'])" \
                           "Baselines/$1-baseline/model.json"; }
  cache_of() { ls cache/"$1".npz cache/*/"$1".npz 2>/dev/null | head -1; }
  pids=()
  for recipe in "${recipes[@]}"; do
    if [ -z "$(cache_of "$recipe")" ]; then
      echo "$recipe: skipped, no cache/$recipe.npz or cache/*/$recipe.npz (build it with dssm cache --recipe $recipe and carry it)"
      continue
    fi
    (
      run=runs/gpu-stages/$recipe; mkdir -p "$run"
      n1=${STAGE1_ITERATIONS:-$(bundled_iterations "$recipe")}; n2=${STAGE2_ITERATIONS:-$n1}
      common=(--recipe "$recipe" --cache "$(cache_of "$recipe")" --checkpoint-every 2)
      [ -d "$run/stage1/bundle" ] || ! time_left || python3 -m DSSMSegmentLib.cli train "${common[@]}" --baseline \
        --iterations "$n1" --stop-after "$(left)" --out "$run/stage1" >>"$run/stage1.out" 2>&1
      base="$run/stage1/bundle/$recipe-baseline"
      if [ -d "$base" ] && [ ! -d "$run/stage2/bundle" ] && time_left; then
        python3 -m DSSMSegmentLib.cli train "${common[@]}" --refiner residual --init-semantic "$base" \
          --stage1-dropout "${STAGE1_DROPOUT:-0.2}" --iterations "$n2" --stop-after "$(left)" \
          --out "$run/stage2" >>"$run/stage2.out" 2>&1
      fi
      tar czf "$out/stages-$recipe.tar.gz" --exclude=checkpoint.pt -C runs/gpu-stages "$recipe"
    ) &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  for recipe in "${recipes[@]}"; do
    [ -n "$(cache_of "$recipe")" ] || continue
    for stage in stage1 stage2; do
      log=runs/gpu-stages/$recipe/$stage/log.csv
      state="not started"; [ -f "$log" ] && state="iteration $(tail -1 "$log" | cut -d, -f1)"
      [ -d "runs/gpu-stages/$recipe/$stage/bundle" ] && state="done ($state)"
      echo "$recipe $stage: $state"
    done
  done
  ls -la "$out"
  exit 0
fi

minutes=$1; shift
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
