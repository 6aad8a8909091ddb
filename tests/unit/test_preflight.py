"""Step 6's pre-flight: everything pacemaker would choke on is refused on the training table, naming file, frame and
field, before any pacemaker process (and TensorFlow's start-up) begins. A stand-in pacemaker leaves a marker file when
started: every refusal below must leave no marker; the control case shows that a good file does start it."""
import itertools
import re
import subprocess
import time

import pytest

from pyacemaker.demo_data import demo_step4_path, mixed_step4_frames
from pyacemaker.domain_models.config import PyacemakerError
from pyacemaker.orchestrator import check_config, fit_tables, reference_energies, run_step6
from pyacemaker.trainer.ace_trainer import PacemakerError
from pyacemaker.utils.io import MAX_CELL_LENGTH, StructureError, iter_frames, write_frames


@pytest.fixture(scope="module")
def frames():
    """10 bulk cells of the bundled step-4 file, a slab and a cluster: unlabeled."""
    others = mixed_step4_frames(10, seed=8)
    return list(itertools.islice(iter_frames(demo_step4_path()), 10)) + \
        [next(f for f in others if f.info["config_type"] == kind) for kind in ("slab", "cluster")]


@pytest.fixture(scope="module")
def labeled(frames, surrogate32):
    return surrogate32.compute_batch(frames)


@pytest.fixture
def fake_pacemaker(tmp_path):
    """An executable standing in for pacemaker: it only leaves a marker file (and fails)."""
    marker = tmp_path / "pacemaker_started"
    exe = tmp_path / "fake_pacemaker"
    exe.write_text(f"#!/bin/sh\ntouch {marker}\necho 'fake pacemaker'\nexit 1\n")
    exe.chmod(0o755)
    return str(exe), marker


def setup(tmp_path, make_pipeline_config, frames, labeled, edit=None, **training):
    """A work folder whose step-5 file holds `labeled` (its text passed through `edit`), and its config."""
    cfg = make_pipeline_config(tmp_path, frames, **training)
    step5 = write_frames(labeled, cfg.path(cfg.step5_file))
    if edit is not None: step5.write_text(edit(step5.read_text()))
    return cfg


