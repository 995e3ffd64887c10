#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check megatron_pause tools tests benchmarks
.venv/bin/ruff format --check megatron_pause tools tests benchmarks
.venv/bin/python -m pytest -q "$@"
