"""Execute notebooks in place, keeping their outputs (inline plots) for readers who do not run them.

Runs each notebook with execnb, exactly as `nbdev_test` does (`#| eval: false` cells are skipped), then drops
stderr noise (library warnings, progress bars) so that the committed outputs show results only. Then clean:
    .venv/bin/python tools/run_notebooks.py nbs/05_report.ipynb [...] && .venv/bin/nbdev_clean
"""
import os
import sys
from pathlib import Path

from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from nbdev.frontmatter import FrontmatterProc
from nbdev.process import NBProcessor


def skip(cell) -> bool:
    "True for cells nbdev_test would not run."
    if cell.cell_type != "code": return True
    return (getattr(cell, "directives_", {}) or {}).get("eval:", [""])[0].lower() == "false"


def run(path: Path) -> None:
    "Execute one notebook as nbdev_test does and store its outputs (by cell id) in the notebook file."
    path = path.resolve()
    ran = NBProcessor(path, procs=FrontmatterProc, process=True).nb   # cells carry their #| directives
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        CaptureShell(path, mpl_format="png").run_all(ran, exc_stop=True, preproc=skip)
    finally:
        os.chdir(cwd)
    outputs = {c.id: [o for o in c.get("outputs", []) if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
               for c in ran.cells if not skip(c)}        # cells not run (eval: false) keep the outputs they have
    nb = read_nb(path)
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.id in outputs: cell.outputs = outputs[cell.id]
    write_nb(nb, path)
    print(f"executed {path}")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        run(Path(p))
