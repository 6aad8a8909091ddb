#!/usr/bin/env bash
# Fail if nbdev_clean or nbdev_export changes anything under nbs/ or pyacemaker/:
# the notebooks are the source and the exported package must already match them.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
snapshot() { find nbs pyacemaker -type f \( -name '*.ipynb' -o -name '*.py' \) -not -path '*/.ipynb_checkpoints/*' -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum; }
before=$(snapshot)
"$BIN/nbdev_clean" >/dev/null
"$BIN/nbdev_export" >/dev/null
after=$(snapshot)
if [ "$before" != "$after" ]; then
  echo "sync-check FAILED: nbdev_clean/nbdev_export changed these files (commit the cleaned notebooks and exported modules):"
  diff <(echo "$before") <(echo "$after") | grep '^[<>]' | awk '{print "  " $3}' | sort -u
  exit 1
fi
echo "sync-check: notebooks clean, exported modules in sync"
