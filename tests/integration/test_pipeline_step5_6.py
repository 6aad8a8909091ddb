"""Steps 5 -> 6 end to end on what users bring (bulk + slab + wire + cluster): the real pacemaker fit (shared), mock mode
with TensorFlow unimportable, `--resume` after SIGKILL of the pacemaker child, and the rerun rule of `run`."""
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from pyacemaker.kit.layout import Deliverables, fit_dir, open_delivered
from pyacemaker.orchestrator import (fit_key, reference_energies, run_pipeline, run_step5, run_step6,
                                     write_fit_inputs)
from pyacemaker.trainer.ace_trainer import PacemakerError, PacemakerWrapper, yace_elements
from pyacemaker.utils.io import (ExistingOutput, MissingInput, cell_kind, iter_frames, periodic_equivalent,
                                 read_training_table, table_frames, write_frames)


def delivered(cfg) -> Deliverables:
    return Deliverables.of(cfg.path(cfg.ace_model_file))


# ---------------------------------------------------------------- the shared real fit

def test_deliverables_exist(fitted_pipeline, mixed_frames):
    cfg, labels, fit = fitted_pipeline
    d = delivered(cfg)
    assert fit["potential"] == d.yace and d.yace.stat().st_size > 0 and fit["mode"] == "pacemaker"
    manifest = open_delivered(d)
    for p in [d.yaml, d.asi, d.manifest, d.table("train"), d.table("test"), d.pred("train"), d.pred("test"),
              d.metrics("train"), d.metrics("test"), d.file("_input.yaml"), d.file(".lammps"), d.file("_extrapolation.lammps")]:
        assert p.is_file(), p
    assert manifest["mode"] == "pacemaker" and manifest["key"] == fit["key"]
    assert labels["n_structures"] == len(mixed_frames) == 75
    step5 = list(iter_frames(cfg.path(cfg.step5_file)))
    assert len(step5) == 75 and {cell_kind(a) for a in step5} == {"bulk", "slab", "wire", "cluster"}
    header = (fit["run_dir"] / "step6_training_data.xyz").read_text().splitlines()[1]
    assert "Properties=species:S:1:pos:R:3:forces:R:3" in header and " energy=" in header


def test_train_test_split_is_disjoint_and_complete(fitted_pipeline):
    cfg, _, _ = fitted_pipeline
    d = delivered(cfg)
    train, test = read_training_table(d.table("train")), read_training_table(d.table("test"))
    assert (len(train), len(test)) == (60, 15)
    assert set(train.name).isdisjoint(test.name)
    assert set(train.name) | set(test.name) == {f"{cfg.step5_file}:{i}" for i in range(75)}
    assert set(train.cell_kind) | set(test.cell_kind) == {"bulk", "slab", "wire", "cluster"}
    assert all(a.pbc.all() for a in list(train.ase_atoms) + list(test.ase_atoms))


def ace_errors(calc, table):
    """Per-structure energy error (eV/atom) and force errors (eV/Å) of a calculator on a training table, and the kinds."""
    de, dforce, fref, kinds = [], [], [], []
    for ref, row in zip(table_frames(table), table.itertuples()):
        at = ref.copy(); at.calc = calc
        e, f = at.get_potential_energy(), at.get_forces()
        assert np.isfinite(e) and np.isfinite(f).all()
        de.append((e - row.energy) / len(at))
        dforce.append(f - ref.get_forces()); fref.append(ref.get_forces()); kinds.append(row.cell_kind)
    return np.array(de), dforce, fref, np.array(kinds)


def test_yace_loads_and_learned_the_forces(fitted_pipeline):
    """The tiny fit must explain at least half the force variance of the held-out MACE labels: force RMSE < RMS/√2
    (zero forces give exactly the RMS)."""
    from pyace import PyACECalculator
    cfg, _, _ = fitted_pipeline
    d = delivered(cfg)
    de, dforce, fref, _ = ace_errors(PyACECalculator(str(d.yace)), read_training_table(d.table("test")))
    rmse_f, rms_f = np.sqrt(np.mean(np.concatenate(dforce) ** 2)), np.sqrt(np.mean(np.concatenate(fref) ** 2))
    print(f"tiny fit, held-out: force RMSE {1e3 * rmse_f:.1f} meV/Å vs RMS force {1e3 * rms_f:.1f} meV/Å; "
          f"total energy RMSE {1e3 * np.sqrt(np.mean(de ** 2)):.1f} meV/atom")
    assert rmse_f < rms_f / np.sqrt(2)


