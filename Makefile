# The two commands of the README, plus helpers. Each creates the pinned environment if missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run paper tasks test lint bench env lock clean-env report

# Create .venv from the lock (exact versions of every package), then install drlx itself.
# Then the oneDNN convolutions (drlx/ops): never fails the set-up, says so if not built.
$(STAMP): requirements.lock pyproject.toml drlx/ops/onednn_conv.cc
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m drlx.ops.build
	@touch $(STAMP)

env: $(STAMP)

# Main job: the default pipeline (embedded experiments) through DVC, JOBS stages at a time
# (`drlx repro`: most stages keep one core busy; JOBS=1 is plain `dvc repro`'s order).
JOBS ?= 2
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/drlx repro --jobs $(JOBS)

# The paper-scale experiments (datasets, Inception weights and accelerators needed; see README).
paper: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/dvc repro stages/paper/dvc.yaml

# The downstream tasks (guidance, composition, inpainting; README): conditional experiments trained
# and asked, on the embedded data, after (and beside) the default pipeline.
tasks: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/drlx repro --jobs $(JOBS) stages/tasks/dvc.yaml

# The test suite (what CI runs): one worker per core (pytest-xdist), each test file on one worker
# (a file's module-scoped fixtures, e.g. a DVC run, are built once).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# One page of every experiment's numbers with their audit status (after `make run`).
report: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/drlx report

lint: $(STAMP)
	$(BIN)/ruff check .

# The network benchmark, next to the same network in PyTorch's CPU build (oneDNN), run by the
# same script on the same machine: .venv-torch holds torch (the CPU wheel) and numpy only.
TORCH_VENV := .venv-torch
TORCH_PIN := $(shell sed -n 's/^torch = \["\(torch==[^"]*\)"\]/\1/p' pyproject.toml)
NUMPY_PIN := $(shell grep -o 'numpy==[0-9.]*' pyproject.toml)
$(TORCH_VENV)/.installed: pyproject.toml
	@test -x $(TORCH_VENV)/bin/python || $(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install --quiet $(TORCH_PIN) $(NUMPY_PIN)
	@touch $@

bench: $(STAMP) $(TORCH_VENV)/.installed
	DRLX_BENCH_TORCH_PYTHON=$(TORCH_VENV)/bin/python $(BIN)/python benchmarks/bench_network.py

# Re-lock after changing pyproject.toml's pins (needs a working .venv).
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable > requirements.lock

clean-env:
	rm -rf $(VENV)
