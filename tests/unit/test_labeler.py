"""The MACE teacher in batches (`MaceSurrogate`): equal to mace's calculator, its head and E0, OOM back-off, NaN isolation."""
import numpy as np
import pytest
import torch
from ase.build import bulk

from pyacemaker.demo_data import cluster_cell, slab_cell, step4_frames, wire_cell
from pyacemaker.oracle.mace_wrapper import MaceSurrogate, ModelError, Rejected, atom_budget_batches, collate
from pyacemaker.utils.io import StructureError


def mixed_structures():
    """Mixed sizes (4 to 108 atoms) and compositions, a 1-atom cell, a cluster with and one without a cell, a slab, a wire."""
    rng = np.random.default_rng(3)
    one_atom = bulk("Ag", "fcc", a=4.06)
    return (step4_frames(8, seed=5) + [one_atom, cluster_cell(rng, with_cell=True), cluster_cell(rng, with_cell=False),
                                       slab_cell(rng), wire_cell(rng)])


def assert_same_labels(labeled, reference, rtol):
    """Energy, forces and (3D-periodic only) stress of `labeled` equal `reference`'s within `rtol` (relative to the largest)."""
    assert labeled.get_potential_energy() == pytest.approx(reference.get_potential_energy(), rel=rtol)
    f = reference.get_forces()
    assert np.abs(labeled.get_forces() - f).max() <= rtol * max(np.abs(f).max(), 1e-3)
    if reference.pbc.all():
        s = reference.get_stress()
        assert np.abs(labeled.get_stress() - s).max() <= rtol * np.abs(s).max()
    else:
        assert "stress" not in labeled.calc.results


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_batched_equals_mace_calculator(model_path, dtype, rtol, compile):
    from mace.calculators import MACECalculator
    structures = mixed_structures()
    teacher = MaceSurrogate(model_path, dtype=dtype, batch_atoms=150, compile=compile)   # several batches of mixed sizes
    assert len(atom_budget_batches([len(a) for a in structures], 150)) >= 3
    labeled = teacher.compute_batch(structures)
    calc = MACECalculator(model_paths=str(model_path), device="cpu", default_dtype=dtype)
    assert len(labeled) == len(structures)
    for atoms, lab in zip(structures, labeled):
        assert lab.get_chemical_symbols() == atoms.get_chemical_symbols()
        np.testing.assert_array_equal(lab.positions, atoms.positions)
        np.testing.assert_array_equal(lab.pbc, atoms.pbc)
        ref = atoms.copy()
        ref.calc = calc
        assert_same_labels(lab, ref, rtol)


def test_empty_batch(surrogate64):
    assert surrogate64.compute_batch([]) == []


def test_provenance_and_e0(surrogate64, model_path):
    lab = surrogate64.compute_batch([bulk("Cu", "fcc", a=3.6, cubic=True)])[0]
    assert {k: lab.info[k] for k in lab.info if k.startswith("mace_")} == {
        "mace_model": model_path.name, "mace_model_sha256": surrogate64.sha256[:16], "mace_head": "Default",
        "mace_dtype": "float64"}
    assert surrogate64.provenance == {k: lab.info[k] for k in lab.info if k.startswith("mace_")}
    assert surrogate64.heads == ["Default"] and surrogate64.head == "Default"
    assert surrogate64.elements == ["Cu", "Ag"] and surrogate64.cutoff == 5.0
    model = torch.load(model_path, weights_only=False)
    e = model.atomic_energies_fn.atomic_energies.detach().double().flatten().numpy()
    assert surrogate64.e0 == {"Cu": pytest.approx(e[0], abs=1e-12), "Ag": pytest.approx(e[1], abs=1e-12)}


def test_head_choice_on_a_two_head_model(multihead_model_path):
    from mace.calculators import MACECalculator
    with pytest.raises(ModelError, match=r"cuag_mace_2heads.model: the model has several heads \['pt_head', 'Default'\]; "
                                         r"choose one"):
        MaceSurrogate(multihead_model_path)
    with pytest.raises(ModelError, match=r"head 'mp' is not in the model \(heads: \['pt_head', 'Default'\]\)"):
        MaceSurrogate(multihead_model_path, head="mp")
    model = torch.load(multihead_model_path, weights_only=False)
    table = model.atomic_energies_fn.atomic_energies.detach().double().numpy()      # one row of E0 per head
    structures = step4_frames(3, seed=2)
    energies, e0 = {}, {}
    for row, head in enumerate(["pt_head", "Default"]):
        teacher = MaceSurrogate(multihead_model_path, dtype="float64", head=head)
        assert teacher.head == head and teacher.provenance["mace_head"] == head
        assert teacher.e0 == {"Cu": pytest.approx(table[row, 0], abs=1e-12), "Ag": pytest.approx(table[row, 1], abs=1e-12)}
        labeled = teacher.compute_batch(structures)
        calc = MACECalculator(model_paths=str(multihead_model_path), device="cpu", default_dtype="float64", head=head)
        for atoms, lab in zip(structures, labeled):
            ref = atoms.copy()
            ref.calc = calc
            assert_same_labels(lab, ref, 1e-10)
        energies[head], e0[head] = [a.get_potential_energy() for a in labeled], teacher.e0
    # the heads really differ (Default was trained on energies shifted by +0.5 eV per Cu, -0.3 eV per Ag)
    assert e0["Default"]["Cu"] - e0["pt_head"]["Cu"] == pytest.approx(0.5, abs=1e-3)
    assert e0["Default"]["Ag"] - e0["pt_head"]["Ag"] == pytest.approx(-0.3, abs=1e-3)
    assert np.abs(np.subtract(energies["Default"], energies["pt_head"])).min() > 0.1


