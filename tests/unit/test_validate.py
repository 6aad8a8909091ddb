"""pyacemaker validate: every property against an independent computation (EMT Cu), the teacher-vs-student rows of a
real MACE teacher and a real ACE student, a worse student failing rows the real one passes, user structures, errors, CLI."""
import json

import numpy as np
import pytest
from ase import units
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.eos import calculate_eos
from ase.optimize import FIRE

from pyacemaker.cli import main
from pyacemaker.domain_models.config import PyacemakerError, ReferenceConfig, Tolerance, ValidationConfig, dump_config, load_config
from pyacemaker.report.md import perturbed_potential
from pyacemaker.kit.calculators import ace_calculator, import_pyace, mace_calculator
from pyacemaker.kit.layout import delivered_set, open_delivered
from pyacemaker.report.properties import (EV_PER_A2_IN_J_PER_M2, NotConverged, Protocol, elastic_tensor, energy,
                                          equation_of_state, md_rdf, model_properties, phonons, reference_structures, relax,
                                          surface_energy, vacancy_formation_energy)
from pyacemaker.report.validate import (compare, reference_protocol, summarize, validate, validation_structures,
                                        validation_teacher)
from pyacemaker.utils.io import write_frames

#: a short protocol for tests: one facet, no MD
QUICK = dict(facets=[[1, 1, 1]], temperatures_K=[])


@pytest.fixture(scope="module")
def cu():
    return relax(bulk("Cu", "fcc", a=3.7, cubic=True), EMT())


def test_relaxed_lattice_constant_is_emts(cu):
    assert cu.cell.lengths() == pytest.approx([3.58982] * 3, abs=2e-4)      # EMT Cu; ASE's EOS on the same volumes: 3.58982
    with pytest.raises(NotConverged, match="did not reach fmax"):
        relax(bulk("Cu", "fcc", a=3.7, cubic=True), EMT(), steps=1)


def test_equation_of_state_agrees_with_ase_calculate_eos(cu):
    eos = equation_of_state(cu, EMT())
    a = cu.copy(); a.calc = EMT()
    v, _, b = calculate_eos(a, npoints=9, eps=0.04).fit(warn=False)
    assert eos["B0_GPa"] == pytest.approx(b / units.GPa, rel=0.01)
    assert eos["v0_A3"] == pytest.approx(v, rel=1e-3)
    assert eos["B0_GPa"] == pytest.approx(134.4, abs=1.0)
    assert 3 < eos["Bp"] < 7


def _curvature_GPa(atoms, strain_of, h=0.004):
    "d²E/dε² / V of EMT by central differences under the strain matrix strain_of(ε)."
    def e(x):
        a = atoms.copy(); a.set_cell(atoms.cell.array @ (np.eye(3) + strain_of(x)), scale_atoms=True)
        return energy(a, EMT())
    return (e(h) - 2 * e(0) + e(-h)) / h ** 2 / atoms.get_volume() / units.GPa


def test_elastic_constants_agree_with_the_energy_strain_curvature(cu):
    c = elastic_tensor(cu, EMT())
    c11 = _curvature_GPa(cu, lambda x: np.diag([x, 0, 0]))
    c44 = _curvature_GPa(cu, lambda x: np.array([[0, 0, 0], [0, 0, x / 2], [0, x / 2, 0]]))
    b = equation_of_state(cu, EMT())["B0_GPa"]
    assert c[0, 0] == pytest.approx(c11, rel=0.02)
    assert c[3, 3] == pytest.approx(c44, rel=0.02)
    assert c[0, 1] == pytest.approx((3 * b - c11) / 2, rel=0.03)
    assert c[0, 0] == pytest.approx(c[1, 1]) and c[3, 3] == pytest.approx(c[5, 5])


def _frozen_phonon_x_THz(atoms, direction, u=0.005):
    "Frequency of the X-point mode polarised along `direction` (0 = longitudinal) from forces in a 3×3×3 supercell."
    sc = atoms.repeat(3)
    sign = np.where(np.round(2 * sc.positions[:, 0] / atoms.cell[0, 0]).astype(int) % 2 == 0, 1.0, -1.0)
    sc.positions[:, direction] += u * sign; sc.calc = EMT()
    k = -np.mean(sc.get_forces()[:, direction] * sign) / u
    return np.sqrt(k / sc.get_masses()[0] * units._e / units._amu * 1e20) / (2 * np.pi) / 1e12


