"""Step 4: held-out errors vs EMT (per kind) and Cu/Ag lattice constant, vacancy (108-atom cell) and (111) surface energy.

  python evaluate.py [--sel strat] [--models emt,base,teacher,direct,upfit,upfitT,delta] [--no-teacher-props]

Writes data/eval_<sel>.json and prints a table. Energies compared as E − ΣE0 (each model's own E0; EMT's E0 for EMT).
Teacher properties are taken from DEMO/reports/validation.json (same protocol) unless --teacher-props.
"""
from __future__ import annotations

import argparse
import collections
import json
import time

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read

from common import DEMO, A_EMT, BASE_YAML, CUTOFF, DATA, ELEMENTS, FITS, Sum, Timer, ace, sum_e0, teacher_calc

MIN_HEIGHT = 2 * CUTOFF          # validation protocol: supercell heights ≥ 2 × cutoff → 3×3×3 = 108 atoms
FMAX, STEPS, DEFECT_FMAX = 1e-3, 300, 0.01


def model(name, sel, e0):
    "(calculator, E0 the calculator's energies are measured from)."
    if name == "emt": return EMT(), e0["emt"]
    if name == "teacher": return teacher_calc(), e0["mace"]
    if name == "base": return ace(BASE_YAML), {e: 0.0 for e in ELEMENTS}
    if name.startswith("delta"):
        # the .yace carries the per-element shift taken out of Δ (0 without --shift)
        return Sum(ace(BASE_YAML), ace(FITS / f"{name}_{sel}" / "output_potential.yace")), {e: 0.0 for e in ELEMENTS}
    return ace(FITS / f"{name}_{sel}" / "output_potential.yace"), e0["emt"]      # .yace = E0 of its fit + yaml


def test_errors(calc, own_e0, test, emt_e0):
    rows = collections.defaultdict(lambda: {"de": [], "df": [], "n": [], "comp": []})
    for a in test:
        b = a.copy(); b.calc = calc
        e = b.get_potential_energy() - sum_e0(a, own_e0)
        ref = a.get_potential_energy() - sum_e0(a, emt_e0)
        for k in (a.info["kind"], "all"):
            r = rows[k]; r["de"].append((e - ref) / len(a)); r["df"].append((b.get_forces() - a.get_forces()).ravel())
            r["comp"].append([a.get_chemical_symbols().count(s) / len(a) for s in ELEMENTS])
    out = {}
    for k, r in rows.items():
        de = np.array(r["de"]); X = np.array(r["comp"])
        shift, *_ = np.linalg.lstsq(X, de, rcond=None)          # per-element constant offset removed
        out[k] = {"F_rmse_meV_A": 1e3 * float(np.sqrt(np.mean(np.concatenate(r["df"]) ** 2))),
                  "E_rmse_meV_atom": 1e3 * float(np.sqrt(np.mean(de ** 2))),
                  "E_rmse_offset_removed_meV_atom": 1e3 * float(np.sqrt(np.mean((de - X @ shift) ** 2))),
                  "n": len(de)}
    return out


def properties(calc):
    from pyacemaker.report.properties import relax, surface_energy, vacancy_formation_energy
    out = {}
    for el in ELEMENTS:
        t0 = time.perf_counter()
        try:
            rel = relax(bulk(el, "fcc", a=A_EMT[el], cubic=True), calc, FMAX, STEPS)
            out[f"a_{el}"] = float(rel.cell[0, 0])
            out[f"vac_{el}"] = vacancy_formation_energy(rel, calc, MIN_HEIGHT, 0, None, DEFECT_FMAX, STEPS)["E_f_eV"]
            out[f"s111_{el}"] = surface_energy(rel, calc, (1, 1, 1), CUTOFF, DEFECT_FMAX, STEPS)["gamma_J_per_m2"]
        except Exception as err:
            out[f"error_{el}"] = str(err)[:200]
        out[f"wall_s_{el}"] = round(time.perf_counter() - t0, 1)
    return out


def teacher_props_from_report():
    d = json.load(open(DEMO / "reports" / "validation.json"))
    m = {("lattice_constant_A", ""): "a", ("vacancy_formation_energy_eV", ""): "vac", ("surface_energy_J_per_m2", "(111)"): "s111"}
    out = {}
    for p in d["properties"]:
        el = p["structure"].split()[0]
        if el not in ELEMENTS or "fcc" not in p["structure"]: continue
        facet = "(111)" if "(111)" in p["structure"] else ""
        if (p["property"], facet) in m and (facet or "(" not in p["structure"]):
            out[f"{m[(p['property'], facet)]}_{el}"] = p["teacher"]
    out["source"] = "validation.json"
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sel", default="strat")
    p.add_argument("--models", default="emt,base,teacher,direct,upfit,upfitT,delta")
    p.add_argument("--teacher-props", action="store_true")
    a = p.parse_args()
    e0 = json.loads((DATA / "e0.json").read_text())
    test = read(DATA / "test.xyz", ":")
    path = DATA / f"eval_{a.sel}.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    for name in a.models.split(","):
        with Timer(f"evaluate {name} ({a.sel})"):
            calc, own = model(name, a.sel, e0)
            r = {"test": test_errors(calc, own, test, e0["emt"])}
            r["props"] = teacher_props_from_report() if name == "teacher" and not a.teacher_props else properties(calc)
        res[name] = r
        path.write_text(json.dumps(res, indent=1))
        print(name, json.dumps(r["props"]), {k: round(v["F_rmse_meV_A"], 1) for k, v in r["test"].items()}, flush=True)
    print_table(res)


def print_table(res):
    kinds = ["bulk", "slab", "cluster", "vacancy", "all"]
    ref = res.get("emt", {}).get("props", {})
    hdr = ["model"] + [f"F {k}" for k in kinds] + ["E all", "E all(-off)"] + \
          ["a Cu", "a Ag", "Ev Cu", "Ev Ag", "γ111 Cu", "γ111 Ag"]
    print(" | ".join(hdr))
    for name, r in res.items():
        t, pr = r["test"], r["props"]
        cells = [name] + [f"{t[k]['F_rmse_meV_A']:.0f}" for k in kinds] + \
                [f"{t['all']['E_rmse_meV_atom']:.0f}", f"{t['all']['E_rmse_offset_removed_meV_atom']:.0f}"]
        for key in ["a_Cu", "a_Ag", "vac_Cu", "vac_Ag", "s111_Cu", "s111_Ag"]:
            v = pr.get(key)
            if v is None: cells.append("—"); continue
            rv = ref.get(key)
            cells.append(f"{v:.3f}" + (f" ({100 * (v - rv) / rv:+.1f}%)" if rv and name != "emt" else ""))
        print(" | ".join(cells))


if __name__ == "__main__":
    main()
