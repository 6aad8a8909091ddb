"""Packaging for pyacemaker: everything is read from settings.ini (nbdev 2 convention)."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read(Path(__file__).parent / "settings.ini")
cfg = cfg["DEFAULT"]

requirements = cfg.get("requirements", "").split()
extras = {"fit": cfg.get("fit_requirements", "").split(),            # pacemaker's TensorFlow
          "fit-nodeps": cfg.get("fit_nodeps_requirements", "").split(),  # install with --no-deps (see tools/install.sh)
          "distributed": cfg.get("distributed_requirements", "").split(),
          "dev": cfg.get("dev_requirements", "").split()}
console_scripts = cfg.get("console_scripts", "").split()

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license="Apache-2.0",
    url=cfg["git_url"],
    python_requires=">=" + cfg["min_python"],
    packages=setuptools.find_packages(include=["pyacemaker", "pyacemaker.*"]),
    package_data={"pyacemaker": ["data/*"]},
    include_package_data=True,
    install_requires=requirements,
    extras_require=extras,
    entry_points={"console_scripts": console_scripts, "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
