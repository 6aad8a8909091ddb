"""Step 6's trainer: input.yaml against pacemaker's own template and parsers, the pacemaker command and its environment,
resume arguments, dry run, missing pacemaker/TensorFlow, failures, delivery as one set, E0 in the delivered potential and
the LAMMPS fragments. Stand-in executables only for failure paths and argument recording; the real fit is the shared one."""
import hashlib
import inspect
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
import yaml

from pyacemaker.demo_data import demo_step4_path, mixed_step4_frames
from pyacemaker.domain_models.config import AceTrainingConfig
from pyacemaker.kit.calculators import import_pyace
from pyacemaker.kit.layout import Deliverables, DeliveryError, open_delivered, recover_delivery
from pyacemaker.trainer.ace_trainer import (PacemakerError, PacemakerNotFound, PacemakerWrapper, check_pacemaker,
                                            fs_parameters, install_hint, pacemaker_input, split_train_test,
                                            weighting_section, yace_elements)
from pyacemaker.trainer.linear_fit import LinearAceTrainer
from pyacemaker.utils.io import (ExistingOutput, file_sha256, read_json, iter_frames, read_training_table, table_frames, training_table,
                                 write_training_table)

PYACE = Path(inspect.getfile(import_pyace())).parent


def cfg(**kw):
    return AceTrainingConfig(**{"elements": ["Cu", "Ag"], **kw})


def files_digest(folder: Path) -> dict:
    """Every file under a folder (hidden ones included) and its SHA-256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- input.yaml vs pacemaker's own template

def pacemaker_template(elements, rcut, n_functions, train_file, test_size=0.0, weighting=None) -> dict:
    """pacemaker's `pyace/data/input_template.yaml`, filled the way `pacemaker -t` fills it."""
    text = (PYACE / "data" / "input_template.yaml").read_text()
    text = text.replace("{{ELEMENTS}}", str(elements)).replace("{{RCUT}}", str(rcut))
    text = text.replace("{{DATAFILENAME}}", train_file)
    text = text.replace("{{number_of_functions_per_element}}", f"number_of_functions_per_element: {n_functions}")
    text = text.replace("{{WEIGHTING}}", f"weighting: {weighting}" if weighting else "")
    text = text.replace("{{test_size}}", f"test_size: {test_size}" if test_size > 0 else "")
    assert "{{" not in text
    return yaml.safe_load(text)


#: pacemaker -t's energy weighting (pyace/cli/pacemaker.py)
TEMPLATE_WEIGHTING = ("{ type: EnergyBasedWeightingPolicy, DElow: 1.0, DEup: 10.0, DFup: 50.0, DE: 1.0, DF: 1.0, "
                      "wlow: 0.75, energy: convex_hull, reftype: all,seed: 42}")

CONFIGS = [
    dict(),
    dict(cutoff=6.5, max_basis_grade=50, ladder_step=10, ladder_type="power_order"),
    dict(ladder_step=0.25, ndensity=1, optimizer="L-BFGS-B", maxiter=7, kappa=0.05, repulsion="auto"),
    dict(ladder_step=[5, 0.1], gpu=1, batch_size=16, evaluator="pyace", seed=3, nradmax_by_orders=[8, 2, 1],
         lmax_by_orders=[0, 2, 1]),
    dict(weighting={"type": "EnergyBasedWeightingPolicy", "DElow": 0.5, "DEup": 4.0, "DFup": 30.0, "wlow": 0.6, "nfit": 50}),
]


def pacemaker_keywords():
    """Keys pacemaker reads beyond its template: pyace's own constants and the options of its data loader."""
    from pyace import const
    return {"fit": {const.FIT_LADDER_STEP_KW, const.FIT_LADDER_TYPE_KW, const.FIT_WEIGHTING_KW},
            "backend": {const.BACKEND_GPU_CONFIG}, "data": {"test_filename"}, None: {"cutoff"}}


@pytest.mark.parametrize("kw", CONFIGS)
def test_input_yaml_has_the_keys_of_pacemakers_template(kw):
    c = cfg(**kw)
    ours = pacemaker_input(c, "/d/train.pckl.gzip", "/d/test.pckl.gzip")
    tmpl = pacemaker_template(c.elements, c.cutoff, c.max_basis_grade, "/d/train.pckl.gzip", 0.1, TEMPLATE_WEIGHTING)
    extra = pacemaker_keywords()
    assert set(ours) - set(tmpl) <= extra[None] and set(tmpl) <= set(ours)
    for section in ("potential", "data", "fit", "backend"):
        unknown = set(ours[section]) - set(tmpl[section]) - extra.get(section, set())
        assert not unknown, (section, unknown)
    assert set(ours["potential"]) == set(tmpl["potential"])
    for sub in ("embeddings", "bonds"):
        assert set(ours["potential"][sub]) == {"ALL"}
        assert set(ours["potential"][sub]["ALL"]) == set(tmpl["potential"][sub]["ALL"]), sub
    assert set(ours["potential"]["functions"]) == {"number_of_functions_per_element", "ALL"}
    assert set(ours["potential"]["functions"]["ALL"]) == set(tmpl["potential"]["functions"]["ALL"])
    assert set(ours["fit"]["loss"]) == set(tmpl["fit"]["loss"])
    from pyace.lossfuncspec import LossFunctionSpecification
    assert set(ours["fit"]["loss"]) <= set(inspect.signature(LossFunctionSpecification).parameters)
    assert "test_filename" in ours["data"] and "test_size" not in ours["data"]    # our own split, given as a file
    assert yaml.safe_load(yaml.safe_dump(ours)) == ours                           # plain YAML types only


