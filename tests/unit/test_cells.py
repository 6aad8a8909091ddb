"""Slabs, wires and clusters made fully periodic for pyace: the MACE teacher (float64) gives the same energies and forces
on the original and the converted cell; impossible conversions are refused with the reason, naming file and frame."""
import numpy as np
import pytest
from ase import Atoms
from ase.build import fcc111
from ase.calculators.singlepoint import SinglePointCalculator

from pyacemaker.demo_data import cluster_cell, slab_cell, wire_cell
from pyacemaker.utils.io import (MAX_CELL_LENGTH, CellError, StructureError, cell_kind, periodic_equivalent, table_row,
                                 training_table)

CUTOFF = 5.0            # Å: the bundled teacher's r_max, and the ACE cutoff of the tests' fits
E_TOL, F_TOL = 1e-6, 1e-6   # eV/atom, eV/Å (issue 9, item 1)


def tilted_slab(rng, vacuum):
    """A Cu–Ag(111) slab whose non-periodic c vector leans over (not perpendicular to a and b)."""
    slab = slab_cell(rng, (2, 2, 3), vacuum=vacuum)
    cell = slab.cell.array.copy()
    cell[2] = cell[2] + 0.4 * cell[0] + 0.3 * cell[1]
    slab.set_cell(cell, scale_atoms=False)
    return slab


def slab_txt(rng, vacuum):
    """A slab periodic along a and c, open along b (pbc T F T): the open direction is not the last one."""
    slab = slab_cell(rng, (2, 2, 3), vacuum=vacuum)
    slab.positions = slab.positions[:, [0, 2, 1]]
    slab.set_cell(slab.cell.array[[0, 2, 1]][:, [0, 2, 1]], scale_atoms=False)
    slab.pbc = (True, False, True)
    return slab


def no_cell_cluster(rng):
    return cluster_cell(rng, with_cell=False)


CASES = {   # name: (make(rng), expected kind, whether the given cell already keeps images beyond the cutoff)
    "slab, 16 Å vacuum": (lambda rng: slab_cell(rng, (2, 2, 4), vacuum=8.0), "slab", True),
    "slab, 2 Å vacuum": (lambda rng: slab_cell(rng, (2, 2, 4), vacuum=1.0), "slab", False),
    "slab, no vacuum": (lambda rng: slab_cell(rng, (2, 2, 3), vacuum=0.0), "slab", False),
    "slab, tilted c, 16 Å vacuum": (lambda rng: tilted_slab(rng, 8.0), "slab", True),
    "slab, tilted c, 2 Å vacuum": (lambda rng: tilted_slab(rng, 1.0), "slab", False),
    "slab, pbc T F T, 3 Å vacuum": (lambda rng: slab_txt(rng, 1.5), "slab", False),
    "wire, 16 Å vacuum": (lambda rng: wire_cell(rng, vacuum=8.0), "wire", True),
    "wire, 2 Å vacuum": (lambda rng: wire_cell(rng, vacuum=1.0), "wire", False),
    "cluster in a box": (lambda rng: cluster_cell(rng, with_cell=True, vacuum=6.0), "cluster", True),
    "cluster in a small box": (lambda rng: cluster_cell(rng, with_cell=True, vacuum=1.0), "cluster", False),
    "cluster without a cell": (no_cell_cluster, "cluster", False),
}


@pytest.fixture(scope="module")
def cases():
    rng = np.random.default_rng(21)
    return {name: make(rng) for name, (make, _, _) in CASES.items()}


@pytest.fixture(scope="module")
def teacher_on_both(cases, surrogate64):
    """Teacher (float64) energies and forces on every original and its periodic equivalent, in one batch."""
    originals = list(cases.values())
    converted = [periodic_equivalent(a, CUTOFF) for a in originals]
    labeled = surrogate64.compute_batch(originals + converted)
    n = len(originals)
    return {name: (originals[i], converted[i], labeled[i], labeled[n + i]) for i, name in enumerate(cases)}


