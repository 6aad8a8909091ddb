"""Config validation: weighting policies, strict numbers, labeling and MD-check settings; every rejection names the field,
and `load_config` reports all problems of a file on one line that names the file."""
import re

import pytest
import yaml
from pydantic import ValidationError

from pyacemaker.domain_models.config import (AceTrainingConfig, ConfigError, EnergyBasedWeighting, LabelingConfig,
                                             MDCheckConfig, PipelineConfig, PyacemakerError, UniformWeighting,
                                             dump_config, load_config)


def reject(match, **kw):
    with pytest.raises(ValidationError, match=match):
        AceTrainingConfig(**{"elements": ["Cu", "Ag"], **kw})


def test_training_defaults_and_accepted_forms():
    cfg = AceTrainingConfig(elements=["Cu", "Ag"])
    assert (cfg.cutoff, cfg.ladder_type, cfg.ladder_step, cfg.reference_energy) == (5.0, "body_order", None, "mace")
    assert cfg.repulsion == "none" and cfg.mock is False
    assert isinstance(cfg.weighting, UniformWeighting) and cfg.weighting.type == "uniform"
    for step in (5, 0.2, [5, 0.2]):
        assert AceTrainingConfig(elements=["Cu"], ladder_step=step, max_basis_grade=30).ladder_step == step
    assert AceTrainingConfig(elements=["Cu"], cutoff=1.0).cutoff == 1.0          # the smallest accepted cutoff
    assert AceTrainingConfig(elements=["Cu"], reference_energy={"Cu": -3}).reference_energy == {"Cu": -3.0}


def test_energy_based_weighting_keeps_pacemakers_keys():
    w = AceTrainingConfig(elements=["Cu"], weighting={"type": "EnergyBasedWeightingPolicy", "DElow": 0.5, "DEup": 3,
                                                      "DFup": 20, "DE": 2, "DF": 0.5, "wlow": 0.75, "nfit": 40,
                                                      "reftype": "all", "seed": 3, "energy": "cohesive"}).weighting
    assert isinstance(w, EnergyBasedWeighting)
    assert w.model_dump() == {"type": "EnergyBasedWeightingPolicy", "DElow": 0.5, "DEup": 3.0, "DFup": 20.0, "DE": 2.0,
                              "DF": 0.5, "wlow": 0.75, "nfit": 40, "reftype": "all", "seed": 3, "energy": "cohesive"}
    dflt = EnergyBasedWeighting()
    assert (dflt.DElow, dflt.DEup, dflt.DFup, dflt.DE, dflt.DF, dflt.wlow, dflt.nfit, dflt.reftype, dflt.seed) == \
        (1.0, 10.0, None, 1.0, 1.0, None, None, "all", None)


@pytest.mark.parametrize("weighting,match", [
    ({"type": "EnergyBasedWeightingPolicy", "DElow": 2, "DEup": 1}, r"DElow \(2.0\) must be smaller than DEup \(1.0\)"),
    ({"type": "EnergyBasedWeightingPolicy", "DElow": 1, "DEup": 1}, r"DElow \(1.0\) must be smaller than DEup"),
    ({"type": "EnergyBasedWeightingPolicy", "wlow": 1.5}, r"weighting\.EnergyBasedWeightingPolicy\.wlow"),
    ({"type": "EnergyBasedWeightingPolicy", "wlow": 0}, r"wlow"),
    ({"type": "EnergyBasedWeightingPolicy", "DE": 0}, r"DE\n"),
    ({"type": "EnergyBasedWeightingPolicy", "DF": -1}, r"DF\n"),
    ({"type": "EnergyBasedWeightingPolicy", "DFup": 0}, r"DFup"),
    ({"type": "EnergyBasedWeightingPolicy", "nfit": 0}, r"nfit"),
    ({"type": "EnergyBasedWeightingPolicy", "nfit": True}, r"nfit"),
    ({"type": "EnergyBasedWeightingPolicy", "DE": True}, r"expected a number, got true"),
    ({"type": "EnergyBasedWeightingPolicy", "reftype": "surface"}, r"reftype"),
    ({"type": "EnergyBasedWeightingPolicy", "dElow": 0.5}, r"dElow\n.*Extra inputs are not permitted"),
    ({"type": "uniform", "DElow": 0.5}, r"weighting\.uniform\.DElow\n.*Extra inputs"),
    ({"type": "energy"}, r"does not match any of the expected tags: 'uniform', 'EnergyBasedWeightingPolicy'"),
    ({"DElow": 0.5}, r"Unable to extract tag using discriminator 'type'"),
])
def test_weighting_rejections(weighting, match):
    reject(match, weighting=weighting)


