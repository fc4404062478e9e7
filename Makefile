# Two commands for a user: `make repro` (the whole DVC pipeline) and `make test` (the suite).
# Both create .venv on first use. torch/torchvision are pinned here because those exact
# releases install from local disk on our machines; every other dependency is in pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install test test-fast lint format repro repro-cpu repro-profile select bench strip clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "mmpd needs Python >= 3.10"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Unit tests + the end-to-end smoke run of the DVC pipeline; pytest's exit 5 (nothing
# collected) is not a failure. gpu / network tests are opt-in (pytest -m gpu).
test: install lint
	$(BIN)/python -m pytest -m "not gpu and not network" || [ $$? -eq 5 ]

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not gpu and not network" || [ $$? -eq 5 ]

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

strip: install
	$(BIN)/nbstripout --keep-id notebooks/*.ipynb

# The whole pipeline; each stage streams its progress, then where the results are.
repro: install
	$(BIN)/dvc repro
	$(BIN)/python -m mmpd_core.cli summary

# Recipes chosen on held-out training shapes (reports/selection/<profile>/): needs Stage-1.
select: install
	$(BIN)/dvc repro pretrain_stage1
	$(BIN)/python -m mmpd_core.cli select

# The cpu profile (<= 90 min on 2 cores) in a fresh clone of HEAD (committed code), so the
# embedded results here stay as they are; its tables, per-run results and wall time land in
# reports/profiles/cpu/.
CPU_RUN ?= /tmp/mmpd-cpu-profile
PROFILE ?= cpu
repro-cpu: install
	rm -rf $(CPU_RUN) && git clone --quiet $(CURDIR) $(CPU_RUN)
	$(MAKE) -C $(CPU_RUN) repro-profile PROFILE=cpu
	rm -rf reports/profiles/cpu && mkdir -p reports/profiles/cpu
	cp -r $(CPU_RUN)/reports/tables $(CPU_RUN)/reports/results $(CPU_RUN)/profile_run.json \
	  reports/profiles/cpu/

# The pipeline under another profile, here (`dvc exp run -S profile=...`), timed.
repro-profile: install
	start=$$(date +%s) && $(BIN)/dvc exp run -S profile=$(PROFILE) && \
	  printf '{"profile": "%s", "git": "%s", "wall_s": %s}\n' $(PROFILE) \
	  "$$(git rev-parse HEAD)" "$$(( $$(date +%s) - start ))" > profile_run.json

bench: install
	$(BIN)/python benchmarks/bench_geometry.py
	$(BIN)/python benchmarks/bench_train_step.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
