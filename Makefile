# trainviz: `make demo` (set up + run the main job), `make test` (set up with the dev extra + run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EPOCHS ?= 6
DATA ?= shapes

.PHONY: demo test test-oldest-lightning lint setup setup-dev browser benchmarks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# `make demo` installs trainviz with `lightning` (what `import lightning as L` needs); `pip install -e
# ".[pytorch-lightning]"` gives the other namespace. The dev extra installs both.
$(VENV)/.setup: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[lightning]"
	touch $@

# Four references installed without their dependencies: Quantus (the sanity checks' oracle) and
# imagecorruptions-imaug (the ImageNet-C oracle) would bring
# opencv-python over the dev extra's opencv-python-headless; torch-lucent (MaxOut's reference, in a test and
# the benchmark) pins kornia<=0.4.1 and notebook packages it does not need; torchattacks (PGD's reference, in a
# test and benchmarks/pgd_cost.py) pins requests~=2.25.1 and needs only torch, torchvision, scipy and tqdm.
$(VENV)/.setup-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps "quantus==0.6.0" "torch-lucent==0.1.8" \
		"imagecorruptions-imaug==1.1.5" "torchattacks==3.5.1"
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

# The whole suite runs on `pytorch_lightning`; the suite-wide tests (no trace, hooks, warn once, resume, DDP, presets,
# every logger read back, progress bars) run again on `lightning.pytorch` (TRAINVIZ_LIGHTNING, read by tests/_support.py).
SUITE_WIDE := tests/callbacks/test_suite.py tests/sinks/test_loggers.py tests/core/test_progress.py \
  tests/callbacks/test_embedding_callback.py::test_resumed_run_keeps_every_epoch_in_the_projector_and_the_animation

test: setup-dev browser lint
	$(BIN)/python -m pytest -q
	TRAINVIZ_LIGHTNING=lightning $(BIN)/python -m pytest -q $(SUITE_WIDE)

# The oldest Lightning that pyproject.toml claims, over the dev venv (its torch and everything else kept): both
# namespaces at 2.6.0, the namespace tests and the suite-wide tests under each.
OLDEST_LIGHTNING := 2.6.0
test-oldest-lightning: setup-dev
	$(BIN)/python -m pip install --quiet --no-deps --target .lightning-$(OLDEST_LIGHTNING) \
	  "lightning==$(OLDEST_LIGHTNING)" "pytorch-lightning==$(OLDEST_LIGHTNING)"
	PYTHONPATH=.lightning-$(OLDEST_LIGHTNING) $(BIN)/python -m pytest -q tests/core/test_namespace.py $(SUITE_WIDE)
	PYTHONPATH=.lightning-$(OLDEST_LIGHTNING) TRAINVIZ_LIGHTNING=lightning $(BIN)/python -m pytest -q $(SUITE_WIDE)

benchmarks: setup-dev
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache .lightning-*
