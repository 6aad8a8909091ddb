"""Held-out errors of delivered potentials: each `.yace` given on the command line against the EMT-labeled test set.

  python heldout.py base=$DEMO/models/ace_base.yace delta=$DEMO/models/ace_delta.yace direct=/elsewhere/models/ace_delta.yace

The test set is make_data.py's data/test.xyz (60 structures the delta step never saw: 15 each of bulk, slab, cluster and
vacancy cells of Cu–Ag, EMT labels). A delivered `.yace` carries its own E0 (its `.delivery.json` names it), so energies are
compared as E − ΣE0 of each model's own E0; force RMSE needs no E0. Writes data/heldout.json and prints a table in meV/Å.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ase.io import read

from common import DATA, Timer, ace
from evaluate import test_errors

KINDS = ["bulk", "slab", "cluster", "vacancy", "all"]


def own_e0(yace: Path) -> dict[str, float]:
    "The E0 a delivered set's energies are measured from (its delivery record)."
    return json.loads(yace.with_suffix(".delivery.json").read_text())["e0"]


def main(args: list[str]) -> None:
    e0 = json.loads((DATA / "e0.json").read_text())
    test = read(DATA / "test.xyz", ":")
    out = DATA / "heldout.json"
    res = json.loads(out.read_text()) if out.exists() else {}
    for arg in args:
        name, path = arg.split("=", 1)
        with Timer(f"held-out errors of {name}"):
            res[name] = {"yace": path, "test": test_errors(ace(Path(path)), own_e0(Path(path)), test, e0["emt"])}
        out.write_text(json.dumps(res, indent=1))
    print("model | " + " | ".join(f"F {k}" for k in KINDS) + " | E all (offset removed, meV/atom)")
    for name, r in res.items():
        t = r["test"]
        print(f"{name} | " + " | ".join(f"{t[k]['F_rmse_meV_A']:.1f}" for k in KINDS) +
              f" | {t['all']['E_rmse_offset_removed_meV_atom']:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
