#!/usr/bin/env bash
# The main job: set up, then segment the bundled sample MRI with the bundled heart model.
# Writes out/demo/acdc-patient011-ED.nii.gz (the labelmap), ..._overlay.png and timings.json, replacing those of
# an earlier demo run (--overwrite: out/demo is the demo's own folder).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/dssm segment --model heart-cine-mri --overlay --overwrite --timings out/demo/timings.json -o out/demo \
  DSSMSegment/Resources/SampleData/acdc-patient011-ED.nii.gz
echo "mask: out/demo/acdc-patient011-ED.nii.gz  overlay: out/demo/acdc-patient011-ED_overlay.png  timings: out/demo/timings.json"
