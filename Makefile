# Two entry points: `make run` (the service) and `make test` (everything CI checks).
VENV ?= .venv
BIN := $(VENV)/bin
BENCH ?= ../shared/bench

.PHONY: run test test-fast lint eval-gate

$(BIN)/rag: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/rag

run: $(BIN)/rag
	$(BIN)/rag serve

lint: $(BIN)/rag
	$(BIN)/ruff check rag tests bench
	$(BIN)/ruff format --check rag tests bench
	$(BIN)/mypy rag

# The fast lane: no model, no server, no browser (under a minute).
test-fast: $(BIN)/rag
	$(BIN)/pytest

eval-gate: $(BIN)/rag
	$(BIN)/rag eval --gate --bench-dir $(BENCH)

test: lint
	$(BIN)/pytest -m ""
	$(MAKE) eval-gate
