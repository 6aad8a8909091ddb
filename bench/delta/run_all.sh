#!/usr/bin/env bash
# Whole experiment, one command:  PYACEMAKER_DEMO=runs/demo bash bench/delta/run_all.sh   (≈ 45 min on 2 cores, fits run one after another)
# Results: $PYACEMAKER_DEMO/bench_delta/data/eval_{strat,bal}.json (tables printed at the end), wall times in timings.tsv.
set -euo pipefail
export PYACEMAKER_DEMO="$(realpath "${PYACEMAKER_DEMO:-runs/demo}")"    # a finished demo folder; results go to its bench_delta/
DATA="$PYACEMAKER_DEMO/bench_delta/data"
cd "$(dirname "$0")"
source ../../.venv/bin/activate
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE MPLBACKEND=Agg TF_CPP_MIN_LOG_LEVEL=2
mkdir -p "$DATA"; rm -f "$DATA"/timings.tsv "$DATA"/eval_*.json
python make_data.py --max 50          # pool, held-out test set, D-optimal selections 'dopt' and 'strat', EMT labels, tables
python make_balanced.py               # selection 'bal': 14 bulk / 12 slab / 12 cluster / 12 vacancy, D-optimal within kind
for sel in strat bal; do
  python fit.py direct  --sel $sel                                   # (c) fresh ACE on the 50 EMT frames
  python fit.py upfit   --sel $sel --align --tag A                   # (a) upfit of ace_base.yaml, aligned reference energy
  python fit.py delta   --sel $sel --shift --tag s                   # (b) Δ = EMT − base, 20 funcs/element, constant removed
  python fit.py delta   --sel $sel --shift --delta-funcs 60 --tag 60s  # (b) same, 60 funcs/element (the pipeline's)
done
python fit.py upfit   --sel strat                  # (a) upfit with EMT isolated-atom E0 (not aligned)
python fit.py upfitT  --sel strat --align --tag A  # (a) + 300 teacher frames, energy & forces x0.2
python fit.py upfitTf --sel strat --align --tag A  # + teacher forces only ×0.2
python fit.py upfitTf --sel strat                  # + teacher forces only ×0.2, EMT E0
python fit.py delta   --sel strat                  # Δ unshifted, 20 funcs/element
python evaluate.py --sel strat --models emt,base,teacher,direct,upfit,upfitA,upfitTA,upfitTfA,upfitTf,delta,deltas,delta60s
python -c "import json, sys; d=json.load(open(sys.argv[1] + '/eval_strat.json')); json.dump({k: d[k] for k in ('emt','base','teacher')}, open(sys.argv[1] + '/eval_bal.json','w'))" "$DATA"
python evaluate.py --sel bal --models direct,upfitA,deltas,delta60s
# Delivered sets (pyacemaker delta, delta.method: direct in a copy of the folder, refine) on the same held-out set:
#   python heldout.py base=$PYACEMAKER_DEMO/models/ace_base.yace delta=$PYACEMAKER_DEMO/models/ace_delta.yace direct=COPY/models/ace_delta.yace
