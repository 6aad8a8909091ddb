#!/usr/bin/env bash
# `pyacemaker refine CONFIG` with no seeds (validation structures + largest training cells, validation every round) on a
# copy of a finished demo folder, then `validate` of the base and of ace_refined, and the before/after table of every row.
#   PYACEMAKER_DEMO=runs/demo bash bench/refine_validated.sh        (≈ 15 min on 2 cores; results in $PYACEMAKER_DEMO/bench_refine_validated)
set -euo pipefail
DEMO="$(realpath "${PYACEMAKER_DEMO:-runs/demo}")"
OUT="$DEMO/bench_refine_validated"
HERE="$(cd "$(dirname "$0")" && pwd)"
source "$HERE/../.venv/bin/activate"
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE MPLBACKEND=Agg TF_CPP_MIN_LOG_LEVEL=2
rm -rf "$OUT"; mkdir -p "$OUT/models"
cp "$DEMO"/step4_surrogate_data.xyz "$DEMO"/step5_surrogate_labeled.xyz* "$OUT"/
cp "$DEMO"/models/ace_base* "$OUT/models/"
python - "$DEMO/pipeline.yaml" "$OUT" <<'EOF'
import sys
from pathlib import Path
from pyacemaker.domain_models.config import dump_config, load_config
from pyacemaker.domain_models.config import RefineConfig
cfg = load_config(sys.argv[1]); cfg.work_dir = Path(sys.argv[2])
cfg.refine = RefineConfig()          # the loop's defaults of this version (a demo config pins those of the version that wrote it)
dump_config(cfg, Path(sys.argv[2]) / "pipeline.yaml")
EOF
cd "$OUT"
start=$(date +%s)
pyacemaker refine pipeline.yaml --quiet | tee refine.txt
echo "refine: $(( $(date +%s) - start )) s" | tee -a refine.txt
pyacemaker validate pipeline.yaml --quiet > validate_base.txt
pyacemaker validate pipeline.yaml --potential ace_refined --quiet > validate_refined.txt
python - reports/validation.json reports/validation_ace_refined.json refine/history.json <<'EOF'
import json, sys
base, refined, history = (json.load(open(p)) for p in sys.argv[1:])
print("| structure | property | teacher | base | refined | tolerance | within: base → refined |\n|---|---|---|---|---|---|---|")
for b, r in zip(base["properties"], refined["properties"]):
    f = lambda x: "-" if x is None else f"{x:.4g}"
    ok = lambda x: "yes" if x["within_tolerance"] else "NO"
    print(f"| {b['structure']} | {b['property']} | {f(b['teacher'])} | {f(b['student'])} | {f(r['student'])} | {f(r['tolerance'])} | {ok(b)} → {ok(r)} |")
s = lambda v: f"{v['summary']['n_within_tolerance']}/{v['summary']['n_rows']}"
test = [h["test_errors"]["forces_rmse_meV_per_A"] for h in history["iterations"] if h.get("test_errors")]
print(f"\nrows within tolerance: base {s(base)} → refined {s(refined)}; held-out test force RMSE vs teacher: base {test[0]:.1f} → "
      f"refined {test[-1]:.1f} meV/Å ({100 * (test[-1] / test[0] - 1):+.1f} %); stop: {history['stop']}")
EOF
