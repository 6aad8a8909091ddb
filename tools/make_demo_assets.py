"""Rebuild the bundled demo files (pyacemaker/data/): step-4 example, MACE teacher, model card; or the two-head MACE.

Usage: .venv/bin/python tools/make_demo_assets.py [--no-train]
       .venv/bin/python tools/make_demo_assets.py --multihead    # only cuag_mace_2heads.model and .json (≈2 min)
"""
import json
import sys

from pyacemaker.demo_data import make_demo_assets, make_multihead_assets

if __name__ == "__main__":
    if "--multihead" in sys.argv:
        card = make_multihead_assets()
        print(json.dumps({"e0_eV": card["e0_eV"], "test_vs_labels": card["test_vs_labels"]}, indent=1))
    else:
        card = make_demo_assets(train="--no-train" not in sys.argv)
        print(json.dumps(card.get("test_vs_emt", {}), indent=1))
