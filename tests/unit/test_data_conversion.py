"""Labeled structures -> what pacemaker reads: the extxyz copy (header `energy`/`forces` columns), pacemaker's table
(columns, energy_corrected = E − ΣE0, gzip pickle), stress/virial conventions, mace's REF_ keys, every bad-label message."""
import gzip
import itertools

import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from pyacemaker.demo_data import demo_step4_path, mixed_step4_frames
from pyacemaker.utils.io import (TABLE_COLUMNS, ExistingOutput, StructureError, frame_labels, iter_frames,
                                 read_training_table, stress_to_virial, table_frames, table_row, training_table,
                                 virial_to_stress, write_frames, write_pacemaker_extxyz, write_training_table)

E0 = {"Cu": -0.3, "Ag": -0.2}


def emt_frames(n=3, seed=0):
    """Small periodic Cu–Ag cells labeled by EMT (energy, forces, stress as calculator results)."""
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


#: two float32 labelings of the same frames agree to float32 precision, not bit for bit (seen in fresh-clone CI runs:
#: forces 2e-7 eV/Å and stress 1.9e-8 eV/Å³ apart, about 1e-6 relative). Bounds 10-50x above that and still far below
#: any mix-up of keys (labels of another frame or field differ by 1e-2 and more): energy (eV), forces (eV/Å), stress (eV/Å³)
F32_ENERGY, F32_FORCE, F32_STRESS = 1e-4, 1e-5, 1e-7


@pytest.fixture(scope="module")
def mixed_labeled(surrogate32):
    """Bulk, slab, wire and cluster structures labeled by the real MACE teacher (ASE keys and mace's REF_ keys)."""
    frames = list(itertools.islice(iter_frames(demo_step4_path()), 3)) + mixed_step4_frames(8, seed=2)
    return surrogate32.compute_batch(frames), surrogate32.compute_batch(frames, keys="mace"), surrogate32.e0


# ---------------------------------------------------------------- pacemaker's table

def test_table_columns_dtypes_and_energy_corrected():
    frames = emt_frames()
    df = training_table(frames, E0, path="step5.xyz")
    assert list(df.columns) == TABLE_COLUMNS == ["name", "ase_atoms", "energy", "energy_corrected", "forces", "stress",
                                                  "NUMBER_OF_ATOMS", "cell_kind"]
    assert list(df.name) == ["step5.xyz:0", "step5.xyz:1", "step5.xyz:2"]
    assert df.energy.dtype == np.float64 and df.energy_corrected.dtype == np.float64
    assert all(isinstance(a, Atoms) and a.calc is None and a.pbc.all() for a in df.ase_atoms)
    for f, a in zip(df.forces, frames):
        assert isinstance(f, np.ndarray) and f.shape == (len(a), 3) and f.dtype == np.float64
        np.testing.assert_array_equal(f, a.get_forces())
    assert all(s.shape == (6,) for s in df.stress) and list(df.cell_kind) == ["bulk"] * 3
    assert list(df.NUMBER_OF_ATOMS) == [len(a) for a in frames]
    for row, a in zip(df.itertuples(), frames):
        symbols = a.get_chemical_symbols()
        e0_sum = symbols.count("Cu") * E0["Cu"] + symbols.count("Ag") * E0["Ag"]
        assert row.energy == a.get_potential_energy()
        assert row.energy_corrected == pytest.approx(a.get_potential_energy() - e0_sum, abs=1e-12)


def test_table_of_teacher_labels_all_cell_kinds(mixed_labeled):
    labeled, _, e0 = mixed_labeled
    df = training_table(labeled, e0, elements=["Cu", "Ag"], cutoff=5.0, path="step5.xyz")
    assert set(df.cell_kind) == {"bulk", "slab", "wire", "cluster"}
    for row, a in zip(df.itertuples(), labeled):
        assert row.energy_corrected == pytest.approx(a.get_potential_energy() - sum(e0[s] for s in a.symbols), abs=1e-9)
        assert row.ase_atoms.pbc.all()                                 # pacemaker sees only fully periodic cells
        assert (row.stress is not None) == bool(a.pbc.all())            # stress only for 3D-periodic cells
        assert row.NUMBER_OF_ATOMS == len(a) == len(row.ase_atoms)


def test_pickle_is_gzip_protocol4_and_refuses_overwrite(tmp_path):
    p = write_training_table(training_table(emt_frames(), E0), tmp_path / "data.pckl.gzip")
    with gzip.open(p, "rb") as f:
        head = f.read(2)
    assert head[0] == 0x80 and head[1] == 4                          # pickle protocol 4 (pacemaker's pandas reads it)
    df = pd.read_pickle(p, compression="gzip")
    assert len(df) == 3 and list(df.columns) == TABLE_COLUMNS
    with pytest.raises(ExistingOutput, match="data.pckl.gzip already exists"):
        write_training_table(df, p)
    write_training_table(df.iloc[:1], p, overwrite=True)
    assert len(read_training_table(p)) == 1


