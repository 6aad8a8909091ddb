"""Does `pyacemaker refine` teach the student where it was blind? Base vs refined on fresh MD, against the teacher.

    pyacemaker demo --work-dir /tmp/refine_demo                       # once: a finished demo folder (bulk-only student)
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_refine.py seeds --out /tmp/refine_demo/seeds.xyz
    .venv/bin/pyacemaker refine /tmp/refine_demo/pipeline.yaml --seeds /tmp/refine_demo/seeds.xyz
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_refine.py compare /tmp/refine_demo/pipeline.yaml \
        [--seeds /tmp/refine_demo/seeds.xyz] [--steps 400] [--json out.json] [--refined OTHER/ace_refined.yace]

`seeds` writes the loop's seeds: a Cu–Ag(111) slab (36 atoms), a 44-atom octahedral cluster and a 107-atom bulk cell
with a vacancy. `compare` runs fresh Langevin MD at 600 and 1200 K with `models/ace_base` and with `models/ace_refined`
(random seeds the loop never used, no γ stop: the walkers run their full length unless the MD breaks down), from the
given seeds, or by default from seeds the loop never saw (a (100) slab, a 55-atom icosahedron and a 32-atom vacancy cell,
other compositions). It prints per seed and temperature the max γ and the teacher's energy/force RMSE on 10 evenly spaced
snapshots of each run, for both potentials, and the loop's wall time per phase from `refine/history.json`.
"""
import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from ase.build import bulk, fcc100, fcc111
from ase.cluster import Icosahedron, Octahedron

from pyacemaker.demo_data import vegard_a
from pyacemaker.domain_models.config import load_config
from pyacemaker.oracle.mace_wrapper import MaceSurrogate
from pyacemaker.domain_models.config import RefineConfig
from pyacemaker.kit.calculators import ace_calculator
from pyacemaker.kit.layout import Deliverables, base_set, refine_dir, refined_set
from pyacemaker.refine import potential_errors, walk, evenly
from pyacemaker.kit.dynamics import min_distance_threshold
from pyacemaker.utils.io import iter_frames, read_json, write_frames


def _alloy(atoms, rng, x_ag):
    "Random Cu/Ag occupation with Ag fraction `x_ag`, rattled by 0.05 Å."
    atoms.symbols[rng.uniform(size=len(atoms)) < x_ag] = "Ag"
    atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
    return atoms


def loop_seeds(seed: int = 0):
    "The loop's seeds: a (111) slab, a 44-atom octahedron, a 107-atom bulk cell with a vacancy."
    rng = np.random.default_rng(seed)
    slab = _alloy(fcc111("Cu", (3, 3, 4), a=vegard_a(0.3), vacuum=8.0), rng, 0.3)
    cluster = Octahedron("Cu", 4, 0, latticeconstant=vegard_a(0.5)); cluster.pbc = False
    cluster = _alloy(cluster, rng, 0.5)
    vac = bulk("Cu", "fcc", a=vegard_a(0.2), cubic=True).repeat(3); del vac[0]
    return [slab, cluster, _alloy(vac, rng, 0.2)]


def unseen_seeds(seed: int = 1):
    "Seeds the loop never saw: a (100) slab, a 55-atom icosahedron, a 31-atom vacancy cell, other compositions."
    rng = np.random.default_rng(seed)
    slab = _alloy(fcc100("Cu", (3, 3, 4), a=vegard_a(0.6), vacuum=8.0), rng, 0.6)
    cluster = Icosahedron("Cu", 3, latticeconstant=vegard_a(0.3)); cluster.pbc = False
    cluster.positions -= cluster.positions.mean(0)
    cluster = _alloy(cluster, rng, 0.3)
    vac = bulk("Cu", "fcc", a=vegard_a(0.7), cubic=True).repeat(2); del vac[5]
    return [slab, cluster, _alloy(vac, rng, 0.7)]


def kind(atoms) -> str:
    return {0: "cluster", 2: "slab", 3: "vacancy cell"}[int(np.sum(atoms.pbc))]


