"""Which structure weighting should step 6 use by default: uniform, or pacemaker's EnergyBasedWeightingPolicy?

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_weighting.py \
        [--work /tmp/bench_weighting] [--json /tmp/bench_weighting/weighting.json] [--mixed 200] [--mixed-seed 4]

Two data sets, each labeled once by the demo's MACE teacher (float32, `run_step5`) and fitted with the demo's ACE
settings (`demo_config`: 60 functions per element, BFGS 200 iterations, kappa 0.1, test_size 0.1, seed 42) once per
weighting, changing only `training.weighting` (`run_step6(cfg, overwrite=True)`):
  demo   the bundled step-4 file (300 bulk Cu–Ag cells);
  mixed  `mixed_step4_frames(200, seed=4)`: bulk 60 %, slab 20 %, wire 10 %, cluster 10 %.
Weightings: uniform (pacemaker's default); pacemaker's template EnergyBasedWeightingPolicy (DElow 1, DEup 10 eV/atom,
DE 1 eV/atom, DF 1 eV/Å, wlow 0.75); and a window fitted to this data (DElow 0.05, DEup 1 eV/atom), since all energies
here lie well within 1 eV/atom of the convex hull and the template makes every structure "low".
All fits of one set use the same step-5 file and the same split (checked: the test names are compared). Each deployed
`.yace` is evaluated by `write_report(cfg, speed=False, md=False)` on the full held-out table (structures that the
policy dropped from training stay in the test table). How many structures pacemaker kept is read from its log
("N structures were selected") and its prediction tables. Fit times are wall seconds of `run_step6` on a shared machine:
noisy; the errors are not (seeded fits are reproducible). A fit whose results file exists (same fit key) is reused.
"""
import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np

from pyacemaker.demo import demo_config
from pyacemaker.demo_data import demo_step4_path, mixed_step4_frames
from pyacemaker.domain_models.config import AceTrainingConfig, EnergyBasedWeighting, UniformWeighting
from pyacemaker.orchestrator import fit_key, reference_energies, run_step5, run_step6, step5_status
from pyacemaker.report.parity import write_report
from pyacemaker.kit.layout import Deliverables
from pyacemaker.utils.io import iter_frames, read_training_table, write_frames

WEIGHTINGS = {
    "uniform": UniformWeighting(),
    "energy_template": EnergyBasedWeighting(DElow=1.0, DEup=10.0, DE=1.0, DF=1.0, wlow=0.75),
    "energy_tight": EnergyBasedWeighting(DElow=0.05, DEup=1.0, DE=1.0, DF=1.0, wlow=0.75),
}
LOG_LINES = [("selected", r"(\d+) structures were selected"), ("below_DElow", r"(\d+) structures below DElow"),
             ("between_DElow_DEup", r"(\d+) structures between DElow"), ("policy", r"Apply weights policy: (.*)"),
             ("relative_weights", r"Current relative energy weights: (\S+)"),
             ("adjusted_weights", r"After adjustment: relative energy weights: (\S+)"), ("wlow_reset", r"(wlow=\S+\) is less than one)")]


def step4_file(name: str, work: Path, n_mixed: int, mixed_seed: int) -> Path:
    "The data set's step-4 file in its work folder (written once)."
    path = work / name / "step4_surrogate_data.xyz"
    if path.exists(): return path
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = list(iter_frames(demo_step4_path())) if name == "demo" else mixed_step4_frames(n_mixed, seed=mixed_seed)
    return write_frames(frames, path)


def with_weighting(cfg, weighting):
    "The same pipeline config with only `training.weighting` changed (validated again)."
    return cfg.model_copy(update={"training": AceTrainingConfig(**{**cfg.training.model_dump(), "weighting": weighting.model_dump()})})


