"""The bundled MACE teacher: loads with mace's own calculator, and its recorded errors vs EMT are reproduced."""
import numpy as np
import pytest
from ase.build import bulk

from pyacemaker.demo_data import demo_model_card, demo_step4_path, teacher_vs_emt


def test_loads_with_mace_calculator(model_path):
    from mace.calculators import MACECalculator
    atoms = bulk("Cu", "fcc", a=3.59, cubic=True).repeat(2)
    atoms.calc = MACECalculator(model_paths=str(model_path), device="cpu", default_dtype="float64")
    assert np.isfinite(atoms.get_potential_energy())
    assert np.abs(atoms.get_forces()).max() < 1e-3          # perfect fcc: forces vanish by symmetry


def test_recorded_errors_vs_emt_are_reproduced(model_path):
    recorded = demo_model_card()["test_vs_emt"]
    measured = teacher_vs_emt(model_path, n_test=recorded["n_test"])
    for key in ("energy_rmse_meV_per_atom", "forces_rmse_meV_per_A", "stress_rmse_GPa"):
        assert measured[key] == pytest.approx(recorded[key], rel=1e-6), key
    assert recorded["energy_rmse_meV_per_atom"] < 10 and recorded["forces_rmse_meV_per_A"] < 200


def test_bundled_files_are_small():
    card_model = demo_step4_path().parent / "cuag_mace.model"
    assert card_model.stat().st_size < 400_000
    assert demo_step4_path().stat().st_size < 3_000_000
