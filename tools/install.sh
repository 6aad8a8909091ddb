#!/usr/bin/env bash
# Build the one virtual environment pyacemaker needs (.venv), in the order that matters.
# Verified recipe: ../shared/README.md §1. Re-running on an installed tree is a no-op (stamp).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.pyacemaker-installed"
RECIPE_HASH=$(cat tools/install.sh settings.ini setup.py 2>/dev/null | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$RECIPE_HASH" ]; then
  exit 0
fi
echo "[install] building $VENV (about 3 min, about 3 GB) ..."
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip, without the harmless "Location ... is ignored" notes of this machine's pip configuration
pip_install() {
  "$VENV/bin/pip" --disable-pip-version-check install -q "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }
  return "${PIPESTATUS[0]}"
}
# 1. torch CPU wheel FIRST: an unpinned torch pulls a multi-GB CUDA build.
pip_install "torch==2.13.0"
# 2. mace, pacemaker, TensorFlow (CPU), the nbdev 2 toolchain, and dask (optional: distributed labeling).
pip_install mace-torch "python-ace==0.4.0rc1" "tensorflow-cpu==2.20.0" \
    "numpy>=2.0,<2.4" "pandas>=2,<3" \
    "nbdev==2.4.14" "fastcore>=1.12.3,<2" "execnb>=0.1.12,<0.2" \
    "pydantic>=2,<3" jupyterlab matplotlib pyyaml pytest tqdm "dask[distributed]"
# 3. --no-deps: their metadata asks for tensorflow[and-cuda] (~13 CUDA wheels).
pip_install --no-deps "tensorpotential==0.6.2.1" "tf-keras==2.20.1"
# 4. the package itself, editable, so notebooks/tests/CLI use the exported code.
pip_install --no-deps -e .
echo "$RECIPE_HASH" > "$STAMP"
echo "[install] done: $("$VENV/bin/python" -c 'import torch, mace, pyace, tensorflow as tf; print("torch", torch.__version__, "| tf", tf.__version__)' 2>/dev/null)"
