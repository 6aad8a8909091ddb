"""The data users bring (slabs, wires, clusters, a mixed set) and the bundled two-head MACE: real generators, real model."""
import numpy as np
import pytest

from pyacemaker.demo_data import (HEAD_SHIFTS, MIN_DISTANCE, cluster_cell, demo_model_card, demo_model_path, min_distance,
                                  mixed_step4_frames, multihead_card, slab_cell, wire_cell)
from pyacemaker.oracle.mace_wrapper import MaceSurrogate

HEADS = ["pt_head", "Default"]
PBC = {"bulk": (True, True, True), "slab": (True, True, False), "wire": (True, False, False), "cluster": (False, False, False)}


def same(a, b) -> bool:
    return (list(a.symbols) == list(b.symbols) and np.array_equal(a.positions, b.positions)
            and np.array_equal(a.cell.array, b.cell.array) and np.array_equal(a.pbc, b.pbc))


@pytest.fixture(scope="module")
def mixed():
    return mixed_step4_frames(20, seed=0)


@pytest.mark.parametrize("make, pbc", [(slab_cell, PBC["slab"]), (wire_cell, PBC["wire"]),
                                       (lambda rng: cluster_cell(rng, with_cell=True), PBC["cluster"]),
                                       (lambda rng: cluster_cell(rng, with_cell=False), PBC["cluster"])])
def test_generators_give_pbc_distances_and_reproduce(make, pbc):
    frames = [make(np.random.default_rng(seed)) for seed in range(6)]
    for at in frames:
        assert tuple(at.pbc) == pbc
        assert set(at.get_chemical_symbols()) <= {"Cu", "Ag"}
        assert min_distance(at) >= 1.9
    assert all(same(a, make(np.random.default_rng(seed))) for seed, a in enumerate(frames))
    assert not same(frames[0], frames[1])


def test_slab_has_vacuum_on_both_sides_and_clusters_with_and_without_cell():
    slab = slab_cell(np.random.default_rng(1))
    z = slab.positions[:, 2]
    assert z.min() > 7 and slab.cell[2, 2] - z.max() > 7
    boxed, bare = cluster_cell(np.random.default_rng(1), with_cell=True), cluster_cell(np.random.default_rng(1), with_cell=False)
    assert boxed.cell.volume > 0 and bare.cell.volume == 0 and 13 <= len(bare) <= 55


def test_mixed_set_kinds_pbc_distance_and_seed(mixed):
    kinds = [a.info["config_type"] for a in mixed]
    assert {k: kinds.count(k) for k in PBC} == {"bulk": 12, "slab": 4, "wire": 2, "cluster": 2}
    assert all(tuple(a.pbc) == PBC[a.info["config_type"]] for a in mixed)
    assert min(min_distance(a) for a in mixed) >= MIN_DISTANCE
    assert all(same(a, b) for a, b in zip(mixed, mixed_step4_frames(20, seed=0)))
    assert not all(same(a, b) for a, b in zip(mixed, mixed_step4_frames(20, seed=1)))


@pytest.fixture(scope="module")
def heads():
    return {h: MaceSurrogate(demo_model_path(heads=2), head=h) for h in HEADS}


def test_two_head_model_is_small_float32_with_both_heads(heads):
    path = demo_model_path(heads=2)
    assert path.stat().st_size <= 300_000
    assert heads["pt_head"].heads == HEADS
    import torch
    assert torch.load(path, map_location="cpu", weights_only=False).atomic_energies_fn.atomic_energies.dtype == torch.float32


def test_no_head_raises_naming_both_heads():
    with pytest.raises(ValueError, match=r"\['pt_head', 'Default'\]"):
        MaceSurrogate(demo_model_path(heads=2))


def test_e0s_differ_by_the_designed_shift(heads):
    for el, shift in HEAD_SHIFTS["Default"].items():
        assert heads["Default"].e0[el] - heads["pt_head"].e0[el] == pytest.approx(shift, abs=1e-5)
    assert heads["pt_head"].e0 == pytest.approx({"Cu": 3.51, "Ag": 2.96}, abs=1e-5)   # EMT isolated atoms


@pytest.mark.parametrize("head", HEADS)
def test_compute_batch_equals_mace_calculator_per_head(heads, mixed, head):
    from mace.calculators import MACECalculator
    frames = mixed[:6] + [cluster_cell(np.random.default_rng(2), with_cell=w) for w in (True, False)]
    assert {a.info["config_type"] for a in frames} == set(PBC)        # every kind; clusters with and without a cell
    labeled = heads[head].compute_batch(frames)
    calc = MACECalculator(model_paths=str(demo_model_path(heads=2)), device="cpu", head=head, default_dtype="float64")
    for at, lab in zip(frames, labeled):
        ref = at.copy(); ref.calc = calc
        e, f = ref.get_potential_energy(), ref.get_forces()
        assert np.isfinite(lab.get_potential_energy()) and np.isfinite(lab.get_forces()).all()
        assert lab.get_potential_energy() == pytest.approx(e, rel=1e-8)
        np.testing.assert_allclose(lab.get_forces(), f, rtol=1e-8, atol=1e-10)
        if at.pbc.all():
            np.testing.assert_allclose(lab.get_stress(), ref.get_stress(), rtol=1e-8, atol=1e-12)
        assert lab.info["mace_head"] == head


def test_heads_differ_by_about_the_shift(heads, mixed):
    pt, ft = heads["pt_head"].compute_batch(mixed), heads["Default"].compute_batch(mixed)
    gap = [(b.get_potential_energy() - a.get_potential_energy() - sum(HEAD_SHIFTS["Default"][s] for s in a.symbols)) / len(a)
           for a, b in zip(pt, ft)]
    assert np.max(np.abs(gap)) < 0.1                                 # eV/atom: same physics per head, shifted
    assert not np.allclose([a.get_potential_energy() for a in pt], [b.get_potential_energy() for b in ft], atol=1.0)


def test_model_card_is_reproduced():
    recorded, measured = demo_model_card(heads=2), multihead_card(demo_model_path(heads=2))
    assert measured["heads"] == recorded["heads"] == HEADS
    for h in HEADS:
        assert measured["e0_eV"][h] == pytest.approx(recorded["e0_eV"][h], rel=1e-9)
        for key, value in recorded["test_vs_labels"][h].items():
            assert measured["test_vs_labels"][h][key] == pytest.approx(value, rel=1e-6), (h, key)
        assert recorded["test_vs_labels"][h]["energy_rmse_meV_per_atom"] < 100
