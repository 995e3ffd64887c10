#!/usr/bin/env bash
# Create .venv and install megatron_pause with its CPU dependencies.
# Idempotent: re-running only installs what is missing. On GPU clusters use
# the Dockerfile (NVIDIA PyTorch container) instead.
#
# megatron-core 0.17+ needs Python >= 3.12. The interpreter is, in order:
# $PYTHON if set, python3.12 (or a newer python3.1x) on the PATH, pyenv's 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  if [ -n "${PYTHON:-}" ]; then
    echo "$PYTHON"
    return
  fi
  local candidate
  for candidate in python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$candidate"
      return
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    local root version
    root=$(pyenv root)
    version=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.[0-9]+)?$' | sort -V | tail -n 1 || true)
    if [ -n "$version" ] && [ -x "$root/versions/$version/bin/python3" ]; then
      echo "$root/versions/$version/bin/python3"
      return
    fi
  fi
}

if [ ! -x .venv/bin/python ]; then
  PY=$(find_python)
  if [ -z "$PY" ]; then
    echo "setup_env.sh: no Python >= 3.12 found (megatron-core 0.19 needs it)." >&2
    echo "  Install one (e.g. 'pyenv install 3.12'), or point PYTHON at it: PYTHON=/path/to/python3.12 bash $0" >&2
    exit 1
  fi
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
    echo "setup_env.sh: $PY is Python $("$PY" -c 'import platform; print(platform.python_version())'); megatron-core 0.19 needs >= 3.12" >&2
    exit 1
  fi
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
  echo "setup_env.sh: .venv was made with Python < 3.12; remove it (rm -rf .venv) and run again" >&2
  exit 1
fi
# constraints/cpu.txt pins torch (see its comment: on cp312 the reachable 2.13.0 wheel is the
# CUDA build, which runs on the CPU); pyproject.toml itself leaves torch free for GPU users.
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -c constraints/cpu.txt -e ".[dev,hf]"