def test_table_frames_inverts_the_table():
    frames = emt_frames()
    back = table_frames(training_table(frames, E0, path="s.xyz"))
    for a, b in zip(frames, back):
        assert b.get_potential_energy() == a.get_potential_energy() and b.info["name"].startswith("s.xyz:")
        np.testing.assert_array_equal(b.get_forces(), a.get_forces())
        np.testing.assert_array_equal(b.get_stress(), a.get_stress())
        np.testing.assert_array_equal(b.positions, a.positions)


# ---------------------------------------------------------------- the extxyz copy

def header(line):
    return line.split("Properties=")[1].split()[0], line


def test_extxyz_header_has_energy_and_forces_columns(tmp_path, mixed_labeled):
    labeled, _, _ = mixed_labeled
    frames = [a.copy() for a in labeled]
    for a, src in zip(frames, labeled): a.calc = src.calc
    frames[0].info["config_type"] = "junk"; frames[0].arrays["momenta"] = np.ones((len(frames[0]), 3))
    p = write_pacemaker_extxyz(frames, tmp_path / "train.xyz")
    comments = [line for line in p.read_text().splitlines() if "Properties=" in line]
    assert len(comments) == len(frames)
    for line, a in zip(comments, frames):
        assert line.split("Properties=")[1].split()[0] == "species:S:1:pos:R:3:forces:R:3"
        assert " energy=" in line
        assert (" stress=" in line) == bool(a.pbc.all())               # no stress for slabs, wires, clusters
        for junk in ("config_type", "momenta", "mace_model", "REF_"):
            assert junk not in line
    for a, b in zip(frames, iter_frames(p)):
        assert b.get_potential_energy() == pytest.approx(a.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-7)   # extxyz keeps 8 decimals
        assert (b.pbc == a.pbc).all() and np.allclose(b.cell, a.cell)


def test_extxyz_from_mace_keys_gets_ase_columns(tmp_path, mixed_labeled):
    ase_keys, mace_keys, _ = mixed_labeled
    assert mace_keys[0].calc is None and "REF_energy" in mace_keys[0].info and "REF_forces" in mace_keys[0].arrays
    p = write_pacemaker_extxyz(mace_keys, tmp_path / "train.xyz")
    text = p.read_text()
    assert "REF_" not in text and text.count("species:S:1:pos:R:3:forces:R:3") == len(mace_keys)
    for a, b in zip(ase_keys, iter_frames(p)):       # two float32 runs of the teacher: equal to float32 precision
        assert b.get_potential_energy() == pytest.approx(a.get_potential_energy(), abs=F32_ENERGY)
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=F32_FORCE)


def test_extxyz_refuses_overwrite_and_names_bad_frame(tmp_path):
    p = write_pacemaker_extxyz(emt_frames(), tmp_path / "train.xyz")
    with pytest.raises(ExistingOutput):
        write_pacemaker_extxyz(emt_frames(), p)
    bad = emt_frames(2)
    bad[1] = relabel(bad[1], energy=1.0)
    with pytest.raises(StructureError, match=r"other.xyz frame 1: no forces label"):
        write_pacemaker_extxyz(bad, tmp_path / "other.xyz")
    assert not (tmp_path / "other.xyz").exists()


# ---------------------------------------------------------------- REF_ keys

def test_frame_labels_reads_mace_ref_keys(mixed_labeled):
    ase_keys, mace_keys, _ = mixed_labeled
    for i, (a, m) in enumerate(zip(ase_keys, mace_keys)):
        ea, fa, sa = frame_labels(a, "x.xyz", i)
        em, fm, sm = frame_labels(m, "x.xyz", i)
        assert em == pytest.approx(ea, abs=F32_ENERGY)
        np.testing.assert_allclose(fm, fa, atol=F32_FORCE)
        if a.pbc.all(): np.testing.assert_allclose(sm, sa, atol=F32_STRESS)
        else: assert sa is None and sm is None


def test_ref_keys_survive_a_file_and_make_the_same_table(tmp_path, mixed_labeled):
    ase_keys, mace_keys, e0 = mixed_labeled
    back = list(iter_frames(write_frames(mace_keys, tmp_path / "step5_ref.xyz")))
    assert all(a.calc is None or "energy" not in a.calc.results for a in back)     # nothing under ASE's names
    t_ref = training_table(back, e0, ["Cu", "Ag"], 5.0, "s.xyz")
    t_ase = training_table(ase_keys, e0, ["Cu", "Ag"], 5.0, "s.xyz")
    np.testing.assert_allclose(t_ref.energy_corrected, t_ase.energy_corrected, atol=F32_ENERGY)
    for a, b in zip(t_ref.forces, t_ase.forces):
        np.testing.assert_allclose(a, b, atol=F32_FORCE)
    for a, b in zip(t_ref.stress, t_ase.stress):
        assert (a is None) == (b is None)
        if a is not None: np.testing.assert_allclose(a, b, atol=F32_STRESS)


