"""Issue 23: refine, report and validate under a demanding user — one test per defect, on a real loop of two upfits
(mock trainer, real MD, real teacher, real D-optimal selection) and real processes where the defect is about them."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from ase import Atoms

from pyacemaker.cli import main
from pyacemaker.domain_models.config import ValidationConfig, dump_config
from pyacemaker.kit.layout import base_set, iteration_dir, open_delivered, refine_dir, refined_set, reports_dir
from pyacemaker.refine import RefineError, refine, refine_tables
from pyacemaker.report.properties import Reference, user_structures
from pyacemaker.report.validate import compare, validation_structures
from pyacemaker.utils.io import RunLocked, StructureError, file_sha256, read_json, write_frames

#: short walkers, a low γ to select so that two rounds both upfit
LOOP = dict(temperatures_K=[1000.0], steps=40, gamma_every=5, gamma_select=1.05, max_new=4, error_snapshots=1,
            iterations=2)


#: the bulk-only student: 30 demo cells, 16 functions per element
STUDENT = dict(n_bulk=30, loop=LOOP, max_basis_grade=16)


@pytest.fixture(scope="module")
def two_upfits(tmp_path_factory, make_bulk_student):
    """A bulk-only mock student refined twice from a slab and a cluster: the folder a user has after `refine`."""
    cfg, seeds = make_bulk_student(tmp_path_factory.mktemp("hardening"), seed=4, **STUDENT)
    result = refine(cfg, seeds=seeds, progress=False)
    assert [h.get("fitted", False) for h in result["history"]] == [True, True, False], result["stop"]
    return cfg, seeds, result


def _copy(cfg, make_refine_config, tmp_path, refined=True):
    "A copy of the fixture's work folder (with or without its refinement) and its config file."
    c = make_refine_config(tmp_path, **STUDENT)
    shutil.rmtree(c.work_dir)
    shutil.copytree(cfg.work_dir, c.work_dir, ignore=None if refined else shutil.ignore_patterns("ace_refined*", "refine"))
    return c, dump_config(c, tmp_path / "pipeline.yaml")


def _digests(folder):
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*.json"))}


#: `pyacemaker refine CONFIG --seeds SEEDS --quiet` that, in round 0's teacher-errors phase, writes READY and waits for GO
PAUSED = """
import pathlib, sys, time
import pyacemaker.refine as r
from pyacemaker.cli import main
config, seeds, ready, go = sys.argv[1:]
loop = r.refine
def hook(k, phase):
    if k == 0 and phase == "teacher errors":
        pathlib.Path(ready).touch()
        for _ in range(1200):
            if pathlib.Path(go).exists(): break
            time.sleep(0.05)