def test_defaults_agree_with_pacemakers_template():
    c = cfg()
    ours = pacemaker_input(c, "/d/train.pckl.gzip")
    tmpl = pacemaker_template(c.elements, c.cutoff, c.max_basis_grade, "/d/train.pckl.gzip")
    assert ours["potential"]["elements"] == tmpl["potential"]["elements"] == ["Cu", "Ag"]
    assert ours["potential"]["deltaSplineBins"] == tmpl["potential"]["deltaSplineBins"]
    assert ours["potential"]["embeddings"]["ALL"] == tmpl["potential"]["embeddings"]["ALL"]
    assert ours["potential"]["bonds"]["ALL"] == tmpl["potential"]["bonds"]["ALL"]
    assert ours["potential"]["functions"]["number_of_functions_per_element"] == \
        tmpl["potential"]["functions"]["number_of_functions_per_element"] == c.max_basis_grade
    assert ours["fit"]["loss"] == {k: float(v) for k, v in tmpl["fit"]["loss"].items()}
    assert ours["fit"]["optimizer"] == tmpl["fit"]["optimizer"]
    assert {k: ours["backend"][k] for k in ("evaluator", "batch_size")} == \
        {k: tmpl["backend"][k] for k in ("evaluator", "batch_size")}
    assert ours["data"] == {"filename": tmpl["data"]["filename"]} and tmpl["data"]["filename"] == "/d/train.pckl.gzip"
    assert "weighting" not in ours["fit"] and "weighting" not in tmpl["fit"]       # uniform: pacemaker's default


@pytest.mark.parametrize("kw", CONFIGS)
def test_input_yaml_values_follow_the_config(kw):
    c = cfg(**kw)
    inp = pacemaker_input(c, "/d/train.pckl.gzip", "/d/test.pckl.gzip")
    pot, fit = inp["potential"], inp["fit"]
    assert inp["cutoff"] == pot["bonds"]["ALL"]["rcut"] == c.cutoff and inp["seed"] == c.seed
    assert pot["elements"] == c.elements
    assert pot["functions"]["number_of_functions_per_element"] == c.max_basis_grade
    assert pot["functions"]["ALL"] == {"nradmax_by_orders": c.nradmax_by_orders, "lmax_by_orders": c.lmax_by_orders}
    assert pot["bonds"]["ALL"]["radparameters"] == [c.radparameter]
    emb = pot["embeddings"]["ALL"]
    assert emb["ndensity"] == c.ndensity and emb["fs_parameters"] == fs_parameters(c.ndensity)
    assert len(emb["fs_parameters"]) == 2 * c.ndensity and emb["fs_parameters"][:2] == [1.0, 1.0]
    assert inp["data"] == {"filename": "/d/train.pckl.gzip", "test_filename": "/d/test.pckl.gzip"}
    assert fit["loss"] == {"kappa": c.kappa, "L1_coeffs": c.L1_coeffs, "L2_coeffs": c.L2_coeffs}
    assert (fit["optimizer"], fit["maxiter"]) == (c.optimizer, c.maxiter)
    if c.ladder_step is None: assert "ladder_step" not in fit and "ladder_type" not in fit
    else: assert (fit["ladder_step"], fit["ladder_type"]) == (c.ladder_step, c.ladder_type)
    assert fit.get("repulsion") == ("auto" if c.repulsion == "auto" else None)
    assert (inp["backend"]["evaluator"], inp["backend"]["batch_size"]) == (c.evaluator, c.batch_size)
    assert ("gpu_config" in inp["backend"]) == (c.gpu is not None)


@pytest.mark.parametrize("kw", CONFIGS)
def test_pacemaker_builds_the_basis_from_our_potential_section(kw):
    """pacemaker's own basis construction (no TensorFlow) accepts the section; max_basis_grade bounds each element."""
    import_pyace()
    from pyace import ACEBBasisSet
    from pyace.basisextension import construct_bbasisconfiguration
    c = cfg(**kw)
    bconf = construct_bbasisconfiguration(pacemaker_input(c, "/d/train.pckl.gzip")["potential"])
    basis = ACEBBasisSet(bconf)
    assert sorted(basis.elements_name) == sorted(c.elements) and basis.cutoffmax == c.cutoff
    per_element = {b.elements_vec[0]: len(b.funcspecs) for b in bconf.funcspecs_blocks if len(set(b.elements_vec)) == 1}
    assert set(per_element) == set(c.elements)
    assert all(0 < n <= c.max_basis_grade for n in per_element.values()), per_element


# ---------------------------------------------------------------- weighting

def test_uniform_weighting_writes_no_section():
    assert weighting_section(cfg()) is None and "weighting" not in pacemaker_input(cfg(), "t")["fit"]


