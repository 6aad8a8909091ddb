# pyacemaker: two commands for a new user (see README): `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS ?= 2
export OMP_WAIT_POLICY ?= PASSIVE
export MPLBACKEND ?= Agg
export TF_CPP_MIN_LOG_LEVEL ?= 2
WORK_DIR ?= runs/demo

.PHONY: install demo test sync-check nbtest pytest export bench assets clean readme notebooks bench-speed

install:
	@bash tools/install.sh

demo: install
	$(BIN)/pyacemaker demo --work-dir $(WORK_DIR)

test: install sync-check nbtest pytest

sync-check:
	@bash tools/check_sync.sh

nbtest:
	$(BIN)/nbdev_test --n_workers 1

pytest:
	$(BIN)/python -m pytest -q tests

export: install
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export

bench: install
	$(BIN)/python bench/bench_label.py
	OMP_NUM_THREADS=1 $(BIN)/python bench/bench_distributed.py

bench-speed: demo
	$(BIN)/python bench/bench_speed.py

assets: install
	$(BIN)/python tools/make_demo_assets.py

clean:
	rm -rf runs _proc _docs .pytest_cache

readme:
	$(BIN)/python tools/make_readme.py

notebooks: install
	$(BIN)/python tools/run_notebooks.py nbs/[0-9]*.ipynb nbs/index.ipynb && $(BIN)/nbdev_clean
