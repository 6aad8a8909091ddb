"""`pyacemaker refine`: a real loop (mock trainer, real MD, real teacher, real D-optimal selection) on a bulk-only student."""

import numpy as np
import pytest

from pyacemaker.cli import main
from pyacemaker.demo_data import cluster_cell, slab_cell
from pyacemaker.kit.layout import base_set, iteration_dir, refine_dir, refined_set
from pyacemaker.refine import RefineError, explore, refine, seed_structures
from pyacemaker.utils.io import file_sha256, iter_frames, read_json, write_frames

#: short walkers: enough for a bulk-only student to leave its data from a slab and a cluster
LOOP = dict(temperatures_K=[1000.0], steps=60, gamma_every=5, max_new=6, error_snapshots=2, iterations=1)


#: the bulk-only student: 40 demo cells, 20 functions per element
STUDENT = dict(n_bulk=40, loop=LOOP, max_basis_grade=20)


@pytest.fixture(scope="module")
def bulk_student(tmp_path_factory, make_bulk_student):
    """A mock (linear) student fitted on 40 bulk cells only, and seeds it never saw: a slab and a cluster."""
    return make_bulk_student(tmp_path_factory.mktemp("refine"), seed=2, **STUDENT)


@pytest.fixture(scope="module")
def refined(bulk_student):
    """One uninterrupted loop on the bulk student (one upfit), and the base set's digests before it."""
    cfg, seeds = bulk_student
    before = {p.name: file_sha256(p) for p in base_set(cfg).models_dir.glob("ace_base*")}
    return cfg, seeds, before, refine(cfg, seeds=seeds, progress=False)


class _History(list):
    "The loop's records without wall times; equal to another's when every count and name is and every number agrees to 1e-6."
    def __eq__(self, other): return _close(list(self), list(other))

def _close(a, b) -> bool:
    "Equal structure, equal ints/strings/bools, floats within rel 1e-6 (threads may change the last digits of an MD step)."
    if isinstance(a, dict): return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_close, a, b))
    if isinstance(a, float) and isinstance(b, float): return a == pytest.approx(b, rel=1e-6, abs=1e-12, nan_ok=True)
    return a == b

def _history(result):
    "The loop's records without wall times (equal between an interrupted and an uninterrupted run)."
    return _History({k: v for k, v in h.items() if k not in ("wall_s", "potential")} for h in result["history"])


def test_loop_finds_selects_labels_and_teaches(refined):
    cfg, seeds, before, result = refined
    first, last = result["history"][0], result["history"][-1]
    assert first["candidates"] > first["selected"] > 0                   # fewer selected than found
    labeled = list(iter_frames(iteration_dir(cfg, 0) / "labeled.xyz"))
    assert len(labeled) == first["selected"]
    assert {tuple(a.pbc) for a in labeled} <= {(True, True, False), (False, False, False)}   # the seeds' own cells
    assert all(a.calc is not None and np.isfinite(a.get_forces()).all() for a in labeled)
    assert last["max_gamma"] < first["max_gamma"]
    assert last["teacher_errors"]["forces_rmse_meV_per_A"] < first["teacher_errors"]["forces_rmse_meV_per_A"]
    d = refined_set(cfg)
    assert d.yace.exists() and d.yaml.exists() and d.asi.exists() and d.manifest.exists()
    assert {p.name: file_sha256(p) for p in base_set(cfg).models_dir.glob("ace_base*")} == before   # base untouched
    hist = read_json(refine_dir(cfg) / "history.json")
    assert [h["iteration"] for h in hist["iterations"]] == [0, 1]
    for key in ("candidates", "selected", "max_gamma_by_walker", "walkers_stable", "teacher_errors", "test_errors"):
        assert key in hist["iterations"][0]
    assert (cfg.work_dir / "reports" / "refine.png").stat().st_size > 10_000


def test_fresh_exploration_of_the_refined_student_stays_closer(refined, tmp_path):
    """The same seeds, other random numbers: the refined student's max γ is lower than the base student's."""
    cfg, seeds, _, _ = refined
    s = seed_structures(cfg, seeds)
    b, r = base_set(cfg), refined_set(cfg)
    other = cfg.model_copy(update={"refine": cfg.refine.model_copy(update={"seed": 99})})
    old = explore(other, (b.yaml, b.asi), s, tmp_path / "base")
    new = explore(other, (r.yaml, r.asi), s, tmp_path / "refined")
    assert new["max_gamma"] < old["max_gamma"]
    assert new["n_candidates"] < old["n_candidates"]


#: `pyacemaker refine CONFIG --seeds SEEDS --quiet` sending itself signal SIGNAL when iteration 0 reaches phase STOP_AT
#: (SIGKILL: no cleanup, no finally, a real kill; SIGTERM: the CLI's own handling)
STOPPED_AT = """
import os, signal, sys
import pyacemaker.refine as r
from pyacemaker.cli import main
config, seeds, sig, stop_at = sys.argv[1:]
loop = r.refine
def hook(k, phase):
    if k == 0 and phase == stop_at: os.kill(os.getpid(), signal.Signals[sig])
r.refine = lambda *a, **kw: loop(*a, on_phase=hook, **kw)
sys.exit(main(["refine", config, "--seeds", seeds, "--quiet"]))
"""

