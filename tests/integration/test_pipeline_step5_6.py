"""Seed §5.2: step-4 data -> step 5 with the bundled MACE model -> step 6 with the real pacemaker."""
import numpy as np
import pytest
from ase.io import read

from pyacemaker.utils.io import read_training_table, table_frames


def test_deliverables_exist(fitted_pipeline):
    cfg, labels, fit = fitted_pipeline
    models = cfg.work_dir / "models"
    assert fit["potential"] == models / "ace_base.yace" and fit["potential"].stat().st_size > 0
    for name in ["ace_base.yaml", "ace_base.asi", "ace_base_train_metrics.txt", "ace_base_test_metrics.txt",
                 "ace_base_train_pred.pckl.gzip", "ace_base_test_pred.pckl.gzip", "ace_base_input.yaml"]:
        assert (models / name).exists(), name
    assert labels["n_structures"] == 60
    assert len(read(cfg.path(cfg.step5_file), ":")) == 60
    header = (cfg.work_dir / "fit" / "step6_training_data.xyz").read_text().splitlines()[1]
    assert "Properties=species:S:1:pos:R:3:forces:R:3" in header and " energy=" in header


def test_train_test_split_is_disjoint_and_complete(fitted_pipeline):
    cfg, _, _ = fitted_pipeline
    train = read_training_table(cfg.work_dir / "fit" / "train.pckl.gzip")
    test = read_training_table(cfg.work_dir / "fit" / "test.pckl.gzip")
    assert (len(train), len(test)) == (48, 12)
    assert set(train.name).isdisjoint(test.name)
    assert {"ase_atoms", "energy", "energy_corrected", "forces"} <= set(train.columns)


def ace_vs_mace(cfg, fit, table):
    """ACE (.yace, PyACECalculator) predictions vs the MACE labels of a training table."""
    from pyace import PyACECalculator
    calc = PyACECalculator(str(fit["potential"]))
    df = read_training_table(cfg.work_dir / "fit" / table)
    de, df_ = [], []
    for ref, row in zip(table_frames(df), df.itertuples()):
        at = ref.copy()
        at.calc = calc
        e, f = at.get_potential_energy(), at.get_forces()
        assert np.isfinite(e) and np.isfinite(f).all()
        de.append((e - row.energy_corrected) / len(at))
        df_.append(f - ref.get_forces())
    return np.array(de), np.concatenate(df_), np.concatenate([np.asarray(f) for f in df.forces])


def test_yace_loads_and_learned_the_forces(fitted_pipeline):
    """Threshold: the tiny fit must explain at least half the force variance of the MACE labels,
    i.e. force RMSE < 1/sqrt(2) of the RMS force (predicting zero forces would give exactly the RMS)."""
    cfg, _, fit = fitted_pipeline
    de, dforce, f_ref = ace_vs_mace(cfg, fit, "test.pckl.gzip")
    rmse_f = np.sqrt(np.mean(dforce ** 2))
    rms_f = np.sqrt(np.mean(f_ref ** 2))
    print(f"tiny fit, held-out: force RMSE {1e3 * rmse_f:.1f} meV/Å vs RMS force {1e3 * rms_f:.1f} meV/Å; "
          f"energy RMSE {1e3 * np.sqrt(np.mean(de ** 2)):.1f} meV/atom")
    assert rmse_f < rms_f / np.sqrt(2)


def test_max_basis_grade_bounds_the_fitted_basis(fitted_pipeline):
    from pyace import BBasisConfiguration
    cfg, _, fit = fitted_pipeline
    basis = BBasisConfiguration(str(cfg.work_dir / "models" / "ace_base.yaml"))
    per_element = {}
    for block in basis.funcspecs_blocks:
        if len(set(block.elements_vec)) == 1:                     # single-species blocks hold the per-element functions
            per_element[block.elements_vec[0]] = len(block.funcspecs)
    assert set(per_element) == {"Cu", "Ag"}
    assert all(0 < n <= cfg.training.max_basis_grade for n in per_element.values()), per_element


def test_refuses_to_overwrite_the_finished_potential(fitted_pipeline):
    from pyacemaker.orchestrator import run_step6
    cfg, _, fit = fitted_pipeline
    before = fit["potential"].read_bytes()
    with pytest.raises(FileExistsError, match="ace_base.yace already exists; refusing to overwrite"):
        run_step6(cfg, progress=False)
    assert fit["potential"].read_bytes() == before