def test_errors_per_cell_kind_are_finite(fitted_pipeline):
    from pyace import PyACECalculator
    cfg, _, _ = fitted_pipeline
    d = delivered(cfg)
    calc = PyACECalculator(str(d.yace))
    per_kind = {}
    for split in ("train", "test"):
        de, dforce, _, kinds = ace_errors(calc, read_training_table(d.table(split)))
        for k in set(kinds):
            e = de[kinds == k]; f = np.concatenate([x for x, kk in zip(dforce, kinds) if kk == k])
            per_kind.setdefault(k, []).append((np.sqrt(np.mean(e ** 2)), np.sqrt(np.mean(f ** 2))))
    assert set(per_kind) == {"bulk", "slab", "wire", "cluster"}
    print({k: [f"{1e3 * e:.0f} meV/atom, {1e3 * f:.0f} meV/Å" for e, f in v] for k, v in per_kind.items()})
    assert all(np.isfinite(v).all() for v in per_kind.values())


def test_original_slabs_evaluate_through_their_periodic_equivalent(fitted_pipeline):
    """The deployed potential on a step-5 slab/wire/cluster (via periodic_equivalent) = on the table's converted cell."""
    from pyace import PyACECalculator
    cfg, _, _ = fitted_pipeline
    calc = PyACECalculator(str(delivered(cfg).yace))
    step5 = list(iter_frames(cfg.path(cfg.step5_file)))
    tables = {n: a for s in ("train", "test") for n, a in
              zip(*(lambda t: (t.name, t.ase_atoms))(read_training_table(delivered(cfg).table(s))))}
    for i, atoms in enumerate(step5):
        if atoms.pbc.all(): continue
        a, b = periodic_equivalent(atoms, cfg.training.cutoff), tables[f"{cfg.step5_file}:{i}"].copy()
        a.calc = calc; b.calc = calc
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-8)


def test_max_basis_grade_bounds_the_fitted_basis(fitted_pipeline):
    from pyace import BBasisConfiguration
    cfg, _, _ = fitted_pipeline
    basis = BBasisConfiguration(str(delivered(cfg).yaml))
    per_element = {}
    for block in basis.funcspecs_blocks:
        if len(set(block.elements_vec)) == 1:                     # single-species blocks hold the per-element functions
            per_element[block.elements_vec[0]] = len(block.funcspecs)
    assert set(per_element) == {"Cu", "Ag"} == set(yace_elements(delivered(cfg).yace))
    assert all(0 < n <= cfg.training.max_basis_grade for n in per_element.values()), per_element


def test_refuses_to_overwrite_the_finished_potential(fitted_pipeline):
    cfg, _, fit = fitted_pipeline
    before = fit["potential"].read_bytes()
    with pytest.raises(ExistingOutput, match=r"ace_base.yace already exists \(up to date with the labels and settings\); "
                                             r"refusing to overwrite"):
        run_step6(cfg, progress=False)
    with pytest.raises(ExistingOutput, match="already fitted to these labels and settings; nothing to resume"):
        run_step6(cfg, resume=True, progress=False)
    assert fit["potential"].read_bytes() == before


def test_second_run_reuses_both_steps(fitted_pipeline):
    cfg, _, fit = fitted_pipeline
    manifest = delivered(cfg).manifest.read_text()
    t0 = time.perf_counter()
    again = run_pipeline(cfg, progress=False, report=False)
    print(f"second run_pipeline on the finished folder: {time.perf_counter() - t0:.1f} s")
    assert again["labels"] is None and again["fit"] is None and again["report"] is None
    assert [r.split(" (")[0] for r in again["reused"]] == ["step 5", "step 6"]
    assert delivered(cfg).manifest.read_text() == manifest