def test_atom_budget_batches():
    assert atom_budget_batches([2] * 10, 8) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert atom_budget_batches([500, 2, 2], 100) == [[0], [1, 2]]
    assert sum(atom_budget_batches(list(range(1, 50)), 64), []) == list(range(49))


def spy_runner(teacher, monkeypatch, fail_if):
    """Failure path: replace the model call by one that records each batch's structure count and raises CUDA's
    out-of-memory error when `fail_if(count)`; returns the list of counts."""
    forward, sizes = teacher.runner, []
    def runner(data, compute_force, compute_stress, training):
        n = int(data["ptr"].numel() - 1)
        sizes.append(n)
        if fail_if(n): raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(data, compute_force=compute_force, compute_stress=compute_stress, training=training)
    monkeypatch.setattr(teacher, "runner", runner)
    return sizes


def test_oom_halves_the_batch_until_it_fits(surrogate64, monkeypatch):
    structures = step4_frames(6, seed=9)
    assert len(atom_budget_batches([len(a) for a in structures], surrogate64.batch_atoms)) == 1   # one batch of 6
    expected = surrogate64.compute_batch(structures)
    sizes = spy_runner(surrogate64, monkeypatch, lambda n: n > 2)
    got = surrogate64.compute_batch(structures)
    assert sizes == [6, 3, 1, 2, 3, 1, 2]        # 6 fails, 3 fails, then 1 + 2 fit; the same for the second half
    for a, b in zip(got, expected):
        assert_same_labels(a, b, 1e-12)


def test_oom_on_a_single_structure_is_raised(surrogate64, monkeypatch):
    sizes = spy_runner(surrogate64, monkeypatch, lambda n: True)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        surrogate64.compute_batch(step4_frames(2, seed=9))
    assert sizes == [2, 1]                       # halved once, then nothing left to halve


def test_other_errors_are_not_retried(surrogate64, monkeypatch):
    calls = []
    def broken(data, **kw):
        calls.append(1)
        raise RuntimeError("shape mismatch")
    monkeypatch.setattr(surrogate64, "runner", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        surrogate64.compute_batch(step4_frames(4, seed=9))
    assert calls == [1]


# --- one broken structure must not poison its batch (issue 13, item 1) ----------------------

@pytest.fixture(scope="module")
def poisoned():
    """20 structures, frame 7 with two atoms on the same spot; all in one batch (the default atom budget)."""
    frames = step4_frames(20, seed=5)
    frames[7].positions[1] = frames[7].positions[0]
    return frames


def test_a_nan_batch_really_spreads(surrogate64, poisoned):
    """The premise: evaluated as one batch, MACE's NaN reaches the forces of the good structures too."""
    batch = collate([surrogate64.graph(a) for a in poisoned])
    out = surrogate64.runner(batch.to_dict(), compute_force=True, compute_stress=True, training=False)
    ptr, f = batch.ptr.numpy(), out["forces"].detach().numpy()
    assert sum(not np.isfinite(f[ptr[i]:ptr[i + 1]]).all() for i in range(20)) > 1


def test_nan_structure_is_isolated_and_others_keep_their_labels(surrogate64, poisoned, monkeypatch):
    sizes = spy_runner(surrogate64, monkeypatch, lambda n: False)
    chunk = next(surrogate64.label_stream([("k", 100, poisoned)], "in.xyz", min_distance=0.0, skip_bad=True))
    assert sizes[0] == 20 and len(sizes) > 1                   # one batch, then split
    assert chunk.key == "k" and len(chunk.labeled) == 19
    [(frame, atoms, reason)] = chunk.rejected
    assert frame == 107 and atoms is poisoned[7] and "MACE returned non-finite" in reason
    monkeypatch.undo()
    for lab, atoms in zip(chunk.labeled, poisoned[:7] + poisoned[8:]):
        np.testing.assert_array_equal(lab.positions, atoms.positions)
        alone = surrogate64.compute_batch([atoms])[0]
        assert_same_labels(lab, alone, 1e-10)


def test_nan_structure_stops_strict_labeling_naming_file_and_frame(surrogate64, poisoned):
    with pytest.raises(StructureError, match=r"^in\.xyz frame 107: MACE returned non-finite .*--skip-bad"):
        surrogate64.compute_batch(poisoned, "in.xyz", first_frame=100)


def test_evaluate_returns_rejected_for_the_culprit_only(surrogate64, poisoned):
    graphs = [surrogate64.graph(a) for a in poisoned[4:10]]
    results = surrogate64.evaluate(graphs, [True] * 6)
    assert [isinstance(r, Rejected) for r in results] == [False, False, False, True, False, False]
    assert all(np.isfinite(r[1]).all() for r in results if not isinstance(r, Rejected))
