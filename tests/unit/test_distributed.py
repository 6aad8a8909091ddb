"""Distributed step 5: dask workers give the local labeler's output; failed shards, dead workers, resumes and bad frames
lose nothing."""
import importlib
import json
import os
import sys
import time

import numpy as np
import pytest
from ase.io import read

from pyacemaker.demo_data import mixed_step4_frames, step4_frames
from pyacemaker.domain_models.config import LabelingConfig, PyacemakerError
from pyacemaker.oracle import distributed as dist
from pyacemaker.oracle.chunked_run import RunFiles, RunMismatch
from pyacemaker.oracle.distributed import Cluster, dask_client, label_file_distributed
from pyacemaker.orchestrator import label
from pyacemaker.utils.io import ExistingOutput, MissingInput, write_frames

dask = pytest.importorskip("dask")
pytest.importorskip("distributed")

CHUNK = 13      # 110 structures -> 9 shards


def mixed_structures():
    """100 step-4 cells of 4 to 108 atoms with 10 slabs, wires and clusters (no stress) in the middle."""
    frames = step4_frames(100, seed=21)
    return frames[:40] + mixed_step4_frames(10, seed=3) + frames[40:]


@pytest.fixture(scope="module")
def lab(model_path):
    return LabelingConfig(model=model_path, dtype="float32", chunk_size=CHUNK)


@pytest.fixture(scope="module")
def data(tmp_path_factory, lab):
    """The input file and its local labeling (the reference every distributed run must reproduce)."""
    work = tmp_path_factory.mktemp("distributed")
    src = write_frames(mixed_structures(), work / "step4_surrogate_data.xyz")
    label(src, work / "local.xyz", lab, progress=False)
    return src, read(work / "local.xyz", ":")


@pytest.fixture(scope="module")
def client():
    """One LocalCluster of 2 worker processes (1 thread each) shared by the tests of this module."""
    with dask_client(workers=2) as c:
        yield c


def test_equals_local_labeling(data, client, lab, tmp_path, assert_same_labels):
    src, reference = data
    seen = []
    summary = label_file_distributed(src, tmp_path / "out.xyz", lab, progress=False, cluster=Cluster(client=client),
                                     on_chunk=lambda k, n: seen.append((k, n)))
    assert_same_labels(tmp_path / "out.xyz", reference)
    assert any(not a.pbc.all() for a in reference)
    assert summary["n_structures"] == 110 and summary["n_atoms"] == sum(len(a) for a in reference)
    assert sorted(k for k, _ in seen) == list(range(9)) and [n for _, n in seen][-1] == 110
    assert summary["n_workers"] == 2
    assert not RunFiles(tmp_path / "out.xyz").partial.exists() and not RunFiles(tmp_path / "out.xyz").lock.exists()
    record = json.loads(RunFiles(tmp_path / "out.xyz").record.read_text())
    assert record["n_structures"] == 110 and record["chunk_size"] == CHUNK and record["dtype"] == "float32"


class FailOnce:
    """Stands in for `write_chunk` on a worker: the first attempt at chunk k (claimed with a marker file, so across
    processes) raises, or writes the chunk and then kills its worker process before the task can report back;
    "always" raises on every attempt."""
    def __init__(self, write, plan):
        self.write, self.plan = write, plan          # plan: {k: (marker path, "raise" | "kill" | "always")}

    def __call__(self, files, k, fingerprint, chunk):
        if k in self.plan:
            marker, action = self.plan[k]
            if action == "always":
                raise RuntimeError(f"injected failure in shard {k}")
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return self.write(files, k, fingerprint, chunk)
            if action == "raise":
                raise RuntimeError(f"injected failure in shard {k}")
            self.write(files, k, fingerprint, chunk)
            os._exit(1)
        return self.write(files, k, fingerprint, chunk)


def install_failures(plan):
    import pyacemaker.oracle.distributed as d
    from pyacemaker.oracle.chunked_run import write_chunk
    d.write_chunk = FailOnce(write_chunk, plan)


def remove_failures():
    import pyacemaker.oracle.distributed as d
    from pyacemaker.oracle.chunked_run import write_chunk
    d.write_chunk = write_chunk


