"""Issue 13, one test per defect (items 1, 2, 5, 6, 7, 9, 10): bad input and faults give a correct result or one clear
line naming the file, never NaN labels with exit 0 nor stranded work."""
import contextlib
import errno
import gzip
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from ase.io import read

from pyacemaker.cli import main
from pyacemaker.demo_data import step4_frames
from pyacemaker.domain_models.config import ConfigError, LabelingConfig, PyacemakerError, dump_config, load_config
from pyacemaker.oracle import chunked_run
from pyacemaker.oracle.chunked_run import Chunking, RunFiles, label_file
from pyacemaker.oracle.mace_wrapper import MaceSurrogate
from pyacemaker.orchestrator import label
from pyacemaker.utils.io import OutputError, StructureError, write_frames


def cli(capfd, *argv):
    """`pyacemaker ARGV` in this process (the console script's `main`): exit status, stdout, stderr lines."""
    rc = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return rc, out, err.splitlines()


def assert_one_line(rc, err_lines, command, *names):
    """Exit status 2 and exactly one line `pyacemaker COMMAND: error: ...` that names each of `names`."""
    assert rc == 2, err_lines
    assert len(err_lines) == 1 and err_lines[0].startswith(f"pyacemaker {command}: error: "), err_lines
    for name in names: assert str(name) in err_lines[0], (name, err_lines)


def label_args(model_path, input, output, *extra):
    return ["label", "--model", model_path, "--input", input, "--output", output, "--quiet", *extra]


@pytest.fixture
def no_compute(surrogate32, monkeypatch):
    """The teacher's model calls, recorded: a test that expects none asserts the list stays empty."""
    calls, forward = [], surrogate32.runner
    def runner(*a, **kw):
        calls.append(1)
        return forward(*a, **kw)
    monkeypatch.setattr(surrogate32, "runner", runner)
    return calls


def replace_frame(path, frame, text):
    """Rewrite frame `frame` of an extxyz file with `text` (a whole frame: count line, comment line, atom lines)."""
    lines, out, i, k = path.read_text().splitlines(keepends=True), [], 0, 0
    while i < len(lines):
        n = int(lines[i])
        out += [text] if k == frame else lines[i:i + n + 2]
        i, k = i + n + 2, k + 1
    path.write_text("".join(out))
    return path


# --- item 1: one bad structure must not poison its batch --------------------------------------------

def test_item1_a_structure_with_two_atoms_on_one_spot_among_100_good_ones(model_path, surrogate32, tmp_path):
    """Default: refused by the scan (min_distance 0.5 Å) before any compute. With the check off, MACE's NaN is caught,
    only that structure is set aside (--skip-bad) and the 100 others get the labels they get without it."""
    frames = step4_frames(100, seed=8)
    bad = frames[50].copy()
    bad.positions[1] = bad.positions[0]
    src = write_frames(frames[:50] + [bad] + frames[50:], tmp_path / "in.xyz")
    out = tmp_path / "out.xyz"
    with pytest.raises(StructureError, match=r"in\.xyz frame 50: atoms 0 and 1 are 0 Å apart \(closer than min_distance "
                                             r"0\.5 Å\); fix or remove it, or label with --skip-bad"):
        label(src, out, LabelingConfig(model=model_path, dtype="float32", chunk_size=20), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.xyz"]
    lab = LabelingConfig(model=model_path, dtype="float32", chunk_size=20, min_distance=0.0, skip_bad=True)
    summary = label(src, out, lab, progress=False)
    assert summary["n_structures"] == 100 and summary["n_rejected"] == 1
    [rejected] = read(RunFiles(out).rejected, ":")
    assert rejected.info["input_frame"] == 50 and "MACE returned non-finite" in rejected.info["reject_reason"]
    labeled, without = read(out, ":"), surrogate32.compute_batch(read(src, ":50") + read(src, "51:"))
    assert len(labeled) == 100
    for a, b in zip(labeled, without):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert np.isfinite(a.get_forces()).all()
        # float32: another batch composition changes the order of mace's scatter sums (~1e-5 relative), nothing more
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=0, atol=1e-4)
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), rel=3e-5)


