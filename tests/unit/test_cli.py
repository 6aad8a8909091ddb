"""The `pyacemaker` command line: options validated by the config models, one-line errors, --debug, stop signals
(label and fit, the child process tree included), `fit --dry-run`, `check`."""
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from ase.io import read

import pyacemaker.cli as cli_module
from pyacemaker.cli import main
from pyacemaker.demo_data import demo_step4_path, step4_frames
from pyacemaker.domain_models.config import ConfigError, LabelingConfig, dump_config
from pyacemaker.oracle.chunked_run import RunFiles


def cli(capfd, *argv):
    """`pyacemaker ARGV` in this process (the console script's `main`): exit status, stdout, stderr lines."""
    rc = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return rc, out, err.splitlines()


def label_args(model_path, input, output, *extra):
    return ["label", "--model", model_path, "--input", input, "--output", output, "--quiet", *extra]


def test_batch_atoms_zero_is_a_one_line_error(model_path, step4_small, capfd, tmp_path):
    rc, out, err = cli(capfd, *label_args(model_path, step4_small, tmp_path / "out.xyz", "--batch-atoms", "0"))
    assert rc == 2 and out == ""
    assert err == ["pyacemaker label: error: --batch-atoms: Input should be greater than or equal to 1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [step4_small.name]


def test_options_left_out_take_the_config_defaults(model_path):
    """The CLI passes only what was given: LabelingConfig's own defaults apply (no second copy of them)."""
    args = cli_module.build_parser().parse_args(["label", "--model", str(model_path), "--input", "i", "--output", "o"])
    assert cli_module.labeling_from_args(args) == LabelingConfig(model=model_path)
    args = cli_module.build_parser().parse_args(["label", "--model", str(model_path), "--input", "i", "--output", "o",
                                                 "--skip-bad", "--keys", "mace", "--min-distance", "0.2"])
    lab = cli_module.labeling_from_args(args)
    assert (lab.skip_bad, lab.keys, lab.min_distance) == (True, "mace", 0.2)


def test_debug_shows_the_traceback(model_path, step4_small, tmp_path, capfd, monkeypatch):
    with pytest.raises(ConfigError, match="--batch-atoms"):
        main([str(a) for a in label_args(model_path, step4_small, tmp_path / "o.xyz", "--batch-atoms", "0", "--debug")])
    def bug(*a, **kw): raise ZeroDivisionError("a bug, not a user error")
    import pyacemaker.orchestrator as orchestrator
    monkeypatch.setattr(orchestrator, "label", bug)
    with pytest.raises(ZeroDivisionError):            # a bug keeps its traceback even without --debug
        main([str(a) for a in label_args(model_path, step4_small, tmp_path / "o.xyz")])


# --- stop signals -------------------------------------------------------------------------------

FAST = ["--chunk-size", "10", "--dtype", "float32"]


def ctrl_c_reaches_it() -> None:
    """Give the child Python its Ctrl-C handler: a command started in the background of a non-interactive shell (as some CI
    runners start pytest) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_stop_signals_keep_finished_chunks_and_say_how_to_resume(pyacemaker_exe, model_path, capfd, tmp_path):
    """Two real `pyacemaker label` runs of the bundled 300 structures (chunks of 10), started together; each gets its
    signal once 2 chunks are finished: SIGTERM -> 143, SIGINT (Ctrl-C) -> 130, one line naming what was kept."""
    runs = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        out = tmp_path / sig.name / "out.xyz"
        argv = [pyacemaker_exe, *map(str, label_args(model_path, demo_step4_path(), out, *FAST))]
        runs[sig] = (subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=ctrl_c_reaches_it), out)
    waiting, deadline = set(runs), time.time() + 180
    while waiting and time.time() < deadline:
        for sig in list(waiting):
            proc, out = runs[sig]
            assert proc.poll() is None, proc.communicate()
            if len(list(RunFiles(out).partial.glob("chunk_*.xyz"))) >= 2:
                proc.send_signal(sig)
                waiting.discard(sig)
        time.sleep(0.02)
    assert not waiting
    kept_after = {}
    for sig, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        proc, out = runs[sig]
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == status, stderr
        lines = stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
        partial = RunFiles(out).partial
        kept = len(list(partial.glob("chunk_*.xyz")))
        assert lines[0] == (f"pyacemaker label: interrupted ({sig.name}): {kept} of 30 chunks are finished and kept in "
                            f"{partial}; the same command with --resume continues from there")
        assert 2 <= kept < 30 and not out.exists() and not RunFiles(out).lock.exists()
        kept_after[sig] = kept
    out = runs[signal.SIGTERM][1]                    # the same command with --resume (here, in this process)
    rc, stdout, err = cli(capfd, *label_args(model_path, demo_step4_path(), out, *FAST, "--resume"))
    assert rc == 0, err
    assert f"({kept_after[signal.SIGTERM] * 10} of them reused from finished chunks)" in stdout
    assert len(read(out, ":")) == 300 and not RunFiles(out).partial.exists()


FAKE_PACEMAKER = """#!/bin/sh
# stands in for pacemaker: a child process, then a long wait
sleep 300 &
echo "$$ $!" > "{pids}.tmp" && mv "{pids}.tmp" "{pids}"
echo "pacemaker (fake) started"
sleep 300
"""


@pytest.fixture
def mock_copy(mock_pipeline, tmp_path):
    """A copy of the mock pipeline's work folder (labels, a delivered potential, fit/ run folders) with a config file
    for a pacemaker (not mock) fit."""
    cfg, _, _ = mock_pipeline
    work = shutil.copytree(cfg.work_dir, tmp_path / "run")
    cfg = cfg.model_copy(update={"work_dir": work, "training": cfg.training.model_copy(update={"mock": False})})
    return dump_config(cfg, tmp_path / "pipeline.yaml"), work


def snapshot(folder: Path) -> dict:
    """SHA-256 of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of a process, or None if there is none."""
    try: stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError): return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[2])


def living_in_group(pgid: int) -> list[int]:
    """PIDs of the processes (zombies aside) whose process group is `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := process_state(int(entry.name))) and st[1] == pgid and st[0] != "Z":
            found.append(int(entry.name))
    return found


def test_sigterm_to_fit_stops_the_pacemaker_process_tree(pyacemaker_exe, mock_copy, tmp_path):
    config, work = mock_copy
    pids = tmp_path / "pids"
    fake = tmp_path / "bin" / "pacemaker"
    fake.parent.mkdir()
    fake.write_text(FAKE_PACEMAKER.format(pids=pids))
    fake.chmod(0o755)
    models = snapshot(work / "models")
    proc = subprocess.Popen([pyacemaker_exe, "fit", str(config), "--overwrite", "--quiet", "--pacemaker", str(fake)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    while time.time() < deadline and not pids.exists() and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    shell, sleeper = map(int, pids.read_text().split())
    assert process_state(shell)[1] == shell and process_state(sleeper)[1] == shell      # the fake leads its own group
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("pyacemaker fit: interrupted (SIGTERM)"), stderr
    deadline = time.time() + 10                      # the group was signalled before `fit` exited; allow the exits
    while living_in_group(shell) and time.time() < deadline:
        time.sleep(0.05)
    assert living_in_group(shell) == []
    assert process_state(sleeper) is None or process_state(sleeper)[0] == "Z"
    assert snapshot(work / "models") == models       # the delivered set is untouched by the interrupted fit


def test_fit_dry_run_starts_nothing_and_deletes_nothing(mock_copy, capfd, monkeypatch):
    config, work = mock_copy
    before = snapshot(work)
    assert any(k.startswith("models/") for k in before) and any(k.startswith("fit/") for k in before)
    started = []
    real_popen = subprocess.Popen
    def popen(*a, **kw):
        started.append(a[0] if a else kw.get("args"))
        return real_popen(*a, **kw)
    monkeypatch.setattr(subprocess, "Popen", popen)
    rc, out, err = cli(capfd, "fit", config, "--dry-run", "--overwrite", "--quiet", "--pacemaker", "/nonexistent/pacemaker")
    assert rc == 0, err
    assert out.startswith("dry run: in ") and "would run: cd " in out and "input.yaml" in out
    assert started == []
    after = snapshot(work)
    assert {k: after.get(k) for k in before} == before               # every file still there, byte for byte
    new = sorted(set(after) - set(before))
    assert new and all(k.startswith("fit/") for k in new) and any(k.endswith("input.yaml") for k in new)


def test_check_says_valid_only_for_a_usable_config(make_pipeline_config, capfd, tmp_path):
    good = make_pipeline_config(tmp_path / "good", step4_frames(5, seed=1))
    rc, out, err = cli(capfd, "check", tmp_path / "good" / "pipeline.yaml")
    assert rc == 0, err
    assert out.startswith(f"{tmp_path / 'good' / 'pipeline.yaml'}: configuration is valid\n")
    assert str(good.work_dir) in out
    make_pipeline_config(tmp_path / "au", step4_frames(5, seed=1), elements=["Cu", "Ag", "Au"])
    rc, out, err = cli(capfd, "check", tmp_path / "au" / "pipeline.yaml")
    assert rc == 2 and "configuration is valid" not in out
    assert len(err) == 1 and err[0].startswith("pyacemaker check: error: ") and "Au" in err[0] and "cuag_mace.model" in err[0]
    (tmp_path / "au" / "pipeline.yaml").write_text((tmp_path / "good" / "pipeline.yaml").read_text()
                                                   .replace("cutoff: 5.0", "cutoff: 0.5"))
    rc, out, err = cli(capfd, "check", tmp_path / "au" / "pipeline.yaml")
    assert rc == 2 and "configuration is valid" not in out
    assert len(err) == 1 and "training.cutoff" in err[0]
