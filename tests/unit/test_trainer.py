"""PacemakerWrapper: input.yaml, command, environment, dry run and failure paths (fake executables only here)."""
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from pyacemaker.domain_models.config import AceTrainingConfig
from pyacemaker.trainer.ace_trainer import (INSTALL_HINT, PacemakerError, PacemakerNotFound, PacemakerWrapper,
                                            pacemaker_input, split_train_test)


def cfg(**kw):
    return AceTrainingConfig(**{"elements": ["Cu", "Ag"], **kw})


@pytest.mark.parametrize("kw", [
    dict(),
    dict(cutoff=6.5, max_basis_grade=50, ladder_step=10, ladder_type="power_order"),
    dict(ladder_step=0.25, ndensity=1, optimizer="L-BFGS-B", maxiter=7, kappa=0.05),
    dict(ladder_step=[5, 0.1], gpu=1, batch_size=16, evaluator="pyace", repulsion="none", seed=3),
])
def test_input_yaml_keys(kw):
    c = cfg(**kw)
    inp = pacemaker_input(c, "/d/train.pckl.gzip", "/d/test.pckl.gzip")
    pot, fit = inp["potential"], inp["fit"]
    assert set(inp) == {"cutoff", "seed", "metadata", "potential", "data", "fit", "backend"}
    assert inp["cutoff"] == pot["bonds"]["ALL"]["rcut"] == c.cutoff
    assert pot["elements"] == ["Cu", "Ag"] and inp["seed"] == c.seed
    assert pot["functions"]["number_of_functions_per_element"] == c.max_basis_grade
    assert pot["functions"]["ALL"] == {"nradmax_by_orders": c.nradmax_by_orders, "lmax_by_orders": c.lmax_by_orders}
    emb = pot["embeddings"]["ALL"]
    assert emb["ndensity"] == c.ndensity and len(emb["fs_parameters"]) == 2 * c.ndensity
    assert inp["data"] == {"filename": "/d/train.pckl.gzip", "test_filename": "/d/test.pckl.gzip"}
    assert fit["loss"] == {"kappa": c.kappa, "L1_coeffs": c.L1_coeffs, "L2_coeffs": c.L2_coeffs}
    assert (fit["optimizer"], fit["maxiter"]) == (c.optimizer, c.maxiter)
    if c.ladder_step is None:
        assert "ladder_step" not in fit and "ladder_type" not in fit
    else:
        assert (fit["ladder_step"], fit["ladder_type"]) == (c.ladder_step, c.ladder_type)
    assert ("repulsion" in fit) == (c.repulsion == "auto")
    assert inp["backend"]["evaluator"] == c.evaluator and inp["backend"]["batch_size"] == c.batch_size
    assert ("gpu_config" in inp["backend"]) == (c.gpu is not None)
    assert yaml.safe_load(yaml.safe_dump(inp)) == inp                 # plain YAML types only


def test_environment_threads_and_gpu():
    env = PacemakerWrapper(cfg(), threads=3).environment()
    assert env["OMP_NUM_THREADS"] == "3" and env["CUDA_VISIBLE_DEVICES"] == ""
    assert PacemakerWrapper(cfg(gpu=2)).environment()["CUDA_VISIBLE_DEVICES"] == "2"


def test_command_uses_pacemaker_of_this_environment():
    cmd = PacemakerWrapper(cfg()).command("input.yaml")
    assert cmd[-1] == "input.yaml" and os.path.basename(cmd[0]) == "pacemaker" and os.access(cmd[0], os.X_OK)


def test_split_is_seeded_disjoint_and_complete():
    df = pd.DataFrame({"name": range(20)})
    tr, te = split_train_test(df, 0.25, 1)
    assert (len(tr), len(te)) == (15, 5) and set(tr.name) | set(te.name) == set(range(20))
    assert split_train_test(df, 0.25, 1)[1].name.tolist() == te.name.tolist()
    assert split_train_test(df, 0.25, 2)[1].name.tolist() != te.name.tolist()
    assert len(split_train_test(df.iloc[:3], 0.01, 1)[1]) == 1     # a requested test set is never empty


@pytest.fixture
def tables(tmp_path):
    from tests.unit.test_converter import E0, emt_frames
    from pyacemaker.utils.io import training_table, write_training_table
    df = training_table(emt_frames(4), E0)
    return write_training_table(df.iloc[:3], tmp_path / "train.pckl.gzip"), write_training_table(df.iloc[3:], tmp_path / "test.pckl.gzip")


