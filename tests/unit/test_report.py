"""Parity report on the shared real tiny fit: metrics vs an independent computation, figure panels, γ, files."""
import json

import numpy as np
import pytest
from ase.units import GPa

from pyacemaker.orchestrator import fit_dir
from pyacemaker.report.parity import (METRICS_KEYS, extrapolating, extrapolation_grades, format_summary, plot_parity,
                                      ace_predictions, parity_metrics, reports_dir, write_report)
from pyacemaker.utils.io import read_training_table, table_frames


@pytest.fixture(scope="module")
def report(fitted_pipeline):
    cfg, _, _ = fitted_pipeline
    return cfg, write_report(cfg)


def test_metrics_equal_independent_numpy(report):
    from pyace import PyACECalculator
    cfg, metrics = report
    df = read_training_table(fit_dir(cfg) / "test.pckl.gzip")
    calc = PyACECalculator(str(cfg.path(cfg.ace_model_file)))
    de, dforce, dstress = [], [], []
    for atoms, ef, f, s in zip(df.ase_atoms, df.energy_corrected, df.forces, df.stress):
        at = atoms.copy(); at.calc = calc
        de.append(at.get_potential_energy() / len(at) - ef / len(at))
        dforce.append(at.get_forces() - f)
        dstress.append(at.get_stress() - s)
    m = metrics["test"]
    assert m["energy_rmse_meV_per_atom"] == pytest.approx(1e3 * np.sqrt(np.mean(np.square(de))), rel=1e-10)
    assert m["energy_mae_meV_per_atom"] == pytest.approx(1e3 * np.mean(np.abs(de)), rel=1e-10)
    assert m["forces_rmse_meV_per_A"] == pytest.approx(1e3 * np.sqrt(np.mean(np.square(np.concatenate(dforce)))), rel=1e-10)
    assert m["stress_rmse_GPa"] == pytest.approx(np.sqrt(np.mean(np.square(dstress))) / GPa, rel=1e-10)
    assert m["n_structures"] == len(df) == 12


def test_files_and_documented_keys(report):
    cfg, metrics = report
    out = reports_dir(cfg)
    assert {p.name for p in out.iterdir()} == {"parity.png", "extrapolation.png", "metrics.json"}
    assert (out / "parity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "metrics.json").read_text())
    assert sorted(saved) == sorted(METRICS_KEYS)
    for split in ("train", "test"):
        assert {"energy_rmse_meV_per_atom", "energy_mae_meV_per_atom", "forces_rmse_meV_per_A", "forces_mae_meV_per_A",
                "stress_rmse_GPa", "stress_mae_GPa", "n_structures", "n_atoms"} <= set(saved[split])
    assert {"ace_atoms_per_s", "mace_atoms_per_s", "speedup"} <= set(saved["speed"])
    assert {"threshold", "max_gamma", "n_gamma_above_threshold", "structures_gamma_above_threshold"} <= set(saved["extrapolation"])
    text = format_summary(saved)
    assert "energy RMSE" in text and "ACE is" in text and "parity_plot" in text


def test_pacemaker_predictions_agree_with_deployed_potential(report):
    _, metrics = report
    for split, ag in metrics["pacemaker_agreement"].items():
        assert ag["agree"], (split, ag)


def test_parity_figure_has_the_three_panels(fitted_pipeline):
    cfg, _, _ = fitted_pipeline
    parities = [ace_predictions(cfg.path(cfg.ace_model_file), read_training_table(fit_dir(cfg) / f"{s}.pckl.gzip"), s)
                for s in ("train", "test")]
    fig = plot_parity(parities, {p["split"]: parity_metrics(p) for p in parities})
    axes = fig.get_axes()
    assert [a.get_title() for a in axes] == ["Energy per atom", "Force components", "Stress components (not fitted)"]
    assert "GPa" in axes[2].get_xlabel() and "eV/Å" in axes[1].get_xlabel()
    for ax in axes:
        labels = ax.get_legend_handles_labels()[1]
        assert "train" in labels and "test (held out)" in labels            # train and test distinguishable
        assert any("RMSE" in t.get_text() and "MAE" in t.get_text() for t in ax.texts)
        assert any(np.allclose(l.get_xdata(), l.get_ydata()) for l in ax.get_lines())   # the y = x line


def test_gamma_flags_compressed_cell_not_training(fitted_pipeline):
    cfg, _, _ = fitted_pipeline
    models = cfg.path(cfg.ace_model_file).parent
    train = table_frames(read_training_table(fit_dir(cfg) / "train.pckl.gzip"))
    squeezed = train[0].copy()
    squeezed.set_cell(squeezed.cell * 0.85, scale_atoms=True)
    g_train = extrapolation_grades(models / "ace_base.yaml", models / "ace_base.asi", train)
    g_out = extrapolation_grades(models / "ace_base.yaml", models / "ace_base.asi", [squeezed])
    assert not extrapolating(g_train).any(), g_train.max()
    assert g_out[0] > 2
