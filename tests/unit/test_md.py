"""MD check (report.md): a real fitted potential passes, a broken one is flagged; the md section, the plot, the summary."""
import json

import numpy as np
import pytest

from pyacemaker.domain_models.config import MDCheckConfig
from pyacemaker.kit.calculators import ace_calculator
from pyacemaker.kit.dynamics import Thermostat, md_stable, md_structures, min_distance_threshold
from pyacemaker.kit.layout import DeliveryError
from pyacemaker.report.md import (MD_KEYS, format_md_summary, md_check, md_metrics, nve_drift_meV_per_atom_per_ps,
                                  perturbed_potential, plot_md, run_md, student_vs_teacher)
from pyacemaker.utils.io import min_distance, read_training_table, table_frames

SHORT = dict(temperatures_K=(300.0, 1000.0), steps=150, nve_steps=100, snapshots=4)


@pytest.fixture(scope="module")
def potential(fitted_pipeline):
    "The session's real tiny fit: (.yaml, .asi, training structures, their names)."
    cfg, _, fit = fitted_pipeline
    models = cfg.work_dir / "models"
    tables = [models / "ace_base_train.pckl.gzip", cfg.work_dir / "fit" / "train.pckl.gzip"]   # delivered, or the run folder's
    train = read_training_table(next(p for p in tables if p.exists()))
    return models / "ace_base.yaml", models / "ace_base.asi", table_frames(train), list(train.name)


@pytest.fixture(scope="module")
def good(potential, surrogate32):
    yaml, asi, frames, names = potential
    return md_check(yaml, asi, frames, MDCheckConfig(**SHORT), names=names, surrogate=surrogate32)


@pytest.fixture(scope="module")
def broken(potential, tmp_path_factory):
    "The same potential with every basis coefficient negated: atoms attract at short range."
    yaml, asi, frames, names = potential
    bad = perturbed_potential(yaml, tmp_path_factory.mktemp("bad") / "wrong_sign.yaml", sign=-1)
    return md_check(bad, asi, frames, MDCheckConfig(**SHORT), names=names)


def test_fitted_potential_passes(good):
    assert good["stable"] and not good["extrapolating"], format_md_summary(good)
    assert len(good["runs"]) == 4
    for run in good["runs"]:
        assert run["steps"] == 250 and run["reason"] == "stable"
        assert run["min_distance_A"] > good["settings"]["min_distance_threshold_A"]
        assert 0.5 < run["max_gamma"] < good["settings"]["gamma_max"]
        assert abs(run["nve_drift_meV_per_atom_per_ps"]) < 1.0


def test_broken_potential_is_flagged(broken):
    assert not broken["stable"]
    for run in broken["runs"]:
        assert not run["stable"] and ("apart" in run["reason"] or "NaN" in run["reason"]), run
        assert run["steps"] < 250                       # stopped at the collapse
    assert "UNSTABLE" in format_md_summary(broken)


def test_teacher_errors_on_trajectory(good):
    t = good["teacher_rmse"]
    assert t["n_snapshots"] == 16 and t["n_dropped"] == 0
    assert 0 < t["energy_meV_per_atom"] < 50 and 0 < t["forces_meV_per_A"] < 300
    for run in good["runs"]:
        assert np.isfinite(run["teacher_forces_rmse_meV_per_A"])


def test_teacher_errors_energy_convention(potential, surrogate32):
    "On training structures the teacher's (E − ΣE0)/N is the table's energy_corrected: errors match the direct ones."
    yaml, asi, frames, names = potential
    calc = ace_calculator(yaml)
    sample = frames[:6]
    err = student_vs_teacher(sample, calc, surrogate32)
    direct = []
    for a in sample:
        at = a.copy(); at.calc = calc
        ref = surrogate32.compute_batch([a])[0].get_potential_energy() - sum(surrogate32.e0[s] for s in a.get_chemical_symbols())
        direct.append((at.get_potential_energy() - ref) / len(a))
    assert err["energy_meV_per_atom"] == pytest.approx(1e3 * np.sqrt(np.mean(np.square(direct))), rel=1e-6)


