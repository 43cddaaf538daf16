#!/usr/bin/env bash
# The CPU training campaign (scripts/campaign.py says how it works): hours to days of training in the background.
# Its developers run, first thing in every working session:
#   bash scripts/campaign.sh start
# then: status | pause | resume | stop. The queue is scripts/campaign_queue.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/dssm ] || bash scripts/setup.sh >/dev/null
exec .venv/bin/python scripts/campaign.py "${@:-status}"
