"""Rebuild the bundled demo files (pyacemaker/data/): step-4 example, MACE teacher, model card.

Usage: .venv/bin/python tools/make_demo_assets.py [--no-train]
"""
import json
import sys

from pyacemaker.demo_data import make_demo_assets

if __name__ == "__main__":
    card = make_demo_assets(train="--no-train" not in sys.argv)
    print(json.dumps(card.get("test_vs_emt", {}), indent=1))
