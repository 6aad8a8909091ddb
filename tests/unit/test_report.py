"""The report of the delivered set: metrics equal an independent computation on the delivered tables (total energies
included), files and keys, figure panels, γ, sections that cannot be drawn recorded with the reason, and no report
without a potential. Real fits only: the shared pacemaker fit and the shared mock (linear) fit."""
import json
import shutil

import numpy as np
import pytest
from ase.units import GPa

from pyacemaker.kit.calculators import ace_calculator
from pyacemaker.kit.layout import Deliverables, DeliveryError, open_delivered, reports_dir
from pyacemaker.report.parity import (METRICS_KEYS, ace_predictions, extrapolating, extrapolation_grades, format_summary,
                                      parity_metrics, plot_parity, write_report)
from pyacemaker.utils.io import file_sha256, read_json, read_training_table, table_frames


def delivered(cfg) -> Deliverables:
    return Deliverables.of(cfg.path(cfg.ace_model_file))


@pytest.fixture(scope="module")
def report(fitted_pipeline):
    cfg, _, _ = fitted_pipeline
    return cfg, write_report(cfg, speed=False, md=False)


@pytest.fixture(scope="module")
def mock_report(mock_pipeline):
    cfg, _, _ = mock_pipeline
    return cfg, write_report(cfg, speed=False, md=False)


def independent_metrics(yace, table, e0):
    """Errors of the .yace on a delivered table, computed here with numpy: meV/atom, meV/Å, GPa; per cell kind."""
    from pyace import PyACECalculator
    calc = PyACECalculator(str(yace))
    de, dtot, df, ds, kinds, fk = [], [], [], [], [], []
    for row in table.itertuples():
        at = row.ase_atoms.copy(); at.calc = calc
        n, e = len(at), at.get_potential_energy()
        e0_sum = sum(e0[s] for s in at.get_chemical_symbols())
        de.append((e - e0_sum - row.energy_corrected) / n)
        dtot.append((e - row.energy) / n)
        df.append(at.get_forces() - row.forces); fk += [row.cell_kind] * (3 * n)
        if row.stress is not None: ds.append(at.get_stress() - row.stress)
        kinds.append(row.cell_kind)
    de, dtot, df, ds, kinds, fk = map(np.asarray, (de, dtot, np.concatenate(df).ravel(), ds, kinds, fk))
    rms = lambda x: 1e3 * np.sqrt(np.mean(np.square(x)))
    return {"n_structures": len(table), "n_atoms": int(table.NUMBER_OF_ATOMS.sum()),
            "energy_rmse_meV_per_atom": rms(de), "energy_mae_meV_per_atom": 1e3 * np.mean(np.abs(de)),
            "total_energy_rmse_meV_per_atom": rms(dtot), "total_energy_mean_error_meV_per_atom": 1e3 * np.mean(dtot),
            "forces_rmse_meV_per_A": rms(df), "forces_mae_meV_per_A": 1e3 * np.mean(np.abs(df)),
            "stress_rmse_GPa": np.sqrt(np.mean(np.square(ds))) / GPa, "stress_mae_GPa": np.mean(np.abs(ds)) / GPa,
            "by_kind": {k: {"n_structures": int(np.sum(kinds == k)), "energy_rmse_meV_per_atom": rms(de[kinds == k]),
                            "forces_rmse_meV_per_A": rms(df[fk == k])} for k in sorted(set(kinds))}}


