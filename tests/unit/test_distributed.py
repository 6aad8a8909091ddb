"""Distributed step 5: dask workers give the local labeler's output; failed shards, dead workers and resumes lose nothing."""
import importlib
import json
import os
import sys
import time

import numpy as np
import pytest
from ase.io import read

from pyacemaker.demo_data import step4_frames
from pyacemaker.oracle import distributed as dist
from pyacemaker.oracle.distributed import dask_client, label_file_distributed
from pyacemaker.oracle.mace_wrapper import MaceSurrogate, label_file
from pyacemaker.utils.io import write_frames
from tests.conftest import cluster_and_slab

dask = pytest.importorskip("dask")
pytest.importorskip("distributed")

CHUNK = 25      # 202 structures -> 9 shards


def mixed_structures():
    """200 step-4 cells of 4 to 108 atoms, plus a non-periodic cluster and a slab (no stress) in the middle."""
    frames = step4_frames(200, seed=21)
    return frames[:60] + cluster_and_slab() + frames[60:]


@pytest.fixture(scope="module")
def data(tmp_path_factory, model_path):
    """The input file and its local labeling (the reference every distributed run must reproduce)."""
    work = tmp_path_factory.mktemp("distributed")
    src = write_frames(mixed_structures(), work / "step4_surrogate_data.xyz")
    ref = work / "local.xyz"
    label_file(src, ref, MaceSurrogate(model_path, dtype="float32"), chunk_size=CHUNK, progress=False)
    return src, read(ref, ":")


@pytest.fixture(scope="module")
def client():
    """One LocalCluster of 2 worker processes (1 thread each) shared by the tests of this module."""
    with dask_client(workers=2) as c:
        yield c


def assert_same(path, reference):
    """Same structures in the same order; labels equal within float32 tolerance; same provenance."""
    frames = read(path, ":")
    assert len(frames) == len(reference)
    for a, r in zip(frames, reference):
        assert a.get_chemical_symbols() == r.get_chemical_symbols()
        np.testing.assert_array_equal(a.positions, r.positions)
        np.testing.assert_array_equal(a.pbc, r.pbc)
        assert a.get_potential_energy() == pytest.approx(r.get_potential_energy(), rel=1e-6, abs=1e-6)
        np.testing.assert_allclose(a.get_forces(), r.get_forces(), rtol=1e-5, atol=1e-5)
        assert ("stress" in a.calc.results) == ("stress" in r.calc.results)
        if "stress" in r.calc.results:
            np.testing.assert_allclose(a.get_stress(), r.get_stress(), rtol=1e-5, atol=1e-7)
        assert {k: a.info[k] for k in a.info if k.startswith("mace_")} == {k: r.info[k] for k in r.info if k.startswith("mace_")}


def test_equals_local_labeling(data, client, model_path, tmp_path):
    src, reference = data
    seen = []
    summary = label_file_distributed(src, tmp_path / "out.xyz", model_path, dtype="float32", chunk_size=CHUNK,
                                     progress=False, client=client, on_chunk=lambda k, n: seen.append((k, n)))
    assert_same(tmp_path / "out.xyz", reference)
    assert summary["n_structures"] == 202 and summary["n_atoms"] == sum(len(a) for a in reference)
    assert sorted(k for k, _ in seen) == list(range(9)) and [n for _, n in seen][-1] == 202
    assert summary["n_workers"] == 2
    assert not (tmp_path / "out.xyz.partial").exists()


class FailOnce:
    """Stands in for `_write_chunk` on a worker: the first attempt at chunk k (claimed with a marker file, so across
    processes) raises, or writes the chunk and then kills its worker process before the task can report back;
    "always" raises on every attempt."""
    def __init__(self, write, plan):
        self.write, self.plan = write, plan          # plan: {k: (marker path, "raise" | "kill" | "always")}

    def __call__(self, partial, k, labeled):
        if k in self.plan:
            marker, action = self.plan[k]
            if action == "always":
                raise RuntimeError(f"injected failure in shard {k}")
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return self.write(partial, k, labeled)
            if action == "raise":
                raise RuntimeError(f"injected failure in shard {k}")
            self.write(partial, k, labeled)
            os._exit(1)
        return self.write(partial, k, labeled)


def install_failures(plan):
    import pyacemaker.oracle.distributed as d
    from pyacemaker.oracle.mace_wrapper import _write_chunk
    d._write_chunk = FailOnce(_write_chunk, plan)


def remove_failures():
    import pyacemaker.oracle.distributed as d
    from pyacemaker.oracle.mace_wrapper import _write_chunk
    d._write_chunk = _write_chunk


def wait_idle(client, timeout=30):
    """Wait until no worker has executed a (cancelled) task of an interrupted run for 0.5 s."""
    t0, idle_since = time.time(), None
    while idle_since is None or time.time() - idle_since < 0.5:
        busy = any(client.run(lambda dask_worker: dask_worker.state.executing_count).values())
        idle_since = None if busy else (idle_since or time.time())
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def test_failed_shard_and_killed_worker(data, client, model_path, tmp_path):
    """Shard 1 raises once (retried); shard 4's worker dies right after writing it (rerun elsewhere, finds it written)."""
    src, reference = data
    plan = {1: (str(tmp_path / "raised"), "raise"), 4: (str(tmp_path / "killed"), "kill")}
    before = set(client.scheduler_info()["workers"])
    client.run(install_failures, plan)
    seen = []
    try:
        label_file_distributed(src, tmp_path / "out.xyz", model_path, dtype="float32", chunk_size=CHUNK, progress=False,
                               client=client, on_chunk=lambda k, n: seen.append(k))
    finally:
        client.run(remove_failures)
    assert (tmp_path / "raised").exists() and (tmp_path / "killed").exists()   # both failures happened
    assert sorted(seen) == list(range(9))                                       # every shard reported once
    assert_same(tmp_path / "out.xyz", reference)                                # nothing lost, nothing duplicated
    t0 = time.time()                          # the nanny replaces the dead worker (the next tests need two workers)
    while len(now := set(client.scheduler_info()["workers"])) < 2 or now == before:
        assert time.time() - t0 < 60
        time.sleep(0.2)