def compare(cfg, seeds, temperatures=(600.0, 1200.0), steps=400, snapshots=10, rng_seed=12345, refined=None) -> list[dict]:
    "Fresh MD with the base and the refined potential from every seed at every temperature: max γ, teacher RMSE."
    teacher = MaceSurrogate.from_config(cfg.labeling)
    e0 = teacher.e0
    threshold = min_distance_threshold(list(iter_frames(cfg.path(cfg.step5_file))))
    rows = []
    for name, d in (("base", base_set(cfg)), ("refined", refined or refined_set(cfg))):
        calc = ace_calculator(d.yaml, d.asi)
        for i, seed in enumerate(seeds):
            for T in temperatures:
                t0 = time.perf_counter()
                look = RefineConfig(steps=steps, gamma_every=5, gamma_select=1e9, gamma_stop=1e10, timestep_fs=cfg.refine.timestep_fs)
                w = walk(calc, seed, T, look, cfg.training.cutoff, threshold, seed_rng=rng_seed + 10 * i + int(T))
                snaps = evenly(w["frames"][1:], snapshots)
                labeled = teacher.compute_batch(snaps)
                err = potential_errors(d.yaml, snaps, [a.get_potential_energy() - sum(e0[s] for s in a.get_chemical_symbols())
                                                       for a in labeled], [a.get_forces() for a in labeled], cfg.training.cutoff)
                rows.append({"potential": name, "seed": kind(seed), "n_atoms": len(seed), "temperature_K": T,
                             "steps": w["trace"]["steps"], "stable": w["stable"], "stop": w["stop"], "max_gamma": w["max_gamma"],
                             "forces_rmse_meV_per_A": err["forces_rmse_meV_per_A"],
                             "energy_rmse_meV_per_atom": err["energy_rmse_meV_per_atom"], "wall_s": time.perf_counter() - t0})
                r = rows[-1]
                print(f"{name:8s} {r['seed']:13s} {T:5.0f} K: {r['steps']} steps, max γ {r['max_gamma']:7.2f}, "
                      f"F RMSE {r['forces_rmse_meV_per_A']:6.1f} meV/Å, E RMSE {r['energy_rmse_meV_per_atom']:6.2f} meV/atom, {r['stop']}",
                      flush=True)
    return rows


def table(rows) -> str:
    "Base vs refined side by side, with the ratios."
    out = ["| seed | T [K] | max γ base | max γ refined | ratio | F RMSE base [meV/Å] | F RMSE refined | ratio | E RMSE base [meV/atom] | E RMSE refined |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    base = {(r["seed"], r["temperature_K"]): r for r in rows if r["potential"] == "base"}
    for r in rows:
        if r["potential"] != "refined": continue
        b = base[(r["seed"], r["temperature_K"])]
        out.append(f"| {r['seed']} | {r['temperature_K']:.0f} | {b['max_gamma']:.2f} | {r['max_gamma']:.2f} | "
                   f"{b['max_gamma'] / r['max_gamma']:.1f}× | {b['forces_rmse_meV_per_A']:.1f} | {r['forces_rmse_meV_per_A']:.1f} | "
                   f"{b['forces_rmse_meV_per_A'] / r['forces_rmse_meV_per_A']:.1f}× | {b['energy_rmse_meV_per_atom']:.2f} | "
                   f"{r['energy_rmse_meV_per_atom']:.2f} |")
    return "\n".join(out)


def phase_times(cfg) -> str:
    "Wall time per phase and round of the loop, from refine/history.json."
    hist = read_json(refine_dir(cfg) / "history.json").get("iterations", [])
    lines = []
    for h in hist:
        lines.append(f"round {h['iteration']}: " + ", ".join(f"{k} {v:.0f} s" for k, v in h.get("wall_s", {}).items()))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seeds"); s.add_argument("--out", type=Path, required=True); s.add_argument("--unseen", action="store_true")
    c = sub.add_parser("compare"); c.add_argument("config", type=Path); c.add_argument("--seeds", type=Path)
    c.add_argument("--steps", type=int, default=400); c.add_argument("--json", type=Path)
    c.add_argument("--refined", type=Path, help="another refined set's .yace (default: models/ace_refined.yace)")
    args = p.parse_args()
    if args.cmd == "seeds":
        print(write_frames(unseen_seeds() if args.unseen else loop_seeds(), args.out, overwrite=True)); return
    cfg = load_config(args.config)
    seeds = list(iter_frames(args.seeds)) if args.seeds else unseen_seeds()
    t0 = time.perf_counter()
    rows = compare(cfg, seeds, steps=args.steps, refined=Deliverables.of(args.refined) if args.refined else None)
    print(table(rows)); print(phase_times(cfg)); print(f"compare: {time.perf_counter() - t0:.0f} s")
    if args.json: args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