@pytest.mark.parametrize("name", list(CASES))
def test_converted_cell_is_periodic_and_keeps_the_atoms(name, cases):
    atoms = cases[name]
    before = atoms.copy()
    out = periodic_equivalent(atoms, CUTOFF)
    assert out.pbc.all() and abs(out.cell.volume) > 1.0
    assert out.cell.handedness == 1                                      # a right-handed cell
    assert cell_kind(atoms) == CASES[name][1] and cell_kind(out) == "bulk"
    assert out.get_chemical_symbols() == atoms.get_chemical_symbols()
    shift = out.positions - atoms.positions                              # a rigid translation, no rotation
    np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-9)
    for i in np.flatnonzero(atoms.pbc):                                  # periodic vectors untouched
        np.testing.assert_array_equal(out.cell[i], atoms.cell[i])
    assert (atoms.positions == before.positions).all() and (atoms.pbc == before.pbc).all()    # input not modified
    assert np.array_equal(atoms.cell.array, before.cell.array)
    if CASES[name][2]:
        np.testing.assert_array_equal(out.cell.array, atoms.cell.array)  # enough vacuum: the cell is kept
        np.testing.assert_array_equal(out.positions, atoms.positions)


@pytest.mark.parametrize("name", list(CASES))
def test_teacher_energies_and_forces_unchanged(name, teacher_on_both):
    """Issue 9 item 1's proof: MACE on the original and on its periodic equivalent, ≤1e-6 eV/atom and ≤1e-6 eV/Å."""
    orig, conv, lab_orig, lab_conv = teacher_on_both[name]
    n = len(orig)
    de = abs(lab_conv.get_potential_energy() - lab_orig.get_potential_energy()) / n
    dforce = np.abs(lab_conv.get_forces() - lab_orig.get_forces()).max()
    assert de <= E_TOL and dforce <= F_TOL, (name, de, dforce)
    assert "stress" not in lab_orig.calc.results                          # the teacher gives no stress for these cells


def test_the_check_can_fail_naive_pbc_changes_the_energy(cases, surrogate64):
    """Switching pbc on without padding puts images within the cutoff: the teacher sees the difference."""
    for name in ["slab, 2 Å vacuum", "wire, 2 Å vacuum", "cluster in a small box", "slab, tilted c, 2 Å vacuum"]:
        atoms = cases[name]
        naive = atoms.copy(); naive.pbc = True
        e_orig, e_naive = [a.get_potential_energy() / len(a) for a in surrogate64.compute_batch([atoms, naive])]
        assert abs(e_naive - e_orig) > 1e-3, name


def test_padding_leaves_the_cutoff_free_across_every_gap(cases):
    from ase.neighborlist import neighbor_list
    for name, atoms in cases.items():
        out = periodic_equivalent(atoms, CUTOFF)
        i, j, S = neighbor_list("ijS", out, CUTOFF)
        periodic = np.array(atoms.pbc, dtype=bool)
        across = (S[:, ~periodic] != 0).any(axis=1)                     # pairs through a padded (non-periodic) face
        assert not across.any(), (name, int(across.sum()))


def test_pyace_accepts_the_converted_cell_and_refuses_the_original(cases):
    from pyace.atomicenvironment import aseatoms_to_atomicenvironment
    slab = cases["slab, 2 Å vacuum"]
    with pytest.raises(ValueError, match="Only fully periodic or non-periodic cell are supported"):
        aseatoms_to_atomicenvironment(slab, cutoff=CUTOFF)
    for name, atoms in cases.items():
        env = aseatoms_to_atomicenvironment(periodic_equivalent(atoms, CUTOFF), cutoff=CUTOFF)
        assert env.n_atoms_real == len(atoms), name


def test_a_fully_periodic_cell_is_copied_unchanged():
    bulk = fcc111("Cu", (2, 2, 3), a=3.6, periodic=True)
    out = periodic_equivalent(bulk, CUTOFF)
    assert out is not bulk
    np.testing.assert_array_equal(out.positions, bulk.positions)
    np.testing.assert_array_equal(out.cell.array, bulk.cell.array)


# ---------------------------------------------------------------- refusals