def energy_spread(cfg) -> dict:
    "Spread of the labels (eV/atom): (E − ΣE0)/N range and the convex-hull distance pacemaker's policy uses."
    from pyace.process_df import compute_convexhull_dist
    d = Deliverables.of(cfg.path(cfg.ace_model_file))
    df = read_training_table(d.table("train"))
    df["energy_corrected_per_atom"] = df.energy_corrected / df.NUMBER_OF_ATOMS
    compute_convexhull_dist(df, energy_per_atom_column="energy_corrected_per_atom", verbose=False)
    hull = df["e_chull_dist_per_atom"].to_numpy()
    out = {"train_e_per_atom_range_eV": float(np.ptp(df.energy_corrected_per_atom)),
           "train_hull_dist_eV_per_atom": {q: float(np.quantile(hull, p)) for q, p in [("min", 0), ("median", .5), ("p90", .9), ("max", 1)]}}
    if "cell_kind" in df:
        out["train_hull_dist_median_by_kind"] = {k: float(np.median(hull[df.cell_kind.to_numpy() == k])) for k in sorted(set(df.cell_kind))}
    return out


def fit_log(d: Deliverables) -> dict:
    "What pacemaker's log says about the weighting and how many structures it kept (train and test prediction tables)."
    text = d.file("_fit_log.txt").read_text(errors="replace") if d.file("_fit_log.txt").exists() else ""
    out = {}
    for key, pattern in LOG_LINES:
        m = re.findall(pattern, text)
        if m: out[key] = m[-1] if key in ("policy", "relative_weights", "adjusted_weights", "wlow_reset") else int(m[-1])
    for split in ("train", "test"):
        out[f"n_{split}_table"] = len(read_training_table(d.table(split))) if d.table(split).exists() else 0
        out[f"n_{split}_kept"] = len(read_training_table(d.pred(split))) if d.pred(split).exists() else None
    return out


def one_fit(cfg, wname: str, weighting, threads: int) -> dict:
    "Fit with one weighting, evaluate the deployed .yace; cached in work_dir/result_<wname>.json by fit key."
    cfg = with_weighting(cfg, weighting)
    key = fit_key(cfg, reference_energies(cfg))
    cache = cfg.work_dir / f"result_{wname}.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key and "per_structure" in cached: return cached
    t0 = time.perf_counter()
    run_step6(cfg, overwrite=True, progress=False, threads=threads)
    fit_s = time.perf_counter() - t0
    d = Deliverables.of(cfg.path(cfg.ace_model_file))
    out = {"key": key, "weighting": weighting.model_dump(), "fit_s": fit_s, "log": fit_log(d),
           "test_names": list(read_training_table(d.table("test")).name)}
    try:
        metrics = write_report(cfg, speed=False, md=False)
    except Exception as err:   # recorded, not hidden: a report that fails on a weighted fit is a finding
        out["report_error"] = f"{type(err).__name__}: {err}"
        metrics = _metrics_without_report(cfg, d)
    out.update(train=metrics["train"], test=metrics["test"], pacemaker_agreement=metrics.get("pacemaker_agreement"),
               per_structure=per_structure_errors(d))
    shutil.copytree(d.models_dir, cfg.work_dir / f"models_{wname}", dirs_exist_ok=True)   # the delivered set, for a later look
    if wname == "uniform": out["energy_spread"] = energy_spread(cfg)
    cache.write_text(json.dumps(out, indent=1))
    return out


def _metrics_without_report(cfg, d: Deliverables) -> dict:
    "Parity metrics of the deployed .yace on the delivered tables, as write_report computes them (fallback)."
    from pyacemaker.kit.calculators import ace_calculator
    from pyacemaker.report.parity import ace_predictions, parity_metrics
    manifest = json.loads(d.manifest.read_text())
    calc = ace_calculator(d.yace)
    return {s: parity_metrics(ace_predictions(calc, read_training_table(d.table(s)), s, manifest["e0"])) for s in ("train", "test")}


def per_structure_errors(d: Deliverables) -> dict:
    "Held-out errors of the deployed .yace per test structure: energy (meV/atom), sum of squared force errors (meV/Å)², components."
    from pyacemaker.kit.calculators import ace_calculator
    from pyacemaker.report.parity import ace_predictions
    manifest = json.loads(d.manifest.read_text())
    p = ace_predictions(ace_calculator(d.yace), read_training_table(d.table("test")), "test", manifest["e0"])
    ends = np.cumsum(3 * np.asarray(p["natoms"]))
    df2 = np.split((1e3 * (p["forces_ace"] - p["forces_ref"])) ** 2, ends[:-1])
    return {"names": p["names"], "kinds": p["kinds"], "energy_err_meV_per_atom": list(1e3 * (p["energy_ace"] - p["energy_ref"])),
            "forces_sq_err_sum": [float(x.sum()) for x in df2], "forces_n": [int(x.size) for x in df2]}


