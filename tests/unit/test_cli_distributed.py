"""`pyacemaker label --scheduler/--workers` and `run_step5(scheduler=/workers=)`: the same file as local labeling."""
import os
import subprocess

import numpy as np
import pytest
from ase.io import read

from pyacemaker.cli import main
from pyacemaker.domain_models.config import AceTrainingConfig, LabelingConfig, PipelineConfig, PyacemakerError
from pyacemaker.orchestrator import label, run_step5

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def scheduler():
    """The address of a LocalCluster of 2 worker processes shared by the tests of this module (workers keep the model)."""
    from pyacemaker.oracle.distributed import dask_client
    with dask_client(workers=2) as c:
        yield c.scheduler.address


def assert_same(a_path, b_path, n):
    a, b = read(a_path, ":"), read(b_path, ":")
    assert len(a) == len(b) == n
    for x, y in zip(a, b):
        assert x.get_chemical_symbols() == y.get_chemical_symbols()
        np.testing.assert_array_equal(x.positions, y.positions)
        assert y.get_potential_energy() == pytest.approx(x.get_potential_energy(), rel=1e-6)
        np.testing.assert_allclose(y.get_forces(), x.get_forces(), atol=1e-5)
        assert {k: v for k, v in x.info.items() if k.startswith("mace_")} == \
               {k: v for k, v in y.info.items() if k.startswith("mace_")}


def test_cli_label_on_a_dask_scheduler(pyacemaker_exe, scheduler, model_path, step4_small, tmp_path):
    r = subprocess.run([pyacemaker_exe, "label", "--model", str(model_path), "--input", str(step4_small), "--dtype",
                        "float32", "--chunk-size", "8", "--quiet", "--output", str(tmp_path / "dist.xyz"),
                        "--scheduler", scheduler], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "labeled 30 structures" in r.stdout
    label(step4_small, tmp_path / "local.xyz", LabelingConfig(model=model_path, dtype="float32", chunk_size=8), progress=False)
    assert_same(tmp_path / "local.xyz", tmp_path / "dist.xyz", 30)


def test_cli_rejects_both_places_and_zero_workers(model_path, step4_small, tmp_path, capfd):
    argv = ["label", "--model", str(model_path), "--input", str(step4_small), "--output", str(tmp_path / "o.xyz"), "--quiet"]
    with pytest.raises(SystemExit) as e:
        main(argv + ["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])
    assert e.value.code == 2 and "not allowed with argument" in capfd.readouterr().err
    assert main(argv + ["--workers", "0"]) == 2                         # --workers reaches the distributed labeler
    assert capfd.readouterr().err == "pyacemaker label: error: workers must be at least 1, got 0\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [step4_small.name]


def test_run_step5_on_dask_workers(scheduler, model_path, step4_small, tmp_path):
    cfg = PipelineConfig(work_dir=step4_small.parent, step4_file=step4_small.name, step5_file="dist.xyz",
                         labeling=LabelingConfig(model=model_path, dtype="float32", chunk_size=5),
                         training=AceTrainingConfig(elements=["Cu", "Ag"]))
    summary = run_step5(cfg, progress=False, scheduler=scheduler)
    assert summary["n_structures"] == 30 and summary["n_workers"] == 2
    with pytest.raises(PyacemakerError, match="workers must be at least 1"):      # `workers` reaches it too
        run_step5(cfg.model_copy(update={"step5_file": "never.xyz"}), progress=False, workers=0)
    local = run_step5(cfg.model_copy(update={"step5_file": "local.xyz"}), progress=False)
    assert local["n_structures"] == 30
    assert_same(tmp_path / "local.xyz", tmp_path / "dist.xyz", 30)
    assert not (tmp_path / "never.xyz").exists()
