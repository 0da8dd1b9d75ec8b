# Everything a fresh machine needs goes through these targets: `make demo`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := cosmos-server/node_modules/.installed

.PHONY: venv node test lint format demo clean bench bench-quick soak

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

node: $(NODE_STAMP)

$(NODE_STAMP): cosmos-server/package-lock.json
	npm ci --prefix cosmos-server --no-audit --no-fund --loglevel=error
	touch $@

test: venv node
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy storage broker producer worker agentstore_cli agentstore_langgraph tests bench
	$(BIN)/hadolint Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $@

bench: $(BENCH_STAMP) node
	$(BIN)/python -m bench.run

bench-quick: $(BENCH_STAMP) node
	$(BIN)/python -m bench.run --quick

# The chaos soak on its own, long, and docs/RELIABILITY.md rewritten from its audit.
SOAK_S ?= 600
soak: venv
	SOAK_S=$(SOAK_S) AGENTSTORE_WRITE_RESULTS=1 SOAK_COMMAND="make soak SOAK_S=$(SOAK_S)" \
		$(BIN)/python -m pytest tests/reliability/test_soak.py -q -s

demo: venv
	$(BIN)/python -m agentstore_cli.demo

clean:
	rm -rf $(VENV) cosmos-server/node_modules .pytest_cache .mypy_cache .ruff_cache