def test_md_section_is_json(good, broken):
    for result in (good, broken):
        m = md_metrics(result)
        assert list(m) == MD_KEYS
        for run in m["runs"]:
            assert {"temperature_K", "steps", "stable", "min_distance_A", "max_gamma", "nve_drift_meV_per_atom_per_ps"} <= set(run)
        json.dumps(m, allow_nan=False)
    assert md_metrics(broken)["runs"][0]["nve_drift_meV_per_atom_per_ps"] is None   # never reached NVE
    assert md_metrics(good)["teacher_rmse"]["energy_meV_per_atom"] > 0
    assert md_metrics(broken)["teacher_rmse"] is None                                  # no teacher given


def test_plot(good, broken, tmp_path):
    for result, name in ((good, "md.png"), (broken, "md_bad.png")):
        fig = plot_md(result)
        assert len(fig.axes) == 4
        assert len(fig.axes[0].get_lines()) >= len(result["runs"])
        fig.savefig(tmp_path / name)
        assert (tmp_path / name).stat().st_size > 10_000


def test_structures_and_threshold(potential):
    _, _, frames, names = potential
    chosen = md_structures(frames, 2, names)
    assert [len(a) for _, a in chosen] == sorted((len(a) for a in frames), reverse=True)[:2]
    assert [n for n, _ in md_structures(frames, [names[4], 0], names)] == [names[4], names[0]]
    with pytest.raises(KeyError, match="not among"): md_structures(frames, ["nope"], names)
    shortest = min(min_distance(a) for a in frames)
    assert min_distance_threshold(frames) == pytest.approx(0.75 * shortest)
    assert 1.2 < min_distance_threshold(frames) < 2.0                      # Cu-Ag: a few tenths below nearest neighbours


def test_calculator_needs_the_yaml(potential):
    yaml, asi, _, _ = potential
    with pytest.raises(DeliveryError, match="needs the B-basis .yaml"): ace_calculator(yaml.with_suffix(".yace"), asi)
    with pytest.raises(DeliveryError, match="active set not found"): ace_calculator(yaml, yaml.with_suffix(".nope"))


def test_without_active_set_gamma_is_nan(potential):
    yaml, _, frames, names = potential
    md = md_check(yaml, None, frames, MDCheckConfig(structures=1, temperatures_K=[300.0], steps=20, nve_steps=5, snapshots=0), names=names)
    assert md["stable"] and not md["extrapolating"] and md_metrics(md)["runs"][0]["max_gamma"] is None


def test_stability_criteria(potential):
    "Each criterion fails on its own: too close, NaN, too hot after equilibration; drift is the NVE slope."
    yaml, asi, frames, names = potential
    tr = run_md(ace_calculator(yaml, asi), md_structures(frames, 1, names)[0][1], Thermostat(300.0), steps=100, nve_steps=40, snapshots=0)
    assert md_stable(tr, 1.5) == (True, "stable")
    assert tr["snapshots"] == [] and len(tr["time_fs"]) == 141
    def edit(key, i, value):
        out = {**tr, key: tr[key].copy()}; out[key][i] = value; return out
    assert not md_stable(edit("min_distance_A", 30, 1.0), 1.5)[0]
    assert md_stable(edit("etot_eV", 30, np.nan), 1.5)[1].startswith("NaN")
    assert not md_stable(edit("temperature_K", 120, 700.0), 1.5)[0]
    assert md_stable(edit("temperature_K", 10, 700.0), 1.5)[0]           # during equilibration: allowed
    ramp = {**tr, "etot_eV": tr["etot_eV"] + 2e-3 * tr["n_atoms"] * tr["time_fs"] / 1000}
    assert nve_drift_meV_per_atom_per_ps(ramp) - nve_drift_meV_per_atom_per_ps(tr) == pytest.approx(2.0, abs=1e-6)
