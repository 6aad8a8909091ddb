"""Should the default be `repulsion: none` or pacemaker's `repulsion: auto` (ZBL core)? Two real fits, one answer.

    make demo            # once: runs/demo/fit/{input.yaml,train.pckl.gzip,test.pckl.gzip}
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_repulsion.py [--demo runs/demo] [--work /tmp/repulsion]

Fits the demo's training table twice with the demo's own `input.yaml` (one fit with no core repulsion, one with
`fit: repulsion: auto`), one after the other (each ≈3-4 min on one core), converts each to `.yace` and builds its
active set exactly as step 6 does. Then, for each potential: held-out errors of the deployed `.yace` on the test table,
and the MD check (`pyacemaker.report.md.md_check`) at 300 K and 1500 K on the two largest training cells: stable?,
max γ, shortest distance, NVE drift, and ACE-vs-MACE errors on MD snapshots. A fit whose outputs exist is reused.
"""
import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import yaml

VARIANTS = {"none": {}, "auto": {"repulsion": "auto"}}


def bin_dir() -> Path:
    "The folder of this Python's console scripts (pacemaker, pace_yaml2yace, pace_activeset)."
    import sys
    return Path(sys.executable).parent


def prepare(demo: Path, run: Path, fit_extra: dict) -> Path:
    "A pacemaker run folder: the demo's input.yaml with local table names and the extra `fit:` keys."
    run.mkdir(parents=True, exist_ok=True)
    for name in ("train.pckl.gzip", "test.pckl.gzip"): shutil.copy(demo / "fit" / name, run / name)
    cfg = yaml.safe_load((demo / "fit" / "input.yaml").read_text())
    cfg["data"].update(filename="train.pckl.gzip", test_filename="test.pckl.gzip")
    cfg["fit"].update(fit_extra)
    (run / "input.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return run


def fit(run: Path) -> float:
    "pacemaker, pace_yaml2yace and pace_activeset in `run` (skipped when the active set exists); wall seconds of the fit."
    if (run / "output_potential.asi").exists(): return json.loads((run / "fit_time.json").read_text())["fit_s"]
    b = bin_dir()
    t0 = time.perf_counter()
    with open(run / "pacemaker.log", "w") as log:
        subprocess.run([b / "pacemaker", "input.yaml"], cwd=run, check=True, stdout=log, stderr=subprocess.STDOUT)
    fit_s = time.perf_counter() - t0
    subprocess.run([b / "pace_yaml2yace", "output_potential.yaml", "-o", "output_potential.yace"], cwd=run, check=True,
                   capture_output=True)
    subprocess.run([b / "pace_activeset", "-d", "train.pckl.gzip", "output_potential.yaml", "-a", "-g", "1.0", "-V"],
                   cwd=run, check=True, capture_output=True)
    (run / "fit_time.json").write_text(json.dumps({"fit_s": fit_s}))
    return fit_s


def held_out_errors(yace: Path, table) -> dict:
    "RMSE of the deployed .yace on a table: (E − ΣE0)/N vs energy_corrected (meV/atom), force components (meV/Å)."
    import numpy as np
    from pyace import PyACECalculator
    from pyacemaker.utils.io import table_frames
    calc, de, df = PyACECalculator(str(yace)), [], []
    for ref, row in zip(table_frames(table), table.itertuples()):   # pace_yaml2yace writes E0 = 0: energies are E − ΣE0
        at = ref.copy(); at.calc = calc
        de.append((at.get_potential_energy() - row.energy_corrected) / len(at)); df.append((at.get_forces() - ref.get_forces()).ravel())
    return {"energy_rmse_meV_per_atom": 1e3 * float(np.sqrt(np.mean(np.square(de)))),
            "forces_rmse_meV_per_A": 1e3 * float(np.sqrt(np.mean(np.square(np.concatenate(df)))))}


def evaluate(run: Path, teacher, temperatures_K=(300.0, 1500.0)) -> dict:
    "Held-out errors of the deployed .yace and the MD check of one fit."
    from pyacemaker.report.md import md_check, md_metrics
    from pyacemaker.utils.io import read_training_table, table_frames
    test = held_out_errors(run / "output_potential.yace", read_training_table(run / "test.pckl.gzip"))
    train = read_training_table(run / "train.pckl.gzip")
    t0 = time.perf_counter()
    md = md_metrics(md_check(run / "output_potential.yaml", run / "output_potential.asi", table_frames(train),
                             names=list(train.name), teacher=teacher, temperatures_K=temperatures_K))
    return {"test": test, "md": md, "md_check_s": time.perf_counter() - t0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", default="runs/demo", type=Path)
    ap.add_argument("--work", default="/tmp/repulsion", type=Path)
    ap.add_argument("--fit-only", action="store_true", help="run the fits, skip the evaluation")
    a = ap.parse_args()
    if not (a.demo / "fit" / "input.yaml").exists(): raise SystemExit(f"{a.demo}/fit/input.yaml not found: run `make demo` first")
    runs = {name: prepare(a.demo, a.work / f"rep_{name}", extra) for name, extra in VARIANTS.items()}
    fit_s = {}
    for name, run in runs.items():
        fit_s[name] = fit(run); print(f"repulsion {name}: fitted in {fit_s[name]:.0f} s ({run})", flush=True)
    if a.fit_only: return
    from pyacemaker.demo_data import demo_model_path
    from pyacemaker.oracle.mace_wrapper import MaceSurrogate
    teacher = MaceSurrogate(demo_model_path(), dtype="float32")
    results = {name: {"fit_s": fit_s[name], **evaluate(run, teacher)} for name, run in runs.items()}
    (a.work / "repulsion.json").write_text(json.dumps(results, indent=1))
    print(f"{'repulsion':<10}{'test E':>9}{'test F':>9}{'T [K]':>7}{'stable':>8}{'max γ':>8}{'d_min Å':>9}"
          f"{'drift':>9}{'MD E':>7}{'MD F':>7}")
    num = lambda x, width, f: f"{'-' if x is None else format(x, f):>{width}}"   # md_metrics writes NaN as None
    for name, r in results.items():
        for run in r["md"]["runs"]:
            print(f"{name:<10}{r['test']['energy_rmse_meV_per_atom']:>9.2f}{r['test']['forces_rmse_meV_per_A']:>9.1f}"
                  f"{run['temperature_K']:>7.0f}{str(run['stable']):>8}{num(run['max_gamma'], 8, '.2f')}"
                  f"{num(run['min_distance_A'], 9, '.3f')}{num(run['nve_drift_meV_per_atom_per_ps'], 9, '.3f')}"
                  f"{num(run.get('teacher_energy_rmse_meV_per_atom'), 7, '.2f')}{num(run.get('teacher_forces_rmse_meV_per_A'), 7, '.1f')}")
    print("errors: test E meV/atom, F meV/Å (held out); MD: ACE vs MACE on the run's snapshots; drift meV/atom/ps (NVE)")
    print(f"written {a.work / 'repulsion.json'}")


if __name__ == "__main__":
    main()
