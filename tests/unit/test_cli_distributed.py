"""`pyacemaker label --workers N` and `run_step5(workers=N)`: the same file as local labeling."""
import subprocess
import sys
from pathlib import Path

import numpy as np
from ase.io import read

PYACEMAKER = str(Path(sys.executable).with_name("pyacemaker"))


def test_cli_label_on_local_dask_workers(model_path, step4_small, tmp_path):
    base = [PYACEMAKER, "label", "--model", str(model_path), "--input", str(step4_small), "--dtype", "float32",
            "--chunk-size", "8", "--quiet"]
    local = subprocess.run(base + ["--output", str(tmp_path / "local.xyz")], capture_output=True, text=True)
    dist = subprocess.run(base + ["--output", str(tmp_path / "dist.xyz"), "--workers", "2"], capture_output=True, text=True)
    assert local.returncode == 0 and dist.returncode == 0, dist.stderr[-2000:]
    a, b = read(tmp_path / "local.xyz", ":"), read(tmp_path / "dist.xyz", ":")
    assert len(a) == len(b) == 30
    for x, y in zip(a, b):
        assert x.get_chemical_symbols() == y.get_chemical_symbols()
        np.testing.assert_array_equal(x.positions, y.positions)
        np.testing.assert_allclose(y.get_forces(), x.get_forces(), atol=1e-5)


def test_cli_rejects_both_places(model_path, step4_small, tmp_path):
    r = subprocess.run([PYACEMAKER, "label", "--model", str(model_path), "--input", str(step4_small), "--output",
                        str(tmp_path / "o.xyz"), "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], capture_output=True, text=True)
    assert r.returncode == 2 and "not allowed with argument" in r.stderr


def test_run_step5_on_local_dask_workers(model_path, step4_small, tmp_path):
    from pyacemaker.domain_models.config import AceTrainingConfig, LabelingConfig, PipelineConfig
    from pyacemaker.orchestrator import run_step5
    cfg = PipelineConfig(work_dir=step4_small.parent, step5_file="dist.xyz",
                         labeling=LabelingConfig(model=model_path, dtype="float32", chunk_size=10),
                         training=AceTrainingConfig(elements=["Cu", "Ag"]))
    summary = run_step5(cfg, progress=False, workers=2)
    assert summary["n_structures"] == 30 and summary["n_workers"] == 2
    local = run_step5(cfg.model_copy(update={"step5_file": "local.xyz"}), progress=False)
    a, b = read(step4_small.parent / "local.xyz", ":"), read(step4_small.parent / "dist.xyz", ":")
    assert local["n_structures"] == 30 and len(b) == 30
    for x, y in zip(a, b):
        np.testing.assert_allclose(y.get_potential_energy(), x.get_potential_energy(), rtol=1e-6)