CU_IN_A_ZERO_CELL = '1\nLattice="0 0 0 0 0 0 0 0 0" Properties=species:S:1:pos:R:3 pbc="T T T"\nCu 0.0 0.0 0.0\n'
LATE_PROBLEMS = {       # frame text -> what the scan says about it
    "atoms too close": ('2\nLattice="6 0 0 0 6 0 0 0 6" Properties=species:S:1:pos:R:3 pbc="T T T"\n'
                        'Cu 1.0 1.0 1.0\nAg 1.3 1.0 1.0\n', r"atoms 0 and 1 are 0\.3 Å apart \(closer than min_distance 0\.5 Å\)"),
    "zero cell": (CU_IN_A_ZERO_CELL, r"cell is zero or degenerate along the periodic direction\(s\) a, b, c \(pbc=TTT\)"),
    "degenerate cell": ('1\nLattice="3 0 0 3 0 0 0 0 3" Properties=species:S:1:pos:R:3 pbc="T T T"\nCu 0.0 0.0 0.0\n',
                        r"cell is zero or degenerate along the periodic direction\(s\) a, b, c"),
    "degenerate slab": ('1\nLattice="3 0 0 6 0 0 0 0 0" Properties=species:S:1:pos:R:3 pbc="T T F"\nCu 0.0 0.0 0.0\n',
                        r"cell is zero or degenerate along the periodic direction\(s\) a, b \(pbc=TTF\)"),
    "bad Lattice text": ('1\nLattice="3 0 0 0 3 0" Properties=species:S:1:pos:R:3 pbc="T T T"\nCu 0.0 0.0 0.0\n',
                         r"\(line \d+\): cannot parse extxyz: .*Lattice"),
    "NaN cell": ('1\nLattice="nan 0 0 0 3 0 0 0 3" Properties=species:S:1:pos:R:3 pbc="T T T"\nCu 0.0 0.0 0.0\n',
                 r"cell is not finite \(NaN or inf\)"),
}


@pytest.mark.parametrize("case", list(LATE_PROBLEMS))
def test_items1_2_a_bad_frame_late_in_the_file_is_found_by_the_scan_before_any_compute(case, surrogate32, no_compute,
                                                                                       tmp_path):
    text, message = LATE_PROBLEMS[case]
    src = replace_frame(write_frames(step4_frames(30, seed=21), tmp_path / "in.xyz"), 28, text)
    seen = []
    with pytest.raises(StructureError, match=r"in\.xyz frame 28\b.*" + message):
        label_file(src, tmp_path / "out.xyz", surrogate32, chunking=Chunking(5, min_distance=0.5), progress=False,
                   on_chunk=lambda k, n: seen.append(k))
    assert seen == [] and no_compute == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.xyz"]          # no partial folder, no lock


def test_item1_one_cu_atom_in_a_zero_cell_is_not_labeled_on_the_command_line(model_path, capfd, tmp_path):
    """Issue 13: today it gets E = 58.4 eV with exit 0."""
    (tmp_path / "zero.xyz").write_text(CU_IN_A_ZERO_CELL)
    rc, _, err = cli(capfd, *label_args(model_path, tmp_path / "zero.xyz", tmp_path / "out.xyz"))
    assert_one_line(rc, err, "label", tmp_path / "zero.xyz", "frame 0", "cell is zero or degenerate")
    assert not (tmp_path / "out.xyz").exists()


# --- item 2: fixing or moving the input keeps the finished chunks -----------------------------------

class Stop(Exception):
    pass


