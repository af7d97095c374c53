# trainviz: `make demo` (set up + run the main job), `make test` (set up with the dev extra + run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EPOCHS ?= 6
DATA ?= shapes

.PHONY: demo test lint setup setup-dev browser benchmarks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.setup: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Three references installed without their dependencies: Quantus (the sanity checks' oracle) would bring
# opencv-python over the dev extra's opencv-python-headless; torch-lucent (MaxOut's reference, in a test and
# the benchmark) pins kornia<=0.4.1 and notebook packages it does not need; torchattacks (PGD's reference, in a
# test and benchmarks/pgd_cost.py) pins requests~=2.25.1 and needs only torch, torchvision, scipy and tqdm.
$(VENV)/.setup-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps "quantus==0.6.0" "torch-lucent==0.1.8" "torchattacks==3.5.1"
	touch $@

setup: $(VENV)/.setup
setup-dev: $(VENV)/.setup-dev

# Headless Chromium (Debian's package) for the HTML report tests.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }

demo: setup
	$(BIN)/trainviz demo --data $(DATA) --epochs $(EPOCHS) --out runs/demo

# Lint and types (ruff, mypy on the public API: see pyproject.toml); part of `make test`, so CI runs it.
lint: setup-dev
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

test: setup-dev browser lint
	$(BIN)/python -m pytest -q

benchmarks: setup-dev
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache
