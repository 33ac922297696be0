# texteval — the two commands that matter: `make demo` and `make test`.
# Both set up .venv first (idempotent: seconds when nothing changed).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup model demo grade run test test-fast lint schemas docs bench gpu-check clean

# Quiet: pip's and transformers' output goes to .cache/setup.log (shown when a step fails).
setup:
	@scripts/setup-venv.sh
	@$(PY) -m consumer.tools.cli prepare-model --log .cache/setup.log >/dev/null

model: setup

# The whole service on this machine: embedded broker, consumer with the real
# engine (Gemma 3 270M on CPU), the 3 sample jobs streamed live, clean stop.
# The terminal shows the product's lines; the libraries' go to .cache/demo.log.
demo: setup
	@$(VENV)/bin/texteval demo --file data/sample_requests.jsonl --out results.csv --log .cache/demo.log

# Offline: grade the 20 sample items without Kafka.
grade: setup
	$(VENV)/bin/texteval grade data/sample_items.csv --out results.csv

# Broker + consumer + HTTP gateway for manual use: open the printed page, or
# `.venv/bin/python scripts/test_client.py`, or `.venv/bin/texteval submit FILE --follow`.
run: setup
	@$(VENV)/bin/texteval broker --port 9092 & broker=$$!; \
	trap 'kill $$gateway $$broker 2>/dev/null' EXIT; \
	for _ in $$(seq 100); do (: </dev/tcp/127.0.0.1/9092) 2>/dev/null && break; sleep 0.1; done; \
	export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 KAFKA_CREATE_TOPICS=true \
	KAFKA_SESSION_TIMEOUT_MS=2000 KAFKA_HEARTBEAT_INTERVAL_MS=500; \
	$(VENV)/bin/texteval gateway --host 127.0.0.1 --port 8080 & gateway=$$!; \
	echo "texteval: page on http://127.0.0.1:8080/ (API: POST /evaluate, GET /stream/<job_id>); the model loads first"; \
	$(VENV)/bin/texteval run

# Two workers on a 2-core machine: the model's tests on one, the broker and
# process tests (mostly waiting) on the other. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2

test: setup lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

# Unit + broker tests: no service processes, no model, no benchmark harness
# (tiers: tests/tiers.py registers and assigns them).
test-fast: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup -m "not process and not engine and not bench"

lint: setup
	$(VENV)/bin/ruff check consumer tests scripts deploy bench
	$(VENV)/bin/ruff format --check consumer tests scripts deploy bench
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --follow-imports=silent bench
	$(VENV)/bin/lint-imports

schemas: setup
	$(VENV)/bin/texteval schemas --dir schemas

# docs/configuration.md from consumer/settings.py (tests/deploy/test_docs.py fails while it is stale).
docs: setup
	$(VENV)/bin/texteval config-docs

# Benchmarks B1-B5 (issue 5) at full size on a quiet machine: ~10-15 minutes on
# 2 cores, most of it B1/B2 on the real engine. Adds a dated section on top
# of docs/benchmarks.md. `$(PY) -m bench.run --smoke` checks the harness in ~1 min.
bench: setup
	$(PY) -m bench.run --out docs/benchmarks.md

# The first GPU host (docs/gpu.md): the CUDA build of vLLM in .venv, then the
# engine tests, a warm start, the canary and a 2,000-text job against the
# production model, and the seed's three figures, pass or fail. Without a GPU
# (no nvidia-smi) the CPU venv is left alone and the doctor says so, exiting 2.
gpu-check:
	@if command -v nvidia-smi >/dev/null 2>&1; then TEXTEVAL_TARGET=gpu scripts/setup-venv.sh; else scripts/setup-venv.sh; fi
	$(VENV)/bin/texteval doctor --gpu

clean:
	rm -rf $(VENV) .cache results.csv .pytest_cache .mypy_cache .ruff_cache
