"""The reference (issue 24): config and check in one line, labels through the durable chunked run with a real (slowed) ASE
calculator in a real `pyacemaker label-reference` process, SIGTERM keeps finished structures, --resume finishes them."""
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read

from pyacemaker.cli import main
from pyacemaker.domain_models.config import ReferenceConfig, dump_config, load_config
from pyacemaker.oracle.chunked_run import RunFiles
from pyacemaker.utils.io import write_frames

#: a real ASE calculator that takes 0.3 s per structure, importable from the test's folder: a stand-in for DFT
SLOW_EMT = '''
import time
from ase.calculators.emt import EMT

class SlowEMT(EMT):
    def calculate(self, *args, **kwargs):
        time.sleep(0.3)
        super().calculate(*args, **kwargs)

class CuOnlyEMT(EMT):
    def calculate(self, atoms=None, *args, **kwargs):
        bad = sorted(set(atoms.get_chemical_symbols()) - {"Cu"})
        if bad: raise NotImplementedError(f"no parameters for {bad}")
        super().calculate(atoms, *args, **kwargs)
'''


@pytest.fixture
def ref_config(mock_pipeline, tmp_path):
    "The mock pipeline's config with a slow EMT reference; the calculator module lives in tmp_path."
    cfg, _, _ = mock_pipeline
    cfg = cfg.model_copy(deep=True)
    cfg.work_dir = tmp_path / "work"
    cfg.reference = ReferenceConfig(calculator="slowemt.SlowEMT")
    (tmp_path / "slowemt.py").write_text(SLOW_EMT)
    return dump_config(cfg, tmp_path / "pipeline.yaml")


def cells(n: int):
    out = []
    for k in range(n):
        c = bulk("Cu", "fcc", a=3.6, cubic=True) * (1, 1, 2); c.symbols[k % 8] = "Ag"; c.rattle(0.05, seed=k); out.append(c)
    return out


def test_check_names_the_reference_and_refuses_a_bad_one(ref_config, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["check", str(ref_config)]) == 0
    out = capsys.readouterr().out
    assert "reference: slowemt.SlowEMT(), E0 Cu 3.5" in out
    cfg = load_config(ref_config)
    for bad, says in (("gpaw_not_here.GPAW", "cannot import gpaw_not_here"), ("ase.calculators.emt.EMTT", "has no EMTT")):
        cfg.reference = ReferenceConfig(calculator=bad)
        assert main(["check", str(dump_config(cfg, tmp_path / "bad.yaml"))]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err
    cfg.reference = ReferenceConfig(calculator="slowemt.CuOnlyEMT")                      # a reference that knows no Ag
    assert main(["check", str(dump_config(cfg, tmp_path / "cu_only.yaml"))]) == 2
    err = capsys.readouterr().err
    assert "cannot compute every element of" in err and "isolated Ag atom" in err and "no parameters for ['Ag']" in err, err


def test_sigterm_keeps_finished_structures_and_resume_finishes(ref_config, pyacemaker_exe, tmp_path):
    frames = cells(12)
    src = write_frames(frames, tmp_path / "pool.xyz")
    out = tmp_path / "ref.xyz"
    cmd = [pyacemaker_exe, "label-reference", str(ref_config), "--input", str(src), "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd + ["--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = RunFiles(out).partial
    deadline = time.time() + 120
    while len(list(partial.glob("chunk_*.xyz"))) < 3 and time.time() < deadline and proc.poll() is None: time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    kept = len(list(partial.glob("chunk_*.xyz")))
    assert proc.returncode == 143 and 3 <= kept < 12, (proc.returncode, kept, err)
    assert "--resume" in err and not out.exists()
    done = subprocess.run(cmd + ["--resume", "--quiet"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"({kept} of them reused from finished chunks)" in done.stdout
    got = read(out, ":")
    assert len(got) == 12 and all(a.info["reference"] == "SlowEMT" and a.info["reference_s"] >= 0.3 for a in got)
    for a, f in zip(got, frames):
        f = f.copy(); f.calc = EMT()
        np.testing.assert_allclose(a.get_forces(), f.get_forces(), atol=1e-6)
        assert a.get_potential_energy() == pytest.approx(f.get_potential_energy(), abs=1e-6)
    again = subprocess.run(cmd + ["--quiet"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already exists" in again.stderr                       # finished work is not overwritten