def test_energy_based_weighting_is_built_by_pacemakers_parser():
    import_pyace()
    from pyace.preparedata import EnergyBasedWeightingPolicy, get_weighting_policy
    c = cfg(seed=11, weighting={"type": "EnergyBasedWeightingPolicy", "DElow": 0.5, "DEup": 4.0, "DFup": 30.0, "DE": 2.0,
                                "DF": 0.5, "wlow": 0.6, "nfit": 50, "reftype": "all"})
    section = pacemaker_input(c, "t")["fit"]["weighting"]
    assert section == {"type": "EnergyBasedWeightingPolicy", "DElow": 0.5, "DEup": 4.0, "DFup": 30.0, "DE": 2.0, "DF": 0.5,
                       "wlow": 0.6, "nfit": 50, "reftype": "all", "energy": "convex_hull", "seed": 11}   # seed: the fit's
    policy = get_weighting_policy(section)
    assert isinstance(policy, EnergyBasedWeightingPolicy)
    assert (policy.DElow, policy.DEup, policy.DFup, policy.DE, policy.DF, policy.wlow, policy.nfit, policy.reftype,
            policy.seed, policy.energy) == (0.5, 4.0, 30.0, 2.0, 0.5, 0.6, 50, "all", 11, "convex_hull")
    unset = weighting_section(cfg(weighting={"type": "EnergyBasedWeightingPolicy", "seed": 5}))
    assert unset == {"type": "EnergyBasedWeightingPolicy", "DElow": 1.0, "DEup": 10.0, "DE": 1.0, "DF": 1.0,
                     "reftype": "all", "energy": "convex_hull", "seed": 5}          # None = pacemaker's own default
    assert set(unset) - {"type"} <= set(inspect.signature(EnergyBasedWeightingPolicy).parameters)
    assert str(get_weighting_policy(unset)).startswith("EnergyBasedWeightingPolicy(nfit=None")


@pytest.fixture(scope="module")
def labeled(surrogate32):
    """16 bulk cells of the bundled step-4 file, a slab, a wire and a cluster, labeled by the MACE teacher."""
    others = mixed_step4_frames(10, seed=8)
    frames = list(itertools.islice(iter_frames(demo_step4_path()), 16)) + \
        [next(f for f in others if f.info["config_type"] == k) for k in ("slab", "wire", "cluster")]
    return surrogate32.compute_batch(frames), surrogate32.e0


@pytest.mark.parametrize("reftype", ["bulk", "cluster"])
def test_weighting_reftype_other_than_all_is_refused(reftype):
    """pacemaker tells bulk from clusters by the cell's periodicity, and every cell reaches it fully periodic:
    `bulk` would keep everything, `cluster` nothing (and fail inside pacemaker after TensorFlow's start-up)."""
    with pytest.raises(ValidationError, match="reftype"):
        cfg(weighting={"type": "EnergyBasedWeightingPolicy", "reftype": reftype})


def test_weighting_all_keeps_every_kind(labeled):
    import_pyace()
    from pyace.preparedata import get_weighting_policy
    frames, e0 = labeled
    df = training_table(frames, e0, ["Cu", "Ag"], 5.0, "s.xyz")
    df["pbc"] = df.ase_atoms.map(lambda a: bool(np.all(a.pbc)))       # what pacemaker's data loader adds
    df["energy_corrected_per_atom"] = df.energy_corrected / df.NUMBER_OF_ATOMS
    policy = get_weighting_policy(weighting_section(cfg(weighting={"type": "EnergyBasedWeightingPolicy", "DElow": 0.5,
                                                                   "DEup": 5.0})))
    assert set(policy.generate_weights(df).cell_kind) == {"bulk", "slab", "wire", "cluster"}


# ---------------------------------------------------------------- split

def test_split_is_seeded_disjoint_and_complete():
    df = pd.DataFrame({"name": range(20)})
    tr, te = split_train_test(df, 0.25, 1)
    assert (len(tr), len(te)) == (15, 5) and set(tr.name) | set(te.name) == set(range(20))
    assert set(tr.name).isdisjoint(te.name)
    assert split_train_test(df, 0.25, 1)[1].name.tolist() == te.name.tolist()
    assert split_train_test(df, 0.25, 2)[1].name.tolist() != te.name.tolist()
    assert len(split_train_test(df.iloc[:3], 0.01, 1)[1]) == 1     # a requested test set is never empty
    assert split_train_test(df, 0.0, 1)[1] is None


# ---------------------------------------------------------------- command, environment, resume arguments

@pytest.fixture(scope="module")
def tables(labeled, tmp_path_factory):
    frames, e0 = labeled
    train, test = split_train_test(training_table(frames, e0, ["Cu", "Ag"], 5.0, "step5.xyz"), 0.25, 1)
    d = tmp_path_factory.mktemp("tables")
    return write_training_table(train, d / "train.pckl.gzip"), write_training_table(test, d / "test.pckl.gzip"), e0


def fake(tmp_path, body, name="fake_pacemaker"):
    exe = tmp_path / name
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(0o755)
    return str(exe)