def frame_lines(text):
    """(start, end) line indices of each frame of an extxyz text."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        n = int(lines[i]); out.append((i, i + n + 2)); i += n + 2
    return out


def edit_header(frame, old, new):
    def edit(text):
        lines = text.splitlines()
        start, _ = frame_lines(text)[frame]
        assert re.search(old, lines[start + 1])
        lines[start + 1] = re.sub(old, new, lines[start + 1], count=1)
        return "\n".join(lines) + "\n"
    return edit


def edit_atom(frame, atom, column, value):
    def edit(text):
        lines = text.splitlines()
        start, _ = frame_lines(text)[frame]
        cols = lines[start + 2 + atom].split()
        cols[column] = value
        lines[start + 2 + atom] = " ".join(cols)
        return "\n".join(lines) + "\n"
    return edit


def refused(cfg, exe, marker, error, match):
    """run_step6 must raise `error` matching `match`, on one line, without starting pacemaker or delivering."""
    t0 = time.perf_counter()
    with pytest.raises(error, match=match) as e:
        run_step6(cfg, progress=False, executable=exe)
    print(f"refused in {time.perf_counter() - t0:.1f} s: {e.value}")
    assert "\n" not in str(e.value)
    assert not marker.exists(), "pacemaker was started before the pre-flight refusal"
    assert not cfg.path(cfg.ace_model_file).exists() and not cfg.path(cfg.ace_model_file).parent.exists()
    return e.value


def test_control_a_good_file_does_start_pacemaker(tmp_path, make_pipeline_config, frames, labeled, fake_pacemaker):
    exe, marker = fake_pacemaker
    cfg = setup(tmp_path, make_pipeline_config, frames, labeled)
    with pytest.raises(PacemakerError, match="pacemaker exited with status 1"):
        run_step6(cfg, progress=False, executable=exe)
    assert marker.exists()
    assert not cfg.path(cfg.ace_model_file).exists()


def test_element_in_training_elements_absent_from_data(tmp_path, make_pipeline_config, frames, labeled, fake_pacemaker):
    cu_only = []
    for src in labeled:                                    # the labeled frames with every Ag made Cu, labels kept
        a = src.copy(); a.calc = src.calc
        a.symbols = ["Cu"] * len(a)
        cu_only.append(a)
    cfg = setup(tmp_path, make_pipeline_config, frames, cu_only)
    step5 = cfg.path(cfg.step5_file)
    refused(cfg, *fake_pacemaker, StructureError,
            rf"^{re.escape(str(step5))}: training.elements lists Ag, but no structure contains it; remove it from "
            r"training.elements or add data with it$")


def test_element_in_data_not_in_training_elements(tmp_path, make_pipeline_config, frames, labeled, fake_pacemaker):
    cfg = setup(tmp_path, make_pipeline_config, frames, labeled, elements=["Cu"])
    first_ag = next(i for i, a in enumerate(labeled) if "Ag" in a.symbols)
    refused(cfg, *fake_pacemaker, StructureError,
            rf"^{re.escape(str(cfg.path(cfg.step5_file)))} frame {first_ag}: element Ag is not in training.elements "
            r"\(knows Cu\)$")


@pytest.mark.parametrize("edit,match", [
    (edit_header(3, r"energy=\S+", "energy=nan"), r"frame 3: energy is not finite \(nan\)$"),
    (edit_header(5, r"energy=\S+", "energy=inf"), r"frame 5: energy is not finite \(inf\)$"),
    (edit_header(4, r" energy=\S+", ""), r"frame 4: no energy label$"),
    (edit_atom(2, 1, 6, "nan"), r"frame 2: forces of atom 1 are not finite \(NaN or inf\)$"),
    (edit_atom(7, 0, 4, "-inf"), r"frame 7: forces of atom 0 are not finite \(NaN or inf\)$"),
    (edit_atom(1, 2, 2, "nan"), r"frame 1: positions of atom 2 are not finite \(NaN or inf\)$"),
])
def test_hand_edited_step5_file_with_bad_labels(tmp_path, make_pipeline_config, frames, labeled, fake_pacemaker, edit, match):
    cfg = setup(tmp_path, make_pipeline_config, frames, labeled, edit=edit)
    refused(cfg, *fake_pacemaker, StructureError, rf"^{re.escape(str(cfg.path(cfg.step5_file)))} " + match)


def test_too_few_structures_for_the_split(tmp_path, make_pipeline_config, frames, labeled, fake_pacemaker):
    both = next(a for a in labeled if {"Cu", "Ag"} <= set(a.symbols))
    cfg = setup(tmp_path, make_pipeline_config, frames, [both], test_size=0.1)
    refused(cfg, *fake_pacemaker, StructureError,
            rf"^{re.escape(str(cfg.path(cfg.step5_file)))}: 1 structure\(s\) are too few for a fit with "
            r"training.test_size 0.1 \(need at least 2; set test_size: 0 to fit without a test set\)$")


def test_cutoff_with_no_neighbours(tmp_path, make_pipeline_config, frames, labeled, fake_pacemaker):
    cfg = setup(tmp_path, make_pipeline_config, frames, labeled, cutoff=1.5)
    err = refused(cfg, *fake_pacemaker, StructureError,
                  rf"^{re.escape(str(cfg.path(cfg.step5_file)))}: no two atoms of any structure are within training.cutoff "
                  r"1.5 Å \(shortest distance (\d\.\d\d) Å\); the ACE potential would see no neighbours$")
    shortest = float(re.search(r"shortest distance (\d\.\d\d)", str(err)).group(1))
    from ase.neighborlist import neighbor_list
    from pyacemaker.utils.io import periodic_equivalent
    true = min(neighbor_list("d", periodic_equivalent(a, 5.0), 5.0).min() for a in labeled)
    assert shortest == pytest.approx(true, abs=0.006)


def test_training_elements_not_in_the_teacher(tmp_path, make_pipeline_config, frames, labeled, fake_pacemaker):
    cfg = setup(tmp_path, make_pipeline_config, frames, labeled, elements=["Cu", "Ag", "Au"])
    err = refused(cfg, *fake_pacemaker, PyacemakerError,
                  r"^training.elements \['Au'\] are not in the MACE model cuag_mace.model \(knows \[.*'Ag'.*\]\); "
                  r"an ACE potential cannot be distilled for them$")
    assert "'Cu'" in str(err)


def test_cell_that_cannot_be_made_periodic(tmp_path, make_pipeline_config, frames, labeled, fake_pacemaker):
    slab_at = next(i for i, a in enumerate(labeled) if a.info.get("config_type") == "slab")
    edited = [a.copy() for a in labeled]
    for a, src in zip(edited, labeled): a.calc = src.calc
    edited[slab_at].positions[0, 2] += MAX_CELL_LENGTH + 100       # a stray atom, labels kept (a hand-edited file)
    cfg = setup(tmp_path, make_pipeline_config, frames, edited)
    refused(cfg, *fake_pacemaker, StructureError,
            rf"^{re.escape(str(cfg.path(cfg.step5_file)))} frame {slab_at}: cell cannot be made fully periodic for "
            r"pacemaker: its atoms spread over .* Å along a non-periodic direction: .*\(a stray atom\?\)$")


def test_fit_tables_and_check_give_the_same_refusal(tmp_path, make_pipeline_config, frames, labeled):
    cfg = setup(tmp_path, make_pipeline_config, frames, labeled, edit=edit_header(3, r"energy=\S+", "energy=nan"))
    match = rf"^{re.escape(str(cfg.path(cfg.step5_file)))} frame 3: energy is not finite"
    with pytest.raises(StructureError, match=match):
        fit_tables(cfg, reference_energies(cfg))
    with pytest.raises(StructureError, match=match):
        check_config(cfg)                                          # `pyacemaker check` runs the same pre-flight
    assert not (cfg.work_dir / "fit").exists() and not (cfg.work_dir / "models").exists()


def test_fit_tables_on_good_labels(tmp_path, make_pipeline_config, frames, labeled):
    cfg = setup(tmp_path, make_pipeline_config, frames, labeled)
    train, test = fit_tables(cfg, reference_energies(cfg))
    assert len(train) + len(test) == len(labeled) and set(train.name).isdisjoint(test.name)
    assert set(train.cell_kind) | set(test.cell_kind) == {"bulk", "slab", "cluster"}
    assert all(a.pbc.all() for a in list(train.ase_atoms) + list(test.ase_atoms))


def test_cli_fit_prints_one_line_and_starts_nothing(tmp_path, make_pipeline_config, frames, labeled, fake_pacemaker,
                                                   pyacemaker_exe):
    exe, marker = fake_pacemaker
    cfg = setup(tmp_path, make_pipeline_config, frames, labeled, edit=edit_atom(2, 1, 6, "nan"))
    r = subprocess.run([pyacemaker_exe, "fit", str(tmp_path / "pipeline.yaml"), "--pacemaker", exe],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyacemaker fit: error: "), r.stderr
    assert f"{cfg.path(cfg.step5_file)} frame 2: forces of atom 1 are not finite" in lines[0]
    assert not marker.exists()