def test_item2_a_changed_or_moved_input_relabels_only_the_changed_chunks(surrogate32, tmp_path):
    frames = step4_frames(30, seed=21)
    src, out = write_frames(frames, tmp_path / "in.xyz"), tmp_path / "out.xyz"
    def stop_at_1(k, n):
        if k == 1: raise Stop
    with pytest.raises(Stop):
        label_file(src, out, surrogate32, chunking=Chunking(5), progress=False, on_chunk=stop_at_1)
    frames[28].positions[0, 2] += 0.05                    # a frame of chunk 5 fixed ...
    (tmp_path / "elsewhere").mkdir()
    moved = write_frames(frames, tmp_path / "elsewhere" / "in_fixed.xyz")        # ... in a file at another path
    src.unlink()
    seen = []
    summary = label_file(moved, out, surrogate32, chunking=Chunking(5), resume=True, progress=False,
                         on_chunk=lambda k, n: seen.append(k))
    assert seen == [2, 3, 4, 5]                           # chunks 0 and 1 kept although the file changed and moved
    assert summary["n_structures"] == 30 and summary["n_reused"] == 10
    np.testing.assert_array_equal(read(out, "28").positions, read(moved, "28").positions)


# --- item 5: argument and header sanity -------------------------------------------------------------

@pytest.mark.parametrize("size", ["-5", "0"])
def test_item5_a_chunk_size_below_one_is_a_one_line_error(model_path, surrogate32, step4_small, capfd, tmp_path, size):
    """Issue 13: -5 wrote a 0-byte output and reported success; 0 raised ZeroDivisionError."""
    rc, out, err = cli(capfd, *label_args(model_path, step4_small, tmp_path / "out.xyz", "--chunk-size", size))
    assert_one_line(rc, err, "label", "--chunk-size", "greater than or equal to 1")
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == [step4_small.name]
    with pytest.raises(PyacemakerError, match=f"chunk_size must be at least 1, got {size}"):
        label_file(step4_small, tmp_path / "out.xyz", surrogate32, chunking=Chunking(int(size)))
    assert sorted(p.name for p in tmp_path.iterdir()) == [step4_small.name]


