#!/usr/bin/env bash
# Create .venv and install megatron_pause with its CPU dependencies.
# Idempotent: re-running only installs what is missing. On GPU clusters use
# the Dockerfile (NVIDIA PyTorch container) instead: this pins CPU torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# constraints/cpu.txt pins torch to the CPU wheel (an unpinned torch pulls a
# multi-GB CUDA build); pyproject.toml itself leaves torch free for GPU users.
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -c constraints/cpu.txt -e ".[dev,hf]"