def wait_idle(client, timeout=30):
    """Wait until no worker has executed a (cancelled) task of an interrupted run for 0.5 s."""
    t0, idle_since = time.time(), None
    while idle_since is None or time.time() - idle_since < 0.5:
        busy = any(client.run(lambda dask_worker: dask_worker.state.executing_count).values())
        idle_since = None if busy else (idle_since or time.time())
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def test_failed_shard_and_killed_worker(data, client, lab, tmp_path, assert_same_labels):
    """Shard 1 raises once (retried); shard 4's worker dies right after writing it (rerun elsewhere, finds it written)."""
    src, reference = data
    plan = {1: (str(tmp_path / "raised"), "raise"), 4: (str(tmp_path / "killed"), "kill")}
    before = set(client.scheduler_info()["workers"])
    client.run(install_failures, plan)
    seen = []
    try:
        label_file_distributed(src, tmp_path / "out.xyz", lab, progress=False, cluster=Cluster(client=client),
                               on_chunk=lambda k, n: seen.append(k))
    finally:
        client.run(remove_failures)
    assert (tmp_path / "raised").exists() and (tmp_path / "killed").exists()   # both failures happened
    assert sorted(seen) == list(range(9))                                       # every shard reported once
    assert_same_labels(tmp_path / "out.xyz", reference)                                # nothing lost, nothing duplicated
    t0 = time.time()                          # the nanny replaces the dead worker (the next tests need two workers)
    while len(now := set(client.scheduler_info()["workers"])) < 2 or now == before:
        assert time.time() - t0 < 60
        time.sleep(0.2)


def test_shard_failing_every_time_stops_the_run(data, client, lab, tmp_path, assert_same_labels):
    """A shard that fails on all 3 attempts stops the run with its error; the finished chunks stay for resume."""
    src, reference = data
    out = tmp_path / "out.xyz"
    partial = RunFiles(out).partial
    client.run(install_failures, {2: (None, "always")})
    try:
        with pytest.raises(RuntimeError, match="injected failure in shard 2") as e:
            label_file_distributed(src, out, lab, progress=False, cluster=Cluster(client=client))
    finally:
        client.run(remove_failures)
    assert "chunks are finished and kept in" in e.value.__notes__[0]
    wait_idle(client)
    assert not out.exists() and not any(p.name.startswith("chunk_000002_") for p in partial.iterdir())
    seen = []
    label_file_distributed(src, out, lab, resume=True, progress=False, cluster=Cluster(client=client), on_chunk=lambda k, n: seen.append(k))
    assert 2 in seen and len(seen) < 9
    assert_same_labels(out, reference)


class Stop(Exception):
    pass


def stop_after(n):
    reported = []
    def on_chunk(k, n_done):
        reported.append(k)
        if len(reported) == n: raise Stop
    return on_chunk


def test_resume_across_local_and_distributed(data, client, lab, tmp_path, assert_same_labels):
    """Interrupted local -> resumed distributed (interrupted) -> resumed local (interrupted) -> resumed distributed."""
    src, reference = data
    out = tmp_path / "out.xyz"
    partial = RunFiles(out).partial
    chunks = lambda: sorted(p.name for p in partial.glob("chunk_*.xyz"))
    dkw = dict(progress=False, cluster=Cluster(client=client))
    with pytest.raises(Stop):
        label(src, out, lab, progress=False, on_chunk=stop_after(2))
    manifest = json.loads((partial / "manifest.json").read_text())
    n1 = len(chunks())
    assert n1 >= 2
    with pytest.raises(ExistingOutput, match="unfinished labeling run"):
        label_file_distributed(src, out, lab, **dkw)
    with pytest.raises(RunMismatch, match="cannot resume, the run differs in chunk_size"):
        label_file_distributed(src, out, lab.model_copy(update={"chunk_size": 10}), resume=True, **dkw)
    with pytest.raises(Stop):
        label_file_distributed(src, out, lab, resume=True, on_chunk=stop_after(2), **dkw)
    wait_idle(client)                         # cancelled shards still running finish (and write) before we look
    n2 = len(chunks())
    assert n1 + 2 <= n2 < 9 and not out.exists()
    assert json.loads((partial / "manifest.json").read_text()) == manifest   # the same run, whichever mode
    with pytest.raises(Stop):
        label(src, out, lab, resume=True, progress=False, on_chunk=stop_after(1))
    assert len(chunks()) == n2 + 1
    finished = [int(name.split("_")[1]) for name in chunks()]
    summary = label_file_distributed(src, out, lab, resume=True, **dkw)
    assert summary["n_structures"] == 110 and summary["n_reused"] == sum(min(CHUNK, 110 - k * CHUNK) for k in finished)
    assert_same_labels(out, reference)
    assert not partial.exists()
    with pytest.raises(ExistingOutput, match="already complete; nothing to resume"):
        label_file_distributed(src, out, lab, resume=True, **dkw)


