"""Step 5 on a file (`label_file` / `run_chunks`): readable output, records, durable chunks, resume, locks, bad frames."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from ase.io import read

import torch

from pyacemaker.cli import main
from pyacemaker.demo_data import step4_frames
from pyacemaker.domain_models.config import LabelingConfig
from pyacemaker.orchestrator import label
from pyacemaker.oracle.chunked_run import Chunking, RunFiles, RunMismatch, label_file
from pyacemaker.oracle.mace_wrapper import MaceSurrogate
from pyacemaker.utils.io import ExistingOutput, MissingInput, RunLocked, StructureError, write_frames


def frames_file(path, frames):
    return write_frames(frames, path)


@pytest.fixture(scope="module")
def thirty(tmp_path_factory, surrogate32):
    """30 step-4 cells and their labeling in one uninterrupted run (chunks of 5)."""
    work = tmp_path_factory.mktemp("thirty")
    src = frames_file(work / "in.xyz", step4_frames(30, seed=21))
    label_file(src, work / "ref.xyz", surrogate32, chunking=Chunking(5), progress=False)
    return src, read(work / "ref.xyz", ":")


# --- a complete run --------------------------------------------------------------------

def test_output_is_readable_extxyz_with_a_record(surrogate32, step4_mixed, tmp_path):
    out = tmp_path / "step5_surrogate_labeled.xyz"
    summary = label_file(step4_mixed, out, surrogate32, chunking=Chunking(7), progress=False)
    src = read(step4_mixed, ":")
    assert summary["n_structures"] == 20 and summary["n_rejected"] == 0 and summary["n_reused"] == 0
    assert summary["n_atoms"] == sum(len(a) for a in src)
    back = read(out, ":")
    assert len(back) == 20
    for a, b in zip(src, back):
        assert a.get_chemical_symbols() == b.get_chemical_symbols()
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.pbc, b.pbc)
        assert a.info.get("config_type") == b.info.get("config_type")       # the input's own info is kept
        assert np.isfinite(b.get_potential_energy()) and b.get_forces().shape == (len(a), 3)
        assert ("stress" in b.calc.results) == bool(a.pbc.all())            # stress for 3D-periodic cells only
        assert b.info["mace_model"] == "cuag_mace.model" and b.info["mace_dtype"] == "float32"
    assert any(not a.pbc.all() for a in src) and any(a.pbc.all() for a in src)
    files = RunFiles(out)
    record = json.loads(files.record.read_text())
    assert files.record.name == "step5_surrogate_labeled.xyz.json"
    assert record["n_structures"] == 20 and record["n_rejected"] == 0 and record["chunk_size"] == 7
    assert record["mace_model_sha256"] == surrogate32.sha256 and record["dtype"] == "float32" and record["keys"] == "ase"
    assert record["input"] == str(step4_mixed.resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["step4_mixed.xyz", out.name, files.record.name])


def test_mace_keys_are_read_by_mace_itself(surrogate64, step4_mixed, tmp_path):
    from mace.data.utils import KeySpecification, load_from_xyz
    ase_out, mace_out = tmp_path / "ase.xyz", tmp_path / "mace.xyz"
    label_file(step4_mixed, ase_out, surrogate64, chunking=Chunking(7), progress=False)
    label_file(step4_mixed, mace_out, surrogate64, chunking=Chunking(7, keys="mace"), progress=False)
    assert json.loads(RunFiles(mace_out).record.read_text())["keys"] == "mace"
    reference = read(ase_out, ":")
    frames = read(mace_out, ":")
    for a, r in zip(frames, reference):                     # mace_run_train's defaults: REF_energy, REF_forces, REF_stress
        assert a.calc is None and "energy" not in a.info and "forces" not in a.arrays
        assert a.info["REF_energy"] == pytest.approx(r.get_potential_energy(), rel=1e-12)
        np.testing.assert_allclose(a.arrays["REF_forces"], r.get_forces(), rtol=1e-10, atol=1e-12)
        if r.pbc.all(): np.testing.assert_allclose(a.info["REF_stress"], r.get_stress(), rtol=1e-10, atol=1e-14)
        else: assert "REF_stress" not in a.info
    _, configs = load_from_xyz(str(mace_out), KeySpecification.from_defaults())       # what mace_run_train reads
    assert len(configs) == 20
    for c, r in zip(configs, reference):
        assert c.properties["energy"] == pytest.approx(r.get_potential_energy(), rel=1e-12)
        np.testing.assert_allclose(c.properties["forces"], r.get_forces(), rtol=1e-10, atol=1e-12)
        assert c.property_weights["stress"] == (1.0 if r.pbc.all() else 0.0)


def test_existing_output_is_never_overwritten_silently(surrogate32, step4_small, tmp_path):
    out = tmp_path / "out.xyz"
    out.write_text("finished work\n")
    with pytest.raises(ExistingOutput, match="out.xyz already exists; refusing to overwrite"):
        label_file(step4_small, out, surrogate32, progress=False)
    with pytest.raises(ExistingOutput, match="already complete; nothing to resume"):
        label_file(step4_small, out, surrogate32, resume=True, progress=False)
    assert out.read_text() == "finished work\n"
    label_file(step4_small, out, surrogate32, overwrite=True, progress=False)
    assert len(read(out, ":")) == 30


# --- interrupted runs ------------------------------------------------------------------

class Stop(Exception):
    pass


def stop_at(k_stop, seen=None):
    """An `on_chunk` that records chunk numbers and raises `Stop` when chunk `k_stop` is reported."""
    seen = [] if seen is None else seen
    def on_chunk(k, n):
        seen.append(k)
        if k == k_stop: raise Stop(f"stopped after chunk {k}")
    return on_chunk


def test_resume_after_an_exception_keeps_finished_chunks(surrogate32, thirty, tmp_path, assert_same_labels):
    src, reference = thirty
    out = tmp_path / "out.xyz"
    files = RunFiles(out)
    with pytest.raises(Stop) as e:
        label_file(src, out, surrogate32, chunking=Chunking(5), progress=False, on_chunk=stop_at(1))
    assert not out.exists() and not files.lock.exists()
    kept = sorted(p.name for p in files.partial.glob("chunk_*.xyz"))
    assert len(kept) >= 2 and kept[:2][0].startswith("chunk_000000_") and kept[1].startswith("chunk_000001_")
    assert e.value.__notes__ == [f"{len(kept)} of 6 chunks are finished and kept in {files.partial}; "
                                 "the same command with --resume continues from there"]
    with pytest.raises(ExistingOutput, match="unfinished labeling run is here; resume it"):
        label_file(src, out, surrogate32, chunking=Chunking(5), progress=False)
    seen = []
    summary = label_file(src, out, surrogate32, chunking=Chunking(5), resume=True, progress=False,
                         on_chunk=lambda k, n: seen.append(k))
    assert seen == list(range(len(kept), 6))                    # finished chunks are not labeled again
    assert summary["n_structures"] == 30 and summary["n_reused"] == 5 * len(kept)
    assert not files.partial.exists() and not files.lock.exists()
    assert_same_labels(out, reference)


def test_resume_after_sigkill_gives_a_byte_identical_file(pyacemaker_exe, model_path, step4_small, tmp_path):
    """A real `pyacemaker label` killed with SIGKILL mid-run (its lock left behind), then resumed: the same bytes as an
    uninterrupted run (one thread everywhere, so that the reference run itself is deterministic)."""
    ref, out = tmp_path / "ref.xyz", tmp_path / "out.xyz"
    files = RunFiles(out)
    argv = ["label", "--model", str(model_path), "--input", str(step4_small), "--output", str(out),
            "--dtype", "float32", "--chunk-size", "3", "--quiet"]
    proc = subprocess.Popen([pyacemaker_exe, *argv], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(files.partial.glob("chunk_*.xyz"))) < 2 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_kept = len(list(files.partial.glob("chunk_*.xyz")))
    assert not out.exists() and 2 <= n_kept < 10
    assert json.loads(files.lock.read_text())["pid"] == proc.pid            # a dead run's lock
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:      # the same command with --resume, and the uninterrupted reference, in this process
        assert main(argv + ["--resume"]) == 0
        label(step4_small, ref, LabelingConfig(model=model_path, dtype="float32", chunk_size=3), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert out.read_bytes() == ref.read_bytes()
    assert not files.partial.exists() and not files.lock.exists()


def with_coincident_atoms(frames, i):
    frames[i].positions[1] = frames[i].positions[0]
    return frames


def test_a_bad_frame_late_in_the_file_keeps_finished_chunks_and_a_fix_relabels_only_its_chunk(surrogate32, tmp_path, assert_same_labels):
    """Per-chunk fingerprints: frame 27 makes MACE return NaN (min_distance 0, so the scan lets it through): labeling
    stops naming it, finished chunks stay; fixed (and moved to another path), --resume labels only its chunk; a frame
    changed in chunk 1 meanwhile makes chunk 1 relabeled too."""
    frames = step4_frames(30, seed=21)
    bad = frames_file(tmp_path / "bad.xyz", with_coincident_atoms([a.copy() for a in frames], 27))
    out = tmp_path / "out.xyz"
    seen = []
    with pytest.raises(StructureError, match=r"bad\.xyz frame 27: MACE returned non-finite .*--skip-bad") as e:
        label_file(bad, out, surrogate32, chunking=Chunking(5), progress=False, on_chunk=lambda k, n: seen.append(k))
    assert "5 of 6 chunks are finished" in e.value.__notes__[0]
    assert set(seen) <= {0, 1, 2, 3, 4} and not out.exists()
    frames[7].positions[0, 0] += 0.01                            # chunk 1 changes as well
    (tmp_path / "moved").mkdir()
    fixed = frames_file(tmp_path / "moved" / "fixed.xyz", frames)
    bad.unlink()
    seen = []
    summary = label_file(fixed, out, surrogate32, chunking=Chunking(5), resume=True, progress=False,
                         on_chunk=lambda k, n: seen.append(k))
    assert sorted(seen) == [1, 5] and summary["n_reused"] == 20
    label_file(fixed, tmp_path / "ref.xyz", surrogate32, chunking=Chunking(5), progress=False)
    assert_same_labels(out, read(tmp_path / "ref.xyz", ":"))
    assert json.loads(RunFiles(out).record.read_text())["input"] == str(fixed.resolve())


def interrupted_run(teacher, src, out, **kw):
    """A run of `src` into `out` stopped after its first chunk; the finished chunk files."""
    with pytest.raises(Stop):
        label_file(src, out, teacher, progress=False, on_chunk=stop_at(0), chunking=Chunking(**{"size": 5, **kw}))
    return sorted(RunFiles(out).partial.glob("chunk_*.xyz"))


def test_resume_with_other_settings_is_refused_naming_the_field(surrogate32, surrogate64, multihead_model_path, model_path,
                                                                 thirty, tmp_path):
    src, _ = thirty
    out = tmp_path / "out.xyz"
    model = tmp_path / "models" / model_path.name
    model.parent.mkdir()
    shutil.copyfile(model_path, model)
    kept = interrupted_run(MaceSurrogate(model, dtype="float32"), src, out)
    def refused(field, teacher, **kw):
        with pytest.raises(RunMismatch, match=rf"out\.xyz\.partial: cannot resume, the run differs in {field} \(was .*; "
                                              "use --overwrite to start over"):
            label_file(src, out, teacher, resume=True, progress=False, chunking=Chunking(**{"size": 5, **kw}))
    refused("dtype", surrogate64)
    refused("chunk_size", surrogate32, size=6)
    refused("keys", surrogate32, keys="mace")
    refused("min_distance", surrogate32, min_distance=0.5)
    refused("compile", MaceSurrogate(model_path, dtype="float32", compile=True))
    shutil.copyfile(multihead_model_path, model)                   # same name and head ("Default"), other content
    refused("mace_model_sha256", MaceSurrogate(model, dtype="float32", head="Default"))
    assert sorted(RunFiles(out).partial.glob("chunk_*.xyz")) == kept        # refusals touch nothing


def test_a_renamed_copy_of_the_model_resumes_and_provenance_names_one_model(surrogate32, model_path, thirty, tmp_path):
    src, reference = thirty
    out = tmp_path / "out.xyz"
    first, renamed = tmp_path / "teacher_v1.model", tmp_path / "renamed.model"
    shutil.copyfile(model_path, first)
    interrupted_run(MaceSurrogate(first, dtype="float32"), src, out)
    first.rename(renamed)
    seen = []
    label_file(src, out, MaceSurrogate(renamed, dtype="float32"), chunking=Chunking(5), resume=True, progress=False,
               on_chunk=lambda k, n: seen.append(k))
    assert 0 not in seen
    frames = read(out, ":")
    assert {a.info["mace_model"] for a in frames} == {"teacher_v1.model"}
    assert {a.info["mace_model_sha256"] for a in frames} == {surrogate32.sha256[:16]}
    assert json.loads(RunFiles(out).record.read_text())["mace_model"] == "teacher_v1.model"


# --- bad frames ------------------------------------------------------------------------

def test_skip_bad_sets_bad_frames_aside_with_their_reasons(surrogate32, tmp_path):
    frames = step4_frames(16, seed=4)
    frames[3].symbols[0] = "Au"                                   # found by the scan
    frames[9].positions[2, 1] = np.nan                            # found by the scan
    with_coincident_atoms(frames, 12)                              # found by MACE (NaN), min_distance 0
    src = frames_file(tmp_path / "in.xyz", frames)
    out = tmp_path / "out.xyz"
    summary = label_file(src, out, surrogate32, chunking=Chunking(5, skip_bad=True), progress=False)
    files = RunFiles(out)
    assert files.rejected.name == "out.rejected.xyz"
    assert summary["n_structures"] == 13 and summary["n_rejected"] == 3 and summary["rejected"] == str(files.rejected)
    rejected = read(files.rejected, ":")
    assert [a.info["input_frame"] for a in rejected] == [3, 9, 12]
    reasons = [a.info["reject_reason"] for a in rejected]
    assert "element Au is not in the model" in reasons[0]
    assert "positions of atom 2 are not finite" in reasons[1]
    assert "MACE returned non-finite" in reasons[2]
    for a, i in zip(rejected, [3, 9, 12]):
        assert a.get_chemical_symbols() == frames[i].get_chemical_symbols() and a.calc is None
    good = [a for i, a in enumerate(read(src, ":")) if i not in (3, 9, 12)]
    labeled = read(out, ":")
    assert len(labeled) == 13
    for a, g in zip(labeled, good):
        np.testing.assert_array_equal(a.positions, g.positions)
        assert np.isfinite(a.get_forces()).all()
    record = json.loads(files.record.read_text())
    assert record["n_structures"] == 13 and record["n_rejected"] == 3


@pytest.mark.parametrize("case", ["missing", "empty", "unparseable", "truncated", "unknown element", "nan position",
                                  "no atoms"])
def test_unusable_input_is_refused_naming_file_and_frame_before_any_compute(surrogate32, tmp_path, monkeypatch, case):
    frames = step4_frames(4, seed=21)
    p = tmp_path / "bad.xyz"
    if case == "unknown element": frames[3].symbols[5] = "Au"
    if case == "nan position": frames[1].positions[2, 1] = np.nan
    if case != "missing": write_frames(frames, p)
    lines = p.read_text().splitlines(keepends=True) if p.exists() else []
    start = int(lines[0]) + 2 + int(lines[int(lines[0]) + 2]) + 2 if lines else 0   # first line of frame 2
    if case == "empty": p.write_text("")
    if case == "unparseable": lines[start + 3] = "Cu 1.0 abc 2.0\n"; p.write_text("".join(lines))
    if case == "truncated": p.write_text("".join(lines[:-3]))
    if case == "no atoms": p.write_text("".join(lines) + '0\nProperties=species:S:1:pos:R:3 pbc="F F F"\n')
    expected = {"missing": "bad.xyz: structure file not found", "empty": "bad.xyz: contains no structures",
                "unparseable": rf"bad.xyz frame 2 \(line {start + 1}\): cannot parse extxyz",
                "truncated": r"bad.xyz frame 3 \(line \d+\): file ends inside the frame \(\d+ atoms announced, \d+ atom lines",
                "unknown element": r"bad.xyz frame 3: element Au is not in the model \(knows Ag, Cu\)",
                "nan position": "bad.xyz frame 1: positions of atom 2 are not finite",
                "no atoms": "bad.xyz frame 4: has no atoms"}[case]
    calls = []
    monkeypatch.setattr(surrogate32, "runner", lambda *a, **kw: calls.append(1))
    out = tmp_path / "out.xyz"
    with pytest.raises((StructureError, MissingInput), match=expected):
        label_file(p, out, surrogate32, chunking=Chunking(2), progress=False)
    assert calls == [] and sorted(x.name for x in tmp_path.iterdir()) == ([] if case == "missing" else ["bad.xyz"])


# --- what other runs leave behind ------------------------------------------------------

def dead_pid():
    """The PID of a process that has exited."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_runs_are_removed(surrogate32, step4_small, tmp_path):
    out = tmp_path / "out.xyz"
    alive = subprocess.Popen(["sleep", "60"])
    try:
        stale, live = tmp_path / f".out.xyz.tmp{dead_pid()}", tmp_path / f".out.xyz.tmp{alive.pid}"
        stale.write_text("half an assembled file")
        live.write_text("another process is writing this")
        label_file(step4_small, out, surrogate32, progress=False)
        assert not stale.exists() and live.read_text() == "another process is writing this"
        assert len(read(out, ":")) == 30
    finally:
        alive.kill(); alive.wait()


HOLD_LOCK = """
import sys, time
from pyacemaker.utils.io import run_lock
with run_lock(sys.argv[1], "pyacemaker label"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_run_on_the_same_output_is_refused_and_a_dead_runs_lock_taken_over(surrogate32, step4_small, tmp_path):
    out = tmp_path / "out.xyz"
    files = RunFiles(out)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(files.lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(RunLocked, match=rf"out\.xyz\.lock: in use by pyacemaker label \(pid {holder.pid} on "
                                            rf"{socket.gethostname()}, since .*\); wait for it to finish"):
            label_file(step4_small, out, surrogate32, progress=False)
        with pytest.raises(RunLocked):
            label_file(step4_small, out, surrogate32, progress=False, overwrite=True)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.xyz.lock", "step4_surrogate_data.xyz"]
    finally:
        holder.kill(); holder.wait()
    assert json.loads(files.lock.read_text())["pid"] == holder.pid          # a stale lock: its owner is dead
    summary = label_file(step4_small, out, surrogate32, progress=False)
    assert summary["n_structures"] == 30 and not files.lock.exists()