def test_dry_run_starts_no_process(tables, tmp_path, monkeypatch):
    def forbidden(*a, **k): raise AssertionError("a subprocess was started in a dry run")
    monkeypatch.setattr(subprocess, "Popen", forbidden)
    monkeypatch.setattr(subprocess, "run", forbidden)
    res = PacemakerWrapper(cfg(), dry_run=True).fit(*tables, tmp_path / "fit", tmp_path / "models")
    assert res["dry_run"] and "pacemaker" in res["command"] and "input.yaml" in res["command"]
    assert (tmp_path / "fit" / "input.yaml").exists() and (tmp_path / "fit" / "train.pckl.gzip").exists()
    inp = yaml.safe_load((tmp_path / "fit" / "input.yaml").read_text())
    assert inp["data"]["filename"] == str((tmp_path / "fit" / "train.pckl.gzip").resolve())
    assert not (tmp_path / "models").exists()


def test_dry_run_works_without_pacemaker(tables, tmp_path):
    res = PacemakerWrapper(cfg(), executable="no-such-pacemaker", dry_run=True).fit(*tables, tmp_path / "fit", tmp_path / "models")
    assert "no-such-pacemaker" in res["command"]


def test_missing_pacemaker_says_how_to_install(tables, tmp_path):
    with pytest.raises(PacemakerNotFound, match="'no-such-pacemaker' not found. pacemaker is not installed") as e:
        PacemakerWrapper(cfg(), executable="no-such-pacemaker").fit(*tables, tmp_path / "fit", tmp_path / "models")
    assert INSTALL_HINT in str(e.value)
    assert not (tmp_path / "fit").exists() and not (tmp_path / "models").exists()


def fake(tmp_path, body):
    exe = tmp_path / "fake_pacemaker"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(0o755)
    return str(exe)


def test_failing_pacemaker_raises_with_log_tail(tables, tmp_path):
    exe = fake(tmp_path, "for i in $(seq 1 40); do echo \"line $i\"; done\necho 'KeyError: energy_corrected' >&2\nexit 1\n")
    with pytest.raises(PacemakerError, match=r"pacemaker exited with status 1") as e:
        PacemakerWrapper(cfg(), executable=exe, progress=False).fit(*tables, tmp_path / "fit", tmp_path / "models")
    msg = str(e.value)
    assert "KeyError: energy_corrected" in msg and "line 40" in msg and "line 5\n" not in msg   # the tail, not all
    assert "pacemaker.log" in msg and (tmp_path / "fit" / "pacemaker.log").exists()
    assert not (tmp_path / "models" / "ace_base.yace").exists()


def test_pacemaker_without_output_is_an_error(tables, tmp_path):
    exe = fake(tmp_path, "echo 'Fitting done'\nexit 0\n")
    with pytest.raises(PacemakerError, match="wrote no output_potential.yaml"):
        PacemakerWrapper(cfg(), executable=exe, progress=False).fit(*tables, tmp_path / "fit", tmp_path / "models")
    assert not (tmp_path / "models" / "ace_base.yace").exists()


def test_finished_potential_is_checked_before_any_work(tables, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "ace_base.yace").write_text("finished")
    exe = fake(tmp_path, "touch started\nexit 1\n")
    with pytest.raises(FileExistsError, match="refusing to overwrite a finished potential"):
        PacemakerWrapper(cfg(), executable=exe).fit(*tables, tmp_path / "fit", tmp_path / "models")
    assert not (tmp_path / "fit").exists()
    assert (tmp_path / "models" / "ace_base.yace").read_text() == "finished"


def test_cli_fit_dry_run(tmp_path, model_path):
    """`pyacemaker fit --dry-run` on a config with labeled data prints the command and runs nothing."""
    import itertools
    from pathlib import Path
    from pyacemaker.demo_data import demo_step4_path
    from pyacemaker.domain_models.config import LabelingConfig, PipelineConfig, dump_config
    from pyacemaker.oracle.mace_wrapper import MaceSurrogate
    from pyacemaker.utils.io import iter_frames, write_frames
    work = tmp_path / "run"
    teacher = MaceSurrogate(model_path, dtype="float32")
    write_frames(teacher.compute_batch(list(itertools.islice(iter_frames(demo_step4_path()), 8))), work / "step5_surrogate_labeled.xyz")
    c = PipelineConfig(work_dir=work, labeling=LabelingConfig(model=model_path), training=cfg(max_basis_grade=12))
    exe = str(Path(sys.executable).with_name("pyacemaker"))
    r = subprocess.run([exe, "fit", str(dump_config(c, tmp_path / "p.yaml")), "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "dry run" in r.stdout and "pacemaker input.yaml" in r.stdout
    assert (work / "fit" / "train.pckl.gzip").exists() and (work / "fit" / "step6_training_data.xyz").exists()
    assert not (work / "models").exists()
