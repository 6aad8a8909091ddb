"""Step 5 labeler: batched results equal mace's calculator; files, resume and every bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.io import read, write

from pyacemaker.demo_data import step4_frames
from pyacemaker.oracle.mace_wrapper import (MaceSurrogate, _choose_head, atom_budget_batches, label_file)
from pyacemaker.utils.io import StructureError
from tests.conftest import cluster_and_slab

PYACEMAKER = str(Path(sys.executable).with_name("pyacemaker"))   # the console script of this environment


def mixed_structures():
    """Different sizes and compositions, a non-periodic cluster and a slab."""
    small = bulk("Ag", "fcc", a=4.06)                           # 1-atom primitive cell
    return step4_frames(8, seed=5) + cluster_and_slab() + [small]


@pytest.mark.parametrize("compile", [True, False])
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_batched_equals_mace_calculator(model_path, dtype, rtol, compile):
    from mace.calculators import MACECalculator
    structures = mixed_structures()
    teacher = MaceSurrogate(model_path, dtype=dtype, batch_atoms=150, compile=compile)  # several batches of mixed sizes
    labeled = teacher.compute_batch(structures)
    calc = MACECalculator(model_paths=str(model_path), device="cpu", default_dtype=dtype)
    for atoms, lab in zip(structures, labeled):
        ref = atoms.copy()
        ref.calc = calc
        e = ref.get_potential_energy()
        assert lab.get_potential_energy() == pytest.approx(e, rel=rtol)
        f = ref.get_forces()
        assert np.abs(lab.get_forces() - f).max() <= rtol * np.abs(f).max()
        if atoms.pbc.all():
            s = ref.get_stress()
            assert np.abs(lab.get_stress() - s).max() <= rtol * np.abs(s).max()
        else:
            assert "stress" not in lab.calc.results


def test_provenance_and_e0(teacher64, model_path):
    lab = teacher64.compute_batch([bulk("Cu", "fcc", a=3.6, cubic=True)])[0]
    assert lab.info["mace_head"] == "Default" and lab.info["mace_dtype"] == "float64"
    assert lab.info["mace_model_sha256"] == teacher64.sha256[:16]
    e0 = teacher64.e0
    assert set(e0) == {"Cu", "Ag"}
    model = torch.load(model_path, weights_only=False)
    assert e0["Cu"] == pytest.approx(float(model.atomic_energies_fn.atomic_energies.flatten()[0]))


def test_head_choice():
    assert _choose_head(["Default"], None, "m") == "Default"
    assert _choose_head(["pt_head", "Default"], "Default", "m") == "Default"
    with pytest.raises(ValueError, match=r"m: the model has several heads \['pt_head', 'Default'\]; choose one"):
        _choose_head(["pt_head", "Default"], None, "m")
    with pytest.raises(ValueError, match="head 'mp' is not in the model"):
        _choose_head(["pt_head", "Default"], "mp", "m")


def test_atom_budget_batches():
    assert atom_budget_batches([2] * 10, 8) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert atom_budget_batches([500, 2, 2], 100) == [[0], [1, 2]]
    assert sum(atom_budget_batches(list(range(1, 50)), 64), []) == list(range(49))


def test_oom_halves_the_batch_and_retries(teacher64, monkeypatch):
    """Failure path: a CUDA out-of-memory error on big batches is answered by splitting them."""
    structures = step4_frames(6, seed=9)
    expected = [a.get_potential_energy() for a in teacher64.compute_batch(structures)]
    forward = teacher64.runner
    sizes = []
    def tight_memory(data, **kw):
        n = int(data["ptr"].numel() - 1)
        sizes.append(n)
        if n > 2: raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(data, **kw)
    monkeypatch.setattr(teacher64, "runner", tight_memory)
    got = [a.get_potential_energy() for a in teacher64.compute_batch(structures)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert sizes[0] == 6                                           # one batch first (6 small cells fit the budget)
    assert sum(n for n in sizes if n <= 2) == 6                    # then halves until each fits, every cell once


def test_other_errors_are_not_retried(teacher64, monkeypatch):
    monkeypatch.setattr(teacher64, "runner", lambda data, **kw: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        teacher64.compute_batch(step4_frames(2, seed=9))


# --- files -----------------------------------------------------------------------------

def test_output_is_readable_extxyz(teacher32, step4_small, tmp_path):
    out = tmp_path / "step5_surrogate_labeled.xyz"
    summary = label_file(step4_small, out, teacher32, chunk_size=7, progress=False)
    assert summary["n_structures"] == 30
    header = out.read_text().splitlines()[1]
    assert "Properties=species:S:1:pos:R:3:forces:R:3" in header and " energy=" in header and " stress=" in header
    back = read(out, ":")
    src = read(step4_small, ":")
    assert len(back) == 30
    for a, b in zip(src, back):
        assert a.get_chemical_symbols() == b.get_chemical_symbols()
        np.testing.assert_allclose(a.positions, b.positions)
        assert b.get_forces().shape == (len(a), 3) and b.get_stress().shape == (6,)
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*tmp*"))


def test_clusters_and_slabs_are_labeled_without_stress(teacher64, tmp_path):
    cluster, slab = cluster_and_slab()
    write(tmp_path / "in.xyz", [cluster, slab], format="extxyz")
    label_file(tmp_path / "in.xyz", tmp_path / "out.xyz", teacher64, progress=False)
    for b in read(tmp_path / "out.xyz", ":"):
        assert np.isfinite(b.get_potential_energy()) and "stress" not in b.calc.results


def test_resume_after_injected_crash_gives_identical_file(teacher32, step4_small, tmp_path):
    ref = tmp_path / "ref.xyz"
    label_file(step4_small, ref, teacher32, chunk_size=7, progress=False)
    out = tmp_path / "out.xyz"
    def crash_after_two(k, n):
        if k == 1: raise KeyboardInterrupt("killed")
    with pytest.raises(KeyboardInterrupt):
        label_file(step4_small, out, teacher32, chunk_size=7, progress=False, on_chunk=crash_after_two)
    assert not out.exists()
    partial = tmp_path / "out.xyz.partial"
    assert sorted(p.name for p in partial.glob("chunk_*.xyz")) == ["chunk_000000.xyz", "chunk_000001.xyz"]
    with pytest.raises(FileExistsError, match="unfinished labeling run"):
        label_file(step4_small, out, teacher32, chunk_size=7, progress=False)
    with pytest.raises(ValueError, match="cannot resume, the run differs in chunk_size"):
        label_file(step4_small, out, teacher32, chunk_size=5, resume=True, progress=False)
    done = []
    summary = label_file(step4_small, out, teacher32, chunk_size=7, resume=True, progress=False,
                         on_chunk=lambda k, n: done.append(k))
    assert done == [2, 3, 4]                                       # finished chunks were not recomputed
    assert summary["n_structures"] == 30
    assert not partial.exists()
    # Value for value: with several CPU threads mace's scatter-add order varies (float32 ~1e-7 relative),
    # exactly as between two uninterrupted runs; byte-for-byte identity is tested single-threaded below.
    a, b = read(ref, ":"), read(out, ":")
    assert len(a) == len(b) == 30
    for x, y in zip(a, b):
        assert x.get_chemical_symbols() == y.get_chemical_symbols() and x.info == y.info
        np.testing.assert_array_equal(x.positions, y.positions)
        np.testing.assert_allclose(y.get_potential_energy(), x.get_potential_energy(), rtol=1e-6)
        np.testing.assert_allclose(y.get_forces(), x.get_forces(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(y.get_stress(), x.get_stress(), rtol=0, atol=1e-7)


def test_resume_after_killed_process_gives_identical_file(model_path, step4_small, tmp_path):
    """A real `pyacemaker label` process killed with SIGKILL mid-run, then resumed: byte-identical output
    (one thread, so that the uninterrupted reference run is itself deterministic)."""
    ref, out = tmp_path / "ref.xyz", tmp_path / "out.xyz"
    base = [PYACEMAKER, "label", "--model", str(model_path), "--input", str(step4_small),
            "--dtype", "float32", "--chunk-size", "3", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(base + ["--output", str(ref)], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(base + ["--output", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "out.xyz.partial"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(partial.glob("chunk_*.xyz"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and len(list(partial.glob("chunk_*.xyz"))) >= 2
    r = subprocess.run(base + ["--output", str(out), "--resume"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == ref.read_bytes()


def test_existing_output_is_never_overwritten_silently(teacher32, step4_small, tmp_path):
    out = tmp_path / "out.xyz"
    out.write_text("finished work\n")
    with pytest.raises(FileExistsError, match="out.xyz already exists; refusing to overwrite"):
        label_file(step4_small, out, teacher32, progress=False)
    with pytest.raises(FileExistsError, match="already complete; nothing to resume"):
        label_file(step4_small, out, teacher32, resume=True, progress=False)
    assert out.read_text() == "finished work\n"
    label_file(step4_small, out, teacher32, overwrite=True, progress=False)
    assert len(read(out, ":")) == 30


# --- bad input -------------------------------------------------------------------------

def frames_with(tmp_path, mutate, n=4, name="bad.xyz"):
    frames = step4_frames(n, seed=21)
    mutate(frames)
    write(tmp_path / name, frames, format="extxyz")
    return tmp_path / name


def assert_refused(teacher, path, match, tmp_path):
    out = tmp_path / "out.xyz"
    with pytest.raises((StructureError, FileNotFoundError)) as e:
        label_file(path, out, teacher, progress=False)
    assert e.match(match)
    assert not out.exists() and not (tmp_path / "out.xyz.partial").exists()


def test_missing_input(teacher32, tmp_path):
    assert_refused(teacher32, tmp_path / "missing.xyz", "missing.xyz: structure file not found", tmp_path)


def test_empty_input(teacher32, tmp_path):
    (tmp_path / "empty.xyz").write_text("")
    assert_refused(teacher32, tmp_path / "empty.xyz", "empty.xyz: contains no structures", tmp_path)


def test_unparseable_frame_is_named(teacher32, tmp_path):
    p = frames_with(tmp_path, lambda f: None)
    lines = p.read_text().splitlines(keepends=True)
    start = 0
    for _ in range(2):                                           # skip frames 0 and 1
        start += int(lines[start]) + 2
    lines[start + 3] = "Cu 1.0 abc 2.0\n"
    p.write_text("".join(lines))
    assert_refused(teacher32, p, rf"bad.xyz frame 2 \(line {start + 1}\): cannot parse extxyz", tmp_path)


def test_truncated_file_is_named(teacher32, tmp_path):
    p = frames_with(tmp_path, lambda f: None)
    p.write_text("".join(p.read_text().splitlines(keepends=True)[:-3]))
    assert_refused(teacher32, p, "bad.xyz frame 3 .*file ends inside the frame", tmp_path)


def test_unknown_element_named_before_any_compute(teacher32, tmp_path, monkeypatch):
    def au(frames): frames[3].symbols[5] = "Au"
    p = frames_with(tmp_path, au)
    calls = []
    monkeypatch.setattr(teacher32, "_evaluate", lambda graphs: calls.append(1))
    assert_refused(teacher32, p, r"bad.xyz frame 3: element Au is not in the model \(knows Ag, Cu\)", tmp_path)
    assert calls == []


def test_nan_positions(teacher32, tmp_path):
    def nan(frames): frames[1].positions[2, 1] = np.nan
    assert_refused(teacher32, frames_with(tmp_path, nan), "bad.xyz frame 1: positions of atom 2 are not finite", tmp_path)


def test_inf_positions(teacher32, tmp_path):
    def inf(frames): frames[0].positions[0, 0] = np.inf
    assert_refused(teacher32, frames_with(tmp_path, inf), "bad.xyz frame 0: positions of atom 0 are not finite", tmp_path)


def test_zero_atom_frame(teacher32, tmp_path):
    p = frames_with(tmp_path, lambda f: None, n=2)
    p.write_text(p.read_text() + '0\nProperties=species:S:1:pos:R:3 pbc="F F F"\n')
    assert_refused(teacher32, p, "bad.xyz frame 2: has no atoms", tmp_path)


def test_cli_reports_bad_input_without_traceback(model_path, tmp_path):
    def au(frames): frames[2].symbols[0] = "Au"
    p = frames_with(tmp_path, au)
    r = subprocess.run([PYACEMAKER, "label", "--model", str(model_path), "--input", str(p),
                        "--output", str(tmp_path / "o.xyz"), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "pyacemaker label: error: " in r.stderr and "frame 2: element Au" in r.stderr
    assert "Traceback" not in r.stderr