@pytest.fixture
def recording_pacemaker(tmp_path):
    """A stand-in pacemaker (Python) that records argv, cwd and environment; prints FAKE_ITERS iteration lines while
    writing a loadable interim potential; exits FAKE_RC, writing output_potential.yaml when 0."""
    import_pyace()
    from pyace.basisextension import construct_bbasisconfiguration
    pot = tmp_path / "interim_source.yaml"
    construct_bbasisconfiguration(pacemaker_input(cfg(max_basis_grade=5), "t")["potential"]).save(str(pot))
    record = tmp_path / "calls.jsonl"
    exe = tmp_path / "recording_pacemaker"
    exe.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""
        import json, os, shutil, sys, time
        keys = ["OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TF_CPP_MIN_LOG_LEVEL"]
        with open({str(record)!r}, "a") as f:
            f.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": {{k: os.environ.get(k) for k in keys}},
                                "pgid_is_own": os.getpgid(0) == os.getpid()}}) + "\\n")
        display = int(os.environ.get("FAKE_DISPLAY", "0"))       # pacemaker's display_step: a stats block instead
        for i in range(1, int(os.environ.get("FAKE_ITERS", "0")) + 1):
            shutil.copyfile({str(pot)!r}, "interim_potential_0.yaml")
            if display and i % display == 0:
                for kind in ("FIT", "TEST"):
                    print(f"2026-01-01 00:00:00,000 - pyace.metrics_aggregator - INFO - \\n---- {{kind}} STATS ----", flush=True)
                    print(f"Iteration:  #{{i}}  Loss:    Total:  {{1.0 / i:.4e}} (100%) ", flush=True)
            else:
                print(f"2026-01-01 00:00:00,000 - pyace.metrics_aggregator - INFO - Iteration   #{{i}}    (3 evals):        "
                      f"Loss: {{1.0 / i:.4e}} | RMSE", flush=True)
            time.sleep(0.02)
        rc = int(os.environ.get("FAKE_RC", "1"))
        if rc == 0: shutil.copyfile({str(pot)!r}, "output_potential.yaml")
        print("fake pacemaker done", flush=True)
        sys.exit(rc)
    """))
    exe.chmod(0o755)

    def calls():
        return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return str(exe), calls


def test_command_and_environment(tmp_path, tables, recording_pacemaker, monkeypatch):
    exe, calls = recording_pacemaker
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    w = PacemakerWrapper(cfg(maxiter=10), executable=exe, threads=3, progress=False)
    run_dir = tmp_path / "fit"
    w.prepare(tables[0], tables[1], run_dir)
    assert w.command(run_dir) == f"cd {run_dir} && {exe} input.yaml"
    with pytest.raises(PacemakerError, match="pacemaker exited with status 1"):
        w.run(run_dir)
    (call,) = calls()
    assert call["argv"] == ["input.yaml"] and Path(call["cwd"]) == run_dir.resolve()
    assert call["env"] == {"OMP_NUM_THREADS": "3", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    assert call["pgid_is_own"]                                            # its own process group: stoppable as a whole
    env = PacemakerWrapper(cfg(gpu=2)).environment()
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and env.get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")
    inp = yaml.safe_load((run_dir / "input.yaml").read_text())
    assert inp["data"] == {"filename": str((run_dir / "train.pckl.gzip").resolve()),
                           "test_filename": str((run_dir / "test.pckl.gzip").resolve())}
    assert inp == pacemaker_input(w.config, inp["data"]["filename"], inp["data"]["test_filename"])


def test_default_command_is_the_pacemaker_of_this_environment(tmp_path):
    cmd = PacemakerWrapper(cfg()).command(tmp_path)
    exe = cmd.split(" && ")[1].split()[0]
    assert os.path.basename(exe) == "pacemaker" and os.access(exe, os.X_OK) and cmd.endswith(" input.yaml")


@pytest.fixture
def prepared(tmp_path, tables, recording_pacemaker):
    """`prepared(**config)`: a PacemakerWrapper on the recording stand-in (checkpoint at every iteration), its run folder
    prepared, and the stand-in's call record."""
    exe, calls = recording_pacemaker
    def make(**kw):
        w = PacemakerWrapper(cfg(**kw), executable=exe, progress=False, checkpoint_every_s=0)
        w.prepare(tables[0], tables[1], tmp_path / "fit")
        return w, tmp_path / "fit", calls
    return make


def test_checkpoint_and_resume_arguments(prepared, monkeypatch):
    """A run that dies after 6 iterations keeps a checkpoint; resume runs `-p checkpoint.yaml` for the remaining
    iterations and counts all of them."""
    w, run_dir, calls = prepared(maxiter=20)
    monkeypatch.setenv("FAKE_ITERS", "6")
    with pytest.raises(PacemakerError):
        w.run(run_dir)
    ck = json.loads((run_dir / "checkpoint.json").read_text())
    # the stand-in's potential carries no save time (pacemaker's intermediate_time): the checkpoint then counts one
    # iteration fewer than the last logged, so that a resume may redo an iteration but never skip one
    assert ck["iterations_done"] == 5 and ck["loss"] == f"{1 / 6:.4e}"
    import_pyace().BBasisConfiguration(str(run_dir / "checkpoint.yaml"))   # loads
    monkeypatch.setenv("FAKE_ITERS", "15"); monkeypatch.setenv("FAKE_RC", "0")
    result = w.run(run_dir, resume=True)
    assert calls()[-1]["argv"] == ["input_resume.yaml", "-p", "checkpoint.yaml"]
    resumed = yaml.safe_load((run_dir / "input_resume.yaml").read_text())
    original = yaml.safe_load((run_dir / "input.yaml").read_text())
    assert resumed["fit"]["maxiter"] == 20 - 5
    resumed["fit"]["maxiter"] = original["fit"]["maxiter"]
    assert resumed == original                                             # nothing else changes
    assert (result["resumed_from"], result["iterations"]) == (5, 20)
    log = (run_dir / "pacemaker.log").read_text()
    assert log.count("fake pacemaker done") == 2                           # the log of both runs is kept