def test_make_demo_rerun_command_exits_0_on_a_finished_folder(fitted_pipeline, pyacemaker_exe):
    """The command `make demo` prints (`pyacemaker run CONFIG`), on a finished pacemaker fit: exit 0, nothing refitted."""
    cfg, _, _ = fitted_pipeline
    config = cfg.work_dir.parent / "pipeline.yaml"
    manifest = delivered(cfg).manifest.read_text()
    r = subprocess.run([pyacemaker_exe, "run", str(config), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "reused: step 5" in r.stdout and "step 6 (potential up to date)" in r.stdout
    assert delivered(cfg).manifest.read_text() == manifest
    r2 = subprocess.run([pyacemaker_exe, "run", str(config), "--quiet"], capture_output=True, text=True)
    assert r2.returncode == 0 and "report (up to date)" in r2.stdout, r2.stdout + r2.stderr


# ---------------------------------------------------------------- mock mode without TensorFlow

SITECUSTOMIZE = """
import atexit, os, sys
sys.modules["tensorflow"] = None            # `import tensorflow` raises ImportError in every Python of this run
def _record():
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorpotential", "tf_keras", "keras")
                    and sys.modules[m] is not None)
    with open(os.environ["TF_PROBE"], "a") as f: f.write(f"{os.getpid()} {sys.argv[0]} {loaded}\\n")
atexit.register(_record)
"""


@pytest.fixture(scope="module")
def mock_run(tmp_path_factory, mixed_frames, make_pipeline_config, pyacemaker_exe):
    """`pyacemaker run CONFIG --mock` (step 5 -> step 6 mock -> report) with TensorFlow unimportable in every process."""
    work = tmp_path_factory.mktemp("mock_no_tf")
    cfg = make_pipeline_config(work, mixed_frames[:40])
    site = work / "site"; site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "TF_PROBE": str(work / "tf_probe.txt")}
    t0 = time.perf_counter()
    r = subprocess.run([pyacemaker_exe, "run", str(work / "pipeline.yaml"), "--mock", "--no-speed"], capture_output=True,
                       text=True, env=env)
    return cfg, r, time.perf_counter() - t0, (work / "tf_probe.txt")


def test_mock_mode_runs_without_tensorflow(mock_run):
    cfg, r, seconds, probe = mock_run
    print(f"pyacemaker run --mock (step 5 + linear fit + report) without TensorFlow: {seconds:.0f} s")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = probe.read_text().splitlines()
    assert len(lines) >= 2, lines                                   # pyacemaker and pace_activeset both ran under the probe
    assert all(line.endswith(" []") for line in lines), lines       # no TensorFlow in any of them
    assert "MOCK" in r.stdout


def test_mock_mode_delivers_a_loadable_yace(mock_run):
    from pyace import PyACECalculator
    cfg, r, _, _ = mock_run
    assert r.returncode == 0, r.stderr[-3000:]
    d = delivered(cfg)
    assert d.yace.is_file()
    manifest = open_delivered(d)
    assert manifest["mode"] == "mock"
    metrics = json.loads((cfg.work_dir / "reports" / "metrics.json").read_text())
    assert metrics["mode"] == "mock" and metrics["delivery"]["mode"] == "mock"
    assert metrics["skipped"]["pacemaker_agreement"].startswith("no pacemaker predictions: mock")
    test = read_training_table(d.table("test"))
    calc = PyACECalculator(str(d.yace))
    dforce, fref = [], []
    for ref in table_frames(test):
        at = ref.copy(); at.calc = calc
        dforce.append(at.get_forces() - ref.get_forces()); fref.append(ref.get_forces())
    rmse, rms = np.sqrt(np.mean(np.concatenate(dforce) ** 2)), np.sqrt(np.mean(np.concatenate(fref) ** 2))
    print(f"mock (linear ACE) held-out force RMSE {1e3 * rmse:.0f} meV/Å vs RMS {1e3 * rms:.0f} meV/Å; "
          f"report: {metrics['test']['energy_rmse_meV_per_atom']:.1f} meV/atom")
    assert rmse < rms / np.sqrt(2)                                  # clearly better than zero forces


# ---------------------------------------------------------------- --resume after SIGKILL of the pacemaker child

MAXITER = 60


def pacemaker_child(timeout=60.0):
    """The pacemaker process this test process started (its direct child)."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        for p in psutil.Process().children():
            try:
                if any("pacemaker" in part for part in p.cmdline()[:2]): return p
            except psutil.Error: pass
        time.sleep(0.1)
    raise AssertionError("no pacemaker child process found")


@pytest.fixture(scope="module")
def resumed_fit(tmp_path_factory, mixed_frames, make_pipeline_config):
    """A real fit killed (SIGKILL to pacemaker, not to pyacemaker) once its checkpoint holds >= 5 iterations, then
    `run_step6(resume=True)` — what `pyacemaker fit CONFIG --resume` runs."""
    cfg = make_pipeline_config(tmp_path_factory.mktemp("resume"), mixed_frames[:40], maxiter=MAXITER)
    run_step5(cfg, progress=False)
    e0 = reference_energies(cfg)
    key = fit_key(cfg, e0)
    run_dir = fit_dir(cfg, key); run_dir.mkdir(parents=True)
    train, test = write_fit_inputs(cfg, run_dir, e0)
    wrapper = PacemakerWrapper(cfg.training, progress=False, checkpoint_every_s=0.2)
    outcome = {}

    def fit():
        try: outcome["result"] = wrapper.fit((train, test), run_dir, delivered(cfg), e0, record={"key": key})
        except BaseException as err: outcome["error"] = err

    t0 = time.perf_counter()
    worker = threading.Thread(target=fit); worker.start()
    child = pacemaker_child()
    ck_file = run_dir / "checkpoint.json"
    while worker.is_alive():
        if ck_file.exists() and json.loads(ck_file.read_text() or "{}").get("iterations_done", 0) >= 5: break
        time.sleep(0.02)
    assert worker.is_alive(), f"the fit ended before it could be killed: {outcome}"
    child.send_signal(signal.SIGKILL)
    worker.join(120)
    interrupted_s = time.perf_counter() - t0
    checkpoint = json.loads(ck_file.read_text())
    first_log = (run_dir / "pacemaker.log").read_text()
    t1 = time.perf_counter()
    result = run_step6(cfg, resume=True, progress=False)
    resumed_s = time.perf_counter() - t1
    print(f"resume: killed after {interrupted_s:.0f} s at checkpoint {checkpoint}; resumed fit {resumed_s:.0f} s, "
          f"FitResult iterations {result.get('iterations')}")
    return dict(cfg=cfg, run_dir=run_dir, outcome=outcome, checkpoint=checkpoint, first_log=first_log, result=result,
                log=(run_dir / "pacemaker.log").read_text())


def segments(log: str) -> list[str]:
    """The pacemaker runs of an appended log, one text each."""
    parts = re.split(r"(?m)^(?=.*Start pacemaker)", log)
    return [p for p in parts if "Start pacemaker" in p]


def initial_loss(segment: str) -> float:
    return float(re.search(r"Initial state:#0\s.*?Loss:\s*(\S+)", segment).group(1))


def scipy_iterations(segment: str) -> int:
    return int(re.search(r"^\s*Iterations:\s*(\d+)\s*$", segment, re.M).group(1))


def test_killed_fit_leaves_a_checkpoint_and_no_potential(resumed_fit):
    err = resumed_fit["outcome"].get("error")
    assert isinstance(err, PacemakerError) and "status -9" in str(err), resumed_fit["outcome"]
    ck = resumed_fit["checkpoint"]
    assert 5 <= ck["iterations_done"] < MAXITER
    assert "Iterations:" not in resumed_fit["first_log"]              # killed mid-fit, not after it
    assert "interim_potential" not in str(ck)


def test_resumed_fit_starts_from_the_checkpoint(resumed_fit):
    runs = segments(resumed_fit["log"])
    assert len(runs) == 2                                             # the log of both runs, appended
    fresh, resumed = initial_loss(runs[0]), initial_loss(runs[1])
    ck_loss = float(resumed_fit["checkpoint"]["loss"])
    print(f"initial loss: fresh start {fresh:.4g}, resumed {resumed:.4g}, checkpoint {ck_loss:.4g}")
    assert resumed == pytest.approx(ck_loss, rel=0.25)
    assert resumed < 0.5 * fresh
    assert scipy_iterations(runs[1]) < MAXITER                        # only the remaining iterations were run


def test_resumed_fit_is_delivered(resumed_fit):
    cfg, result = resumed_fit["cfg"], resumed_fit["result"]
    manifest = open_delivered(delivered(cfg))
    assert manifest["mode"] == "pacemaker" and manifest["resumed_from"] == resumed_fit["checkpoint"]["iterations_done"]
    assert result["resumed_from"] == resumed_fit["checkpoint"]["iterations_done"]
    from pyace import PyACECalculator
    calc = PyACECalculator(str(delivered(cfg).yace))
    at = table_frames(read_training_table(delivered(cfg).table("test")))[0]
    at.calc = calc
    assert np.isfinite(at.get_potential_energy())


def test_resumed_fit_runs_maxiter_iterations_in_all(resumed_fit):
    """The checkpoint's true iteration (found by the resumed run's initial loss in the first run's log) plus the
    iterations of the resumed run must be maxiter; the FitResult must count the same."""
    runs = segments(resumed_fit["log"])
    start = f"{initial_loss(runs[1]):.4e}"
    found = [int(m.group(1)) for m in re.finditer(r"Iteration:?\s+#(\d+)\s.*?Loss:\s*(?:Total:\s*)?" + re.escape(start),
                                                          runs[0])]
    assert found, f"the resumed run's initial loss {start} is not an iteration of the first run"
    print(f"checkpoint holds iteration {found[0]}, recorded as {resumed_fit['checkpoint']['iterations_done']}; "
          f"resumed run: {scipy_iterations(runs[1])} iterations; FitResult: {resumed_fit['result']['iterations']}")
    assert resumed_fit["checkpoint"]["iterations_done"] == found[0]
    assert found[0] + scipy_iterations(runs[1]) == MAXITER
    assert resumed_fit["result"]["iterations"] == MAXITER


def test_resume_without_a_checkpoint_is_refused(tmp_path, mixed_frames, make_pipeline_config):
    cfg = make_pipeline_config(tmp_path, mixed_frames[:10], mock=True)
    run_step5(cfg, progress=False)
    with pytest.raises(MissingInput, match="no interrupted fit of the current labels and settings to resume; run without --resume"):
        run_step6(cfg, resume=True, progress=False)


# ---------------------------------------------------------------- the rerun rule (mock fits: seconds)

def test_rerun_rule(tmp_path, mixed_frames, make_pipeline_config):
    cfg = make_pipeline_config(tmp_path, mixed_frames[:30], mock=True, max_basis_grade=8)
    first = run_pipeline(cfg, progress=False, speed=False)
    assert first["labels"] is not None and first["fit"] is not None and first["report"] is not None
    d = delivered(cfg)
    key1 = json.loads(d.manifest.read_text())["key"]
    label_record = Path(str(cfg.path(cfg.step5_file)) + ".json").read_text()

    t0 = time.perf_counter()
    same = run_pipeline(cfg, progress=False, speed=False)
    print(f"rerun with nothing changed: {time.perf_counter() - t0:.1f} s")
    assert (same["labels"], same["fit"], same["report"]) == (None, None, None)
    assert len(same["reused"]) == 3

    training = cfg.model_copy(deep=True)                           # a training setting only: step 6 and report redone
    training.training = training.training.model_copy(update={"max_basis_grade": 10})
    t = run_pipeline(training, progress=False, speed=False)
    assert t["labels"] is None and t["fit"] is not None and t["report"] is not None
    assert Path(str(cfg.path(cfg.step5_file)) + ".json").read_text() == label_record
    key2 = json.loads(d.manifest.read_text())["key"]
    assert key2 != key1 and t["report"]["delivery"]["key"] == key2
    assert {p.name for p in fit_dir(cfg).iterdir() if p.is_dir()} == {key2[:12]}   # the superseded run folder is gone

    frames = list(iter_frames(cfg.path(cfg.step4_file)))               # the step-4 file changes: step 5 and 6 redone
    frames[3].positions[0] += 0.05
    write_frames(frames, cfg.path(cfg.step4_file), overwrite=True)
    s = run_pipeline(training, progress=False, speed=False)
    assert s["labels"] is not None and s["fit"] is not None and s["report"] is not None
    assert json.loads(d.manifest.read_text())["key"] not in (key1, key2)

    o = run_pipeline(training, overwrite=True, progress=False, speed=False)   # --overwrite redoes everything
    assert o["labels"] is not None and o["fit"] is not None and o["report"] is not None and o["reused"] == []
