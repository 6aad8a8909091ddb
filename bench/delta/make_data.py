"""Step 1–2: candidate pool, held-out test set, D-optimal selection, EMT labels, pacemaker tables.

Writes data/: pool.xyz, test.xyz (EMT-labeled), selected_<mode>.xyz, tables emt_<mode>.pckl.gzip,
teacher.pckl.gzip (step-5 frames, MACE E0, with w_factor), delta_<mode>.pckl.gzip (EMT − base), e0.json.
Usage: python make_data.py [--max 50]
"""
from __future__ import annotations

import argparse
import collections
import json

import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from common import (BASE_ASI, BASE_YAML, CUTOFF, DATA, ELEMENTS, STEP5, Timer, ace, cluster, emt_e0, label_emt,
                    mace_e0, slab, strained_bulk, sum_e0, vacancy_cell)

FACETS = [(1, 0, 0), (1, 1, 0), (1, 1, 1)]


def validation_like(rng) -> list:
    out = []
    for el in ELEMENTS:                                   # vacancy cells, 107 and 31 atoms
        for scale, r in [(1.0, 0.03), (0.99, 0.05), (1.01, 0.05), (1.0, 0.08)]:
            out.append(vacancy_cell(el, 3, rng, r, scale))
        for r in (0.04, 0.08):
            out.append(vacancy_cell(el, 2, rng, r))
    for comp in ("Cu", "Ag", "Cu3Ag"):                    # slabs
        for f in FACETS:
            for r in (0.03, 0.08):
                out.append(slab(comp, f, 2, rng, r, size=(1, 1) if f == (1, 1, 1) else (2, 2)))
    for n, x in [(13, 0.0), (13, 1.0), (19, 0.0), (19, 1.0), (38, 0.0), (38, 1.0), (38, 0.3), (55, 0.0), (55, 1.0),
                 (55, 0.5), (26, 0.25), (43, 0.75)]:       # clusters
        out.append(cluster(n, rng, x))
    return out


def test_set(rng) -> list:
    out = []
    for i in range(15):                                   # bulk: other sizes, strains, compositions
        what = ["Cu", "Ag", 0.25, 0.5, 0.75][i % 5]
        out.append(strained_bulk(what, (2, 2, 3) if i % 2 else 2, rng, strain=0.04, rattle=0.06 + 0.02 * (i % 3)))
    comps = ["Cu", "Ag", "Cu3Ag"]
    for i in range(15):                                   # slabs: other layers / sizes / rattles
        f = FACETS[i % 3]
        out.append(slab(comps[(i // 3) % 3], f, 3 if i % 2 else 2, rng, 0.04 + 0.02 * (i % 3),
                        size=(1, 1) if f == (1, 1, 1) else (2, 1), vacuum=6.5))
    for i in range(15):                                   # clusters: other sizes
        out.append(cluster([15, 22, 31, 44, 50][i % 5], rng, [0.0, 1.0, 0.4][i % 3], rattle=0.06 + 0.02 * (i % 2)))
    for i in range(15):                                   # vacancy cells (2x2x3 = 47 atoms and 3x3x3 = 107)
        el = ELEMENTS[i % 2]
        from ase.build import bulk
        from common import A_EMT, _rattle
        at = bulk(el, "fcc", a=A_EMT[el] * rng.uniform(0.99, 1.01), cubic=True).repeat((3, 3, 3) if i % 3 == 0 else (2, 2, 3))
        del at[int(rng.integers(len(at)))]
        at = _rattle(at, 0.03 + 0.02 * (i % 3), rng); at.info["kind"] = "vacancy"
        out.append(at)
    return out


def table(frames, e0, w_factor=None):
    from pyacemaker.utils.io import training_table
    df = training_table(frames, e0, ELEMENTS, CUTOFF)
    if w_factor is not None: df["w_factor"] = w_factor
    return df


def delta_frames(frames, e0_emt):
    "Δ labels: (E_EMT − ΣE0_EMT) − E_base(.yaml, = E − ΣE0_MACE), F_EMT − F_base; no stress."
    base = ace(BASE_YAML)
    out = []
    for a in frames:
        b = a.copy(); b.calc = base
        de = a.get_potential_energy() - sum_e0(a, e0_emt) - b.get_potential_energy()
        df = a.get_forces() - b.get_forces()
        c = a.copy(); c.calc = SinglePointCalculator(c, energy=de, forces=df); c.info.update(a.info)
        out.append(c)
    return out


def main():
    p = argparse.ArgumentParser(); p.add_argument("--max", type=int, default=50); args = p.parse_args()
    DATA.mkdir(exist_ok=True, parents=True)
    from pyacemaker.refine import select_d_optimal
    from pyacemaker.utils.io import write_training_table
    e0 = {"emt": emt_e0(), "mace": mace_e0()}
    (DATA / "e0.json").write_text(json.dumps(e0, indent=1)); print("E0", e0)

    with Timer("make pool + test set + EMT labels"):
        step5 = read(STEP5, ":")
        for a in step5: a.info["kind"] = "bulk(step5)"
        pool = [label_emt(a) for a in step5] + [label_emt(a) for a in validation_like(np.random.default_rng(0))]
        test = [label_emt(a) for a in test_set(np.random.default_rng(1000))]
        write(DATA / "pool.xyz", pool); write(DATA / "test.xyz", test)
        print("pool", collections.Counter(a.info["kind"] for a in pool), "test", collections.Counter(a.info["kind"] for a in test))

    sel = {}
    with Timer("D-optimal selection (pure maxvol ranking)"):
        cands = [a.copy() for a in pool]
        for c in cands: c.info.pop("walker", None)
        sel["dopt"] = select_d_optimal(cands, BASE_YAML, BASE_ASI, args.max, CUTOFF)
    with Timer("D-optimal selection (round-robin over kinds)"):
        for c, a in zip(cands, pool): c.info["walker"] = a.info["kind"]
        sel["strat"] = select_d_optimal(cands, BASE_YAML, BASE_ASI, args.max, CUTOFF)
    for mode, idx in sel.items():
        print(mode, len(idx), collections.Counter(pool[i].info["kind"] for i in idx))
        frames = [pool[i] for i in idx]
        write(DATA / f"selected_{mode}.xyz", frames)
        write_training_table(table(frames, e0["emt"]), DATA / f"emt_{mode}.pckl.gzip", overwrite=True)
        write_training_table(table(delta_frames(frames, e0["emt"]), {e: 0.0 for e in ELEMENTS}), DATA / f"delta_{mode}.pckl.gzip", overwrite=True)
    (DATA / "selection.json").write_text(json.dumps({m: {"indices": idx, "kinds": dict(collections.Counter(pool[i].info["kind"] for i in idx))}
                                                     for m, idx in sel.items()}, indent=1))
    teacher = read(STEP5, ":")
    write_training_table(table(teacher, e0["mace"]), DATA / "teacher.pckl.gzip", overwrite=True)


if __name__ == "__main__":
    main()
