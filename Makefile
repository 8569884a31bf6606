# lampwatch — the two commands a newcomer runs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install demo test lint servers bench eval nightly clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lampwatch-sim demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# the real servers the tests start (.ci/packages.txt): installed now if root with apt, else one command to run
servers:
	bash .ci/ensure-servers

test: lint servers
	$(BIN)/pytest -q $(ARGS)

# nightly-size run: the decoder fuzzed with 100k hostile payloads (make test uses 1,500)
nightly: lint
	LAMPWATCH_FUZZ_EXAMPLES=100000 $(BIN)/pytest -q --timeout 3600 -k decoder_never_raises tests/gateway/test_core.py

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

eval: $(STAMP)
	$(BIN)/python -m bench.eval $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