def paired_bootstrap(a: dict, b: dict, n: int = 2000, seed: int = 0) -> dict:
    "95 % interval of test RMSE(b) − RMSE(a), energy and forces, resampling the same held-out structures for both fits."
    if a["names"] != b["names"]: raise ValueError("the two fits were evaluated on different test structures")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a["names"]), size=(n, len(a["names"])))
    def e_rmse(r): return np.sqrt(np.mean(np.asarray(r["energy_err_meV_per_atom"])[idx] ** 2, axis=1))
    def f_rmse(r): return np.sqrt(np.asarray(r["forces_sq_err_sum"])[idx].sum(1) / np.asarray(r["forces_n"])[idx].sum(1))
    de, dfo = e_rmse(b) - e_rmse(a), f_rmse(b) - f_rmse(a)
    return {"energy_diff_meV_per_atom_95": [float(np.quantile(de, .025)), float(np.quantile(de, .975))],
            "forces_diff_meV_per_A_95": [float(np.quantile(dfo, .025)), float(np.quantile(dfo, .975))],
            "energy_better_fraction": float(np.mean(de < 0)), "forces_better_fraction": float(np.mean(dfo < 0))}


def run_set(name: str, work: Path, args) -> dict:
    "Label one data set once, then fit and evaluate it with every weighting."
    step4 = step4_file(name, work, args.mixed, args.mixed_seed)
    cfg = demo_config(step4.parent)
    if args.maxiter: cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"maxiter": args.maxiter})})
    t0 = time.perf_counter()
    done, why = step5_status(cfg)
    if not done: run_step5(cfg, overwrite=True, progress=False)
    label_s = time.perf_counter() - t0
    print(f"[{name}] step 5: {'reused (' + why + ')' if done else f'labeled in {label_s:.0f} s'}", flush=True)
    fits = {}
    for wname in args.weightings:
        print(f"[{name}] fitting with {wname} ...", flush=True)
        fits[wname] = one_fit(cfg, wname, WEIGHTINGS[wname], args.threads)
        r = fits[wname]
        print(f"[{name}] {wname}: test E {r['test']['energy_rmse_meV_per_atom']:.3f} meV/atom, "
              f"F {r['test']['forces_rmse_meV_per_A']:.2f} meV/Å, fit {r['fit_s']:.0f} s", flush=True)
    splits = {tuple(f["test_names"]) for f in fits.values()}
    if len(splits) != 1: raise RuntimeError(f"[{name}] the fits used different test sets: the comparison is not fair")
    if "uniform" in fits:
        for w, r in fits.items():
            if w != "uniform": r["vs_uniform"] = paired_bootstrap(fits["uniform"]["per_structure"], r["per_structure"])
    return {"n_structures": sum(1 for _ in iter_frames(cfg.path(cfg.step5_file))), "same_split": True,
            "n_test": len(next(iter(splits))), "fits": fits}