def test_resume_of_a_ladder_fit_starts_from_the_checkpoint_as_initial_potential(prepared, monkeypatch):
    w, run_dir, calls = prepared(maxiter=20, ladder_step=2, max_basis_grade=6)
    monkeypatch.setenv("FAKE_ITERS", "3")
    with pytest.raises(PacemakerError):
        w.run(run_dir)
    monkeypatch.setenv("FAKE_ITERS", "2"); monkeypatch.setenv("FAKE_RC", "0")
    w.run(run_dir, resume=True)
    assert calls()[-1]["argv"] == ["input.yaml", "-ip", "checkpoint.yaml"]


def test_iterations_are_counted_at_display_steps_too(prepared, monkeypatch):
    w, run_dir, _ = prepared(maxiter=25)
    monkeypatch.setenv("FAKE_ITERS", "25"); monkeypatch.setenv("FAKE_DISPLAY", "10"); monkeypatch.setenv("FAKE_RC", "0")
    result = w.run(run_dir)
    assert json.loads((run_dir / "checkpoint.json").read_text())["iterations_done"] == 24   # no save time: one fewer
    assert result["iterations"] == 25


def test_a_fresh_run_discards_an_old_checkpoint(prepared, monkeypatch):
    w, run_dir, calls = prepared(maxiter=20)
    monkeypatch.setenv("FAKE_ITERS", "4")
    with pytest.raises(PacemakerError):
        w.run(run_dir)
    monkeypatch.setenv("FAKE_ITERS", "0")
    with pytest.raises(PacemakerError):
        w.run(run_dir)                                                     # not a resume: starts over
    assert calls()[-1]["argv"] == ["input.yaml"] and not (run_dir / "checkpoint.json").exists()


# ---------------------------------------------------------------- dry run, missing tools, failures

def test_dry_run_starts_no_process_and_deletes_nothing(tmp_path, tables, monkeypatch):
    models = tmp_path / "models"
    d = Deliverables(models)
    LinearAceTrainer(cfg(max_basis_grade=8), progress=False, active_set=False).fit(
        tables[:2], tmp_path / "old_fit", d, tables[2], record={"key": "old"})
    run_dir = tmp_path / "fit"; run_dir.mkdir()
    (run_dir / "checkpoint.yaml").write_text("kept"); (run_dir / "output_potential.yaml").write_text("kept too")
    before_models, before_run = files_digest(models), files_digest(run_dir)

    def forbidden(*a, **k): raise AssertionError("a process was started in a dry run")
    monkeypatch.setattr(subprocess, "Popen", forbidden)
    monkeypatch.setattr(subprocess, "run", forbidden)
    res = PacemakerWrapper(cfg(), executable="no-such-pacemaker").fit(tables[:2], run_dir, d, tables[2], dry_run=True)
    assert res["dry_run"] and "no-such-pacemaker input.yaml" in res["command"] and "dry run" in repr(res)
    assert files_digest(models) == before_models
    after = files_digest(run_dir)
    assert {k: after[k] for k in before_run} == before_run                 # nothing deleted or changed
    assert {"input.yaml", "train.pckl.gzip", "test.pckl.gzip"} <= set(after)


def test_missing_pacemaker_names_the_install_line_and_mock(tmp_path, tables):
    with pytest.raises(PacemakerNotFound) as e:
        PacemakerWrapper(cfg(), executable="no-such-pacemaker").fit(tables[:2], tmp_path / "fit",
                                                                     Deliverables(tmp_path / "models"), tables[2])
    msg = str(e.value)
    assert msg.startswith("pacemaker ('no-such-pacemaker') is not installed; ") and install_hint() in msg
    assert "make install" in msg and "pip install" in msg and "--mock" in msg and "training.mock: true" in msg
    assert not (tmp_path / "fit").exists() and not (tmp_path / "models").exists()


def test_install_hint_comes_from_the_package_metadata():
    import importlib.metadata
    reqs = importlib.metadata.requires("pyacemaker") or []
    fit_reqs = [r.split(";")[0].strip() for r in reqs if re.search(r"extra\s*==\s*['\"]fit['\"]", r)]
    assert fit_reqs, "the installed pyacemaker declares no 'fit' extra"
    hint = install_hint()
    for r in fit_reqs:
        assert r in hint or f"'{r}'" in hint, (r, hint)


NO_TENSORFLOW = 'import sys; sys.modules["tensorflow"] = None\n'   # from here on `import tensorflow` fails, find_spec is None


