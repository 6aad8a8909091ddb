"""Converter: pacemaker's DataFrame and extxyz, stress/virial conventions, and every rejection."""
import gzip
import pickle

import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read

from pyacemaker.utils.io import (StructureError, frame_labels, iter_frames, read_training_table, stress_to_virial,
                                 table_frames, training_table, virial_to_stress, write_pacemaker_extxyz,
                                 write_training_table)

E0 = {"Cu": -0.3, "Ag": -0.2}


def emt_frames(n=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        at = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1 + i % 2, 1, 1))
        at.symbols[0] = "Ag"
        at.positions += rng.normal(scale=0.05, size=at.positions.shape)
        at.calc = EMT()
        at.calc = SinglePointCalculator(at, energy=at.get_potential_energy(), forces=at.get_forces(), stress=at.get_stress())
        out.append(at)
    return out


def test_table_columns_and_dtypes():
    frames = emt_frames()
    df = training_table(frames, E0)
    assert list(df.columns) == ["name", "ase_atoms", "energy", "energy_corrected", "forces", "stress", "NUMBER_OF_ATOMS"]
    assert df.energy.dtype == np.float64 and df.energy_corrected.dtype == np.float64
    assert all(isinstance(a, Atoms) and a.calc is None for a in df.ase_atoms)
    for f, a in zip(df.forces, frames):
        assert isinstance(f, np.ndarray) and f.shape == (len(a), 3) and f.dtype == np.float64
    assert all(s.shape == (6,) for s in df.stress)
    n_cu, n_ag = frames[0].get_chemical_symbols().count("Cu"), 1
    assert df.energy_corrected[0] == pytest.approx(df.energy[0] - (n_cu * E0["Cu"] + n_ag * E0["Ag"]), abs=1e-12)


def test_pickle_is_gzip_protocol4_readable_by_pandas(tmp_path):
    p = write_training_table(training_table(emt_frames(), E0), tmp_path / "data.pckl.gzip")
    with gzip.open(p, "rb") as f:
        assert f.read(2)[1] == 4                                   # pickle protocol 4 (pacemaker's pandas reads it)
    df = pd.read_pickle(p, compression="gzip")
    assert len(df) == 3
    with pytest.raises(FileExistsError):
        write_training_table(df, p)


def test_extxyz_header_and_round_trip(tmp_path):
    frames = emt_frames()
    frames[0].info["config_type"] = "junk"; frames[0].arrays["momenta"] = np.ones((len(frames[0]), 3))
    p = write_pacemaker_extxyz(frames, tmp_path / "train.xyz")
    for line in [l for l in p.read_text().splitlines() if "Properties=" in l]:
        assert "Properties=species:S:1:pos:R:3:forces:R:3 " in line and " energy=" in line and " stress=" in line
        assert "config_type" not in line and "momenta" not in line
    back = table_frames(read_training_table(write_training_table(training_table(iter_frames(p), E0), tmp_path / "t.pckl.gzip")))
    for a, b in zip(frames, back):
        assert b.get_potential_energy() == a.get_potential_energy()
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-8)
        np.testing.assert_allclose(b.get_stress(), a.get_stress(), atol=1e-15)
        np.testing.assert_allclose(b.positions, a.positions, atol=1e-8)
        assert (b.pbc == a.pbc).all() and np.allclose(b.cell, a.cell)


def test_stress_virial_sign_and_units():
    """sigma = (1/V) dE/deps (ASE), virial W = -sigma V (eV): checked by finite differences of EMT."""
    cu = bulk("Cu", "fcc", a=3.70, cubic=True)                    # stretched: wants to contract
    cu.calc = EMT()
    sigma, V = cu.get_stress(), cu.get_volume()
    def energy(eps):
        a = cu.copy(); a.calc = EMT()
        a.set_cell(cu.cell.array @ (np.eye(3) + np.diag([0, eps, 0])), scale_atoms=True)
        return a.get_potential_energy()
    dE = (energy(1e-5) - energy(-1e-5)) / 2e-5
    assert sigma[1] > 0 and sigma[1] == pytest.approx(dE / V, rel=1e-5)
    W = stress_to_virial(sigma, V)
    assert W.shape == (3, 3) and W[1, 1] == pytest.approx(-dE, rel=1e-5)
    np.testing.assert_allclose(virial_to_stress(W, V), sigma, atol=1e-14)
    np.testing.assert_allclose(virial_to_stress(W.ravel(), V), sigma, atol=1e-14)


def test_virial_in_info_becomes_stress():
    at = emt_frames(1)[0]
    e, f, s = frame_labels(at, "x.xyz", 0)
    bare = Atoms(at.symbols, at.positions, cell=at.cell, pbc=True)
    bare.calc = SinglePointCalculator(bare, energy=e, forces=f)
    bare.info["virial"] = stress_to_virial(s, at.get_volume())
    np.testing.assert_allclose(frame_labels(bare, "x.xyz", 0)[2], s, atol=1e-14)


def relabel(at, **res):
    b = Atoms(at.symbols, at.positions, cell=at.cell, pbc=at.pbc)
    if res: b.calc = SinglePointCalculator(b, **res)
    return b


@pytest.mark.parametrize("make,match", [
    (lambda a: relabel(a, forces=np.zeros((len(a), 3))), "step5.xyz frame 1: no energy label"),
    (lambda a: relabel(a, energy=1.0), "step5.xyz frame 1: no forces label"),
    (lambda a: relabel(a, energy=1.0, forces=np.zeros((len(a) - 1, 3))), r"step5.xyz frame 1: forces have shape \(3, 3\), expected \(4, 3\)"),
    (lambda a: relabel(a, energy=np.nan, forces=np.zeros((len(a), 3))), "step5.xyz frame 1: energy is not finite"),
    (lambda a: relabel(a, energy=1.0, forces=np.full((len(a), 3), np.inf)), "step5.xyz frame 1: forces are not finite"),
    (lambda a: Atoms(cell=a.cell, pbc=True), "step5.xyz frame 1: has no atoms"),
    (lambda a: relabel(Atoms("Au4", positions=a.positions, cell=a.cell, pbc=True), energy=1.0, forces=np.zeros((4, 3))),
     r"step5.xyz frame 1: element Au is not in training.elements \(knows Ag, Cu\)"),
])
def test_rejections_name_frame_and_field(make, match):
    good = emt_frames(1)[0]
    with pytest.raises(StructureError, match=match):
        training_table([good, make(emt_frames(1)[0])], E0, path="step5.xyz")


def test_empty_input_rejected():
    with pytest.raises(StructureError, match="contains no structures"):
        training_table([], E0, path="step5.xyz")