def _copy_of_base(cfg0, make_refine_config, tmp_path):
    "A new work folder holding the refined fixture's base potential and step-5 labels, nothing refined."
    import shutil
    cfg = make_refine_config(tmp_path, **STUDENT)
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(cfg0.work_dir / "models", cfg.work_dir / "models", ignore=shutil.ignore_patterns("ace_refined*"))
    shutil.copy(cfg0.path(cfg0.step5_file), cfg.path(cfg.step5_file))
    return cfg


def _stopped(refined, make_refine_config, tmp_path, sig: str, stop_at: str):
    "A copy of the refined fixture's base, and the finished `pyacemaker refine` process that got `sig` at `stop_at`."
    import os, subprocess, sys
    from pyacemaker.domain_models.config import dump_config
    cfg = _copy_of_base(refined[0], make_refine_config, tmp_path)
    config = dump_config(cfg, tmp_path / "pipeline.yaml")
    return cfg, subprocess.run([sys.executable, "-c", STOPPED_AT, str(config), str(refined[1]), sig, stop_at],
                               capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("stop_at", ["walker s0_1000K_w0", "teacher errors", "select", "label", "fit"])
def test_resume_after_sigkill_in_each_phase(refined, make_refine_config, tmp_path, stop_at):
    """SIGKILLed at the start of a phase (or after the first walker), a rerun continues there and ends as an uninterrupted run."""
    _, seeds, _, reference = refined
    cfg, killed = _stopped(refined, make_refine_config, tmp_path, "SIGKILL", stop_at)
    assert killed.returncode == -9, killed.stderr
    state = read_json(refine_dir(cfg) / "state.json")
    assert state["iteration"] == 0 and state["phase"] == ("explore" if stop_at.startswith("walker") else stop_at)
    assert not refined_set(cfg).yace.exists()                          # nothing half-delivered
    walkers = sorted((iteration_dir(cfg, 0) / "explore").glob("walker_*.json"))
    assert walkers
    kept = {p: p.stat().st_mtime_ns for p in walkers}
    labeled = iteration_dir(cfg, 0) / "labeled.xyz"
    label_digest = file_sha256(labeled) if labeled.exists() else None
    result = refine(cfg, seeds=seeds, progress=False)
    assert {p: p.stat().st_mtime_ns for p in walkers} == kept          # finished walkers are not rerun
    if label_digest: assert file_sha256(labeled) == label_digest        # finished labels are not relabeled
    assert _history(result) == _history(reference)
    assert read_json(refine_dir(cfg) / "state.json")["phase"] == "done"


def test_an_interrupt_says_what_is_kept(refined, make_refine_config, tmp_path):
    """Ctrl-C inside the loop: the error carries one note naming the folder, iteration and phase, and how to continue."""
    cfg = _copy_of_base(refined[0], make_refine_config, tmp_path)
    def hook(k, phase):
        if phase == "select": raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt) as err: refine(cfg, seeds=refined[1], progress=False, on_phase=hook)
    assert err.value.__notes__ == [f"refine: finished phases are kept in {refine_dir(cfg)} (stopped in iteration 0, "
                                   "phase select); the same command continues from there"]