def test_tensorflow_missing_names_the_install_line_and_mock():
    code = NO_TENSORFLOW + textwrap.dedent("""
        import importlib.util
        assert importlib.util.find_spec("tensorflow") is None
        from pyacemaker.trainer.ace_trainer import PacemakerNotFound, check_pacemaker, install_hint
        try: check_pacemaker("pacemaker")
        except PacemakerNotFound as e: print("REFUSED", e)
        else: print("ACCEPTED")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.strip().splitlines()[-1]
    assert out.startswith("REFUSED pacemaker needs tensorflow, which is not installed; "), out
    assert "pip install" in out and "--mock" in out
    assert check_pacemaker("pacemaker").endswith("pacemaker")                # here, with TensorFlow: accepted


def test_cli_fit_without_tensorflow_is_one_line_and_starts_nothing(tmp_path, labeled, make_pipeline_config):
    from pyacemaker.utils.io import write_frames
    frames, _ = labeled
    c = make_pipeline_config(tmp_path, frames)
    write_frames(frames, c.path(c.step5_file))
    code = NO_TENSORFLOW + "from pyacemaker.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", code, "fit", str(tmp_path / "pipeline.yaml")], capture_output=True, text=True)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyacemaker fit: error: pacemaker needs tensorflow"), r.stderr
    assert "--mock" in lines[0]
    assert not (c.work_dir / "models").exists()


def test_failing_pacemaker_raises_with_log_tail_and_delivers_nothing(tmp_path, tables):
    exe = fake(tmp_path, "for i in $(seq 1 40); do echo \"line $i\"; done\necho 'KeyError: energy_corrected' >&2\nexit 1\n")
    with pytest.raises(PacemakerError, match=r"pacemaker exited with status 1 in .*fit") as e:
        PacemakerWrapper(cfg(), executable=exe, progress=False).fit(tables[:2], tmp_path / "fit",
                                                                    Deliverables(tmp_path / "models"), tables[2])
    text = str(e.value) + "\n" + getattr(e.value, "detail", "")
    assert "KeyError: energy_corrected" in text and "line 40" in text and "line 5\n" not in text   # the tail, not all
    assert "pacemaker.log" in text and (tmp_path / "fit" / "pacemaker.log").exists()
    assert "line 1\n" in (tmp_path / "fit" / "pacemaker.log").read_text()
    assert not (tmp_path / "models" / "ace_base.yace").exists()


def test_pacemaker_without_output_is_an_error(tmp_path, tables):
    exe = fake(tmp_path, "echo 'Fitting done'\nexit 0\n")
    with pytest.raises(PacemakerError, match="wrote no output_potential.yaml"):
        PacemakerWrapper(cfg(), executable=exe, progress=False).fit(tables[:2], tmp_path / "fit",
                                                                    Deliverables(tmp_path / "models"), tables[2])
    assert not (tmp_path / "models").exists()


def test_finished_potential_is_checked_before_any_work(tmp_path, tables):
    models = tmp_path / "models"
    d = Deliverables(models)
    LinearAceTrainer(cfg(max_basis_grade=8), progress=False, active_set=False).fit(
        tables[:2], tmp_path / "old_fit", d, tables[2], record={"key": "old"})
    before = files_digest(models)
    marker = tmp_path / "started"
    exe = fake(tmp_path, f"touch {marker}\nexit 1\n")
    with pytest.raises(ExistingOutput, match="ace_base.yace already exists; refusing to overwrite a finished potential"):
        PacemakerWrapper(cfg(), executable=exe).fit(tables[:2], tmp_path / "fit", d, tables[2])
    assert not (tmp_path / "fit").exists() and not marker.exists()
    assert files_digest(models) == before


# ---------------------------------------------------------------- delivery as a set

@pytest.fixture
def two_sets(tmp_path, tables):
    """Set A delivered in models/, set B (another basis) delivered elsewhere: real linear fits, no active set."""
    sets = {}
    for name, grade in (("A", 8), ("B", 12)):
        d = Deliverables(tmp_path / f"models_{name}")
        LinearAceTrainer(cfg(max_basis_grade=grade), progress=False, active_set=False).fit(
            tables[:2], tmp_path / f"fit_{name}", d, tables[2], record={"key": f"key-{name}"})
        sets[name] = d
    models = tmp_path / "models"
    shutil.copytree(sets["A"].models_dir, models)
    return Deliverables(models), sets["A"], sets["B"]


def stage_copy(src: Deliverables, dst: Deliverables):
    """A complete staging folder for `dst` holding set `src` (what stage_delivery leaves before the swap)."""
    shutil.copytree(src.models_dir, dst.staging, ignore=shutil.ignore_patterns(".*"))


def test_delivered_set_opens_and_names_its_files(two_sets, tables):
    d, a, _ = two_sets
    manifest = open_delivered(d)
    assert manifest["key"] == "key-A" and manifest["mode"] == "mock" and manifest["elements"] == ["Cu", "Ag"]
    assert manifest["e0"] == pytest.approx(tables[2])
    assert set(manifest["files"]) == {p.name for p in d.models_dir.iterdir() if p.name != d.manifest.name}
    for name in ["ace_base.yace", "ace_base.yaml", "ace_base_train.pckl.gzip", "ace_base_test.pckl.gzip",
                 "ace_base_train_pred.pckl.gzip", "ace_base.lammps", "ace_base_extrapolation.lammps"]:
        assert name in manifest["files"], name


def test_kill_between_renames_is_finished_by_the_next_reader(two_sets, tmp_path):
    d, a, b = two_sets
    stage_copy(b, d)
    n_files = len(json.loads((d.staging / d.manifest.name).read_text())["files"])
    code = textwrap.dedent(f"""
        import os, signal
        from pyacemaker.kit.layout import Deliverables, swap_in
        real, done = os.replace, [0]
        def replace(src, dst):
            real(src, dst); done[0] += 1
            if done[0] == 3: os.kill(os.getpid(), signal.SIGKILL)          # killed after the third rename
        os.replace = replace
        swap_in(Deliverables({str(d.models_dir)!r}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert d.staging.exists() and json.loads(d.manifest.read_text())["key"] == "key-A"   # half swapped: a mix on disk
    with pytest.raises(DeliveryError):
        _verify_without_recovery(d)                                        # without recovery, a mix of two sets
    manifest = open_delivered(d)                                           # the next reader finishes the swap
    assert manifest["key"] == "key-B" and not d.staging.exists()
    assert {k: v for k, v in files_digest(d.models_dir).items()} == files_digest(b.models_dir)
    assert n_files == len(manifest["files"])


def _verify_without_recovery(d: Deliverables):
    """The files on disk checked against the manifest on disk, as a reader that did not recover would see them."""
    manifest = json.loads(d.manifest.read_text())
    for name, digest in manifest["files"].items():
        if hashlib.sha256((d.models_dir / name).read_bytes()).hexdigest() != digest:
            raise DeliveryError(f"{name} is from another set")


def test_incomplete_staging_is_dropped_and_the_old_set_kept(two_sets):
    d, a, b = two_sets
    stage_copy(b, d)
    (d.staging / d.manifest.name).unlink()                                  # killed before the manifest was written
    before = files_digest(d.models_dir)
    manifest = open_delivered(d)
    assert manifest["key"] == "key-A" and not d.staging.exists()
    assert files_digest(d.models_dir) == {k: v for k, v in before.items() if not k.startswith(".ace_base.staging")}


def test_files_only_the_old_set_had_are_removed(two_sets):
    d, a, b = two_sets
    (b.models_dir / "ace_base_test_pred.pckl.gzip").unlink()
    m = json.loads(b.manifest.read_text()); del m["files"]["ace_base_test_pred.pckl.gzip"]
    b.manifest.write_text(json.dumps(m))
    stage_copy(b, d)
    recover_delivery(d)
    assert not (d.models_dir / "ace_base_test_pred.pckl.gzip").exists()
    assert open_delivered(d)["key"] == "key-B"


def test_a_foreign_or_missing_file_is_restored_or_refused(two_sets):
    """A file of another fit dropped into models/, or a missing one, is restored from the run folder; if that cannot, refused."""
    d, a, b = two_sets
    good = file_sha256(d.yace)
    shutil.copyfile(b.yace, d.yace)                                          # a potential of another fit, dropped in
    open_delivered(d)
    assert file_sha256(d.yace) == good                                       # restored from the set's run folder
    run = d.models_dir / read_json(d.manifest)["run_dir"]
    shutil.copyfile(b.yace, d.yace); shutil.copyfile(b.yace, run / "output_potential.yace")
    with pytest.raises(DeliveryError, match=r"ace_base.yace: does not belong to the delivered set \(SHA-256 of "
                                            r"ace_base.delivery.json.*cannot restore it; run step 6 \(pyacemaker fit / run\) --overwrite"):
        open_delivered(d)
    shutil.copyfile(a.yace, d.yace)
    d.table("test").unlink(); (run / "test.pckl.gzip").unlink()
    with pytest.raises(DeliveryError, match=r"ace_base_test.pckl.gzip: missing from the delivered set"):
        open_delivered(d)


def test_a_potential_without_manifest_is_not_a_delivered_set(tmp_path):
    d = Deliverables(tmp_path / "models")
    with pytest.raises(DeliveryError, match=r"ace_base.yace: no fitted potential here; run step 6 \(pyacemaker fit / run\) first"):
        open_delivered(d)
    d.models_dir.mkdir(); d.yace.write_text("old")
    with pytest.raises(DeliveryError, match=r"has no ace_base.delivery.json: delivered by an older pyacemaker\); run step 6"):
        open_delivered(d)


def test_overwrite_whose_new_fit_fails_keeps_the_previous_set(tmp_path, labeled, make_pipeline_config):
    """`fit --overwrite` with a failing pacemaker: models/ byte-identical, and the report still pairs the old
    potential with its own tables."""
    from pyacemaker.kit.layout import fit_dir
    from pyacemaker.orchestrator import run_pipeline, run_step6
    from pyacemaker.report.parity import write_report
    frames, _ = labeled
    old = make_pipeline_config(tmp_path, frames, mock=True, max_basis_grade=8)
    run_pipeline(old, progress=False, report=False)
    d = Deliverables.of(old.path(old.ace_model_file))
    before, old_key = files_digest(d.models_dir), json.loads(d.manifest.read_text())["key"]
    old_run = fit_dir(old, old_key)
    assert old_run.is_dir()

    new = old.model_copy(deep=True)
    new.training = new.training.model_copy(update={"mock": False, "max_basis_grade": 12})
    exe = fake(tmp_path, "echo 'Traceback: out of memory'\nexit 1\n")
    with pytest.raises(PacemakerError, match="pacemaker exited with status 1"):
        run_step6(new, overwrite=True, progress=False, executable=exe)
    assert files_digest(d.models_dir) == before
    assert old_run.is_dir()                                                # the old run folder is kept too
    metrics = write_report(old, speed=False, md=False)
    assert metrics["delivery"]["key"] == old_key and metrics["mode"] == "mock"
    assert metrics["train"]["n_structures"] == len(read_training_table(d.table("train")))
    assert metrics["test"]["n_structures"] == len(read_training_table(d.table("test")))
    assert files_digest(d.models_dir) == before


# ---------------------------------------------------------------- the shared real fit: E0, total energies, LAMMPS

def yace_e0(yace: Path) -> list[float]:
    line = next(l for l in yace.read_text().splitlines() if l.startswith("E0:"))
    return yaml.safe_load(line)["E0"]


def test_delivered_yace_carries_the_teachers_e0(fitted_pipeline, surrogate32):
    c, _, fit = fitted_pipeline
    d = Deliverables.of(c.path(c.ace_model_file))
    elements = yace_elements(d.yace)
    assert sorted(elements) == sorted(c.training.elements)
    e0 = surrogate32.e0                                                      # the head's E0 (the teacher of the fit)
    assert yace_e0(d.yace) == pytest.approx([e0[e] for e in elements], rel=1e-12)
    assert all(abs(v) > 0.1 for v in yace_e0(d.yace))                        # not pacemaker's zeros
    assert open_delivered(d)["e0"] == pytest.approx(e0, rel=1e-12)
    meta = import_pyace().BBasisConfiguration(str(d.yaml)).metadata
    assert json.loads(meta["reference_energy"]) == pytest.approx(e0, rel=1e-12)


def test_yace_returns_the_teachers_total_energies(fitted_pipeline):
    """Total energies from PyACECalculator(.yace) equal the teacher's within the fit error; the .yaml (no E0) is off
    by exactly ΣE0 — so without E0 this test fails."""
    from pyace import PyACECalculator
    c, _, _ = fitted_pipeline
    d = Deliverables.of(c.path(c.ace_model_file))
    e0 = open_delivered(d)["e0"]
    yace, yml = PyACECalculator(str(d.yace)), PyACECalculator(str(d.yaml))
    table = read_training_table(d.table("test"))
    total_err, cohesive_err, yaml_err = [], [], []
    for atoms, row in zip(table_frames(table), table.itertuples()):
        n, shift = len(atoms), sum(e0[s] for s in atoms.get_chemical_symbols())
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = yace, yml
        e_yace, e_yaml = a.get_potential_energy(), b.get_potential_energy()
        assert e_yace - e_yaml == pytest.approx(shift, abs=1e-6)
        total_err.append((e_yace - row.energy) / n)
        cohesive_err.append((e_yace - shift - row.energy_corrected) / n)
        yaml_err.append((e_yaml - row.energy) / n)
    total_err, cohesive_err = np.array(total_err), np.array(cohesive_err)
    fit_rmse = np.sqrt(np.mean(cohesive_err ** 2))
    np.testing.assert_allclose(total_err, cohesive_err, atol=1e-6)
    print(f"held-out total energy: mean error {1e3 * total_err.mean():.2f} meV/atom, RMSE {1e3 * np.sqrt(np.mean(total_err ** 2)):.2f}"
          f" meV/atom (fit RMSE {1e3 * fit_rmse:.2f}); without E0 (.yaml): mean {1e3 * np.mean(yaml_err):.0f} meV/atom")
    assert abs(total_err.mean()) <= fit_rmse + 1e-9
    assert abs(np.mean(yaml_err)) > fit_rmse              # without E0 the same check fails (the tiny fit's error is large)


def test_lammps_fragments_match_the_delivered_files(fitted_pipeline):
    c, _, _ = fitted_pipeline
    d = Deliverables.of(c.path(c.ace_model_file))
    manifest = open_delivered(d)
    pace, extra = d.file(".lammps"), d.file("_extrapolation.lammps")
    assert pace.name in manifest["files"] and extra.name in manifest["files"]
    for fragment, style, files in [(pace, "pace", [d.yace.name]), (extra, "pace/extrapolation", [d.yaml.name, d.asi.name])]:
        lines = fragment.read_text().splitlines()
        assert f"pair_style      {style}" in lines
        coeff = next(l for l in lines if l.startswith("pair_coeff")).split()
        assert coeff[1:3] == ["*", "*"] and coeff[3:3 + len(files)] == files
        names = coeff[3 + len(files):]
        assert names == c.training.elements                                 # LAMMPS types 1, 2, … in training.elements order
        assert set(names) <= set(yace_elements(d.yace))
        for f in files: assert (d.models_dir / f).is_file(), f
        assert ", ".join(f"type {i} = {e}" for i, e in enumerate(c.training.elements, 1)) in lines[0]
