"""Speed table (report.speed): the rows, their keys and ratios, the MACE-MP-0-small-sized model, MD steps/s. No timing assertions."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyacemaker.demo_data import step4_frames
from pyacemaker.report.speed import (MP0_ATOMIC_NUMBERS, SPEED_KEYS, atoms_per_second, format_speed_table, mace_calculator,
                                     mace_mp0_small_like, md_steps_per_second, speed_table)

BASIS = {"deltaSplineBins": 0.001, "elements": ["Cu", "Ag"],
         "embeddings": {"ALL": {"npot": "FinnisSinclairShiftedScaled", "fs_parameters": [1, 1, 1, 0.5], "ndensity": 2}},
         "bonds": {"ALL": {"radbase": "SBessel", "radparameters": [5.25], "rcut": 5.0, "dcut": 0.01}},
         "functions": {"number_of_functions_per_element": 10, "ALL": {"nradmax_by_orders": [6, 2], "lmax_by_orders": [0, 1]}}}


@pytest.fixture(scope="module")
def ace_yace(tmp_path_factory):
    "An untrained ACE potential deployed as .yace: evaluation cost does not depend on the coefficient values."
    from pyace import create_multispecies_basis_config
    out = tmp_path_factory.mktemp("ace")
    create_multispecies_basis_config(BASIS).save(str(out / "ace.yaml"))
    subprocess.run([str(Path(sys.executable).parent / "pace_yaml2yace"), str(out / "ace.yaml"), "-o", str(out / "ace.yace")],
                   check=True, capture_output=True)
    return out / "ace.yace"


@pytest.fixture(scope="module")
def frames():
    return step4_frames(8, seed=5)


@pytest.fixture(scope="module")
def rows(ace_yace, surrogate32, frames):
    md_atoms = max(frames, key=len)
    return speed_table(ace_yace, surrogate32, frames, md_atoms=md_atoms, min_time_s=0.05, md_min_time_s=0.05)


def test_speed_table_rows(rows, frames):
    assert [r["model"].split(" (")[0] for r in rows] == ["ACE", "MACE teacher", "MACE-MP-0 small architecture"]
    for r in rows:
        assert list(r) == SPEED_KEYS
        assert r["atoms_per_s"] > 0 and r["md_steps_per_s"] > 0
        assert r["ace_speedup"] == pytest.approx(rows[0]["atoms_per_s"] / r["atoms_per_s"])
        assert r["md_ace_speedup"] == pytest.approx(rows[0]["md_steps_per_s"] / r["md_steps_per_s"])
        assert r["md_atoms"] == max(len(a) for a in frames) and r["threads"] >= 1
    assert rows[0]["ace_speedup"] == 1.0
    assert "random weights" in rows[2]["note"] and "batched labeler" in rows[1]["evaluator"]


def test_speed_table_without_md_or_mp0(ace_yace, surrogate32, frames):
    rows = speed_table(ace_yace, surrogate32, frames[:3], mp0_small=False, min_time_s=0.01)
    assert len(rows) == 2 and rows[1]["md_steps_per_s"] is None and rows[1]["md_ace_speedup"] is None
    assert "MD steps/s" not in format_speed_table(rows)


def test_format_speed_table(rows):
    text = format_speed_table(rows).splitlines()
    assert len(text) == 2 + len(rows)
    assert text[0].startswith("| model | atoms/s | ACE speed-up | MD steps/s (")
    assert all(line.count("|") == text[0].count("|") for line in text)
    assert "random weights: timing only" in text[-1]


def test_mp0_small_like(tmp_path, surrogate32):
    from pyacemaker.oracle.mace_wrapper import MaceSurrogate
    assert len(MP0_ATOMIC_NUMBERS) == 89
    import torch
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        path = mace_mp0_small_like(tmp_path / "mp0.model", ["Cu", "Po"])   # Po (84) is not among MPtrj's 89: added
        assert torch.get_default_dtype() == torch.float64                   # the builder restores the caller's default
    finally:
        torch.set_default_dtype(before)
    model = MaceSurrogate(path, dtype="float32")
    assert len(model.elements) == 90 and "Po" in model.elements and model.cutoff == 6.0
    n = sum(p.numel() for p in model.model.parameters())
    assert 3.5e6 < n < 4.3e6                                               # MACE-MP-0 small: 3.85 M for 89 elements
    assert model.model.num_interactions.item() == 2
    out = model.compute_batch(step4_frames(2, seed=1))
    assert all(np.isfinite(a.get_forces()).all() for a in out)


def test_atoms_per_second_counts_passes(frames):
    calls = []
    rate = atoms_per_second(lambda fr: calls.append(len(fr)), frames, min_time_s=0.0, warmup=2)
    assert calls == [2, len(frames)] and rate > 0                          # warm-up, then at least one full pass
    calls.clear()
    atoms_per_second(lambda fr: calls.append(len(fr)), frames, min_time_s=0.02, warmup=1)
    assert calls[0] == 1 and len(calls) > 2 and set(calls[1:]) == {len(frames)}   # passes repeated until min_time_s


def test_md_steps_per_second_and_mace_calculator(surrogate32, frames):
    atoms = frames[0]
    calc = mace_calculator(surrogate32)
    at = atoms.copy(); at.calc = calc
    ref = surrogate32.compute_batch([atoms])[0]
    assert at.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-3)
    positions = atoms.positions.copy()
    assert md_steps_per_second(calc, atoms, min_time_s=0.0, warmup_steps=1) > 0   # at least 3 timed steps
    assert np.array_equal(atoms.positions, positions)                      # runs on a copy