def test_parallel_periodic_vectors_are_refused():
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [1.8, 0, 0]], cell=[[3.6, 0, 0], [7.2, 0, 0], [0, 0, 10]],
                  pbc=(True, True, False))
    with pytest.raises(CellError, match=r"its periodic cell vectors \(a, b\) are zero or parallel"):
        periodic_equivalent(atoms, CUTOFF)
    wire = Atoms("Cu2", positions=[[0, 0, 0], [1.8, 0, 0]], cell=[0, 10, 10], pbc=(True, False, False))
    with pytest.raises(CellError, match=r"its periodic cell vectors \(a\) are zero or parallel"):
        periodic_equivalent(wire, CUTOFF)


def test_stray_atom_beyond_max_cell_length_is_refused():
    rng = np.random.default_rng(3)
    slab = slab_cell(rng, (2, 2, 3), vacuum=8.0)
    slab.positions[0, 2] += MAX_CELL_LENGTH + 50                        # a stray atom far above the slab
    with pytest.raises(CellError, match=r"its atoms spread over 5\d\d\.\d Å along a non-periodic direction: a cell "
                                        rf"longer than {MAX_CELL_LENGTH:.0f} Å would be needed \(a stray atom\?\)"):
        periodic_equivalent(slab, CUTOFF)
    cluster = Atoms("Cu2", positions=[[0, 0, 0], [0, MAX_CELL_LENGTH, 0]])
    with pytest.raises(CellError, match="a stray atom"):
        periodic_equivalent(cluster, CUTOFF)
    near_limit = Atoms("Cu2", positions=[[0, 0, 0], [0, MAX_CELL_LENGTH - CUTOFF - 10, 0]])
    assert periodic_equivalent(near_limit, CUTOFF).pbc.all()            # a long but possible cell is accepted


def labeled_copy(atoms, stress=None):
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, energy=-1.0, forces=np.zeros((len(atoms), 3)),
                                     **({} if stress is None else {"stress": stress}))
    return out


def test_table_row_refuses_naming_file_and_frame():
    rng = np.random.default_rng(4)
    slab = slab_cell(rng, (2, 2, 3), vacuum=8.0)
    slab.positions[0, 2] += MAX_CELL_LENGTH + 50
    e0 = {"Cu": 0.0, "Ag": 0.0}
    with pytest.raises(StructureError, match=r"^step5.xyz frame 7: cell cannot be made fully periodic for pacemaker: its "
                                             r"atoms spread over .* \(a stray atom\?\)$"):
        table_row(labeled_copy(slab), e0, ["Cu", "Ag"], CUTOFF, "step5.xyz", 7)
    flat = Atoms("Cu2", positions=[[0, 0, 0], [1.8, 0, 0]], cell=[[3.6, 0, 0], [7.2, 0, 0], [0, 0, 10]],
                 pbc=(True, True, False))
    with pytest.raises(StructureError, match=r"^step5.xyz frame 3: cell is zero or degenerate along the periodic "
                                             r"direction\(s\) a, b \(pbc=TTF\)$"):
        table_row(labeled_copy(flat), e0, ["Cu"], CUTOFF, "step5.xyz", 3)
    good = labeled_copy(slab_cell(rng, (2, 2, 3), vacuum=8.0))
    with pytest.raises(StructureError, match=r"^step5.xyz frame 1: cell cannot be made fully periodic"):
        training_table([good, labeled_copy(slab)], e0, ["Cu", "Ag"], CUTOFF, "step5.xyz")


def test_stress_never_in_the_table_for_cells_not_3d_periodic(cases):
    e0 = {"Cu": -0.1, "Ag": -0.2}
    fake_stress = np.full(6, 0.01)                                       # even when a label file carries one
    for name, atoms in cases.items():
        row = table_row(labeled_copy(atoms, fake_stress), e0, ["Cu", "Ag"], CUTOFF, "step5.xyz", 0)
        assert row["stress"] is None, name
        assert row["cell_kind"] == CASES[name][1] and row["ase_atoms"].pbc.all()
    bulk = fcc111("Cu", (2, 2, 3), a=3.6, periodic=True)
    row = table_row(labeled_copy(bulk, fake_stress), e0, ["Cu"], CUTOFF, "step5.xyz", 0)
    np.testing.assert_array_equal(row["stress"], fake_stress)
