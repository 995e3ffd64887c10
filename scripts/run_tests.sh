#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# The C twin of the pause draw is optional at install; say which draw the tests exercise.
.venv/bin/python -c "import megatron_pause.pause as p; print('pause draw:', 'compiled kernel (and its numpy twin)' if p.kernel_in_use() else 'numpy twin only: no C compiler at install, kernel tests skip')"
.venv/bin/ruff check megatron_pause tools tests benchmarks
.venv/bin/ruff format --check megatron_pause tools tests benchmarks
.venv/bin/python -m pytest -q "$@"