def test_shard_failing_every_time_stops_the_run(data, client, model_path, tmp_path):
    """A shard that fails on all 3 attempts stops the run with its error; the finished chunks stay for resume."""
    src, reference = data
    out, partial = tmp_path / "out.xyz", tmp_path / "out.xyz.partial"
    kw = dict(dtype="float32", chunk_size=CHUNK, progress=False, client=client)
    client.run(install_failures, {2: (None, "always")})
    try:
        with pytest.raises(RuntimeError, match="injected failure in shard 2"):
            label_file_distributed(src, out, model_path, **kw)
    finally:
        client.run(remove_failures)
    wait_idle(client)
    assert not out.exists() and "chunk_000002.xyz" not in {p.name for p in partial.iterdir()}
    label_file_distributed(src, out, model_path, resume=True, **kw)
    assert_same(out, reference)


class Stop(Exception):
    pass


def stop_after(n):
    reported = []
    def on_chunk(k, n_done):
        reported.append(k)
        if len(reported) == n: raise Stop
    return on_chunk


def test_resume_across_local_and_distributed(data, client, model_path, tmp_path):
    """Interrupted local -> resumed distributed (interrupted) -> resumed local (interrupted) -> resumed distributed."""
    src, reference = data
    out, partial = tmp_path / "out.xyz", tmp_path / "out.xyz.partial"
    teacher = MaceSurrogate(model_path, dtype="float32")
    chunks = lambda: sorted(p.name for p in partial.glob("chunk_*.xyz"))
    dkw = dict(dtype="float32", chunk_size=CHUNK, progress=False, client=client)
    with pytest.raises(Stop):
        label_file(src, out, teacher, chunk_size=CHUNK, progress=False, on_chunk=stop_after(2))
    manifest = json.loads((partial / "manifest.json").read_text())
    n1 = len(chunks())
    assert n1 >= 2
    with pytest.raises(FileExistsError, match="unfinished labeling run"):
        label_file_distributed(src, out, model_path, **dkw)
    with pytest.raises(ValueError, match="cannot resume, the run differs in chunk_size"):
        label_file_distributed(src, out, model_path, **{**dkw, "chunk_size": 10}, resume=True)
    with pytest.raises(Stop):
        label_file_distributed(src, out, model_path, resume=True, on_chunk=stop_after(2), **dkw)
    wait_idle(client)                         # cancelled shards still running finish (and write) before we look
    n2 = len(chunks())
    assert n1 + 2 <= n2 < 9 and not out.exists()
    assert json.loads((partial / "manifest.json").read_text()) == manifest   # the same run, whichever mode
    with pytest.raises(Stop):
        label_file(src, out, teacher, chunk_size=CHUNK, resume=True, progress=False, on_chunk=stop_after(1))
    assert len(chunks()) == n2 + 1
    summary = label_file_distributed(src, out, model_path, resume=True, **dkw)
    assert summary["n_structures"] == 202
    assert_same(out, reference)
    assert not partial.exists()
    with pytest.raises(FileExistsError, match="already complete; nothing to resume"):
        label_file_distributed(src, out, model_path, resume=True, **dkw)


def test_arguments(data, model_path, tmp_path):
    src, _ = data
    with pytest.raises(ValueError, match="exactly one of"):
        label_file_distributed(src, tmp_path / "o.xyz", model_path, workers=2, scheduler="tcp://127.0.0.1:8786")
    with pytest.raises(ValueError, match="exactly one of"):
        label_file_distributed(src, tmp_path / "o.xyz", model_path)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        label_file_distributed(src, tmp_path / "o.xyz", model_path, workers=0, progress=False)
    with pytest.raises(FileNotFoundError, match="structure file not found"):
        label_file_distributed(tmp_path / "missing.xyz", tmp_path / "o.xyz", model_path, workers=2)
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):     # no scheduler there: nothing is left behind
        with pytest.raises(OSError, match="127.0.0.1:9"):
            label_file_distributed(src, tmp_path / "o.xyz", model_path, scheduler="tcp://127.0.0.1:9", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_without_dask(data, model_path, tmp_path, monkeypatch):
    """Without dask: the module still imports, local labeling is untouched, the distributed call says what to install."""
    src, _ = data
    monkeypatch.setitem(sys.modules, "distributed", None)       # `import distributed` now raises ImportError
    importlib.reload(dist)
    with pytest.raises(RuntimeError, match=r'pip install "dask\[distributed\]"'):
        dist.label_file_distributed(src, tmp_path / "o.xyz", model_path, workers=2)
    with pytest.raises(RuntimeError, match="needs dask.distributed"):
        with dist.dask_client(workers=2):
            pass
    assert not (tmp_path / "o.xyz.partial").exists() and not (tmp_path / "o.xyz").exists()
    three = write_frames(read(src, ":3"), tmp_path / "three.xyz")
    label_file(three, tmp_path / "local.xyz", MaceSurrogate(model_path, dtype="float32", compile=False), progress=False)
    assert len(read(tmp_path / "local.xyz", ":")) == 3
