# Two commands for a newcomer: `make run` (set up and run the terminal on its embedded
# defaults) and `make test` (set up and run the whole test suite). Everything else is a step of those.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup models run dashboard test lint bench bench-liveness clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

models: setup
	$(BIN)/python -m models.build

run: models
	$(BIN)/python -m edge.demo

# The central dashboard again over what the last `make run` left (demo logins in its output).
dashboard: setup
	$(BIN)/edge central serve --db sqlite:///var/demo/central/central.sqlite

test: models
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check edge models tests bench provisioning
	$(BIN)/ruff format --check edge models tests bench provisioning
	$(BIN)/mypy edge

bench: models
	$(BIN)/python -m bench

bench-liveness: models
	$(BIN)/python -m bench.liveness_eval

clean:
	rm -rf $(VENV) .venv-build* models/out models/cache var