@pytest.mark.parametrize("kw,match", [
    (dict(elements=["Cu", "Cu"]), r"duplicate element\(s\) \['Cu'\]"),
    (dict(elements=["Cu", "Xx"]), r"unknown chemical symbol\(s\) \['Xx'\]"),
    (dict(elements=[]), "elements"),
    (dict(ladder_type="random"), "ladder_type"),
    (dict(cutoff=0.99), r"cutoff\n.*greater than or equal to 1"),
    (dict(cutoff=0.5), r"cutoff\n.*greater than or equal to 1"),
    (dict(cutoff=-3.0), "cutoff"),
    (dict(cutoff=25.0), r"cutoff\n.*less than or equal to 20"),
    (dict(cutoff=True), r"cutoff\n.*expected a number, got true"),
    (dict(maxiter=True), r"maxiter\n.*valid integer"),
    (dict(maxiter=5.0), r"maxiter\n.*valid integer"),
    (dict(maxiter="5"), r"maxiter\n.*valid integer"),
    (dict(max_basis_grade=True), r"max_basis_grade\n.*valid integer"),
    (dict(kappa=True), r"kappa\n.*expected a number, got true"),
    (dict(test_size=False), r"test_size\n.*expected a number, got false"),
    (dict(seed=True), r"seed\n.*valid integer"),
    (dict(batch_size=False), r"batch_size\n.*valid integer"),
    (dict(max_basis_grade=0), "max_basis_grade"),
    (dict(ladder_step=0), "integer ladder_step must be >= 1"),
    (dict(ladder_step=1.5), r"fractional ladder_step must be in \(0, 1\)"),
    (dict(ladder_step=[0, 0.1]), "ladder_step list must be"),
    (dict(ladder_step=True), "not a boolean"),
    (dict(ladder_step=30, max_basis_grade=30), r"ladder_step \(30\) must be smaller than max_basis_grade \(30\)"),
    (dict(nradmax_by_orders=[15, 3], lmax_by_orders=[0, 3, 2]), "one entry per body order"),
    (dict(nradmax_by_orders=[15, True], lmax_by_orders=[0, 3]), r"nradmax_by_orders\.1"),
    (dict(reference_energy={"Cu": -3.5}), r"reference_energy has no E0 for \['Ag'\]"),
    (dict(reference_energy={"Cu": True, "Ag": 1.0}), r"expected a number, got true"),
    (dict(reference_energy="auto"), r"reference_energy"),
    (dict(kappa=1.5), "kappa"),
    (dict(test_size=1.0), "test_size"),
    (dict(maxiter=0), "maxiter"),
    (dict(optimizer="Adam"), "optimizer"),
    (dict(evaluator="jax"), "evaluator"),
    (dict(gpu=-1), "gpu"),
    (dict(repulsion="zbl"), "repulsion"),
    (dict(cutof=5.0), r"cutof\n.*Extra inputs are not permitted"),
])
def test_training_rejections(kw, match):
    reject(match, **kw)


def test_labeling_defaults():
    lab = LabelingConfig(model="m.model")
    assert (lab.device, lab.dtype, lab.head, lab.compile) == ("cpu", "float64", None, False)
    assert (lab.min_distance, lab.skip_bad, lab.keys) == (0.5, False, "ase")
    assert LabelingConfig(model="m.model", keys="mace", min_distance=0, skip_bad=True).keys == "mace"
    assert LabelingConfig(model="m.model", device="cuda:1").device == "cuda:1"


@pytest.mark.parametrize("kw,match", [
    (dict(device="gpu"), "device must be 'cpu', 'cuda' or 'cuda:N'"),
    (dict(device="cuda:x"), "device must be"),
    (dict(dtype="float16"), "dtype"),
    (dict(batch_atoms=0), "batch_atoms"),
    (dict(batch_atoms=True), r"batch_atoms\n.*valid integer"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(chunk_size=10.0), r"chunk_size\n.*valid integer"),
    (dict(min_distance=-0.1), r"min_distance\n.*greater than or equal to 0"),
    (dict(min_distance=True), r"min_distance\n.*expected a number, got true"),
    (dict(keys="REF"), r"keys\n.*'ase' or 'mace'"),
    (dict(modle="x"), r"modle\n.*Extra inputs"),
])
def test_labeling_rejections(kw, match):
    with pytest.raises(ValidationError, match=match):
        LabelingConfig(**{"model": "m.model", **kw})