def test_ref_stress_as_3x3_is_read_as_voigt():
    at = emt_frames(1)[0]
    e, f, s = frame_labels(at, "x.xyz", 0)
    ref = Atoms(at.symbols, at.positions, cell=at.cell, pbc=True)
    ref.info.update(REF_energy=e, REF_stress=at.get_stress(voigt=False))
    ref.arrays["REF_forces"] = f
    e2, f2, s2 = frame_labels(ref, "x.xyz", 0)
    assert e2 == e
    np.testing.assert_array_equal(f2, f)
    np.testing.assert_allclose(s2, s, atol=1e-15)


# ---------------------------------------------------------------- stress and virial

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


def test_virial_in_info_becomes_stress_only_for_periodic_cells():
    at = emt_frames(1)[0]
    e, f, s = frame_labels(at, "x.xyz", 0)
    bare = Atoms(at.symbols, at.positions, cell=at.cell, pbc=True)
    bare.calc = SinglePointCalculator(bare, energy=e, forces=f)
    bare.info["virial"] = stress_to_virial(s, at.get_volume())
    np.testing.assert_allclose(frame_labels(bare, "x.xyz", 0)[2], s, atol=1e-14)
    bare.pbc = (True, True, False)                                # no volume, no stress
    assert frame_labels(bare, "x.xyz", 0)[2] is None


# ---------------------------------------------------------------- every bad label, named

def relabel(at, **res):
    b = Atoms(at.symbols, at.positions, cell=at.cell, pbc=at.pbc)
    if res: b.calc = SinglePointCalculator(b, **res)
    return b


BAD_LABELS = [
    (lambda a: relabel(a, forces=np.zeros((len(a), 3))), r"step5.xyz frame 1: no energy label"),
    (lambda a: relabel(a, energy=1.0), r"step5.xyz frame 1: no forces label"),
    (lambda a: relabel(a, energy=1.0, forces=np.zeros((len(a) - 1, 3))),
     r"step5.xyz frame 1: forces have shape \(3, 3\), expected \(4, 3\)"),
    (lambda a: relabel(a, energy=np.nan, forces=np.zeros((len(a), 3))), r"step5.xyz frame 1: energy is not finite \(nan\)"),
    (lambda a: relabel(a, energy=np.inf, forces=np.zeros((len(a), 3))), r"step5.xyz frame 1: energy is not finite \(inf\)"),
    (lambda a: relabel(a, energy=1.0, forces=np.where(np.arange(12).reshape(4, 3) == 7, np.nan, 0.0)),
     r"step5.xyz frame 1: forces of atom 2 are not finite \(NaN or inf\)"),
    (lambda a: relabel(a, energy=1.0, forces=np.zeros((len(a), 3)), stress=np.full(6, np.nan)),
     r"step5.xyz frame 1: stress must be 6 \(Voigt\) or 9 finite numbers"),
    (lambda a: relabel(a, energy=1.0, forces=np.zeros((len(a), 3)), stress=np.zeros(4)),
     r"step5.xyz frame 1: stress must be 6 \(Voigt\) or 9 finite numbers, got \(4,\)"),
    (lambda a: Atoms(cell=a.cell, pbc=True), r"step5.xyz frame 1: has no atoms"),
    (lambda a: relabel(Atoms("Au4", positions=a.positions, cell=a.cell, pbc=True), energy=1.0, forces=np.zeros((4, 3))),
     r"step5.xyz frame 1: element Au is not in training.elements \(knows Ag, Cu\)"),
    (lambda a: relabel(Atoms(a.symbols, np.where(np.arange(12).reshape(4, 3) == 4, np.nan, a.positions), cell=a.cell,
                             pbc=True), energy=1.0, forces=np.zeros((4, 3))),
     r"step5.xyz frame 1: positions of atom 1 are not finite"),
]


@pytest.mark.parametrize("make,match", BAD_LABELS)
def test_bad_labels_name_file_frame_and_field(make, match):
    good = emt_frames(1)[0]
    with pytest.raises(StructureError, match=match) as e:
        training_table([good, make(emt_frames(1)[0])], E0, path="step5.xyz")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("make,match", BAD_LABELS[:8])
def test_table_row_names_the_frame_it_is_given(make, match):
    with pytest.raises(StructureError, match=match.replace("frame 1", "frame 41")):
        table_row(make(emt_frames(1)[0]), E0, ["Cu", "Ag"], 5.0, "step5.xyz", 41)


def test_empty_input_rejected():
    with pytest.raises(StructureError, match="step5.xyz: contains no structures"):
        training_table([], E0, path="step5.xyz")
