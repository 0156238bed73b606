# The two commands a new user needs: `make run` (the gateway on embedded databases, with the
# channel simulators) and `make test` (lint, types, import contracts and the whole test suite
# against the local PostgreSQL and Redis). Everything runs from ./.venv; nothing is installed
# globally.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One stamp per set of extras: pip runs again only when pyproject.toml is newer than it.
INSTALLED := $(VENV)/.installed-dev
INSTALLED_EMBEDDED := $(VENV)/.installed-dev-embedded
NEW_MASTER_KEY := $(BIN)/python -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'

# make bench: see tests/bench/bench.py.
BENCH_DURATION ?= 20
PG_ADMIN := psql -h 127.0.0.1 -U postgres -d postgres -X -q -v ON_ERROR_STOP=1

.PHONY: help install run test lint bench chaos clean distclean

help:
	@echo 'make run        start the gateway on embedded PostgreSQL + Redis under ./var, with simulators'
	echo 'make test       ruff, mypy, import contracts and pytest (needs PostgreSQL and Redis on 127.0.0.1)'
	echo 'make lint       ruff, mypy and import contracts only'
	echo 'make bench      load test POST /v1/payments against a gateway on the local PostgreSQL/Redis'
	echo 'make chaos      the full fault-injection suite (restarts the local PostgreSQL and Redis!)'
	echo 'make install    create .venv and install the gateway with its dev tools'
	echo 'make clean      remove caches and build files; make distclean also removes .venv and var/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# A superset of $(INSTALLED), so it satisfies that stamp too.
$(INSTALLED_EMBEDDED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	touch $@ $(INSTALLED)

install: $(INSTALLED)

# GATEWAY_MASTER_KEY encrypts merchants' secrets in var/pgdata: generated once into
# var/master.key and reused on every later run, unless the environment or gateway.env sets one.
run: $(INSTALLED_EMBEDDED)
	@mkdir -p var
	if [ -z "$${GATEWAY_MASTER_KEY:-}" ] && ! grep -qs '^GATEWAY_MASTER_KEY=' gateway.env; then
	  if [ ! -s var/master.key ]; then
	    (umask 077 && $(NEW_MASTER_KEY) > var/master.key)
	    echo "make run: generated GATEWAY_MASTER_KEY into var/master.key (keep it with var/)"
	  fi
	  GATEWAY_MASTER_KEY="$$(cat var/master.key)"
	  export GATEWAY_MASTER_KEY
	fi
	exec $(BIN)/gateway demo

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The embedded extra is installed for the tests too, so that tests/integration/test_embedded.py
# (what `make run` stands on) runs in CI instead of being skipped.
test: $(INSTALLED_EMBEDDED)
	$(MAKE) lint
	$(BIN)/pytest -q

# Simulators in a process of their own, one then two gateway processes, a bare aiohttp endpoint
# as the reference; add BENCH_ARGS=--seed-rows=10000000 for latency against a large table.
bench: $(INSTALLED)
	$(BIN)/python tests/bench/bench.py --duration $(BENCH_DURATION) $(BENCH_ARGS)

# The fault-injection suite's full form (tests/chaos, pytest marker `chaos`): real gateway
# processes under kill -9, faulty channels, a slow receiver, two processes, schemathesis, and
# restarts of this machine's shared PostgreSQL and Redis. `make test` runs its short form.
# Figures: var/chaos/*.json (docs/reliability.md).
chaos: $(INSTALLED)
	$(BIN)/pytest -m chaos tests/chaos -v

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	rm -f var/bench-merchant.json var/bench-gateway.log
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# var/ holds the embedded databases and the master key that decrypts their secrets.
distclean: clean
	pid=$$(head -n 1 var/pgdata/postmaster.pid 2>/dev/null || true)
	if [ -n "$$pid" ] && kill -0 "$$pid" 2>/dev/null; then
	  echo "the embedded PostgreSQL under var/ is running (pid $$pid): stop the gateway first" >&2
	  exit 1
	fi
	rm -rf $(VENV) var
