"""Deployed ACE vs MACE teachers: atoms/s on the same structures, same machine, one run.

    make demo            # once: fits runs/demo/models/ace_base.yace
    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_speed.py [--potential runs/demo/models/ace_base.yace]

Teachers: the bundled tiny Cu-Ag MACE (240 KB: 16 channels, L=0, 2 layers) and a MACE with the
architecture of MACE-MP-0 "small" (128x0e, max_ell 3, correlation 3, r_max 6 Å; random weights: timing
only), both through pyacemaker's batched labeler (float32). ACE through pyace's PyACECalculator, one
structure at a time (what an ASE user or a LAMMPS step pays). Target: ACE >= 20x its MACE teacher.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np

from pyacemaker.demo_data import demo_model_path, random_cuag_cell, step4_frames
from pyacemaker.oracle.mace_wrapper import MaceSurrogate


def mp_small_sized_model(path: Path) -> Path:
    """A MACE with MACE-MP-0 small's architecture for Cu and Ag, random weights (for timing only)."""
    import torch
    from e3nn import o3
    from mace import modules
    torch.set_default_dtype(torch.float32)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        r_max=6.0, num_bessel=10, num_polynomial_cutoff=5, max_ell=3, interaction_cls=block,
        interaction_cls_first=block, num_interactions=2, num_elements=2, hidden_irreps=o3.Irreps("128x0e"),
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(2), avg_num_neighbors=40.0,
        atomic_numbers=[29, 47], correlation=3, gate=torch.nn.functional.silu, radial_MLP=[64, 64, 64],
        atomic_inter_scale=1.0, atomic_inter_shift=0.0)
    torch.save(model, path)
    return path


def ace_rate(potential, frames):
    from pyace import PyACECalculator
    calc = PyACECalculator(str(potential))
    def run(fr):
        for a in fr:
            at = a.copy(); at.calc = calc
            at.get_potential_energy(); at.get_forces(); at.get_stress()
    run(frames[:1])
    t0 = time.perf_counter(); run(frames)
    return sum(len(a) for a in frames) / (time.perf_counter() - t0)


def mace_rate(model, frames, batch_atoms=1024):
    teacher = MaceSurrogate(model, dtype="float32", batch_atoms=batch_atoms)
    teacher.compute_batch(frames[:4]); teacher.compute_batch(frames[:4])
    t0 = time.perf_counter(); teacher.compute_batch(frames)
    return sum(len(a) for a in frames) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--potential", default="runs/demo/models/ace_base.yace")
    a = ap.parse_args()
    if not Path(a.potential).exists():
        raise SystemExit(f"{a.potential} not found: run `make demo` first (or pass --potential)")
    rng = np.random.default_rng(0)
    sets = {"demo step-4 cells (4-108 atoms)": step4_frames(300, seed=3),
            "256-atom supercells (MD-like)": [random_cuag_cell(rng, (4, 4, 4), rattle=(0.02, 0.1)) for _ in range(12)]}
    big = mp_small_sized_model(Path(tempfile.mkdtemp()) / "mp_small_sized.model")
    print(f"{'structures':<34}{'ACE atoms/s':>12}{'tiny MACE':>11}{'ratio':>7}{'MP-small-sized':>16}{'ratio':>8}")
    for name, frames in sets.items():
        ace = ace_rate(a.potential, frames)
        tiny = mace_rate(demo_model_path(), frames)
        mp = mace_rate(big, frames[:max(2, len(frames) // 10)], batch_atoms=512)
        print(f"{name:<34}{ace:>12,.0f}{tiny:>11,.0f}{ace / tiny:>6.1f}x{mp:>16,.0f}{ace / mp:>7.0f}x")
    print("target: ACE >= 20x its MACE teacher")


if __name__ == "__main__":
    main()