def table(results: dict) -> str:
    "One plain-text table: data set × weighting → held-out errors, kept structures, fit time; per-kind test errors."
    head = (f"{'set':<6} {'weighting':<16} {'kept train/test':>15} {'test E':>8} {'test F':>8} {'train E':>8} {'train F':>8} "
            f"{'Etot mean':>9} {'fit s':>6}")
    lines = [head, f"{'':<6} {'':<16} {'(of table)':>15} {'meV/at':>8} {'meV/Å':>8} {'meV/at':>8} {'meV/Å':>8} {'meV/at':>9}", "-" * len(head)]
    for name, s in results.items():
        for w, r in s["fits"].items():
            lg, te, tr = r["log"], r["test"], r["train"]
            kept = f"{lg['n_train_kept']}/{lg['n_test_kept']} ({lg['n_train_table']}/{lg['n_test_table']})"
            lines.append(f"{name:<6} {w:<16} {kept:>15} {te['energy_rmse_meV_per_atom']:8.3f} {te['forces_rmse_meV_per_A']:8.2f} "
                         f"{tr['energy_rmse_meV_per_atom']:8.3f} {tr['forces_rmse_meV_per_A']:8.2f} "
                         f"{te['total_energy_mean_error_meV_per_atom']:9.3f} {r['fit_s']:6.0f}")
    for name, s in results.items():
        kinds = {w: r["test"]["by_kind"] for w, r in s["fits"].items()}
        if len(next(iter(s["fits"].values()))["train"]["by_kind"]) < 2: continue
        lines += ["", f"{name}: per-kind errors, test (train) — energy meV/atom, forces meV/Å"]
        nan = {"n_structures": 0, "energy_rmse_meV_per_atom": float("nan"), "forces_rmse_meV_per_A": float("nan")}
        for w, bk in kinds.items():
            trk = s["fits"][w]["train"]["by_kind"]
            lines.append(f"  {w:<16} " + "; ".join(
                f"{k} (n={v['n_structures']}/{t['n_structures']}) E {v['energy_rmse_meV_per_atom']:.2f} ({t['energy_rmse_meV_per_atom']:.2f}) "
                f"F {v['forces_rmse_meV_per_A']:.1f} ({t['forces_rmse_meV_per_A']:.1f})"
                for k in sorted(set(bk) | set(trk)) for v, t in [(bk.get(k, nan), trk.get(k, nan))]))
    for name, s in results.items():
        for w, r in s["fits"].items():
            lg = r["log"]
            if "selected" in lg:
                lines.append(f"{name}/{w}: pacemaker log: {lg.get('below_DElow')} below DElow, {lg.get('between_DElow_DEup')} between DElow "
                             f"and DEup, {lg['selected']} selected (train+test); energy weight low/up {lg.get('relative_weights')}"
                             + (f" -> {lg['adjusted_weights']} (wlow)" if "adjusted_weights" in lg else "")
                             + (f"; wlow reset to 1 ({lg['wlow_reset']})" if "wlow_reset" in lg else ""))
            if "report_error" in r: lines.append(f"{name}/{w}: write_report failed: {r['report_error']}")
        if sp := s["fits"].get("uniform", {}).get("energy_spread"):
            lines.append(f"{name}: train convex-hull distance (eV/atom) {sp['train_hull_dist_eV_per_atom']}"
                         + (f", median by kind {sp['train_hull_dist_median_by_kind']}" if "train_hull_dist_median_by_kind" in sp else ""))
    for name, s in results.items():
        for w, r in s["fits"].items():
            if b := r.get("vs_uniform"):
                (e0, e1), (f0, f1) = b["energy_diff_meV_per_atom_95"], b["forces_diff_meV_per_A_95"]
                lines.append(f"{name}/{w} − uniform, test RMSE, 95 % paired bootstrap over the {s['n_test']} held-out structures: "
                             f"E [{e0:+.3f}, {e1:+.3f}] meV/atom, F [{f0:+.2f}, {f1:+.2f}] meV/Å")
    lines.append("fit s = wall time of run_step6 (pacemaker + .yace + active set) on a shared 2-core machine: noisy.")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/bench_weighting", type=Path)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--sets", nargs="+", default=["demo", "mixed"], choices=["demo", "mixed"])
    ap.add_argument("--weightings", nargs="+", default=list(WEIGHTINGS), choices=list(WEIGHTINGS))
    ap.add_argument("--mixed", type=int, default=200, help="structures of the mixed set")
    ap.add_argument("--mixed-seed", type=int, default=4)
    ap.add_argument("--maxiter", type=int, help="override the demo's 200 BFGS iterations (smoke runs only)")
    ap.add_argument("--threads", type=int, default=int(os.environ["OMP_NUM_THREADS"]), help="pacemaker's OMP_NUM_THREADS")
    args = ap.parse_args()
    t0 = time.perf_counter()
    results = {name: run_set(name, args.work.resolve(), args) for name in args.sets}
    print(table(results))
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        slim = {n: {**s, "fits": {w: {k: v for k, v in r.items() if k != "test_names"} for w, r in s["fits"].items()}}
                for n, s in results.items()}
        args.json.write_text(json.dumps({"settings": {"mixed": args.mixed, "mixed_seed": args.mixed_seed, "threads": args.threads},
                                         "results": slim}, indent=1))
        print(f"numbers: {args.json}")


if __name__ == "__main__":
    main()
