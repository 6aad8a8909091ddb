"""`pyacemaker refine` seeded and steered by validation: default seeds, failing rows directing walkers, `refine.enabled` in `run`."""
import numpy as np
import pytest

from pyacemaker.cli import main
from pyacemaker.domain_models.config import dump_config, load_config
from pyacemaker.kit.layout import base_set, iteration_dir, open_delivered, refined_set, reports_dir
from pyacemaker.refine import distinct, refine, refine_tables, seed_structures
from pyacemaker.utils.io import iter_frames, read_json

#: short walkers; no γ candidate at all (gamma_select huge): only validation can make the loop learn
QUIET = dict(temperatures_K=[600.0], steps=20, gamma_every=5, gamma_select=1e6, gamma_stop=1e7, max_new=6, error_snapshots=1,
             iterations=1)

STUDENT = dict(n_bulk=30, loop=QUIET, max_basis_grade=16)


@pytest.fixture(scope="module")
def student(tmp_path_factory, make_bulk_student):
    """A mock student fitted on 30 bulk cells, a slab-and-cluster seed file beside it."""
    return make_bulk_student(tmp_path_factory.mktemp("steered"), seed=6, **STUDENT)


def _with(cfg, **refine_settings):
    return cfg.model_copy(update={"refine": cfg.refine.model_copy(update=refine_settings)})


def test_default_seeds_are_the_validation_structures_and_the_largest_cells(student):
    cfg, seeds = student
    default = _with(cfg, seed_from=["validation", "training"])
    names = [n for n, _ in seed_structures(default)]
    assert names[:5] == ["validation:Cu fcc", "validation:Cu fcc (Cu vacancy)", "validation:Cu fcc (100)",
                         "validation:Cu fcc (110)", "validation:Cu fcc (111)"]
    assert len([n for n in names if n.startswith("validation:")]) == 16 and len(names) == 16 + 3
    slabs = [a for n, a in seed_structures(default) if n.endswith("(111)")]
    assert all(a.pbc.all() and a.cell.lengths()[2] > 10 for a in slabs)          # periodic slabs with vacuum
    added = [n for n, _ in seed_structures(default, seeds)]
    assert added[:19] == names and added[19:] == ["seeds.xyz:0", "seeds.xyz:1"]      # --seeds adds


