"""Mock mode's fitting core: a linear ACE fitted with pyace.linearacefit, without TensorFlow, on teacher-labeled data."""
import itertools
import subprocess
import sys

import numpy as np
import pytest

from pyacemaker.demo_data import demo_step4_path
from pyacemaker.domain_models.config import AceTrainingConfig
from pyacemaker.trainer.ace_trainer import split_train_test
from pyacemaker.trainer.linear_fit import (MAX_LINEAR_FUNCTIONS, fit_linear_ace, fit_metrics, linear_basis,
                                           linear_potential)
from pyacemaker.trainer.ace_trainer import yaml_to_yace
from pyacemaker.utils.io import iter_frames, read_training_table, table_frames, training_table, write_training_table

CFG = AceTrainingConfig(elements=["Cu", "Ag"], max_basis_grade=30, kappa=0.1, seed=3)
NO_TENSORFLOW = 'import sys; sys.modules["tensorflow"] = None; '  # from here on, `import tensorflow` raises ImportError
PRED_COLUMNS = {"name", "energy", "energy_corrected", "forces", "NUMBER_OF_ATOMS", "energy_pred", "forces_pred"}


def run_python(code: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def tables(surrogate32):
    """48 bundled step-4 structures labeled by the MACE teacher, split 80/20 like the pacemaker wrapper does."""
    frames = surrogate32.compute_batch(list(itertools.islice(iter_frames(demo_step4_path()), 48)))
    return split_train_test(training_table(frames, surrogate32.e0), test_size=0.2, seed=1)


@pytest.fixture(scope="module")
def fitted(tables, tmp_path_factory):
    """One real linear fit (and .yace conversion) in a fresh Python where `import tensorflow` fails."""
    run_dir = tmp_path_factory.mktemp("linear") / "fit"
    write_training_table(tables[0], run_dir / "train.pckl.gzip")
    write_training_table(tables[1], run_dir / "test.pckl.gzip")
    code = NO_TENSORFLOW + f"""
from pyacemaker.domain_models.config import AceTrainingConfig
from pyacemaker.trainer.ace_trainer import yaml_to_yace
from pyacemaker.trainer.linear_fit import fit_linear_ace
pot = fit_linear_ace({str(run_dir)!r}, AceTrainingConfig.model_validate_json({CFG.model_dump_json()!r}))
yaml_to_yace(pot, {str(run_dir / "output_potential.yace")!r})
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorpotential", "tf_keras", "keras")
             and sys.modules[m] is not None))
"""
    return run_dir, run_python(code)


def test_fit_runs_where_tensorflow_cannot_be_imported(fitted):
    run_dir, r = fitted
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_writes_pacemakers_artifacts(fitted, tables):
    run_dir, _ = fitted
    names = {p.name for p in run_dir.iterdir()}
    assert {"output_potential.yaml", "train_pred.pckl.gzip", "test_pred.pckl.gzip", "metrics.txt", "test_metrics.txt",
            "log.txt"} <= names
    for split, ref in zip(["train", "test"], tables):
        pred = read_training_table(run_dir / f"{split}_pred.pckl.gzip")
        assert PRED_COLUMNS <= set(pred.columns)
        assert list(pred.name) == list(ref.name)
        assert [np.shape(f) for f in pred.forces_pred] == [(n, 3) for n in ref.NUMBER_OF_ATOMS]
        assert np.isfinite(pred.energy_pred).all()
    assert "RMSE energy" in (run_dir / "log.txt").read_text()
    assert "forces_rmse_meV_per_A" in (run_dir / "test_metrics.txt").read_text()


def test_held_out_forces_clearly_better_than_zero_forces(fitted):
    run_dir, _ = fitted
    m = fit_metrics(read_training_table(run_dir / "test_pred.pckl.gzip"))
    assert m["forces_rmse_meV_per_A"] < m["forces_rms_meV_per_A"] / np.sqrt(2)  # half the force variance explained
    pred = read_training_table(run_dir / "test_pred.pckl.gzip")
    epa = pred.energy_corrected / pred.NUMBER_OF_ATOMS
    assert m["energy_rmse_meV_per_atom"] < 1e3 * epa.std()  # better than a constant energy per atom


def test_yace_loads_and_reproduces_the_yaml_and_stored_predictions(fitted):
    from pyace import PyACECalculator
    run_dir, _ = fitted
    from_yaml = PyACECalculator(str(run_dir / "output_potential.yaml"))
    from_yace = PyACECalculator(str(run_dir / "output_potential.yace"))
    pred = read_training_table(run_dir / "test_pred.pckl.gzip")
    for atoms, row in zip(table_frames(read_training_table(run_dir / "test.pckl.gzip")), pred.itertuples()):
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = from_yaml, from_yace
        ea, fa, eb, fb = a.get_potential_energy(), a.get_forces(), b.get_potential_energy(), b.get_forces()
        assert np.isfinite(eb) and np.isfinite(fb).all()
        np.testing.assert_allclose([eb, *fb.ravel()], [ea, *fa.ravel()], atol=1e-8)
        np.testing.assert_allclose([ea, *fa.ravel()], [row.energy_pred, *np.ravel(row.forces_pred)], atol=1e-8)


def test_yaml_to_yace_in_process(fitted, tmp_path):
    from pyace import ACECTildeBasisSet
    run_dir, _ = fitted
    yace = yaml_to_yace(run_dir / "output_potential.yaml", tmp_path / "pot.yace")
    assert yace.read_text() == (run_dir / "output_potential.yace").read_text()
    assert sorted(ACECTildeBasisSet(str(yace)).elements_name) == ["Ag", "Cu"]


def test_basis_is_derived_from_the_config(fitted):
    from pyace import ACEBBasisSet, BBasisConfiguration
    run_dir, _ = fitted
    for bconf in [linear_basis(CFG), BBasisConfiguration(str(run_dir / "output_potential.yaml"))]:
        basis = ACEBBasisSet(bconf)
        assert sorted(basis.elements_name) == sorted(CFG.elements)
        assert basis.cutoffmax == CFG.cutoff
        assert 0 < bconf.total_number_of_functions <= len(CFG.elements) * CFG.max_basis_grade
        for block in bconf.funcspecs_blocks:
            if len(block.block_name.split()) == 1:  # the element's own block: its embedding
                assert (block.ndensityi, list(block.fs_parameters)) == (1, [1.0, 1.0])
            assert list(block.radparameters) == [CFG.radparameter]
    pot = BBasisConfiguration(str(run_dir / "output_potential.yaml"))
    assert pot.metadata["fit"] == "linear ACE (mock mode)"
    assert np.abs(ACEBBasisSet(pot).basis_coeffs).max() > 0
    big = CFG.model_copy(update={"max_basis_grade": 1000})
    assert linear_potential(big)["functions"]["number_of_functions_per_element"] == MAX_LINEAR_FUNCTIONS


def test_active_set_builds_without_tensorflow(fitted):
    from pyace import PyACECalculator
    run_dir, _ = fitted
    code = NO_TENSORFLOW + 'from pyace.cli.pace_activeset import main; sys.argv[0] = "pace_activeset"; main()'
    r = run_python(code, "-d", "train.pckl.gzip", "output_potential.yaml", "-a", "-g", "1.0", cwd=run_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    calc = PyACECalculator(str(run_dir / "output_potential.yaml"))
    calc.set_active_set(str(run_dir / "output_potential.asi"))
    gamma = []
    for atoms in table_frames(read_training_table(run_dir / "train.pckl.gzip")):
        atoms.calc = calc
        atoms.get_potential_energy()
        gamma.append(calc.results["gamma"])
    assert np.concatenate(gamma).max() <= 1 + 1e-6


def test_in_process_fit_without_test_set_and_with_a_smaller_cap(tables, tmp_path):
    if "tensorflow" in sys.modules: pytest.skip("another test already imported tensorflow in this process")
    write_training_table(tables[0], tmp_path / "train.pckl.gzip")
    pot = fit_linear_ace(tmp_path, CFG, max_functions=8)
    assert "tensorflow" not in sys.modules
    from pyace import BBasisConfiguration
    assert BBasisConfiguration(str(pot)).total_number_of_functions <= 2 * 8
    names = {p.name for p in tmp_path.iterdir()}
    assert {"output_potential.yaml", "train_pred.pckl.gzip", "metrics.txt", "log.txt"} <= names
    assert not names & {"test_pred.pckl.gzip", "test_metrics.txt"}


def test_missing_training_table_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.pckl.gzip"):
        fit_linear_ace(tmp_path, CFG)
