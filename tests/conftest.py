"""Shared fixtures: the bundled MACE teachers, small real structure files, and real (tiny) fits shared across tests."""
import itertools
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from pyacemaker.demo_data import demo_model_path, demo_multihead_model_path, demo_step4_path, mixed_step4_frames
from pyacemaker.utils.io import iter_frames, write_frames

#: the console script of this environment
PYACEMAKER = str(Path(sys.executable).with_name("pyacemaker"))

#: a tiny but real ACE fit: 10 functions per element, 20 iterations (about a minute, most of it TensorFlow's start-up)
TINY_FIT = dict(elements=["Cu", "Ag"], max_basis_grade=10, nradmax_by_orders=[6, 2], lmax_by_orders=[0, 1],
                ndensity=1, maxiter=20, batch_size=100, test_size=0.2, seed=7)


@pytest.fixture(scope="session")
def pyacemaker_exe():
    return PYACEMAKER


@pytest.fixture(scope="session")
def model_path():
    return demo_model_path()


@pytest.fixture(scope="session")
def multihead_model_path():
    return demo_multihead_model_path()


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


@pytest.fixture
def step4_mixed(tmp_path):
    """What users bring: 20 unlabeled structures — bulk cells, slabs (T T F), wires (T F F), clusters with and without a cell."""
    return write_frames(mixed_step4_frames(20, seed=11), tmp_path / "step4_mixed.xyz")


def pipeline_config(work, frames, mock=False, **training):
    """A pipeline config (written to work/pipeline.yaml and loaded back) with `frames` as its step-4 file."""
    from pyacemaker.domain_models.config import AceTrainingConfig, LabelingConfig, PipelineConfig, dump_config, load_config
    write_frames(frames, work / "run" / "step4_surrogate_data.xyz")
    cfg = PipelineConfig(work_dir=work / "run", labeling=LabelingConfig(model=demo_model_path(), dtype="float32", chunk_size=25),
                         training=AceTrainingConfig(**{**TINY_FIT, "mock": mock, **training}))
    cfg.md.enabled = False
    return load_config(dump_config(cfg, work / "pipeline.yaml"))


@pytest.fixture(scope="session")
def mixed_frames():
    """60 structures of the demo's step-4 file plus slabs, wires and clusters (mixed_step4_frames)."""
    return list(itertools.islice(iter_frames(demo_step4_path()), 60)) + mixed_step4_frames(15, seed=5)


@pytest.fixture(scope="session")
def fitted_pipeline(tmp_path_factory, mixed_frames):
    """One real, tiny step 5 -> step 6 run with pacemaker on bulk + slab + wire + cluster, shared by tests (no report)."""
    from pyacemaker.orchestrator import run_pipeline
    cfg = pipeline_config(tmp_path_factory.mktemp("pipeline"), mixed_frames)
    result = run_pipeline(cfg, progress=False, report=False)
    return cfg, result["labels"], result["fit"]


@pytest.fixture(scope="session")
def mock_pipeline(tmp_path_factory, mixed_frames):
    """The same data through step 5 -> step 6 in mock mode (linear ACE, seconds), no report."""
    from pyacemaker.orchestrator import run_pipeline
    cfg = pipeline_config(tmp_path_factory.mktemp("mock"), mixed_frames, mock=True, max_basis_grade=20)
    result = run_pipeline(cfg, progress=False, report=False)
    return cfg, result["labels"], result["fit"]


@pytest.fixture(scope="session")
def make_pipeline_config():
    """`pipeline_config(work, frames, mock=False, **training)` for tests that need their own work folder."""
    return pipeline_config


@pytest.fixture(scope="session")
def tiny_fit():
    return dict(TINY_FIT)