def test_phonons_at_x_agree_with_a_frozen_phonon(cu):
    ph = phonons(cu, EMT(), 10.0)
    assert (ph["supercell"], ph["n_supercell_atoms"]) == ([3, 3, 3], 108)
    i = int(np.argmin(np.abs(np.array(ph["x"]) - ph["special_x"][ph["labels"].index("X")])))
    assert ph["qpoints"][i] == pytest.approx([0.5, 0.0, 0.5])
    freqs = sorted(ph["frequencies_THz"][i])
    assert freqs[-1] == pytest.approx(_frozen_phonon_x_THz(cu, 0), rel=0.01)       # longitudinal, ≈ 8.14 THz
    assert freqs[0] == pytest.approx(_frozen_phonon_x_THz(cu, 1), rel=0.01)        # transverse, ≈ 5.53 THz
    assert min(min(f) for f in ph["frequencies_THz"]) > -0.01                      # no imaginary modes


def test_vacancy_formation_energy_agrees_with_a_direct_relaxation(cu):
    vac = vacancy_formation_energy(cu, EMT(), 10.0)
    sc = cu.repeat(3); e_n = energy(sc, EMT()); del sc[77]; sc.calc = EMT()
    FIRE(sc, logfile=None).run(fmax=0.005)
    assert vac["n_atoms"] == 108
    assert vac["E_f_eV"] == pytest.approx(sc.get_potential_energy() - 107 / 108 * e_n, abs=2e-3)
    assert vac["E_f_eV"] == pytest.approx(1.224, abs=0.005)                         # EMT Cu, 4×4×4: 1.2238