r.refine = lambda *a, **kw: loop(*a, on_phase=hook, **kw)
sys.exit(main(["refine", config, "--seeds", seeds, "--quiet"]))
"""


def test_1_overwrite_while_a_refinement_runs_is_refused_and_deletes_nothing(two_upfits, make_refine_config, tmp_path):
    """A second `refine --overwrite` while a real `pyacemaker refine` process runs: refused naming the holder; the live loop finishes."""
    cfg0, seeds, _ = two_upfits
    cfg, config = _copy(cfg0, make_refine_config, tmp_path, refined=False)
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, str(config), str(seeds), str(ready), str(go)],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 180
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline: time.sleep(0.05)
        assert ready.exists(), proc.stderr.read() if proc.poll() is not None else "the loop never reached round 0"
        walkers = sorted((iteration_dir(cfg, 0) / "explore").glob("walker_*.json"))
        with pytest.raises(RunLocked, match=r"\.refine\.lock: in use by pyacemaker refine \(pid \d+"):
            refine(cfg, seeds=seeds, overwrite=True, progress=False)
        assert sorted((iteration_dir(cfg, 0) / "explore").glob("walker_*.json")) == walkers and walkers
        assert main(["refine", str(config), "--seeds", str(seeds), "--overwrite", "--quiet"]) == 2
    finally:
        go.touch()
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert read_json(refine_dir(cfg) / "state.json")["phase"] == "done"


def test_2_report_after_two_upfits_and_no_stale_report(two_upfits, make_refine_config, tmp_path, monkeypatch, capsys):
    """Labels of different rounds have unique names; `report --potential ace_refined` works; a failed report leaves no old files."""
    cfg0, _, _ = two_upfits
    cfg, config = _copy(cfg0, make_refine_config, tmp_path)
    labeled = [iteration_dir(cfg, k) / "labeled.xyz" for k in (0, 1)]
    train, _ = refine_tables(cfg, open_delivered(base_set(cfg))["e0"], labeled)
    assert train.name.is_unique and {"iter_000/labeled.xyz:0", "iter_001/labeled.xyz:0"} <= set(train.name)
    assert main(["report", str(config), "--potential", "ace_refined", "--no-speed", "--no-md"]) == 0, capsys.readouterr().err
    stale = [reports_dir(cfg) / "metrics_ace_refined.json", reports_dir(cfg) / "parity_ace_refined.png"]
    assert all(p.exists() for p in stale)
    import pyacemaker.report.parity as parity
    def broken(*a, **kw): raise RuntimeError("the evaluation failed")          # a failure path: the report cannot finish
    monkeypatch.setattr(parity, "ace_predictions", broken)
    with pytest.raises(RuntimeError): parity.write_report(cfg, speed=False, md=False, potential="ace_refined")
    assert not any(p.exists() for p in stale)


def test_4_fewer_iterations_than_done_is_refused_and_records_stay(two_upfits, make_refine_config, tmp_path):
    cfg0, seeds, _ = two_upfits
    cfg, config = _copy(cfg0, make_refine_config, tmp_path)
    before, delivered = _digests(refine_dir(cfg)), file_sha256(refined_set(cfg).yace)
    with pytest.raises(RefineError, match=r"holds 2 upfits \(ace_refined is the last of them\); --iterations 1 would deliver "
                                          r"fewer: give --iterations 2 or more, or --overwrite to start over"):
        refine(cfg, seeds=seeds, iterations=1, progress=False)
    assert _digests(refine_dir(cfg)) == before and file_sha256(refined_set(cfg).yace) == delivered
    again = refine(cfg, seeds=seeds, iterations=2, progress=False)          # the same iterations: read back
    assert [h["selected"] for h in again["history"]] == [h["selected"] for h in two_upfits[2]["history"]]
    assert file_sha256(refined_set(cfg).yace) == delivered


def test_6_a_truncated_delivered_set_is_restored_not_reported_up_to_date(two_upfits, make_refine_config, tmp_path):
    from pyacemaker.orchestrator import run_pipeline
    cfg0, seeds, _ = two_upfits
    cfg, _ = _copy(cfg0, make_refine_config, tmp_path)
    for d in (base_set(cfg), refined_set(cfg)):
        d.yace.write_bytes(d.yace.read_bytes()[:200])
    out = run_pipeline(cfg, progress=False, report=False)
    assert out["fit"] is None and "step 6 (potential up to date)" in out["reused"]
    assert file_sha256(base_set(cfg).yace) == read_json(base_set(cfg).manifest)["files"]["ace_base.yace"]
    walkers = {p: p.stat().st_mtime_ns for p in refine_dir(cfg).rglob("walker_*.json")}
    result = refine(cfg, seeds=seeds, progress=False)
    assert result["delivered"] == refined_set(cfg).yace
    assert file_sha256(refined_set(cfg).yace) == read_json(refined_set(cfg).manifest)["files"]["ace_refined.yace"]
    assert {p: p.stat().st_mtime_ns for p in refine_dir(cfg).rglob("walker_*.json")} == walkers   # nothing rerun


@pytest.mark.parametrize("scheduler", ["missing.json", "bad.json", "tcp://localhost"])
def test_7_a_bad_scheduler_is_one_line(two_upfits, make_refine_config, tmp_path, capsys, model_path, scheduler):
    pytest.importorskip("distributed")
    cfg0, seeds, _ = two_upfits
    (tmp_path / "bad.json").write_text('{"type": "Scheduler"}')
    where = scheduler if scheduler.startswith("tcp") else str(tmp_path / scheduler)
    cfg, config = _copy(cfg0, make_refine_config, tmp_path)
    runs = [["label", "--model", str(model_path), "--input", str(cfg.path(cfg.step4_file)), "--output", str(tmp_path / "o.xyz"),
             "--quiet", "--scheduler", where],
            ["refine", str(config), "--seeds", str(seeds), "--quiet", "--scheduler", where]]
    for argv in runs:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--scheduler {where}: " in err[0] and "Error" not in err[0], err


def test_8_a_refined_set_of_an_earlier_base_is_stale(two_upfits, make_refine_config, tmp_path, capsys):
    from pyacemaker.orchestrator import run_step6
    cfg0, _, _ = two_upfits
    cfg, config = _copy(cfg0, make_refine_config, tmp_path)
    assert main(["report", str(config), "--potential", "ace_refined", "--no-speed", "--no-md"]) == 0
    assert "is stale" not in capsys.readouterr().out
    cfg.training = cfg.training.model_copy(update={"max_basis_grade": 12})
    run_step6(cfg, overwrite=True, progress=False)                           # the base is refit
    dump_config(cfg, config)
    assert main(["report", str(config), "--potential", "ace_refined", "--no-speed", "--no-md"]) == 0
    assert ("note: ace_refined is stale: it was refined from an earlier ace_base, which was refit since; rerun pyacemaker "
            "refine CONFIG to refine the current one") in capsys.readouterr().out
    assert read_json(reports_dir(cfg) / "metrics_ace_refined.json")["delivery"]["stale"].startswith("ace_refined is stale")


def test_9_overlapping_validation_structures_are_refused_up_front(two_upfits, tmp_path):
    cfg = two_upfits[0]
    good = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]], cell=[8, 8, 8], pbc=True)
    bad = Atoms("CuAg", positions=[[0, 0, 0], [0.1, 0, 0]], cell=[8, 8, 8], pbc=True)
    path = write_frames([good, bad, good], tmp_path / "mine.xyz")
    with pytest.raises(StructureError, match=r"mine.xyz frame 1: atoms 0 and 1 are 0.1 Å apart"):
        user_structures(path, ["Cu", "Ag"], 5.0, cfg.labeling.min_distance)
    c = cfg.model_copy(update={"validation": ValidationConfig(references=False, structures=path)})
    with pytest.raises(StructureError, match="frame 1"):
        validation_structures(c, ["Cu", "Ag"])


def test_9_no_library_exception_names_in_rows():
    from pyacemaker.report.properties import _attempt
    out = {}
    _attempt(out, "relaxed", lambda: (_ for _ in ()).throw(ValueError("spglib could not find the symmetry")), {})
    assert out["relaxed"] == {"error": "spglib could not find the symmetry"}


def test_10_the_same_seeds_under_another_name_and_what_changed(two_upfits, make_refine_config, tmp_path):
    cfg0, seeds, reference = two_upfits
    cfg, _ = _copy(cfg0, make_refine_config, tmp_path)
    renamed = shutil.copy(seeds, tmp_path / "my_seeds_v2.xyz")
    again = refine(cfg, seeds=renamed, progress=False)                      # content identical: the folder is reused
    assert [h["selected"] for h in again["history"]] == [h["selected"] for h in reference["history"]]
    other = cfg.model_copy(update={"refine": cfg.refine.model_copy(update={"steps": 30}),
                                   "training": cfg.training.model_copy(update={"mock": False})})
    with pytest.raises(RefineError, match=r"holds a refinement of other settings \(refine.steps 40 → 30; the earlier run "
                                          r"was --mock\); --overwrite starts over"):
        refine(other, seeds=renamed, progress=False)


def test_11_messages_check_and_the_rmsd_row(two_upfits, make_refine_config, tmp_path, capsys):
    from pyacemaker.orchestrator import check_config
    cfg0, _, _ = two_upfits
    cfg, config = _copy(cfg0, make_refine_config, tmp_path, refined=False)
    assert main(["report", str(config), "--potential", "ace_refined", "--no-speed", "--no-md"]) == 2
    assert "ace_refined.yace: no fitted potential here; run pyacemaker refine CONFIG first" in capsys.readouterr().err
    c = cfg.model_copy(update={"refine": cfg.refine.model_copy(update={"seeds": tmp_path / "nope.xyz"})})
    with pytest.raises(Exception, match=r"nope.xyz: refine.seeds file not found"):
        check_config(c)
    a = Atoms("Cu3", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0]], cell=[12, 12, 12], pbc=True)
    b = a.copy(); b.positions[0] += [0.3, 0, 0]
    model = lambda at: {"structures": {"Cu3 cluster": {"kind": "user", "cell_kind": "cluster",
                                                       "relaxed": {"energy_per_atom_eV": -1.0, "atoms": at}}}, "mu_eV": {}}
    rows = compare(model(a), model(b), [Reference("Cu3 cluster", a, "user", cubic=False)], ValidationConfig())
    r = next(r for r in rows if r["property"] == "relaxed_rmsd_A")
    assert r["teacher"] == 0.0 and r["student"] == pytest.approx(0.3 / np.sqrt(3)) and r["difference"] == r["student"]
