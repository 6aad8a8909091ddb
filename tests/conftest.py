"""Shared fixtures: the bundled MACE teacher and small real structure files."""
import itertools
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from pyacemaker.demo_data import demo_model_path, demo_step4_path
from pyacemaker.utils.io import iter_frames, write_frames


def cluster_and_slab():
    """A rattled non-periodic Cu13 cluster and a Cu-Ag fcc(111) slab: labeled, but without stress."""
    import numpy as np
    from ase.build import bulk, fcc111
    cluster = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)[:13]
    cluster.pbc, cluster.cell = False, None
    cluster.positions += np.random.default_rng(0).normal(scale=0.05, size=cluster.positions.shape)
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    slab.symbols[[1, 5]] = "Ag"
    return [cluster, slab]


@pytest.fixture(scope="session")
def model_path():
    return demo_model_path()


@pytest.fixture(scope="session")
def teacher64(model_path):
    from pyacemaker.oracle.mace_wrapper import MaceSurrogate
    return MaceSurrogate(model_path, dtype="float64")


@pytest.fixture(scope="session")
def teacher32(model_path):
    from pyacemaker.oracle.mace_wrapper import MaceSurrogate
    return MaceSurrogate(model_path, dtype="float32")


@pytest.fixture
def step4_small(tmp_path):
    """The first 30 structures of the bundled step-4 example (4 to 108 atoms)."""
    return write_frames(itertools.islice(iter_frames(demo_step4_path()), 30), tmp_path / "step4_surrogate_data.xyz")


TINY_FIT = dict(elements=["Cu", "Ag"], max_basis_grade=10, nradmax_by_orders=[6, 2], lmax_by_orders=[0, 1],
                ndensity=1, maxiter=20, batch_size=100, test_size=0.2, seed=7)


@pytest.fixture(scope="session")
def fitted_pipeline(tmp_path_factory):
    """One real, tiny step 5 -> step 6 run (60 demo structures, 10 functions, 20 iterations), shared by tests."""
    from pyacemaker.domain_models.config import AceTrainingConfig, LabelingConfig, PipelineConfig, dump_config, load_config
    from pyacemaker.orchestrator import run_pipeline
    work = tmp_path_factory.mktemp("pipeline")
    write_frames(itertools.islice(iter_frames(demo_step4_path()), 60), work / "run" / "step4_surrogate_data.xyz")
    cfg = PipelineConfig(work_dir=work / "run", labeling=LabelingConfig(model=demo_model_path(), dtype="float32", chunk_size=25),
                         training=AceTrainingConfig(**TINY_FIT))
    cfg = load_config(dump_config(cfg, work / "pipeline.yaml"))
    labels, fit = run_pipeline(cfg, progress=False)
    return cfg, labels, fit
