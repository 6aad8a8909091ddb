"""pyacemaker delta (issue 24): a real `pyacemaker delta` process with EMT as the reference on a copy of the shared mock
pipeline (select, label, fit, deliver, reuse, refuse other settings, validate the delivered set against EMT), and the real
pacemaker upfit from the shared tiny pacemaker fit (the teacher's frames at force weight, the E0 given to pacemaker)."""
import json
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from pyacemaker.delta import aligned_e0, delta, delta_tables
from pyacemaker.domain_models.config import ReferenceConfig, ValidationConfig, dump_config
from pyacemaker.kit.calculators import ace_calculator
from pyacemaker.kit.layout import base_set, delta_dir, delta_set
from pyacemaker.oracle.reference import reference_e0
from pyacemaker.utils.io import file_sha256, iter_frames, periodic_equivalent, read_training_table

EMT = ReferenceConfig(calculator="ase.calculators.emt.EMT")


def copy_of(pipeline, tmp_path, **delta):
    cfg = pipeline[0].model_copy(deep=True)
    shutil.copytree(cfg.work_dir, tmp_path / "run")
    cfg.work_dir = tmp_path / "run"
    cfg.reference = EMT
    cfg.delta = cfg.delta.model_copy(update={"structures": 6, "maxiter": 5, **delta})
    return cfg


def test_cli_delta_delivers_reuses_and_refuses_other_settings(mock_pipeline, pyacemaker_exe, tmp_path):
    cfg = copy_of(mock_pipeline, tmp_path)
    cfg.validation = ValidationConfig(facets=[[1, 1, 1]], temperatures_K=[])
    config = dump_config(cfg, tmp_path / "pipeline.yaml")
    base_before = {p.name: file_sha256(p) for p in base_set(cfg).models_dir.glob("ace_base*")}
    run = subprocess.run([pyacemaker_exe, "delta", str(config), "--quiet"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "delta: mock of ace_base on 6 reference calculations (ase.calculators.emt.EMT" in run.stdout
    d = delta_set(cfg)
    assert d.yace.exists() and d.manifest.exists()
    manifest = json.loads(d.manifest.read_text())
    assert manifest["student"] == "ace_base" and manifest["e0"] == pytest.approx(reference_e0(EMT, cfg.training.elements))
    assert {p.name: file_sha256(p) for p in base_set(cfg).models_dir.glob("ace_base*")} == base_before
    labels = list(iter_frames(delta_dir(cfg) / "reference.xyz"))
    assert len(labels) == 6 and all(a.info["reference"] == "EMT" for a in labels)
    kinds = json.loads((delta_dir(cfg) / "record.json").read_text())["selected"]
    assert sum(kinds.values()) == 6 and set(kinds) == {"teacher", "vacancy", "slab", "bulk", "cluster"}, kinds   # each kind its share
    stamp = (delta_dir(cfg) / "reference.xyz").stat().st_mtime_ns
    again = subprocess.run([pyacemaker_exe, "delta", str(config), "--quiet"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and (delta_dir(cfg) / "reference.xyz").stat().st_mtime_ns == stamp   # nothing relabeled
    cfg.delta.structures = 8
    other = dump_config(cfg, tmp_path / "other.yaml")
    refused = subprocess.run([pyacemaker_exe, "delta", str(other), "--quiet"], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "an earlier delta run differs in delta; rerun with --overwrite" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and d.yace.exists()
    checked = subprocess.run([pyacemaker_exe, "validate", str(config), "--quiet", "--potential", "ace_delta"],
                             capture_output=True, text=True, timeout=600)
    assert checked.returncode == 0, checked.stderr
    assert "validation of ace_delta.yace" in checked.stdout and "against the reference EMT" in checked.stdout


def test_delta_without_a_reference_is_one_line(mock_pipeline, pyacemaker_exe, tmp_path):
    cfg = copy_of(mock_pipeline, tmp_path)
    cfg.reference = None
    r = subprocess.run([pyacemaker_exe, "delta", str(dump_config(cfg, tmp_path / "p.yaml")), "--quiet"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "needs reference.calculator" in r.stderr and not delta_dir(cfg).exists()


def test_upfit_gives_pacemaker_the_delta_e0_and_the_teacher_forces_only(fitted_pipeline, tmp_path):
    cfg = copy_of(fitted_pipeline, tmp_path, teacher_weight=0.2, structures=12)      # 12: a tenth held out to test
    rec = delta(cfg, progress=False)
    assert rec["method"] == "upfit" and rec["n_teacher"] > 0
    fit = delta_dir(cfg) / "fit"
    inp = yaml.safe_load((fit / "input.yaml").read_text())
    assert inp["potential"] == str(base_set(cfg).yaml.resolve()) and inp["data"]["reference_energy"] == pytest.approx(rec["e0"])
    train = read_training_table(fit / "train.pckl.gzip")
    ref, teacher = train[train.name.str.startswith("delta/")], train[~train.name.str.startswith("delta/")]
    assert (teacher.w_energy == 0).all() and (ref.w_energy > 0).all() and train.w_energy.sum() == pytest.approx(1.0)
    test = read_training_table(fit / "test.pckl.gzip")
    assert test.name.str.startswith("delta/").all() and test.w_energy.sum() == pytest.approx(1.0)
    ratio = teacher.w_forces.iloc[0][0] / ref.w_forces.iloc[0][0]
    assert ratio == pytest.approx(0.2)
    frames = list(iter_frames(delta_dir(cfg) / "reference.xyz"))
    e0 = aligned_e0(frames, base_set(cfg).yace, cfg.training.elements, cfg.training.cutoff)
    assert e0 == pytest.approx(rec["e0"])
    # the aligned E0 puts the reference on the student's scale: what is left has no part proportional to an element's count
    calc = ace_calculator(base_set(cfg).yaml)
    res, counts = [], []
    for a in frames:
        b = periodic_equivalent(a, cfg.training.cutoff); b.calc = calc
        res.append(a.get_potential_energy() - sum(e0[s] for s in a.get_chemical_symbols()) - b.get_potential_energy())
        counts.append([a.get_chemical_symbols().count(e) for e in cfg.training.elements])
    np.testing.assert_allclose(np.array(counts).T @ np.array(res), 0.0, atol=1e-6 * np.abs(res).sum() * max(map(len, frames)))
    train_only, _ = delta_tables(cfg.model_copy(update={"delta": cfg.delta.model_copy(update={"teacher_weight": 0.0})}),
                                 delta_dir(cfg) / "reference.xyz", e0, read_training_table(fit / "train.pckl.gzip"))
    assert train_only.name.str.startswith("delta/").all()
