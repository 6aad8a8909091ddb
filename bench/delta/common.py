"""Shared settings and helpers for the delta-learning experiment (EMT stands in for DFT)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

HERE = Path(__file__).resolve().parent
#: a finished demo folder (make demo); the experiment writes into DEMO/bench_delta, never into the repository
DEMO = Path(os.environ.get("PYACEMAKER_DEMO", HERE.parents[1] / "runs" / "demo")).resolve()
DATA = DEMO / "bench_delta" / "data"
FITS = DEMO / "bench_delta" / "fits"
BASE_YAML = DEMO / "models/ace_base.yaml"
BASE_ASI = DEMO / "models/ace_base.asi"
STEP5 = DEMO / "step5_surrogate_labeled.xyz"
MACE_MODEL = HERE.parents[1] / "pyacemaker" / "data" / "cuag_mace.model"
ELEMENTS = ["Cu", "Ag"]
CUTOFF = 5.0
A_EMT = {"Cu": 3.5898, "Ag": 4.0636}          # EMT fcc lattice constants (validation.json reference)


def emt_e0() -> dict[str, float]:
    "EMT energy of an isolated atom in a 12 Å non-periodic box."
    out = {}
    for e in ELEMENTS:
        a = Atoms(e, positions=[[6, 6, 6]], cell=[12, 12, 12], pbc=False); a.calc = EMT()
        out[e] = float(a.get_potential_energy())
    return out


def mace_e0() -> dict[str, float]:
    from pyacemaker.oracle.mace_wrapper import MaceSurrogate
    return dict(MaceSurrogate(MACE_MODEL, dtype="float64").e0)


def label_emt(atoms: Atoms) -> Atoms:
    "A copy with EMT energy/forces as a SinglePointCalculator."
    a = atoms.copy(); a.calc = EMT()
    e, f = a.get_potential_energy(), a.get_forces()
    res = {"energy": e, "forces": f}
    if a.pbc.all(): res["stress"] = a.get_stress()
    b = atoms.copy(); b.calc = SinglePointCalculator(b, **res)
    return b


def sum_e0(atoms: Atoms, e0: dict) -> float:
    return float(sum(e0[s] for s in atoms.get_chemical_symbols()))


class Timer:
    "Wall times of named steps, appended to data/timings.tsv."
    def __init__(self, name): self.name = name
    def __enter__(self): self.t0 = time.perf_counter(); return self
    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0
        DATA.mkdir(exist_ok=True, parents=True)
        with open(DATA / "timings.tsv", "a") as f: f.write(f"{self.name}\t{self.s:.1f}\n")
        print(f"[time] {self.name}: {self.s:.1f} s", flush=True)


# ---------------------------------------------------------------- structure generators
def _rattle(a: Atoms, std: float, rng) -> Atoms:
    a = a.copy(); a.positions += rng.normal(0, std, a.positions.shape); return a


def fcc_cell(el: str, a: float | None = None, alloy: str | None = None, frac: float = 0.0, rng=None) -> Atoms:
    "Conventional fcc cell of `el` (or an alloy with `alloy` replacing a random fraction `frac`)."
    at = bulk(el, "fcc", a=a or A_EMT[el], cubic=True)
    return at


def random_alloy(n_rep, x_ag: float, rng, strain: float = 0.0) -> Atoms:
    a_mix = (1 - x_ag) * A_EMT["Cu"] + x_ag * A_EMT["Ag"]
    at = bulk("Cu", "fcc", a=a_mix, cubic=True).repeat(n_rep)
    syms = np.array(at.get_chemical_symbols())
    syms[rng.random(len(at)) < x_ag] = "Ag"
    at.set_chemical_symbols(list(syms))
    eps = rng.uniform(-strain, strain, (3, 3)); eps = (eps + eps.T) / 2
    at.set_cell(at.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    return at


def strained_bulk(el_or_x, rep, rng, strain=0.03, rattle=0.05) -> Atoms:
    if isinstance(el_or_x, str):
        at = bulk(el_or_x, "fcc", a=A_EMT[el_or_x], cubic=True).repeat(rep)
        eps = rng.uniform(-strain, strain, (3, 3)); eps = (eps + eps.T) / 2
        at.set_cell(at.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    else:
        at = random_alloy(rep, el_or_x, rng, strain)
    at = _rattle(at, rattle, rng); at.info["kind"] = "bulk"
    return at


def vacancy_cell(el: str, rep: int, rng, rattle=0.04, scale=1.0) -> Atoms:
    at = bulk(el, "fcc", a=A_EMT[el] * scale, cubic=True).repeat(rep)
    del at[int(rng.integers(len(at)))]
    at = _rattle(at, rattle, rng); at.info["kind"] = "vacancy"
    return at


def slab(composition: str, facet, layers: int, rng, rattle=0.05, size=(2, 2), vacuum=6.0) -> Atoms:
    "A slab (made fully periodic with vacuum) of Cu, Ag or Cu3Ag (L1_2), rattled."
    from ase.build import surface
    from pyacemaker.utils.io import periodic_equivalent
    if composition == "Cu3Ag":
        a = (3 * A_EMT["Cu"] + A_EMT["Ag"]) / 4
        cell = bulk("Cu", "fcc", a=a, cubic=True); cell.symbols[0] = "Ag"
    else:
        cell = bulk(composition, "fcc", a=A_EMT[composition], cubic=True)
    s = surface(cell, tuple(facet), layers, vacuum=vacuum)
    s = s.repeat((size[0], size[1], 1))
    s.pbc = (True, True, False)
    s = periodic_equivalent(s, CUTOFF)
    s = _rattle(s, rattle, rng); s.info["kind"] = "slab"
    return s


def cluster(n: int, rng, x_ag: float = 0.0, rattle=0.08) -> Atoms:
    "A roughly spherical fcc cluster of ~n atoms cut from bulk, in a box with vacuum > cutoff, periodic."
    a_mix = (1 - x_ag) * A_EMT["Cu"] + x_ag * A_EMT["Ag"]
    big = bulk("Cu", "fcc", a=a_mix, cubic=True).repeat(5)
    c = big.positions.mean(axis=0) + rng.normal(0, 0.3, 3)
    d = np.linalg.norm(big.positions - c, axis=1)
    keep = np.argsort(d)[:n]
    at = Atoms(["Cu"] * n, big.positions[keep])
    syms = np.array(at.get_chemical_symbols()); syms[rng.random(n) < x_ag] = "Ag"; at.set_chemical_symbols(list(syms))
    at.center(vacuum=CUTOFF / 2 + 1.5)
    at.pbc = True
    at = _rattle(at, rattle, rng); at.info["kind"] = "cluster"
    return at


# ---------------------------------------------------------------- calculators
def ace(path):
    from pyacemaker.kit.calculators import ace_calculator
    return ace_calculator(path)


def teacher_calc():
    from pyacemaker.kit.calculators import mace_calculator
    from pyacemaker.oracle.mace_wrapper import MaceSurrogate
    return mace_calculator(MaceSurrogate(MACE_MODEL, dtype="float64"))


class Sum:
    "E, F (and stress) of two calculators summed (base + Δ); an ASE calculator."
    def __new__(cls, a, b):
        from ase.calculators.mixing import SumCalculator
        return SumCalculator([a, b])