def test_only_seeds_without_a_file_is_one_line(student, tmp_path, capsys):
    cfg, _ = student
    config = dump_config(cfg, tmp_path / "pipeline.yaml")
    assert main(["refine", str(config), "--only-seeds", "--mock"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no seeds: refine.seed_from is []" in err


def test_failing_rows_make_the_loop_learn_where_walkers_found_nothing(student, make_refine_config, tmp_path):
    """No walker finds a γ candidate, yet validation rows fail: the loop must not call that converged; it labels the failing
    rows' structures, upfits, and names the rows it could not fix."""
    import shutil
    cfg0, _ = student
    cfg = make_refine_config(tmp_path, **STUDENT)
    shutil.rmtree(cfg.work_dir); shutil.copytree(cfg0.work_dir, cfg.work_dir)
    cfg = _with(cfg, seed_from=["validation"], validate_rounds=True)
    result = refine(cfg, progress=False)
    first = result["history"][0]
    assert not first["validation"]["passed"] and first["validation"]["focus"]
    assert first["fitted"] and first["selected"] > 0, result["stop"]
    labeled = list(iter_frames(iteration_dir(cfg, 0) / "labeled.xyz"))
    assert {a.info["seed"] for a in labeled} <= set(first["validation"]["focus"])
    walkers = read_json(iteration_dir(cfg, 0) / "explore" / "explore.json")["walkers"]
    assert {w["temperature_K"] for w in walkers if w["focus"]} == {300.0, 600.0}
    assert "converged" not in result["stop"] or result["history"][-1]["validation"]["passed"]
    last = result["history"][-1]["validation"]
    if not last["passed"]: assert f"{len(last['failing'])} validation rows still outside tolerance" in result["stop"]


def test_original_weight_scales_the_step5_structures(student):
    from pyacemaker.orchestrator import fit_tables
    cfg, _ = student
    e0 = open_delivered(base_set(cfg))["e0"]
    labeled = [cfg.path(cfg.step5_file)]                             # any labeled file stands for the loop's labels
    plain, _ = refine_tables(cfg, e0, labeled)
    assert "w_energy" not in plain                                   # weight 1: pacemaker's own uniform weights
    heavy, test = refine_tables(_with(cfg, original_weight=3.0), e0, labeled)
    n = len(fit_tables(cfg, e0)[0])
    w = heavy.w_energy.to_numpy()
    assert len(w) > n and np.allclose(w[:n], 3 * w[-1]) and np.allclose(w[n:], w[-1]) and np.isclose(w.sum(), 1.0)
    wf = heavy.w_forces.to_numpy()
    assert np.allclose(wf[0], 3 * wf[-1][0]) and np.isclose(sum(x.sum() for x in wf), 1.0)
    assert test is None or np.isclose(test.w_energy.sum(), 1.0)


def test_run_with_refine_enabled_is_the_whole_chain(student, make_refine_config, tmp_path, capsys):
    """`pyacemaker run CONFIG` with refine.enabled: steps 5/6 reused, the loop run, ace_refined validated."""
    import shutil
    cfg0, seeds = student
    cfg = make_refine_config(tmp_path, **STUDENT)
    shutil.rmtree(cfg.work_dir); shutil.copytree(cfg0.work_dir, cfg.work_dir)
    cfg = _with(cfg, enabled=True, seeds=seeds, gamma_select=1.05, gamma_stop=50.0)
    cfg.validation.enabled, cfg.validation.temperatures_K = True, []
    config = dump_config(cfg, tmp_path / "pipeline.yaml")
    assert main(["run", str(config), "--mock", "--no-speed", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| round |" in out and "validation of ace_refined.yace" in out
    assert refined_set(cfg).yace.exists() and (reports_dir(cfg) / "validation_ace_refined.json").exists()
    assert read_json(reports_dir(cfg) / "validation_ace_refined.json")["delivery"]["name"] == "ace_refined"
    off = load_config(config); off.refine.enabled = False
    assert main(["run", str(dump_config(off, tmp_path / "off.yaml")), "--mock", "--no-speed", "--quiet"]) == 0
    assert "| round |" not in capsys.readouterr().out


def test_the_walkers_of_one_seed_offer_one_structure_and_it_is_labeled_once(student, make_refine_config, tmp_path):
    """Every walker stops at its first frame (γ above gamma_stop at once), so the 300 K and 600 K walkers of a failing row's
    seed offer the same structure: the selection must give the teacher each structure once."""
    import shutil
    cfg0, _ = student
    cfg = make_refine_config(tmp_path, **STUDENT)
    shutil.rmtree(cfg.work_dir); shutil.copytree(cfg0.work_dir, cfg.work_dir)
    cfg = _with(cfg, seed_from=["validation"], validate_rounds=True, gamma_select=0.01, gamma_stop=0.02, max_new=40)
    first = refine(cfg, progress=False)["history"][0]
    walkers = read_json(iteration_dir(cfg, 0) / "explore" / "explore.json")["walkers"]
    assert first["validation"]["focus"] and all(w["steps"] == 0 for w in walkers)
    offered = list(iter_frames(iteration_dir(cfg, 0) / "explore" / "candidates.xyz"))
    assert len(distinct(offered)) < len(offered)                  # the focus seeds twice (300 K, 600 K)
    selected = list(iter_frames(iteration_dir(cfg, 0) / "selected.xyz"))
    assert len(selected) > 1 and distinct(selected) == list(range(len(selected)))
