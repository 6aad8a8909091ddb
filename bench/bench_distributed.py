"""Distributed step-5 benchmark: `label_file` in this process vs `label_file_distributed` on a dask LocalCluster of
1 and 2 worker processes, on the same structures (bundled model, float32), plus the fixed costs of a distributed run:
worker start, model load per worker, task round trip and shard serialization.

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_distributed.py [--n 2000] [--chunk 100] [--json out.json]

Every process (this one and each worker) labels with one OpenMP thread (dask's nanny sets OMP_NUM_THREADS=1 in its
workers), so "1 worker" vs "local" shows the cost of going through dask, and "2 workers" vs "1 worker" the scaling.
"Warm" runs reuse a cluster whose workers have already loaded the model; "cold" includes starting the workers,
their imports and the model load. Prints a table; `--json` also writes the numbers.
"""
import argparse
import json
import os
import pickle
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pyacemaker.demo_data import demo_model_path, step4_frames
from pyacemaker.domain_models.config import LabelingConfig
from pyacemaker.oracle.chunked_run import Chunking, RunFiles, chunks_of_texts, label_file, run_manifest, text_fingerprint
from pyacemaker.oracle.distributed import Cluster, dask_client, label_file_distributed, label_shard, model_spec
from pyacemaker.oracle.mace_wrapper import MaceSurrogate
from pyacemaker.utils.io import write_frames

MODEL, DTYPE = demo_model_path(), "float32"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def distributed_runs(src, work, n_workers, chunk):
    """Cold (fresh cluster) and warm (same cluster again) distributed labeling, plus the per-task round trip."""
    lab = LabelingConfig(model=MODEL, dtype=DTYPE, chunk_size=chunk)
    t0 = time.perf_counter()
    with dask_client(workers=n_workers) as client:
        start_s = time.perf_counter() - t0
        run = lambda: label_file_distributed(src, work / f"d{n_workers}.xyz", lab, cluster=Cluster(client=client), progress=False, overwrite=True)
        cold_s, cold = timed(run)
        warm_s, warm = timed(run)
        rt = round_trip(client, src, work / f"tiny{n_workers}.xyz") if n_workers == 1 else None
    return dict(workers=n_workers, start_s=start_s, cold_s=cold_s, cold_total_s=start_s + cold_s, warm_s=warm_s,
                model_load_s_per_worker=cold["model_load_s"] / max(cold["n_workers"], 1), n_workers_used=cold["n_workers"],
                warm_structures_per_s=warm["n_structures"] / warm_s, cold_structures_per_s=cold["n_structures"] / (start_s + cold_s),
                round_trip=rt)


