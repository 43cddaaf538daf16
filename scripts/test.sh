#!/usr/bin/env bash
# Set up (with the test extras) and run the whole test suite. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export QT_QPA_PLATFORM=offscreen
# A training campaign running here (scripts/campaign.sh) is paused while the tests run and resumed after, so that
# neither slows the other; a campaign paused before is left paused.
if .venv/bin/python scripts/campaign.py pause 2>/dev/null | grep -q "^campaign paused"; then
  trap '.venv/bin/python scripts/campaign.py resume >/dev/null' EXIT
fi
.venv/bin/python -m pytest -q -p no:cacheprovider Testing "$@"
