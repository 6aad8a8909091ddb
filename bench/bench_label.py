"""Step-5 labeling benchmark: pyacemaker's batched labeler vs mace's own `mace_eval_configs` vs a
one-by-one `MACECalculator` loop, in one run on the same model, data, dtype and thread count; then peak RSS
labeling a small and a large file (streaming: memory must not grow with the number of structures).

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_label.py [--n 1000] [--rss 1000 20000]

Targets (bundled tiny model, float32, 2 cores): >= 1.2x mace_eval_configs, >= 3x the calculator loop,
peak RSS ratio large/small <= 1.2. Prints a table and writes bench/results/label.json.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
from ase.io import read, write

from pyacemaker.demo_data import demo_model_path, random_cuag_cell, step4_frames
from pyacemaker.oracle.chunked_run import label_file
from pyacemaker.oracle.mace_wrapper import MaceSurrogate

MODEL = demo_model_path()
DTYPE = "float32"


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_ours(src, out, batch_atoms, compile=False):
    teacher = MaceSurrogate(MODEL, dtype=DTYPE, batch_atoms=batch_atoms, compile=compile)
    return timed(lambda: label_file(src, out, teacher, progress=False, overwrite=True))


def run_mace_eval_configs(src, out, batch_size):
    from mace.cli import eval_configs
    sys_argv = sys.argv
    sys.argv = ["mace_eval_configs", "--configs", str(src), "--model", str(MODEL), "--output", str(out),
                "--device", "cpu", "--default_dtype", DTYPE, "--batch_size", str(batch_size), "--compute_stress"]
    try:
        args = eval_configs.parse_args()
    finally:
        sys.argv = sys_argv
    return timed(lambda: eval_configs.run(args))


def run_calculator_loop(src, out):
    from mace.calculators import MACECalculator
    from ase.calculators.singlepoint import SinglePointCalculator
    calc = MACECalculator(model_paths=str(MODEL), device="cpu", default_dtype=DTYPE)
    def loop():
        labeled = []
        for atoms in read(src, ":"):
            atoms.calc = calc
            e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
            atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f, stress=s)
            labeled.append(atoms)
        write(out, labeled, format="extxyz")
    return timed(loop)


def rss_child(src):
    """Label `src` in this fresh process and print peak RSS (MiB)."""
    out = Path(src).with_suffix(".labeled.xyz")
    run_ours(src, out, 1024)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def small_cells(n, seed=5):
    rng = np.random.default_rng(seed)
    return [random_cuag_cell(rng, (2, 1, 1)) for _ in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="structures for the throughput comparison")
    ap.add_argument("--batch-atoms", type=int, default=1024)
    ap.add_argument("--rss", type=int, nargs=2, default=[1000, 20000], help="small and large file sizes (8-atom cells)")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rss_child:
        return rss_child(a.rss_child)
    import torch
    threads = torch.get_num_threads()
    tmp = Path(tempfile.mkdtemp(prefix="bench_label_"))
    src = tmp / "step4.xyz"
    frames = step4_frames(a.n, seed=42)
    write(src, frames, format="extxyz")
    n_atoms = sum(len(f) for f in frames)
    mean_atoms = n_atoms / len(frames)
    matched_bs = max(1, round(a.batch_atoms / mean_atoms))
    print(f"data: {len(frames)} Cu-Ag cells, 4-108 atoms ({n_atoms} atoms); model {MODEL.name}, {DTYPE}, {threads} threads")
    warm = tmp / "warm.xyz"                                  # first-call costs (allocations, e3nn code generation)
    write(warm, frames[:20], format="extxyz")                # are paid once per process by every method
    run_ours(warm, tmp / "w1.xyz", a.batch_atoms); run_ours(warm, tmp / "w1.xyz", a.batch_atoms, compile=True)
    run_mace_eval_configs(warm, tmp / "w2.xyz", matched_bs)
    run_calculator_loop(warm, tmp / "w3.xyz")
    runs = {}
    runs["pyacemaker label (batch_atoms %d)" % a.batch_atoms] = run_ours(src, tmp / "ours.xyz", a.batch_atoms)
    runs["pyacemaker label --compile (TorchScript)"] = run_ours(src, tmp / "ours_c.xyz", a.batch_atoms, compile=True)
    runs["mace_eval_configs (batch_size %d = same atoms)" % matched_bs] = run_mace_eval_configs(src, tmp / "mace_matched.xyz", matched_bs)
    runs["mace_eval_configs (batch_size 64, default)"] = run_mace_eval_configs(src, tmp / "mace_default.xyz", 64)
    runs["MACECalculator one by one"] = run_calculator_loop(src, tmp / "calc.xyz")
    ours_t = next(iter(runs.values()))
    # same numbers?
    e_ours = np.array([x.get_potential_energy() for x in read(tmp / "ours.xyz", ":")])
    e_calc = np.array([x.get_potential_energy() for x in read(tmp / "calc.xyz", ":")])
    e_mace = np.array([x.info["MACE_energy"] for x in read(tmp / "mace_matched.xyz", ":")])
    print(f"max |ΔE| ours vs calculator: {np.abs(e_ours - e_calc).max():.2e} eV; ours vs mace_eval_configs: {np.abs(e_ours - e_mace).max():.2e} eV")
    print(f"\n{'method':<48}{'wall s':>8}{'structures/s':>14}{'atoms/s':>10}{'ours is':>10}")
    for name, t in runs.items():
        print(f"{name:<48}{t:>8.2f}{len(frames) / t:>14.1f}{n_atoms / t:>10.0f}{t / ours_t:>9.2f}x")
    t = list(runs.values())
    ratios = {"compiled_vs_eager": ours_t / t[1], "vs_mace_eval_configs_matched": t[2] / ours_t,
              "vs_mace_eval_configs_default": t[3] / ours_t, "vs_calculator_loop": t[4] / ours_t}
    # memory: fresh processes on a small and a large file
    rss = {}
    for n in a.rss:
        f = tmp / f"rss_{n}.xyz"
        write(f, small_cells(n), format="extxyz")
        r = subprocess.run([sys.executable, __file__, "--rss-child", str(f)], capture_output=True, text=True, check=True)
        rss[n] = float(r.stdout.strip().splitlines()[-1])
    small, large = a.rss
    ratios["rss_large_over_small"] = rss[large] / rss[small]
    print(f"\npeak RSS labeling {small} structures: {rss[small]:.0f} MiB; {large} structures: {rss[large]:.0f} MiB")
    print(f"\n{'target':<44}{'measured':>10}{'required':>10}  ok")
    for label, val, req, ok in [
        ("speed-up vs mace_eval_configs (same atoms)", ratios["vs_mace_eval_configs_matched"], ">=1.2", ratios["vs_mace_eval_configs_matched"] >= 1.2),
        ("speed-up vs mace_eval_configs (default bs)", ratios["vs_mace_eval_configs_default"], ">=1.2", ratios["vs_mace_eval_configs_default"] >= 1.2),
        ("speed-up vs MACECalculator loop", ratios["vs_calculator_loop"], ">=3", ratios["vs_calculator_loop"] >= 3),
        (f"peak RSS {large}/{small}", ratios["rss_large_over_small"], "<=1.2", ratios["rss_large_over_small"] <= 1.2)]:
        print(f"{label:<44}{val:>10.2f}{req:>10}  {'yes' if ok else 'NO'}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "label.json").write_text(json.dumps({"threads": threads, "n_structures": len(frames), "n_atoms": n_atoms,
                                               "seconds": runs, "ratios": ratios, "peak_rss_MiB": rss}, indent=1))


if __name__ == "__main__":
    main()
