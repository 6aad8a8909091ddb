"""Alternative selection 'bal': a stratified 50 (bulk 14, slab 12, cluster 12, vacancy 12), D-optimal within each kind.

Run after make_data.py. Writes data/selected_bal.xyz, emt_bal.pckl.gzip, delta_bal.pckl.gzip.
"""
from __future__ import annotations

import collections
import json

from ase.io import read, write

from common import BASE_ASI, BASE_YAML, CUTOFF, DATA, ELEMENTS, Timer, emt_e0
from make_data import delta_frames, table

QUOTA = {"bulk(step5)": 14, "slab": 12, "cluster": 12, "vacancy": 12}


def main():
    from pyacemaker.refine import select_d_optimal
    from pyacemaker.utils.io import write_training_table
    pool = read(DATA / "pool.xyz", ":")
    picked = []
    with Timer("stratified selection (D-optimal within kind)"):
        for kind, n in QUOTA.items():
            idx = [i for i, a in enumerate(pool) if a.info["kind"] == kind]
            cands = [pool[i].copy() for i in idx]
            for c in cands: c.info.pop("walker", None)
            ranked = [idx[j] for j in select_d_optimal(cands, BASE_YAML, BASE_ASI, n, CUTOFF)]
            rest = [i for i in idx if i not in ranked]
            step = max(1, len(rest) // max(1, n - len(ranked)))
            picked += ranked + rest[::step][: n - len(ranked)]
    print("bal", len(picked), collections.Counter(pool[i].info["kind"] for i in picked))
    frames = [pool[i] for i in picked]
    e0 = emt_e0()
    write(DATA / "selected_bal.xyz", frames)
    write_training_table(table(frames, e0), DATA / "emt_bal.pckl.gzip", overwrite=True)
    write_training_table(table(delta_frames(frames, e0), {e: 0.0 for e in ELEMENTS}), DATA / "delta_bal.pckl.gzip", overwrite=True)
    sel = json.loads((DATA / "selection.json").read_text())
    sel["bal"] = {"indices": picked, "kinds": dict(collections.Counter(pool[i].info["kind"] for i in picked))}
    (DATA / "selection.json").write_text(json.dumps(sel, indent=1))


if __name__ == "__main__":
    main()
