#!/usr/bin/env bash
# Create .venv and install DSSMSegment's engine with everything it needs, from this repository's own files.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh [--test]
#
# torch: a CPU build is pinned (TORCH_SPEC, default torch==2.13.0) so that pip never pulls a multi-GB CUDA
# wheel by surprise. On a GPU machine, install the CUDA build of torch that matches your driver into .venv
# first (see pytorch.org's install selector); setup keeps a torch that is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet $TORCH_SPEC
fi
extras=""; [ "${1:-}" = "--test" ] && extras="[test]"
.venv/bin/python -m pip install --quiet -e ".$extras"
.venv/bin/python -c "import torch, SimpleITK; print(f'DSSMSegment environment ready: torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}), SimpleITK {SimpleITK.Version_VersionString()}')"
