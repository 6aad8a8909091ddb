#!/usr/bin/env bash
# Build the one virtual environment pyacemaker needs (.venv), in the order that matters.
# The pins live in settings.ini only (requirements and the *_requirements keys); the order is
# ../shared/README.md §1. Re-running on an installed tree is a no-op (stamp).
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
setting() { "$PY" -c "import configparser, sys; c = configparser.ConfigParser(delimiters=['=']); c.read('settings.ini'); print(c['DEFAULT'][sys.argv[1]])" "$1"; }
# pip, without the harmless "Location ... is ignored" notes of this machine's pip configuration
pip_install() {
  "$VENV/bin/pip" --disable-pip-version-check install -q "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }
  return "${PIPESTATUS[0]}"
}
# 1. torch CPU wheel FIRST: an unpinned torch pulls a multi-GB CUDA build.
pip_install $(setting torch_requirement)
# 2. pyacemaker (editable, so notebooks/tests/CLI use the exported code) with its requirements (mace, python-ace, ...)
#    and the extras: fit (TensorFlow for pacemaker), distributed (dask), dev (nbdev toolchain, jupyterlab, pytest).
pip_install -e ".[fit,distributed,dev]"
# 3. --no-deps: their metadata asks for tensorflow[and-cuda] (~13 CUDA wheels).
pip_install --no-deps $(setting fit_nodeps_requirements)
echo "$RECIPE_HASH" > "$STAMP"
echo "[install] done: $("$VENV/bin/python" -c 'import torch, mace, pyace, tensorflow as tf; print("torch", torch.__version__, "| tf", tf.__version__)' 2>/dev/null)"
