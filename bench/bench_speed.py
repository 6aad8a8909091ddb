"""Deployed ACE vs MACE: atoms/s and MD steps/s on the same structures, same machine, one run.

    make demo            # once: fits runs/demo/models/ace_base.yace
    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_speed.py [--potential runs/demo/models/ace_base.yace]

Rows (pyacemaker.report.speed.speed_table, the table the report prints): the deployed ACE through pyace's
PyACECalculator one structure at a time (what an ASE user or a LAMMPS step pays); the bundled tiny Cu-Ag MACE
teacher (240 KB: 16 channels, L=0, 2 layers) and a MACE with the architecture of MACE-MP-0 "small" (random weights:
timing only), both through pyacemaker's batched labeler (float32). MD steps/s in ASE's VelocityVerlet on one cell.
Two sets of structures: the demo's step-4 cells (4-108 atoms) and 256-atom supercells.
"""
import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np

from pyacemaker.demo_data import demo_model_path, random_cuag_cell, step4_frames
from pyacemaker.oracle.mace_wrapper import MaceSurrogate
from pyacemaker.report.speed import format_speed_table, speed_table


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--potential", default="runs/demo/models/ace_base.yace")
    a = ap.parse_args()
    if not Path(a.potential).exists():
        raise SystemExit(f"{a.potential} not found: run `make demo` first (or pass --potential)")
    rng = np.random.default_rng(0)
    teacher = MaceSurrogate(demo_model_path(), dtype="float32")
    sets = {"demo step-4 cells (4-108 atoms)": step4_frames(300, seed=3),
            "256-atom supercells (MD-like)": [random_cuag_cell(rng, (4, 4, 4), rattle=(0.02, 0.1)) for _ in range(12)]}
    for name, frames in sets.items():
        print(f"\n{name}, {sum(map(len, frames))} atoms, {os.environ['OMP_NUM_THREADS']} threads")
        print(format_speed_table(speed_table(a.potential, teacher, frames, md_atoms=max(frames, key=len))))


if __name__ == "__main__":
    main()
