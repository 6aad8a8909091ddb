"""README.md from nbs/index.ipynb (quarto, which nbdev_readme needs, is not installable here).

Markdown cells are copied (image paths made relative to the repository root); code cells become
```python blocks without nbdev directives, followed by their text output. Run: make readme
"""
import json
import re
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nb = json.loads((root / "nbs" / "index.ipynb").read_text())


def text_outputs(cell):
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream" and o.get("name") == "stdout":
            out.append("".join(o["text"]))
        elif "text/plain" in o.get("data", {}) and "image/png" not in o.get("data", {}):
            out.append("".join(o["data"]["text/plain"]))
    return "".join(out).rstrip()


parts = ["<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, then `make readme` -->"]
for cell in nb["cells"]:
    src = "".join(cell["source"])
    if cell["cell_type"] == "markdown":
        parts.append(re.sub(r"\]\((images/)", r"](nbs/\1", src))
    else:
        code = "\n".join(l for l in src.splitlines() if not l.startswith("#|")).strip()
        if not code:
            continue
        parts.append(f"```python\n{code}\n```")
        out = text_outputs(cell)
        if out:
            parts.append(f"```\n{out}\n```")
(root / "README.md").write_text("\n\n".join(parts) + "\n")
print("wrote README.md")
