# texteval — the two commands that matter: `make demo` and `make test`.
# Both set up .venv first (idempotent: seconds when nothing changed).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup model demo test test-fast lint schemas clean

setup:
	@scripts/setup-venv.sh
	@$(PY) -m consumer.cli prepare-model >/dev/null

model: setup

# Grade the 20 sample items with the real engine (SmolLM2-135M on CPU).
demo: setup
	$(VENV)/bin/texteval grade data/sample_items.csv --out results.csv

test: setup lint
	$(PY) -m pytest -q

# Everything except tests that load the real engine.
test-fast: setup
	$(PY) -m pytest -q -m "not engine"

lint: setup
	$(VENV)/bin/ruff check consumer tests
	$(VENV)/bin/ruff format --check consumer tests
	$(VENV)/bin/mypy

schemas: setup
	$(VENV)/bin/texteval schemas --dir schemas

clean:
	rm -rf $(VENV) .cache results.csv .pytest_cache .mypy_cache .ruff_cache