@pytest.mark.parametrize("split", ["train", "test"])
def test_metrics_equal_independent_numpy(report, surrogate32, split):
    cfg, metrics = report
    d = delivered(cfg)
    mine = independent_metrics(d.yace, read_training_table(d.table(split)), surrogate32.e0)
    theirs = metrics[split]
    assert set(theirs) == set(mine)
    for key, value in mine.items():
        if key == "by_kind":
            assert set(theirs[key]) == set(value) and set(value) <= {"bulk", "slab", "wire", "cluster"}
            for k, v in value.items():
                assert theirs[key][k]["n_structures"] == v["n_structures"]
                for q in ("energy_rmse_meV_per_atom", "forces_rmse_meV_per_A"):
                    assert theirs[key][k][q] == pytest.approx(v[q], rel=1e-9), (split, k, q)
        else:
            assert theirs[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (split, key)
    assert (metrics["train"]["n_structures"], metrics["test"]["n_structures"]) == (60, 15)
    assert metrics[split]["total_energy_rmse_meV_per_atom"] == pytest.approx(metrics[split]["energy_rmse_meV_per_atom"],
                                                                             abs=1e-3)   # E0 in the .yace: same errors


def test_files_and_documented_keys(report):
    cfg, metrics = report
    out = reports_dir(cfg)
    assert {"parity.png", "extrapolation.png", "metrics.json"} <= {p.name for p in out.iterdir()}
    assert (out / "parity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert set(saved) <= set(METRICS_KEYS)
    assert saved["mode"] == "pacemaker" and saved["delivery"]["mode"] == "pacemaker"
    assert saved["delivery"]["key"] == open_delivered(delivered(cfg))["key"]
    assert saved["files"]["potential"] == str(delivered(cfg).yace)
    assert saved["files"]["parity_plot"] == str(out / "parity.png")
    assert {"threshold", "max_gamma", "n_gamma_above_threshold", "structures_gamma_above_threshold"} <= set(saved["extrapolation"])
    text = format_summary(saved)
    for phrase in ("energy RMSE [meV/atom]", "total energy mean error [meV/atom]", "forces RMSE [meV/Å]", "by kind (test)",
                   "extrapolation:", "parity_plot"):
        assert phrase in text, phrase
    assert "MOCK" not in text


def test_every_documented_section_is_there_or_skipped_with_a_reason(report):
    _, metrics = report
    missing = [k for k in METRICS_KEYS if k not in metrics and k not in metrics.get("skipped", {})]
    assert not missing, missing


def test_pacemaker_predictions_agree_with_deployed_potential(report):
    _, metrics = report
    assert set(metrics["pacemaker_agreement"]) == {"train", "test"}
    for split, ag in metrics["pacemaker_agreement"].items():
        assert ag["agree"], (split, ag)
    assert "pacemaker_agreement" not in metrics["skipped"]


def test_parity_figure_has_the_three_panels(report, surrogate32):
    cfg, metrics = report
    d = delivered(cfg)
    calc = ace_calculator(d.yace)
    parities = [ace_predictions(calc, read_training_table(d.table(s)), s, surrogate32.e0) for s in ("train", "test")]
    for p in parities:
        assert parity_metrics(p)["energy_rmse_meV_per_atom"] == pytest.approx(metrics[p["split"]]["energy_rmse_meV_per_atom"])
    fig = plot_parity(parities, {p["split"]: parity_metrics(p) for p in parities})
    axes = fig.get_axes()
    titles = [a.get_title() for a in axes]
    assert titles[:3] == ["Energy per atom", "Force components", "Stress components (not fitted)"]
    assert "GPa" in axes[2].get_xlabel() and "eV/Å" in axes[1].get_xlabel() and "eV/atom" in axes[0].get_xlabel()
    for ax in axes[:3]:
        labels = ax.get_legend_handles_labels()[1]
        assert "train" in labels and "test (held out)" in labels            # train and test distinguishable
        assert any("RMSE" in t.get_text() and "MAE" in t.get_text() for t in ax.texts)
        assert any(np.allclose(l.get_xdata(), l.get_ydata()) for l in ax.get_lines())   # the y = x line
    assert "MOCK" not in fig.get_suptitle()


def test_gamma_flags_a_squeezed_cell_and_no_training_structure(report):
    cfg, metrics = report
    d = delivered(cfg)
    train = table_frames(read_training_table(d.table("train")))
    squeezed = train[0].copy()
    squeezed.set_cell(squeezed.cell * 0.85, scale_atoms=True)
    g_train = extrapolation_grades(d.yaml, d.asi, train)
    g_out = extrapolation_grades(d.yaml, d.asi, [squeezed])
    print(f"max γ of the training set {g_train.max():.3f}; squeezed cell {g_out[0]:.1f}")
    assert not extrapolating(g_train).any(), g_train.max()
    assert extrapolating(g_out)[0] and g_out[0] > 2
    flagged = {n for n, _ in metrics["extrapolation"]["structures_gamma_above_threshold"]}
    assert flagged.isdisjoint(read_training_table(d.table("train")).name)   # only held-out structures can extrapolate
    assert metrics["extrapolation"]["n_structures"] == 75


def test_mock_report_records_skipped_sections_with_a_reason(mock_report):
    cfg, metrics = mock_report
    assert metrics["mode"] == "mock"
    assert "pacemaker_agreement" not in metrics
    assert metrics["skipped"]["pacemaker_agreement"] == "no pacemaker predictions: mock (linear) fit"
    text = format_summary(metrics)
    assert text.startswith("MOCK MODE") and "skipped pacemaker_agreement: no pacemaker predictions: mock" in text
    saved = json.loads((reports_dir(cfg) / "metrics.json").read_text())
    assert saved["skipped"] == metrics["skipped"]


def test_a_set_without_active_set_records_the_skipped_extrapolation(tmp_path, mock_pipeline):
    cfg, _, _ = mock_pipeline
    work = tmp_path / "copy"
    shutil.copytree(cfg.work_dir, work, ignore=shutil.ignore_patterns("reports"))
    c = cfg.model_copy(update={"work_dir": work})
    d = delivered(c)
    manifest = json.loads(d.manifest.read_text())
    d.asi.unlink(); del manifest["files"][d.asi.name]
    d.manifest.write_text(json.dumps(manifest))
    metrics = write_report(c, speed=False, md=False)
    assert "extrapolation" not in metrics
    assert metrics["skipped"]["extrapolation"] == "no active set (ace_base.asi) in the delivered set"
    assert not (reports_dir(c) / "extrapolation.png").exists() and (reports_dir(c) / "parity.png").exists()


def test_no_report_without_a_potential(tmp_path, make_pipeline_config, mixed_frames):
    cfg = make_pipeline_config(tmp_path, mixed_frames[:3])
    with pytest.raises(DeliveryError, match=r"ace_base.yace: no fitted potential here; run step 6 \(pyacemaker fit / run\) first"):
        write_report(cfg, speed=False, md=False)
    assert not reports_dir(cfg).exists()


def test_no_report_from_a_tampered_set(tmp_path, mock_pipeline):
    cfg, _, _ = mock_pipeline
    work = tmp_path / "copy"
    shutil.copytree(cfg.work_dir, work, ignore=shutil.ignore_patterns("reports"))
    c = cfg.model_copy(update={"work_dir": work})
    table, yace = delivered(c).table("test"), delivered(c).yace
    kept = table.read_bytes()
    yace.write_bytes(yace.read_bytes()[:100])                                # a truncated .yace: restored from the run folder
    assert write_report(c, speed=False, md=False)["test"]["n_structures"] > 0
    assert file_sha256(yace) == read_json(delivered(c).manifest)["files"][yace.name]
    shutil.rmtree(reports_dir(c))
    run_table = delivered(c).models_dir / read_json(delivered(c).manifest)["run_dir"] / "test.pckl.gzip"
    table.unlink(); table.write_bytes(delivered(c).table("train").read_bytes())   # another table under the test table's name ...
    run_table.unlink(); run_table.write_bytes(table.read_bytes())                 # ... and in the run folder too
    with pytest.raises(DeliveryError, match=r"ace_base_test.pckl.gzip: does not belong to the delivered set .* its run folder "
                                            r"cannot restore it; run step 6 \(pyacemaker fit / run\) --overwrite"):
        write_report(c, speed=False, md=False)
    assert not reports_dir(c).exists() and kept
