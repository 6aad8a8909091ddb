"""`pyacemaker refine` with the real pacemaker: one upfit from the shared tiny fit, continuing from its potential."""
import shutil

import numpy as np
import yaml

from pyacemaker.demo_data import cluster_cell, slab_cell
from pyacemaker.kit.layout import base_set, iteration_dir, open_delivered, refined_set
from pyacemaker.refine import refine
from pyacemaker.utils.io import file_sha256, write_frames


def test_one_real_upfit(fitted_pipeline, make_pipeline_config, mixed_frames, tmp_path):
    cfg0 = fitted_pipeline[0]
    cfg = make_pipeline_config(tmp_path, mixed_frames)
    shutil.copytree(cfg0.work_dir / "models", cfg.work_dir / "models")
    shutil.copy(cfg0.path(cfg0.step5_file), cfg.path(cfg.step5_file))
    cfg.refine = cfg.refine.model_copy(update=dict(temperatures_K=[1200.0], steps=40, gamma_every=5, gamma_select=1.05,
                                                   gamma_stop=50.0, max_new=4, error_snapshots=1, iterations=1,
                                                   upfit_maxiter=5, seed_from=[], validate_rounds=False))
    rng = np.random.default_rng(8)
    seeds = write_frames([slab_cell(rng), cluster_cell(rng, with_cell=False)], tmp_path / "seeds.xyz")
    before = {p.name: file_sha256(p) for p in base_set(cfg).models_dir.glob("ace_base*")}
    result = refine(cfg, seeds=seeds, progress=False)
    first = result["history"][0]
    assert first["candidates"] >= first["selected"] > 0
    run = iteration_dir(cfg, 0) / "fit"
    inp = yaml.safe_load((run / "input.yaml").read_text())
    assert inp["potential"] == str((iteration_dir(cfg, 0) / "initial_potential.yaml").resolve())   # an upfit
    assert inp["fit"]["maxiter"] == 5 and "ladder_step" not in inp["fit"]
    manifest = open_delivered(refined_set(cfg))
    assert manifest["mode"] == "pacemaker" and manifest["e0"] == open_delivered(base_set(cfg))["e0"]
    assert {p.name: file_sha256(p) for p in base_set(cfg).models_dir.glob("ace_base*")} == before
    assert result["history"][-1]["test_errors"]["forces_rmse_meV_per_A"] > 0