def test_bad_input_is_one_line_before_any_md(bulk_student, tmp_path, capsys):
    cfg, seeds = bulk_student
    rng = np.random.default_rng(3)
    gold = slab_cell(rng); gold.symbols[3] = "Au"
    close = cluster_cell(rng, with_cell=False); close.positions[1] = close.positions[0] + [0.2, 0, 0]
    write_frames([slab_cell(rng), gold], tmp_path / "gold.xyz")
    write_frames([close], tmp_path / "close.xyz")
    cfg = cfg.model_copy(update={"work_dir": tmp_path / "run"})
    (tmp_path / "run").mkdir()
    for bad, message in [(tmp_path / "gold.xyz", "gold.xyz frame 1: seed element Au is not in training.elements"),
                         (tmp_path / "close.xyz", "close.xyz frame 0: seed atoms 0 and 1 are 0.2 Å apart"),
                         (tmp_path / "none.xyz", "none.xyz: seed file not found")]:
        with pytest.raises(RefineError, match=message): seed_structures(cfg, bad)
    with pytest.raises(RefineError, match="no delivered base potential to refine"): refine(cfg, seeds=seeds, progress=False)
    assert not refine_dir(cfg).exists()
    config = tmp_path / "pipeline.yaml"
    from pyacemaker.domain_models.config import dump_config
    dump_config(bulk_student[0], config)
    assert main(["refine", str(config), "--seeds", str(tmp_path / "gold.xyz"), "--mock"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seed element Au is not in training.elements" in err


def test_cli_and_other_settings(refined, tmp_path, capsys):
    """The CLI reruns a finished loop from its records; a folder of other settings is refused, --overwrite starts over."""
    cfg, seeds, _, result = refined
    from pyacemaker.domain_models.config import dump_config, load_config
    config = dump_config(cfg, tmp_path / "pipeline.yaml")
    assert main(["refine", str(config), "--seeds", str(seeds), "--mock", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| round |" in out and "delivered" in out
    other = load_config(config); other.refine.gamma_select = 3.0
    with pytest.raises(RefineError, match=r"holds a refinement of other settings \(refine.gamma_select 2.0 → 3.0\); --overwrite starts over"):
        refine(other, seeds=seeds, progress=False)
    assert main(["refine", str(config), "--seeds", str(seeds), "--iterations", "-1"]) == 2
    assert "--iterations must be 0 or more" in capsys.readouterr().err


def test_sigkill_then_the_same_command_continues(refined, make_refine_config, tmp_path, pyacemaker_exe):
    """A real `pyacemaker refine` process killed with SIGKILL after exploring; the same command finishes the loop."""
    import os, signal, subprocess, time
    from pyacemaker.domain_models.config import dump_config
    cfg0, seeds, _, reference = refined
    cfg = _copy_of_base(cfg0, make_refine_config, tmp_path)
    config = dump_config(cfg, tmp_path / "pipeline.yaml")
    cmd = [pyacemaker_exe, "refine", str(config), "--seeds", str(seeds), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    state, deadline = {}, time.monotonic() + 120
    while state.get("phase") not in ("select", "label", "fit", "done") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05); state = read_json(refine_dir(cfg) / "state.json")
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert state.get("phase") in ("select", "label", "fit"), state
    assert (iteration_dir(cfg, 0) / "explore" / "explore.json").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert _history(refine(cfg, seeds=seeds, progress=False)) == _history(reference)


def test_sigterm_in_md_stops_the_loop_and_keeps_finished_walkers(refined, make_refine_config, tmp_path):
    """`pyacemaker refine` gets SIGTERM while its walkers run: exit 143, one line saying what is kept; the rerun ends as an uninterrupted run."""
    _, seeds, _, reference = refined
    cfg, stopped = _stopped(refined, make_refine_config, tmp_path, "SIGTERM", "walker s0_1000K_w0")
    assert stopped.returncode == 143, stopped.stderr
    assert stopped.stderr.strip().splitlines() == [
        f"pyacemaker refine: interrupted (SIGTERM): refine: finished phases are kept in {refine_dir(cfg)} "
        "(stopped in iteration 0, phase explore); the same command continues from there"]
    walkers = sorted((iteration_dir(cfg, 0) / "explore").glob("walker_*.json"))
    assert [p.stem for p in walkers] == ["walker_s0_1000K_w0"]          # the first walker is kept, the second never ran
    assert not (iteration_dir(cfg, 0) / "explore" / "explore.json").exists() and not refined_set(cfg).yace.exists()
    kept = walkers[0].stat().st_mtime_ns
    assert _history(refine(cfg, seeds=seeds, progress=False)) == _history(reference)
    assert walkers[0].stat().st_mtime_ns == kept


def test_report_for_the_refined_set(refined, tmp_path):
    """`pyacemaker report CONFIG --potential ace_refined` writes the refined set's own metrics; the base's stay as they were."""
    from pyacemaker.domain_models.config import dump_config
    cfg = refined[0]
    config = dump_config(cfg, tmp_path / "pipeline.yaml")
    reports = cfg.work_dir / "reports"
    base = {p.name: file_sha256(p) for p in reports.glob("metrics*.json")}
    assert main(["report", str(config), "--potential", "ace_refined", "--no-speed", "--no-md"]) == 0
    m = read_json(reports / "metrics_ace_refined.json")
    assert m["delivery"]["name"] == "ace_refined"
    assert (reports / "parity_ace_refined.png").stat().st_size > 10_000
    assert {n: d for n, d in ((p.name, file_sha256(p)) for p in reports.glob("metrics*.json")) if n in base} == base
    assert main(["report", str(config), "--potential", "ace_missing", "--no-speed", "--no-md"]) == 2


def test_walkers_and_labels_on_dask_workers_equal_local(refined, make_refine_config, tmp_path):
    """`pyacemaker refine CONFIG --workers 2`: the walkers ran on the workers, and the loop's records equal the local run's."""
    pytest.importorskip("distributed")
    from pyacemaker.domain_models.config import dump_config
    cfg0, seeds, _, reference = refined
    cfg = _copy_of_base(cfg0, make_refine_config, tmp_path)
    config = dump_config(cfg, tmp_path / "pipeline.yaml")
    assert main(["refine", str(config), "--seeds", str(seeds), "--workers", "2", "--quiet"]) == 0
    walkers = read_json(iteration_dir(cfg, 0) / "explore" / "explore.json")["walkers"]
    assert walkers and all(str(w["worker"]).startswith("tcp://") for w in walkers)
    assert _history({"history": read_json(refine_dir(cfg) / "history.json")["iterations"]}) == _history(reference)
    here, there = ([a.get_forces() for a in iter_frames(iteration_dir(c, 0) / "labeled.xyz")] for c in (cfg0, cfg))
    assert len(here) == len(there) > 0
    assert np.allclose(np.concatenate(here), np.concatenate(there), atol=1e-5)   # the teacher's labels, from the workers
