"""Step 3: one pacemaker fit per variant.

  python fit.py direct  --sel strat      fresh ACE (pipeline basis) on the EMT frames alone
  python fit.py upfit   --sel strat      continue ace_base.yaml (input.yaml `potential: <ace_base.yaml>`) on EMT frames
  python fit.py upfitT  --sel strat      same + the 300 step-5 teacher frames, energy & force weight × --wteach (default 0.2)
  python fit.py upfitTf --sel strat      same but teacher frames enter with forces only (w_energy = 0)

Upfits: pacemaker reads `reference_energy` from the initial potential's metadata (the MACE E0 of ace_base.yaml) and
REBUILDS energy_corrected from `energy` with it, ignoring our column. So input.yaml gets data: reference_energy: <EMT E0>
and the teacher rows' `energy` is shifted by ΣE0_EMT − ΣE0_MACE so that the one reference gives E_teacher − ΣE0_MACE.
Weights: explicit w_energy / w_forces columns (pacemaker's uniform scheme × factor, normalised), so no policy is applied.
  python fit.py delta   --sel strat      small fresh ACE on Δ = EMT − base (energies and forces); predict base + Δ

Each writes fits/<variant>_<sel>/output_potential.yaml (E − ΣE0 scale) and .yace (with E0 of EMT; for delta E0 = 0).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess

import numpy as np
import pandas as pd
import yaml

from common import DEMO, BASE_YAML, DATA, FITS, Timer, emt_e0


def training_cfg():
    from pyacemaker.domain_models.config import load_config
    return load_config(DEMO / "pipeline.yaml").training


def main():
    p = argparse.ArgumentParser()
    p.add_argument("variant", choices=["direct", "upfit", "upfitT", "upfitTf", "delta"])
    p.add_argument("--sel", default="strat")
    p.add_argument("--maxiter", type=int, default=None)
    p.add_argument("--wteach", type=float, default=0.2)
    p.add_argument("--delta-funcs", type=int, default=20)
    p.add_argument("--tag", default="")
    p.add_argument("--align", action="store_true",
                   help="upfits: reference energy = EMT E0 + per-element lstsq mean of (EMT − base) on the selected frames, "
                        "so EMT's E − ΣE0 lands on the base's (teacher's) scale; that E0 goes into the .yace")
    p.add_argument("--shift", action="store_true", help="delta: remove a per-element constant from Δ (lstsq), kept as the .yace E0")
    a = p.parse_args()
    from pyacemaker.trainer.ace_trainer import pacemaker_input, yaml_to_yace
    from pyacemaker.utils.io import read_training_table, write_training_table

    name = f"{a.variant}{a.tag}_{a.sel}"
    run = FITS / name; run.mkdir(parents=True, exist_ok=True)
    cfg = training_cfg()
    maxiter = a.maxiter or {"direct": 200, "upfit": 150, "upfitT": 150, "upfitTf": 150, "delta": 200}[a.variant]
    cfg = cfg.model_copy(update={"maxiter": maxiter, "ladder_step": None})
    if a.variant == "delta":
        df = read_training_table(DATA / f"delta_{a.sel}.pckl.gzip"); ref = None
        cfg = cfg.model_copy(update={"max_basis_grade": a.delta_funcs})
        shift = {e: 0.0 for e in cfg.elements}
        if a.shift:    # Δ per atom is ~ −3.4 eV (EMT vs teacher cohesive energy): take the constant part out of the fit
            X = np.array([[at.get_chemical_symbols().count(e) for e in cfg.elements] for at in df.ase_atoms], float)
            c, *_ = np.linalg.lstsq(X, df.energy_corrected.to_numpy(), rcond=None)
            shift = dict(zip(cfg.elements, map(float, c)))
            df["energy_corrected"] = df.energy_corrected - X @ c
            df["energy"] = df["energy_corrected"]
            print("delta shift (eV/atom)", shift)
    else:
        df = read_training_table(DATA / f"emt_{a.sel}.pckl.gzip")
        ref = emt_e0()
        if a.align:
            d = read_training_table(DATA / f"delta_{a.sel}.pckl.gzip")
            X = np.array([[at.get_chemical_symbols().count(e) for e in cfg.elements] for at in d.ase_atoms], float)
            c, *_ = np.linalg.lstsq(X, d.energy_corrected.to_numpy(), rcond=None)
            ref = {e: ref[e] + float(ci) for e, ci in zip(cfg.elements, c)}
            print("aligned reference energy", ref)
        if a.variant.startswith("upfitT"):
            t = read_training_table(DATA / "teacher.pckl.gzip")
            t["energy"] = t["energy_corrected"] + t.ase_atoms.map(lambda at: sum(ref[s] for s in at.get_chemical_symbols()))
            df["fe"], df["ff"] = 1.0, 1.0
            t["fe"], t["ff"] = (0.0 if a.variant == "upfitTf" else a.wteach), a.wteach
            df = pd.concat([df, t], ignore_index=True)
            df["w_energy"] = df["fe"] / df["fe"].sum()
            wf = [np.full(len(f), x) for f, x in zip(df.forces, df.ff)]
            tot = sum(w.sum() for w in wf)
            df["w_forces"] = [w / tot for w in wf]
            df = df.drop(columns=["fe", "ff"])
    write_training_table(df, run / "train.pckl.gzip", overwrite=True)
    inp = pacemaker_input(cfg, str(run / "train.pckl.gzip"))
    if a.variant.startswith("upfit"):
        inp["potential"] = str(BASE_YAML)          # pyacemaker.refine.Upfit: continue from the base's basis + coefficients
        inp["data"]["reference_energy"] = {k: float(v) for k, v in ref.items()}   # else the base's MACE E0 is used
    (run / "input.yaml").write_text(yaml.safe_dump(inp, sort_keys=False))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    with Timer(f"fit {name} ({len(df)} frames, maxiter {maxiter})"):
        r = subprocess.run(["pacemaker", "input.yaml", "--no-predict"], cwd=run, env=env,
                           stdout=open(run / "stdout.txt", "w"), stderr=subprocess.STDOUT)
    if r.returncode != 0: raise SystemExit(f"pacemaker failed, see {run}/log.txt")
    e0 = shift if a.variant == "delta" else (ref if a.variant.startswith("upfit") else emt_e0())
    yaml_to_yace(run / "output_potential.yaml", run / "output_potential.yace", e0)
    (run / "recipe.json").write_text(json.dumps({"variant": a.variant, "sel": a.sel, "frames": len(df), "maxiter": maxiter,
                                                  "wteach": a.wteach if a.variant.startswith("upfitT") else None,
                                                  "funcs_per_element": cfg.max_basis_grade,
                                                  "delta_shift": shift if a.variant == "delta" else None,
                                                  "reference_energy": ref if a.variant.startswith("upfit") else None}, indent=1))


if __name__ == "__main__":
    main()
