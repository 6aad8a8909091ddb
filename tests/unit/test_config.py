"""Config validation: every rejection names the field; YAML loading names the file."""
import pytest
from pydantic import ValidationError

from pyacemaker.domain_models.config import (AceTrainingConfig, ConfigError, LabelingConfig, PipelineConfig,
                                             dump_config, load_config)


def reject(match, **kw):
    with pytest.raises(ValidationError, match=match):
        AceTrainingConfig(**{"elements": ["Cu", "Ag"], **kw})


def test_defaults_and_accepted_forms():
    cfg = AceTrainingConfig(elements=["Cu", "Ag"])
    assert (cfg.cutoff, cfg.ladder_type, cfg.ladder_step, cfg.reference_energy) == (5.0, "body_order", None, "mace")
    assert cfg.repulsion == "none"                      # pacemaker's own default: no ZBL core unless asked
    for step in (5, 0.2, [5, 0.2]):
        assert AceTrainingConfig(elements=["Cu"], ladder_step=step, max_basis_grade=30).ladder_step == step
    assert AceTrainingConfig(elements=["Cu"], ladder_type="power_order").ladder_type == "power_order"


@pytest.mark.parametrize("kw,match", [
    (dict(elements=["Cu", "Cu"]), r"duplicate element\(s\) \['Cu'\]"),
    (dict(elements=["Cu", "Xx"]), r"unknown chemical symbol\(s\) \['Xx'\]"),
    (dict(elements=[]), "elements"),
    (dict(ladder_type="random"), "ladder_type"),
    (dict(cutoff=0), "cutoff"),
    (dict(cutoff=-3.0), "cutoff"),
    (dict(max_basis_grade=0), "max_basis_grade"),
    (dict(ladder_step=0), "integer ladder_step must be >= 1"),
    (dict(ladder_step=1.5), r"fractional ladder_step must be in \(0, 1\)"),
    (dict(ladder_step=[0, 0.1]), "ladder_step list must be"),
    (dict(ladder_step=[5, 2.0]), "ladder_step list must be"),
    (dict(ladder_step=True), "not a boolean"),
    (dict(ladder_step=30, max_basis_grade=30), r"ladder_step \(30\) must be smaller than max_basis_grade \(30\)"),
    (dict(nradmax_by_orders=[15, 3], lmax_by_orders=[0, 3, 2]), "one entry per body order"),
    (dict(reference_energy={"Cu": -3.5}), r"reference_energy has no E0 for \['Ag'\]"),
    (dict(kappa=1.5), "kappa"),
    (dict(test_size=1.0), "test_size"),
    (dict(maxiter=0), "maxiter"),
    (dict(optimizer="Adam"), "optimizer"),
    (dict(evaluator="jax"), "evaluator"),
    (dict(gpu=-1), "gpu"),
    (dict(repulsion="zbl"), "repulsion"),
    (dict(cutof=5.0), "cutof"),
])
def test_training_rejections(kw, match):
    reject(match, **kw)


@pytest.mark.parametrize("kw,match", [
    (dict(device="gpu"), "device must be 'cpu', 'cuda' or 'cuda:N'"),
    (dict(dtype="float16"), "dtype"),
    (dict(batch_atoms=0), "batch_atoms"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(modle="x"), "modle"),
])
def test_labeling_rejections(kw, match):
    with pytest.raises(ValidationError, match=match):
        LabelingConfig(**{"model": "m.model", **kw})


def test_labeling_accepts_cuda_index():
    assert LabelingConfig(model="m.model", device="cuda:1").device == "cuda:1"


def write(tmp_path, text, name="pipeline.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_load_resolves_paths_relative_to_file(tmp_path):
    p = write(tmp_path, "work_dir: run\nlabeling: {model: teacher.model}\ntraining: {elements: [Cu, Ag]}\n")
    cfg = load_config(p)
    assert cfg.work_dir == tmp_path / "run"
    assert cfg.labeling.model == tmp_path / "teacher.model"
    assert cfg.path(cfg.step4_file) == tmp_path / "run" / "step4_surrogate_data.xyz"
    assert cfg.path(cfg.ace_model_file) == tmp_path / "run" / "models" / "ace_base.yace"


def test_round_trip(tmp_path):
    cfg = PipelineConfig(labeling=LabelingConfig(model=tmp_path / "m.model"),
                         training=AceTrainingConfig(elements=["Cu"], ladder_step=[5, 0.1], max_basis_grade=20))
    assert load_config(dump_config(cfg, tmp_path / "c.yaml")).training == cfg.training


@pytest.mark.parametrize("text,match", [
    ("labeling: {model: m.model}\ntraining: {elements: [Cu, Cu]}\n", r"bad\.yaml: invalid configuration\n  training\.elements: .*duplicate"),
    ("labeling: {model: m.model}\ntraining: {elements: [Cu], cutoff: -1}\n", r"training\.cutoff: Input should be greater than 0"),
    ("labeling: {model: m.model}\ntraining: {elements: [Cu], ladder_type: sideways}\n", r"training\.ladder_type"),
    ("labeling: {model: m.model}\ntraining: {elements: [Cu]}\nwork_dri: x\n", r"work_dri: Extra inputs are not permitted"),
    ("training: {elements: [Cu]}\n", r"labeling: Field required"),
    ("- just\n- a list\n", "expected a mapping"),
    ("labeling: [unclosed\n", "not valid YAML"),
])
def test_load_errors_name_file_and_field(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text, "bad.yaml"))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