def round_trip(client, src, output, repeats=20):
    """Wall time of one 1-structure shard task on a warm worker, and how much of it is spent inside the task."""
    surrogate = MaceSurrogate(MODEL, dtype=DTYPE, compile=False)
    manifest, files = run_manifest(surrogate, 1), RunFiles(Path(output).resolve())
    files.partial.mkdir(parents=True, exist_ok=True)
    files.manifest.write_text(json.dumps(manifest))
    k, texts = next(chunks_of_texts(Path(src), 1))
    fp, spec = text_fingerprint(texts), model_spec(LabelingConfig(model=MODEL, dtype=DTYPE))
    walls, inside = [], []
    for i in range(repeats + 1):
        chunk = files.chunk(k, fp)
        if chunk.exists(): chunk.unlink()
        t0 = time.perf_counter()
        stats = client.submit(label_shard, k, fp, texts, str(src), str(files.output), spec, manifest, pure=False).result()
        if i: walls.append(time.perf_counter() - t0); inside.append(stats["seconds"])
    walls.sort(); inside.sort()
    return dict(wall_ms=1e3 * walls[len(walls) // 2], in_task_ms=1e3 * inside[len(inside) // 2],
                overhead_ms=1e3 * (walls[len(walls) // 2] - inside[len(inside) // 2]))


def serialization(src, chunk):
    """Size and pickling time of one shard's arguments (the unparsed text of `chunk` frames)."""
    k, texts = next(chunks_of_texts(Path(src), chunk))
    dt, blob = timed(lambda: pickle.dumps(texts, protocol=5))
    return dict(structures=len(texts), kib=len(blob) / 1024, ms=1e3 * dt, bytes_per_structure=len(blob) / len(texts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="structures to label")
    ap.add_argument("--chunk", type=int, default=100, help="structures per shard (chunk_size)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    frames = step4_frames(args.n, seed=17)
    n_atoms = sum(len(a) for a in frames)
    src = write_frames(frames, work / "step4.xyz")

    load_s, teacher = timed(lambda: MaceSurrogate(MODEL, dtype=DTYPE))
    local_s, _ = timed(lambda: label_file(src, work / "local.xyz", teacher, chunking=Chunking(args.chunk), progress=False))
    runs = [distributed_runs(src, work, w, args.chunk) for w in (1, 2)]
    ser = serialization(src, args.chunk)
    res = dict(n=args.n, atoms=n_atoms, chunk=args.chunk, dtype=DTYPE, cpus=os.cpu_count(), local_s=local_s,
               local_structures_per_s=args.n / local_s, local_model_load_s=load_s, distributed=runs, serialization=ser)

    local_rate = args.n / local_s
    print(f"\n{args.n} structures ({n_atoms} atoms, {n_atoms / args.n:.1f} per structure), {DTYPE}, chunks of {args.chunk}, "
          f"{os.cpu_count()} CPU cores, 1 OpenMP thread per process")
    print(f"{'run':32s} {'wall s':>8s} {'structures/s':>13s} {'vs local':>9s}")
    print(f"{'local label_file (this process)':32s} {local_s:8.2f} {local_rate:13.1f} {1:9.2f}")
    for r in runs:
        w = r["workers"]
        print(f"{f'{w} worker(s), warm':32s} {r['warm_s']:8.2f} {r['warm_structures_per_s']:13.1f} {r['warm_structures_per_s'] / local_rate:9.2f}")
    for r in runs:
        w = r["workers"]
        print(f"{f'{w} worker(s), cold (incl. start)':32s} {r['cold_total_s']:8.2f} {r['cold_structures_per_s']:13.1f} "
              f"{r['cold_structures_per_s'] / local_rate:9.2f}")
    r1, r2 = runs
    print(f"\nscaling 1 -> 2 workers (warm): x{r2['warm_structures_per_s'] / r1['warm_structures_per_s']:.2f}")
    print("fixed costs of a distributed run:")
    print(f"  cluster start (scheduler + worker processes): {r1['start_s']:.1f} s (1 worker), {r2['start_s']:.1f} s (2 workers)")
    print(f"  first shard on a worker: imports + model load, cold run minus warm run: "
          f"{r1['cold_s'] - r1['warm_s']:.1f} s (1 worker), {r2['cold_s'] - r2['warm_s']:.1f} s (2 workers)")
    print(f"  model load per worker (torch.load + TorchScript compile): {r1['model_load_s_per_worker']:.2f} s (1 worker), "
          f"{r2['model_load_s_per_worker']:.2f} s (2 workers, loading at once); in this process: {load_s:.2f} s")
    rt = r1["round_trip"]
    print(f"  task round trip, 1-structure shard on a warm worker: {rt['wall_ms']:.1f} ms, of which {rt['in_task_ms']:.1f} ms "
          f"in the task -> dask overhead {rt['overhead_ms']:.1f} ms per shard")
    print(f"  shard arguments: {ser['structures']} structures = {ser['kib']:.0f} KiB pickled in {ser['ms']:.2f} ms "
          f"({ser['bytes_per_structure']:.0f} B/structure)")
    print(f"  per-shard overhead at chunk_size {args.chunk}, were it not hidden by the shards queued on each worker: "
          f"{rt['overhead_ms']:.1f} ms vs "
          f"{1e3 * args.chunk / r1['warm_structures_per_s']:.0f} ms of labeling "
          f"({100 * rt['overhead_ms'] / (1e3 * args.chunk / r1['warm_structures_per_s']):.2f} %)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
