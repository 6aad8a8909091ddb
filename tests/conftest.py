"""Shared fixtures: the bundled MACE teachers, small real structure files, and real (tiny) fits shared across tests."""
import itertools
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from ase.io import read

from pyacemaker.demo_data import demo_model_path, demo_step4_path, mixed_step4_frames
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
    return demo_model_path(heads=2)


@pytest.fixture(scope="session")
def surrogate64(model_path):
    from pyacemaker.oracle.mace_wrapper import MaceSurrogate
    return MaceSurrogate(model_path, dtype="float64")


@pytest.fixture(scope="session")
def surrogate32(model_path):
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
    cfg.validation.enabled = False       # tests/unit/test_validate.py validates; elsewhere it would add a minute per run
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


def refine_config(work, n_bulk, loop, **training):
    """A mock pipeline config on the demo's first `n_bulk` bulk cells, with the refine settings `loop`."""
    cfg = pipeline_config(work, list(itertools.islice(iter_frames(demo_step4_path()), n_bulk)), mock=True, **training)
    cfg.refine = cfg.refine.model_copy(update={"seed_from": [], "validate_rounds": False, **loop})   # the seed file alone, no row checks
    return cfg


def bulk_student(work, n_bulk, loop, seed, **training):
    """A mock (linear) student fitted on bulk cells only, and seeds it never saw, a slab and a cluster: (config, seed file)."""
    from pyacemaker.demo_data import cluster_cell, slab_cell
    from pyacemaker.orchestrator import run_pipeline
    cfg = refine_config(work, n_bulk, loop, **training)
    run_pipeline(cfg, progress=False, report=False)
    rng = np.random.default_rng(seed)
    return cfg, write_frames([slab_cell(rng), cluster_cell(rng, with_cell=False)], work / "seeds.xyz")


@pytest.fixture(scope="session")
def make_refine_config():
    """`refine_config(work, n_bulk, loop, **training)` for the refine tests' work folders."""
    return refine_config


@pytest.fixture(scope="session")
def make_bulk_student():
    """`bulk_student(work, n_bulk, loop, seed, **training)`: the student and seeds the refine tests start from."""
    return bulk_student


@pytest.fixture(scope="session")
def tiny_fit():
    return dict(TINY_FIT)


def labels(atoms):
    """(energy, forces, stress or None) of a labeled frame, under ASE's or mace's keys."""
    if atoms.calc is not None:
        r = atoms.calc.results
        return r["energy"], r["forces"], r.get("stress")
    return atoms.info["REF_energy"], atoms.arrays["REF_forces"], atoms.info.get("REF_stress")


def _assert_same_labels(path, reference, exact=False):
    """`path` holds the structures of `reference` (labeled Atoms) in the same order, with the same labels (float32
    tolerance unless `exact`) and the same provenance."""
    got = read(path, ":")
    assert len(got) == len(reference)
    for a, r in zip(got, reference):
        assert a.get_chemical_symbols() == r.get_chemical_symbols()
        np.testing.assert_array_equal(a.positions, r.positions)
        np.testing.assert_array_equal(a.pbc, r.pbc)
        assert {k: v for k, v in a.info.items() if k.startswith("mace_")} == \
               {k: v for k, v in r.info.items() if k.startswith("mace_")}
        (ea, fa, sa), (er, fr, sr) = labels(a), labels(r)
        tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(ea, er, **{**tol, "atol": tol["atol"] * len(a)})
        np.testing.assert_allclose(fa, fr, **tol)
        assert (sa is None) == (sr is None)
        if sr is not None: np.testing.assert_allclose(sa, sr, rtol=tol["rtol"], atol=tol["atol"] / 100)


@pytest.fixture(scope="session")
def assert_same_labels():
    """`assert_same_labels(path, reference, exact=False)`: a labeled file equals reference structures."""
    return _assert_same_labels