def test_skip_bad_on_workers_sets_aside_what_local_labeling_sets_aside(client, model_path, tmp_path, assert_same_labels):
    frames = step4_frames(40, seed=6)
    frames[3].symbols[0] = "Au"                                   # found by the scan
    frames[17].positions[2, 0] = np.nan                           # found by the scan
    frames[33].positions[1] = frames[33].positions[0]             # MACE returns NaN (min_distance 0): found on a worker
    src = write_frames(frames, tmp_path / "in.xyz")
    lab = LabelingConfig(model=model_path, dtype="float32", chunk_size=10, min_distance=0.0, skip_bad=True)
    local = label(src, tmp_path / "local.xyz", lab, progress=False)
    distributed = label_file_distributed(src, tmp_path / "dist.xyz", lab, progress=False, cluster=Cluster(client=client))
    assert local["n_rejected"] == distributed["n_rejected"] == 3
    assert local["n_structures"] == distributed["n_structures"] == 37
    assert_same_labels(tmp_path / "dist.xyz", read(tmp_path / "local.xyz", ":"))
    rejected_local, rejected_dist = RunFiles(tmp_path / "local.xyz").rejected, RunFiles(tmp_path / "dist.xyz").rejected
    assert rejected_dist.read_bytes() == rejected_local.read_bytes()
    assert [a.info["input_frame"] for a in read(rejected_dist, ":")] == [3, 17, 33]
    assert "MACE returned non-finite" in read(rejected_dist, "2").info["reject_reason"]
    strict = lab.model_copy(update={"skip_bad": False})
    with pytest.raises(PyacemakerError, match=r"in\.xyz frame 3: element Au is not in the model"):
        label_file_distributed(src, tmp_path / "strict.xyz", strict, progress=False, cluster=Cluster(client=client))


def test_arguments(data, lab, tmp_path):
    src, _ = data
    with pytest.raises(dist.DistributedError, match="exactly one of"):
        label_file_distributed(src, tmp_path / "o.xyz", lab, cluster=Cluster("tcp://127.0.0.1:8786", 2))
    with pytest.raises(dist.DistributedError, match="exactly one of"):
        label_file_distributed(src, tmp_path / "o.xyz", lab)
    with pytest.raises(dist.DistributedError, match="workers must be at least 1"):
        label_file_distributed(src, tmp_path / "o.xyz", lab, progress=False, cluster=Cluster(workers=0))
    with pytest.raises(MissingInput, match="structure file not found"):
        label_file_distributed(tmp_path / "missing.xyz", tmp_path / "o.xyz", lab, cluster=Cluster(workers=2))
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):     # no scheduler there: nothing is left behind
        with pytest.raises(dist.DistributedError, match=r"--scheduler tcp://127.0.0.1:9: cannot reach the dask scheduler"):
            label_file_distributed(src, tmp_path / "o.xyz", lab, progress=False, cluster=Cluster("tcp://127.0.0.1:9"))
    assert list(tmp_path.iterdir()) == []


def test_without_dask(data, model_path, tmp_path, monkeypatch):
    """Without dask: the module still imports, local labeling is untouched, the distributed call says what to install."""
    src, _ = data
    lab = LabelingConfig(model=model_path, dtype="float32")
    monkeypatch.setitem(sys.modules, "distributed", None)       # `import distributed` now raises ImportError
    try:
        importlib.reload(dist)
        with pytest.raises(PyacemakerError, match=r'needs dask.distributed.*pip install "dask\[distributed\]"'):
            dist.label_file_distributed(src, tmp_path / "o.xyz", lab, cluster=Cluster(workers=2))
        with pytest.raises(PyacemakerError, match="needs dask.distributed"):
            with dist.dask_client(workers=2):
                pass
        with pytest.raises(PyacemakerError, match="needs dask.distributed"):       # the one entry point says the same
            label(src, tmp_path / "o.xyz", lab, cluster=dist.Cluster(workers=2), progress=False)
        assert list(tmp_path.iterdir()) == []
        three = write_frames(read(src, ":3"), tmp_path / "three.xyz")
        label(three, tmp_path / "local.xyz", lab, progress=False)
        assert len(read(tmp_path / "local.xyz", ":")) == 3
    finally:
        monkeypatch.undo()
        importlib.reload(dist)