def test_md_check_defaults_and_pipeline_default():
    md = MDCheckConfig()
    assert (md.enabled, md.temperatures_K, md.steps, md.nve_steps, md.timestep_fs, md.structures, md.min_distance_A,
            md.snapshots) == (True, [300.0, 1000.0], 250, 250, 2.0, 2, None, 10)
    assert MDCheckConfig(structures=["step5.xyz:3"]).structures == ["step5.xyz:3"]
    cfg = PipelineConfig(labeling=LabelingConfig(model="m.model"), training=AceTrainingConfig(elements=["Cu"]))
    assert cfg.md == md


@pytest.mark.parametrize("kw,match", [
    (dict(temperatures_K=[0]), r"temperatures must be positive \(K\) and below 100000 K, got \[0.0\]"),
    (dict(temperatures_K=[300, -5]), r"temperatures must be positive"),
    (dict(temperatures_K=[]), r"temperatures_K"),
    (dict(temperatures_K=[True]), r"temperatures_K\.0\n.*expected a number, got true"),
    (dict(steps=0), r"steps"),
    (dict(steps=True), r"steps\n.*valid integer"),
    (dict(nve_steps=-1), r"nve_steps"),
    (dict(timestep_fs=0), r"timestep_fs"),
    (dict(timestep_fs=20), r"timestep_fs\n.*less than or equal to 10"),
    (dict(structures=True), r"structures"),
    (dict(min_distance_A=0), r"min_distance_A"),
    (dict(snapshots=-1), r"snapshots"),
    (dict(tempK=300), r"tempK\n.*Extra inputs"),
])
def test_md_check_rejections(kw, match):
    with pytest.raises(ValidationError, match=match):
        MDCheckConfig(**kw)