@contextlib.contextmanager
def hang_guard(seconds):
    """Raise TimeoutError in this (main) thread if the block still runs after `seconds` (a hang, not a speed check)."""
    def hung(signum, frame): raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try: yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_item5_an_atom_count_of_a_billion_fails_at_once_naming_the_frame(surrogate32, tmp_path):
    """Issue 13: `label` ran for 10 minutes and grew to 3.5 GB."""
    src = write_frames(step4_frames(6, seed=2), tmp_path / "in.xyz")
    lines = src.read_text().splitlines(keepends=True)
    n0 = int(lines[0])
    lines[n0 + 2] = "1000000000\n"                           # frame 1's atom count
    src.write_text("".join(lines))
    with hang_guard(120), pytest.raises(StructureError, match=rf"in\.xyz frame 1 \(line {n0 + 3}\): 1000000000 atoms "
                                                             r"announced, but the file has at most \d+ atom lines left"):
        label_file(src, tmp_path / "out.xyz", surrogate32, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.xyz"]


def test_item5_maxiter_true_is_refused(make_pipeline_config, tmp_path):
    cfg = make_pipeline_config(tmp_path, step4_frames(3, seed=1))
    path = tmp_path / "pipeline.yaml"
    text = path.read_text()
    assert "  maxiter: 20\n" in text
    path.write_text(text.replace("  maxiter: 20\n", "  maxiter: true\n"))
    with pytest.raises(ConfigError, match=r"pipeline\.yaml: training\.maxiter: Input should be a valid integer"):
        load_config(path)
    assert cfg.training.maxiter == 20


# --- item 6: one line naming the file, not a traceback ----------------------------------------------

def read_only_folder(tmp_path):
    """A folder this process cannot write into, as a command prefix and the folder: chmod 0o555 for a normal user;
    for root (which ignores permissions) a read-only tmpfs mounted in a private mount namespace of the command."""
    ro = tmp_path / "read_only"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        return [], ro
    probe = subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                           capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("running as root (permissions are not enforced) and no private read-only mount is possible here")
    return ["unshare", "-m", "sh", "-c", 'mount -t tmpfs -o ro,size=64k tmpfs "$1" && shift && exec "$@"', "sh", str(ro)], ro


def test_item6_read_only_output_folder(model_path, step4_small, tmp_path, pyacemaker_exe):
    prefix, ro = read_only_folder(tmp_path)
    try:
        r = subprocess.run(prefix + [pyacemaker_exe, *map(str, label_args(model_path, step4_small, ro / "out.xyz"))],
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        ro.chmod(0o755)
    assert_one_line(r.returncode, r.stderr.splitlines(), "label", ro / "out.xyz")
    assert "read-only filesystem" in r.stderr or "permission denied" in r.stderr
    assert "Traceback" not in r.stderr and list(ro.iterdir()) == []


def test_item6_output_parent_is_a_file(model_path, step4_small, capfd, tmp_path):
    (tmp_path / "results").write_text("a file, not a folder\n")
    rc, _, err = cli(capfd, *label_args(model_path, step4_small, tmp_path / "results" / "out.xyz"))
    assert_one_line(rc, err, "label", tmp_path / "results", "is a file, not a folder")
    assert (tmp_path / "results").read_text() == "a file, not a folder\n"


@pytest.mark.parametrize("overwrite", [False, True])
def test_item6_output_is_a_folder(model_path, step4_small, capfd, tmp_path, overwrite):
    (tmp_path / "out.xyz").mkdir()
    rc, _, err = cli(capfd, *label_args(model_path, step4_small, tmp_path / "out.xyz", *(["--overwrite"] * overwrite)))
    assert_one_line(rc, err, "label", tmp_path / "out.xyz", "is a folder, not a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.xyz", step4_small.name]     # refused before any work


def failing(err):
    """A stand-in for a write that fails with OSError `err` (failure path)."""
    def write(*a, **kw): raise OSError(err, os.strerror(err))
    return write


@pytest.mark.parametrize("err,phrase", [(errno.ENOSPC, "no space left on the device"),
                                        (errno.EFBIG, "file too large for the filesystem")])
def test_item6_disk_full_or_file_too_large_while_writing_a_chunk(surrogate32, step4_small, tmp_path, monkeypatch, err, phrase):
    out = tmp_path / "out.xyz"
    monkeypatch.setattr(chunked_run, "write", failing(err))
    with pytest.raises(OutputError, match=rf"out\.xyz\.partial/chunk_000000_[0-9a-f]{{16}}\.xyz: cannot write: {phrase}"):
        label_file(step4_small, out, surrogate32, chunking=Chunking(10), progress=False)
    assert not out.exists() and not list(tmp_path.rglob(".*.tmp*")) and not list(tmp_path.rglob("chunk_*"))
    monkeypatch.undo()
    assert label_file(step4_small, out, surrogate32, chunking=Chunking(10), progress=False, resume=True)["n_structures"] == 30


@pytest.mark.parametrize("err,phrase", [(errno.ENOSPC, "no space left on the device"),
                                        (errno.EFBIG, "file too large for the filesystem")])
def test_item6_disk_full_or_file_too_large_while_assembling(surrogate32, step4_small, tmp_path, monkeypatch, err, phrase):
    """Nothing under the final name; the finished chunks stay, and --resume (once there is space) only assembles."""
    out = tmp_path / "out.xyz"
    monkeypatch.setattr(chunked_run.shutil, "copyfileobj", failing(err))
    with pytest.raises(OutputError, match=rf"out\.xyz: cannot write: {phrase}"):
        label_file(step4_small, out, surrogate32, chunking=Chunking(10), progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out.xyz.tmp*"))
    assert len(list(RunFiles(out).partial.glob("chunk_*.xyz"))) == 3
    monkeypatch.undo()
    seen = []
    summary = label_file(step4_small, out, surrogate32, chunking=Chunking(10), progress=False, resume=True,
                         on_chunk=lambda k, n: seen.append(k))
    assert seen == [] and summary["n_reused"] == 30 and len(read(out, ":")) == 30


def test_item6_file_too_large_for_real(model_path, step4_small, tmp_path, pyacemaker_exe):
    """RLIMIT_FSIZE below the output's size (the chunks fit): EFBIG (Python ignores SIGXFSZ) -> one line, chunks kept."""
    out = tmp_path / "out.xyz"
    limit = 30_000                                    # the input is ~26 kB; chunks of 5 labeled frames ~10 kB; the output ~60 kB
    def small_files(): resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    r = subprocess.run([pyacemaker_exe, *map(str, label_args(model_path, step4_small, out, "--chunk-size", "5"))],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=small_files)
    assert_one_line(r.returncode, r.stderr.splitlines(), "label", out, "file too large")
    assert not out.exists() and not list(tmp_path.glob(".out.xyz.tmp*"))
    assert len(list(RunFiles(out).partial.glob("chunk_*.xyz"))) == 6


@pytest.mark.parametrize("case", ["an extxyz file", "a truncated model"])
def test_item6_a_non_model_file_as_model(model_path, step4_small, capfd, tmp_path, case):
    fake = tmp_path / "fake.model"
    fake.write_bytes(step4_small.read_bytes() if case == "an extxyz file" else model_path.read_bytes()[:5000])
    rc, _, err = cli(capfd, *label_args(fake, step4_small, tmp_path / "out.xyz"))
    assert_one_line(rc, err, "label", fake, "not a MACE model file")
    assert not (tmp_path / "out.xyz").exists()


def test_item6_a_binary_input(model_path, capfd, tmp_path):
    (tmp_path / "in.xyz").write_bytes(bytes(range(256)) * 8)
    rc, _, err = cli(capfd, *label_args(model_path, tmp_path / "in.xyz", tmp_path / "out.xyz"))
    assert_one_line(rc, err, "label", tmp_path / "in.xyz", "binary")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.xyz"]


def test_item6_a_gzip_input_is_labeled_like_the_plain_file(model_path, step4_small, tmp_path):
    gz = tmp_path / "step4.xyz.gz"
    gz.write_bytes(gzip.compress(step4_small.read_bytes()))
    lab = LabelingConfig(model=model_path, dtype="float64", chunk_size=7)
    label(step4_small, tmp_path / "plain.xyz", lab, progress=False)
    summary = label(gz, tmp_path / "from_gz.xyz", lab, progress=False)
    assert summary["n_structures"] == 30
    a, b = read(tmp_path / "plain.xyz", ":"), read(tmp_path / "from_gz.xyz", ":")
    assert len(a) == len(b) == 30
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.positions, y.positions)
        assert x.info == y.info
        np.testing.assert_allclose(y.get_forces(), x.get_forces(), rtol=0, atol=1e-12)
        assert y.get_potential_energy() == pytest.approx(x.get_potential_energy(), rel=1e-12)


@pytest.fixture
def mock_copy(mock_pipeline, tmp_path):
    """A copy of the mock pipeline's work folder (labels and a delivered potential) with its own config file."""
    cfg, _, _ = mock_pipeline
    work = shutil.copytree(cfg.work_dir, tmp_path / "run")
    assert (work / "models" / "ace_base.yace").exists()
    return dump_config(cfg.model_copy(update={"work_dir": work}), tmp_path / "pipeline.yaml"), work


def test_item6_a_corrupt_yace_in_report_is_restored_from_its_run_folder(mock_copy, capfd):
    config, work = mock_copy
    yace = work / "models" / "ace_base.yace"
    intact = yace.read_bytes()
    yace.write_bytes(intact[:200])                          # cut off, as by a full disk or an interrupted copy
    rc, _, err = cli(capfd, "report", config, "--no-speed", "--no-md", "--quiet")
    assert rc == 0, err
    assert yace.read_bytes() == intact
    said = [line for line in err if "restored" in line]                 # the user is told, once, even with --quiet
    assert len(said) == 1 and said[0].startswith(f"pyacemaker: note: ace_base.yace in {yace.parent} differed from "
                                                 "ace_base.delivery.json"), err


def test_item6_a_corrupt_yace_that_its_run_folder_cannot_restore_is_refused_in_report(mock_copy, capfd):
    config, work = mock_copy
    yace = work / "models" / "ace_base.yace"
    run = yace.parent / json.loads((yace.parent / "ace_base.delivery.json").read_text())["run_dir"]
    for p in (yace, run / "output_potential.yace"):
        p.write_text(p.read_text()[:200])
    shutil.rmtree(work / "reports", ignore_errors=True)
    rc, _, err = cli(capfd, "report", config, "--no-speed", "--no-md", "--quiet")
    assert_one_line(rc, err, "report", yace)
    assert not (work / "reports").exists()


# --- item 7: concurrent runs ------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from pyacemaker.utils.io import run_lock
with run_lock(sys.argv[1], "pyacemaker label"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_item7_a_second_run_is_refused_naming_the_first_and_deletes_none_of_its_chunks(model_path, step4_small,
                                                                                       capfd, tmp_path):
    out = tmp_path / "out.xyz"
    files = RunFiles(out)
    files.partial.mkdir()
    (files.partial / "chunk_000000_0123456789abcdef.xyz").write_text("the first run's work\n")
    first = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(files.lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "locked\n"
        for extra in ([], ["--overwrite"], ["--resume"]):
            rc, _, err = cli(capfd, *label_args(model_path, step4_small, out, *extra))
            assert_one_line(rc, err, "label", files.lock, f"in use by pyacemaker label (pid {first.pid} on")
        assert (files.partial / "chunk_000000_0123456789abcdef.xyz").read_text() == "the first run's work\n"
    finally:
        first.kill()
        first.wait()
    rc, _, err = cli(capfd, *label_args(model_path, step4_small, out, "--overwrite"))      # its lock is stale now
    assert rc == 0, err
    assert len(read(out, ":")) == 30 and not files.lock.exists()


# --- item 9: report without a fitted potential ------------------------------------------------------

def test_item9_report_without_a_fitted_potential(make_pipeline_config, capfd, tmp_path):
    cfg = make_pipeline_config(tmp_path, step4_frames(3, seed=1))
    rc, _, err = cli(capfd, "report", tmp_path / "pipeline.yaml", "--no-speed", "--quiet")
    assert_one_line(rc, err, "report", cfg.path(cfg.ace_model_file), "no fitted potential")
    assert not (cfg.work_dir / "reports").exists() and not (cfg.work_dir / "models").exists()


# --- item 10: a kill during assembly, a renamed model -----------------------------------------------

def test_item10_a_stray_temporary_of_a_killed_assembly_is_removed_and_one_model_named(model_path, surrogate32, step4_small,
                                                                                      tmp_path):
    out = tmp_path / "out.xyz"
    v1, v2 = tmp_path / "teacher_v1.model", tmp_path / "teacher_final.model"
    shutil.copyfile(model_path, v1)
    def stop_at_last(k, n):
        if n == 30: raise Stop
    with pytest.raises(Stop):
        label_file(step4_small, out, MaceSurrogate(v1, dtype="float32"), chunking=Chunking(10), progress=False,
                   on_chunk=stop_at_last)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stray = tmp_path / f".out.xyz.tmp{dead.pid}"                      # what a SIGKILL during assembly leaves
    stray.write_text("half of the output\n")
    v1.rename(v2)
    summary = label_file(step4_small, out, MaceSurrogate(v2, dtype="float32"), chunking=Chunking(10), progress=False,
                         resume=True)
    assert summary["n_reused"] == 30 and not stray.exists()
    frames = read(out, ":")
    assert len(frames) == 30 and {a.info["mace_model"] for a in frames} == {"teacher_v1.model"}
    record = json.loads(RunFiles(out).record.read_text())
    assert record["mace_model"] == "teacher_v1.model" and record["mace_model_sha256"] == surrogate32.sha256