@pytest.mark.parametrize("facet, build", [((1, 1, 1), fcc111), ((1, 0, 0), fcc100)])
def test_surface_energy_agrees_with_slabs_built_by_ase(cu, facet, build):
    mine = surface_energy(cu, EMT(), facet, 5.0)
    layers = {(1, 1, 1): 4, (1, 0, 0): 2}[facet]
    other = relax(build("Cu", (1, 1, mine["n_atoms"] // layers), a=cu.cell[0, 0], vacuum=5.0, periodic=True), EMT(), 0.01,
                  cell=False, symmetry=False)
    area = np.linalg.norm(np.cross(other.cell[0], other.cell[1]))
    gamma = (other.get_potential_energy() - len(other) * energy(cu, EMT()) / 4) / (2 * area) * EV_PER_A2_IN_J_PER_M2
    assert mine["gamma_J_per_m2"] == pytest.approx(gamma, rel=0.005)


def test_rdf_peaks_at_the_nearest_neighbour_distance(cu):
    rdf = md_rdf(cu.repeat(3), EMT(), 300.0, steps=40, every=2)
    assert rdf["r_A"][int(np.argmax(rdf["g"]))] == pytest.approx(cu.cell[0, 0] / np.sqrt(2), abs=0.1)
    assert rdf["n_samples"] == 10 and rdf["steps_per_s"] > 0


def test_mixing_energy_and_alloy_vacancies_use_the_elements_of_the_same_model():
    res = model_properties(EMT(), reference_structures(["Cu", "Ag"]), Protocol(5.0, ValidationConfig(**QUICK)), progress=False)
    alloy = bulk("Cu", "fcc", a=3.75, cubic=True); alloy.symbols[0] = "Ag"; alloy = relax(alloy, EMT())
    mu_cu, mu_ag = (energy(relax(bulk(e, "fcc", a=a, cubic=True), EMT()), EMT()) / 4 for e, a in (("Cu", 3.6), ("Ag", 4.1)))
    direct = 1e3 * (energy(alloy, EMT()) / 4 - (3 * mu_cu + mu_ag) / 4)
    rows = {(r["structure"], r["property"]): r for r in compare(res, res, reference_structures(["Cu", "Ag"]), ValidationConfig())}
    assert rows[("Cu3Ag L1_2", "mixing_energy_meV_per_atom")]["teacher"] == pytest.approx(direct, abs=1e-3)
    cu_vac = res["structures"]["Cu3Ag L1_2"]["vacancy Cu"]
    assert cu_vac["species"] == "Cu" and 0.5 < cu_vac["E_f_eV"] < 2.0


def test_a_failed_relaxation_is_a_row_with_its_reason_not_an_error():
    refs = reference_structures(["Cu"])
    ok = model_properties(EMT(), refs, Protocol(5.0, ValidationConfig(**QUICK)), progress=False)
    stuck = model_properties(EMT(), refs, Protocol(5.0, ValidationConfig(**QUICK, max_steps=1)), progress=False)
    rows = compare(ok, stuck, refs, ValidationConfig())
    failed = [r for r in rows if not r["within_tolerance"]]
    assert failed and all("relaxation did not reach" in r["note"] and "NotConverged" not in r["note"] and "teacher" not in r["note"] for r in failed)
    assert {r["property"] for r in failed} >= {"lattice_constant_A", "bulk_modulus_GPa", "C44_GPa"}
    s = summarize(rows)
    assert not s["passed"] and s["n_not_computed"] == len(failed) and s["worst"][0]["ratio_to_tolerance"] is None


# --- a real MACE teacher and a real (linear, mock-mode) ACE student -----------------------------------------------

@pytest.fixture(scope="module")
def quick_cfg(mock_pipeline, tmp_path_factory):
    "The mock pipeline's config with the quick protocol, its reports written to a folder of this module."
    cfg, _, _ = mock_pipeline
    cfg = cfg.model_copy(deep=True)
    cfg.validation = ValidationConfig(**QUICK)
    return cfg


@pytest.fixture(scope="module")
def three_models(quick_cfg, tmp_path_factory):
    "Teacher, student and a deliberately worse student (coefficients × (1 + 0.5·N(0,1))) through the same protocol."
    cfg = quick_cfg
    refs = validation_structures(cfg, ["Ag", "Cu"])
    proto = Protocol(cfg.training.cutoff, cfg.validation)
    d = delivered_set(cfg)
    worse = perturbed_potential(d.yaml, tmp_path_factory.mktemp("worse") / "worse.yaml", noise=0.5, seed=3)
    results = {"teacher": model_properties(mace_calculator(validation_teacher(cfg)), refs, proto, progress=False),
               "student": model_properties((open_delivered(d), ace_calculator(d.yace))[1], refs, proto, progress=False),
               "worse": model_properties(import_pyace().PyACECalculator(str(worse)), refs, proto, progress=False)}
    return refs, results


def test_a_worse_student_fails_rows_the_real_student_passes(three_models, quick_cfg):
    refs, res = three_models
    rows = {who: {(r["structure"], r["property"]): r["within_tolerance"] for r in compare(res["teacher"], res[who], refs,
                                                                                        quick_cfg.validation)}
            for who in ("student", "worse")}
    assert rows["student"].keys() == rows["worse"].keys()
    lost = [k for k, ok in rows["student"].items() if ok and not rows["worse"][k]]
    gained = [k for k, ok in rows["worse"].items() if ok and not rows["student"][k]]
    print(f"student passes {sum(rows['student'].values())}, worse student {sum(rows['worse'].values())} of {len(rows['student'])}; "
          f"lost {lost}")
    assert len(lost) >= 3 and len(lost) > len(gained)
    assert ("Cu fcc", "lattice_constant_A") in lost


def test_validate_writes_every_row_for_the_reference_phases(quick_cfg):
    result = validate(quick_cfg, progress=False)
    saved = json.loads(open(result["files"]["json"]).read())
    assert saved["properties"] == json.loads(json.dumps(result["properties"]))
    keys = {(r["structure"], r["property"]) for r in saved["properties"]}
    for name in ("Cu fcc", "Ag fcc", "Cu3Ag L1_2"):
        for prop in ("lattice_constant_A", "volume_per_atom_A3", "bulk_modulus_GPa", "C11_GPa", "C12_GPa", "C44_GPa",
                     "phonon_max_abs_frequency_difference_THz", "phonon_min_frequency_THz"):
            assert (name, prop) in keys, (name, prop)
        assert (f"{name} (111)", "surface_energy_J_per_m2") in keys
    assert {("Cu fcc", "vacancy_formation_energy_eV"), ("Cu3Ag L1_2 (Ag vacancy)", "vacancy_formation_energy_eV"),
            ("Cu3Ag L1_2", "mixing_energy_meV_per_atom")} <= keys
    for r in saved["properties"]:
        assert set(r) >= {"structure", "property", "unit", "teacher", "student", "difference", "tolerance",
                          "within_tolerance", "note"}
        assert r["within_tolerance"] == (r["difference"] is not None and abs(r["difference"]) <= r["tolerance"])
    for f in ("rows_png", "eos_png", "phonons_png"):
        assert open(result["files"][f], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert saved["summary"]["n_rows"] == len(saved["properties"])


def test_user_structures_a_slab_and_an_alloy_cell(quick_cfg, tmp_path):
    slab = fcc111("Cu", (2, 2, 3), a=3.6, vacuum=6.0); slab.pbc = (True, True, False)
    alloy = bulk("Cu", "fcc", a=3.8, cubic=True); alloy.symbols[[0, 1]] = "Ag"           # L1_0-like CuAg
    cfg = quick_cfg.model_copy(deep=True)
    cfg.validation.structures = write_frames([slab, alloy], tmp_path / "mine.xyz")
    cfg.work_dir = tmp_path / "work"; (tmp_path / "work" / "models").mkdir(parents=True)
    d = delivered_set(quick_cfg)
    for p in d.models_dir.iterdir():
        if p.is_file(): (tmp_path / "work" / "models" / p.name).write_bytes(p.read_bytes())
    rows = {(r["structure"], r["property"]): r for r in validate(cfg, progress=False)["properties"]}
    assert ("Cu12 slab (frame 0)", "relaxed_rmsd_A") in rows
    assert ("Cu12 slab (frame 0)", "energy_above_references_meV_per_atom") in rows
    assert rows[("Cu12 slab (frame 0)", "relaxed_rmsd_A")]["teacher"] == 0.0
    for prop in ("volume_per_atom_A3", "bulk_modulus_GPa", "energy_above_references_meV_per_atom", "C44_GPa"):
        assert rows[("Ag2Cu2 bulk (frame 1)", prop)]["difference"] is not None, prop


def test_an_element_outside_the_model_is_one_clear_error(quick_cfg, tmp_path):
    cfg = quick_cfg.model_copy(deep=True)
    cfg.validation.structures = write_frames([bulk("Cu", "fcc", a=3.6), bulk("Au", "fcc", a=4.08)], tmp_path / "au.xyz")
    with pytest.raises(PyacemakerError, match=r"au.xyz frame 1.*Au"):
        validation_structures(cfg, ["Ag", "Cu"])
    with pytest.raises(PyacemakerError, match="not found"):
        validation_structures(cfg.model_copy(update={"validation": ValidationConfig(structures=tmp_path / "none.xyz")}), ["Ag", "Cu"])


def test_cli_validate_and_strict(quick_cfg, tmp_path, capsys):
    cfg = quick_cfg.model_copy(deep=True)
    cfg.validation = ValidationConfig(references=False, temperatures_K=[], structures=write_frames(
        [bulk("Cu", "fcc", a=3.6, cubic=True)], tmp_path / "cu.xyz"))
    config = dump_config(cfg, tmp_path / "pipeline.yaml")
    assert main(["validate", str(config), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "validation of ace_base.yace:" in out and "bulk_modulus_GPa" in out
    assert load_config(config).validation.structures == tmp_path / "cu.xyz"
    cfg.validation.tolerances = {"volume_per_atom_A3": Tolerance(relative=0.0, absolute=0.0)}
    strict = dump_config(cfg, tmp_path / "strict.yaml")
    assert main(["validate", str(strict), "--quiet", "--strict"]) == 1
    assert main(["validate", str(strict), "--quiet"]) == 0
    assert main(["validate", str(config), "--quiet", "--potential", "ace_other"]) == 2
    assert "ace_other" in capsys.readouterr().err


def test_validate_against_the_reference(quick_cfg, tmp_path, capsys):
    "EMT as the reference: every row gets EMT's value (its own relaxation), and the teacher's and student's errors against it."
    cfg = quick_cfg.model_copy(deep=True)
    cfg.work_dir = tmp_path / "work"; (tmp_path / "work" / "models").mkdir(parents=True)
    for p in delivered_set(quick_cfg).models_dir.iterdir():
        if p.is_file(): (tmp_path / "work" / "models" / p.name).write_bytes(p.read_bytes())
    cfg.validation = ValidationConfig(references=False, temperatures_K=[], structures=write_frames(
        [bulk("Cu", "fcc", a=3.6, cubic=True)], tmp_path / "cu.xyz"))
    cfg.reference = ReferenceConfig(calculator="ase.calculators.emt.EMT", rdf=False)
    result = validate(cfg, progress=False)
    rows = {r["property"]: r for r in result["properties"]}
    emt_cu = relax(bulk("Cu", "fcc", a=3.6, cubic=True), EMT())
    vol = rows["volume_per_atom_A3"]
    assert vol["reference"] == pytest.approx(emt_cu.get_volume() / 4, rel=1e-4)
    assert vol["teacher_error"] == pytest.approx(vol["teacher"] - vol["reference"])
    assert vol["student_error"] == pytest.approx(vol["student"] - vol["reference"])
    assert reference_protocol(Protocol(5.0, cfg.validation), cfg.reference).settings.temperatures_K == []   # rdf: false
    assert result["reference"]["summary"]["teacher"]["n_rows"] == len(rows)
    assert open(result["files"]["reference_png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(open(result["files"]["json"]).read())
    assert saved["reference_settings"]["calculator"] == "ase.calculators.emt.EMT" and "reference" in saved["models"]
    config = dump_config(cfg, tmp_path / "pipeline.yaml")
    assert main(["validate", str(config), "--quiet"]) == 0
    assert "against the reference EMT: teacher" in capsys.readouterr().out
    cfg.reference = ReferenceConfig(calculator="gpaw_not_here.GPAW")
    assert main(["validate", str(dump_config(cfg, tmp_path / "bad.yaml")), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "reference.calculator gpaw_not_here.GPAW: cannot import gpaw_not_here" in err and "Traceback" not in err