def write(tmp_path, text, name="pipeline.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = "labeling: {model: m.model}\ntraining: {elements: [Cu, Ag]}\n"


def test_load_resolves_paths_relative_to_file(tmp_path):
    p = write(tmp_path, "work_dir: run\nlabeling: {model: teacher.model}\ntraining: {elements: [Cu, Ag]}\n")
    cfg = load_config(p)
    assert cfg.work_dir == tmp_path / "run"
    assert cfg.labeling.model == tmp_path / "teacher.model"
    assert cfg.path(cfg.step4_file) == tmp_path / "run" / "step4_surrogate_data.xyz"
    assert cfg.path(cfg.ace_model_file) == tmp_path / "run" / "models" / "ace_base.yace"


def test_load_reads_weighting_md_and_labeling_options(tmp_path):
    p = write(tmp_path, GOOD.replace("elements: [Cu, Ag]", "elements: [Cu, Ag], weighting: {type: EnergyBasedWeightingPolicy, "
                                     "DElow: 0.5, DEup: 5, wlow: 0.5}")
              .replace("model: m.model", "model: m.model, keys: mace, skip_bad: true, min_distance: 0.8")
              + "md: {enabled: false, temperatures_K: [500]}\n")
    cfg = load_config(p)
    assert cfg.training.weighting == EnergyBasedWeighting(DElow=0.5, DEup=5, wlow=0.5)
    assert (cfg.labeling.keys, cfg.labeling.skip_bad, cfg.labeling.min_distance) == ("mace", True, 0.8)
    assert (cfg.md.enabled, cfg.md.temperatures_K) == (False, [500.0])


def test_round_trip(tmp_path):
    cfg = PipelineConfig(labeling=LabelingConfig(model=tmp_path / "m.model", keys="mace"),
                         training=AceTrainingConfig(elements=["Cu"], ladder_step=[5, 0.1], max_basis_grade=20,
                                                    weighting=EnergyBasedWeighting(DFup=30, nfit=10), mock=True),
                         md=MDCheckConfig(steps=50))
    back = load_config(dump_config(cfg, tmp_path / "c.yaml"))
    assert (back.training, back.labeling, back.md) == (cfg.training, cfg.labeling, cfg.md)


@pytest.mark.parametrize("text,fields", [
    (GOOD.replace("[Cu, Ag]", "[Cu, Cu]"), [r"training\.elements: duplicate element\(s\) \['Cu'\]"]),
    (GOOD.replace("[Cu, Ag]", "[Cu], cutoff: 0.5"), [r"training\.cutoff: Input should be greater than or equal to 1"]),
    (GOOD.replace("[Cu, Ag]", "[Cu], maxiter: true"), [r"training\.maxiter: Input should be a valid integer"]),
    (GOOD.replace("[Cu, Ag]", "[Cu], cutoff: true"), [r"training\.cutoff: expected a number, got true"]),
    (GOOD.replace("[Cu, Ag]", "[Cu], weighting: {type: EnergyBasedWeightingPolicy, DElow: 3, DEup: 2}"),
     [r"training\.weighting\.EnergyBasedWeightingPolicy: DElow \(3.0\) must be smaller than DEup \(2.0\)"]),
    (GOOD + "work_dri: x\n", [r"work_dri: Extra inputs are not permitted"]),
    ("training: {elements: [Cu]}\n", [r"labeling: Field required"]),
    # several problems: all of them, on one line, each with its field
    ("labeling: {model: m.model, batch_atoms: 0, keys: REF}\ntraining: {elements: [Cu], maxiter: true, cutoff: 0.2}\n"
     "md: {timestep_fs: 50}\n",
     [r"labeling\.batch_atoms: ", r"labeling\.keys: ", r"training\.cutoff: ", r"training\.maxiter: ", r"md\.timestep_fs: "]),
])
def test_load_errors_are_one_line_naming_file_and_fields(tmp_path, text, fields):
    p = write(tmp_path, text, "bad.yaml")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{p}: "), msg
    for f in fields:
        assert re.search(f, msg), (f, msg)
    assert msg.count("; ") == len(fields) - 1, msg
    assert isinstance(e.value, PyacemakerError)


#: every MD setting of every section, each with a value that cannot run (issue 23: a negative validation temperature hung `validate`)
MD_SETTINGS = [("md", "temperatures_K", "[-100]"), ("md", "steps", "0"), ("md", "timestep_fs", "0"),
               ("validation", "temperatures_K", "[-100]"), ("validation", "temperatures_K", "[1.0e+6]"),
               ("validation", "md_steps", "0"), ("validation", "timestep_fs", "-1"),
               ("refine", "temperatures_K", "[-100]"), ("refine", "steps", "0"), ("refine", "timestep_fs", "0"),
               ("refine", "gamma_every", "0")]


@pytest.mark.parametrize("section,field,value", MD_SETTINGS)
def test_every_md_setting_is_validated(tmp_path, section, field, value):
    p = write(tmp_path, GOOD + f"{section}: {{{field}: {value}}}\n", "bad.yaml")
    with pytest.raises(ConfigError, match=rf"bad.yaml: {section}\.{field}") as e:
        load_config(p)
    assert "\n" not in str(e.value)


def test_gamma_every_beyond_the_walk_is_refused(tmp_path):
    """refine.gamma_every > refine.steps: walkers were never looked at ("0 steps, stable") and the loop "converged"."""
    with pytest.raises(ConfigError, match=r"refine: gamma_every \(50\) must not exceed steps \(20\)"):
        load_config(write(tmp_path, GOOD + "refine: {steps: 20, gamma_every: 50}\n", "bad.yaml"))


@pytest.mark.parametrize("text,match", [
    ("- just\n- a list\n", "bad.yaml: expected a mapping of settings at the top level"),
    ("labeling: [unclosed\n", "bad.yaml: not a YAML file: "),
    ("", "bad.yaml: expected a mapping"),
])
def test_load_refuses_non_mappings(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(write(tmp_path, text, "bad.yaml"))
    assert "\n" not in str(e.value)


def test_load_refuses_binary_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_bytes(b"\xff\xfe\x00\x01binary")
    with pytest.raises(ConfigError, match="bad.yaml: not a YAML file"):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path)                                        # a folder is not a config file


def test_dump_writes_plain_yaml(tmp_path):
    cfg = PipelineConfig(labeling=LabelingConfig(model=tmp_path / "m.model"), training=AceTrainingConfig(elements=["Cu"]))
    raw = yaml.safe_load(dump_config(cfg, tmp_path / "c.yaml").read_text())
    assert raw["training"]["weighting"] == {"type": "uniform"} and raw["md"]["enabled"] is True
