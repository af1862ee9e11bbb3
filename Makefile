# `make demo` and `make test` set everything up themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast tools lint format clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Each demo is a new sweep (its own folder under runs/ and MLflow experiment).
demo: $(STAMP)
	$(BIN)/sweep run configs/digits_asha.yaml --name demo-$$(date +%Y%m%d-%H%M%S)

# Tools the tests call and pip cannot install: shellcheck (lints the rendered job scripts) and
# PostgreSQL (tests/postgres.py starts a server of its own; Debian keeps it off PATH).
tools:
	command -v shellcheck >/dev/null || { apt-get update -qq && apt-get install -y -qq shellcheck; }
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq postgresql; }

# Two pytest workers (pytest-xdist): much of a sweep test is waiting on processes that start
# (Ray, MLflow servers, SLURM daemons). `loadfile` keeps each test module on one worker, so a
# module's shared sweeps (module fixtures) are made once; modules go out longest first
# (tests/conftest.py), not by their number of tests. A worker that runs a SLURM test starts its
# own SLURM test cluster (on free ports, its job ids apart from the other's). The 30 slowest
# tests are printed.
test: $(STAMP) tools
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=30

# The tests that need neither Ray nor a server nor SLURM (seconds, not minutes).
test-fast: $(STAMP) tools
	$(BIN)/python -m pytest -m "not slow and not slurm"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) runs mlflow.db mlartifacts mlruns .pytest_cache
