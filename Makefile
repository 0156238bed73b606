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

# make bench: a throw-away database on the local PostgreSQL, the local Redis, a port of its own.
BENCH_DB := gateway_bench
BENCH_PORT ?= 8089
BENCH_DURATION ?= 20
BENCH_CONCURRENCY ?= 32
BENCH_REDIS_URL ?= redis://127.0.0.1:6379/0
PG_ADMIN := psql -h 127.0.0.1 -U postgres -d postgres -X -q -v ON_ERROR_STOP=1

.PHONY: help install run test lint bench clean distclean

help:
	@echo 'make run        start the gateway on embedded PostgreSQL + Redis under ./var, with simulators'
	echo 'make test       ruff, mypy, import contracts and pytest (needs PostgreSQL and Redis on 127.0.0.1)'
	echo 'make lint       ruff, mypy and import contracts only'
	echo 'make bench      load test POST /v1/payments against a gateway on the local PostgreSQL/Redis'
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

bench: $(INSTALLED)
	@mkdir -p var
	export GATEWAY_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/$(BENCH_DB)
	export GATEWAY_REDIS_URL='$(BENCH_REDIS_URL)' GATEWAY_REDIS_PREFIX="gwbench:$$$$:"
	export GATEWAY_HOST=127.0.0.1 GATEWAY_PORT=$(BENCH_PORT)
	export GATEWAY_PUBLIC_URL=http://127.0.0.1:$(BENCH_PORT)
	export GATEWAY_SIMULATORS=true GATEWAY_LOG_LEVEL=warning
	GATEWAY_MASTER_KEY="$$($(NEW_MASTER_KEY))"
	export GATEWAY_MASTER_KEY
	gw_pid=
	cleanup() {
	  status=$$?
	  if [ -n "$$gw_pid" ]; then
	    kill "$$gw_pid" 2>/dev/null || true
	    for _ in $$(seq 50); do kill -0 "$$gw_pid" 2>/dev/null || break; sleep 0.2; done
	    kill -9 "$$gw_pid" 2>/dev/null || true
	    wait "$$gw_pid" 2>/dev/null || true
	  fi
	  if [ "$$status" -ne 0 ]; then
	    echo "make bench failed; the gateway's log (var/bench-gateway.log) ends with:" >&2
	    tail -n 40 var/bench-gateway.log >&2 2>/dev/null || true
	  fi
	  $(PG_ADMIN) -c 'DROP DATABASE IF EXISTS $(BENCH_DB) WITH (FORCE)' || true
	}
	trap cleanup EXIT
	$(PG_ADMIN) -c 'DROP DATABASE IF EXISTS $(BENCH_DB) WITH (FORCE)' -c 'CREATE DATABASE $(BENCH_DB)'
	$(BIN)/gateway migrate
	$(BIN)/gateway merchant create --name bench --json > var/bench-merchant.json
	$(BIN)/gateway serve > var/bench-gateway.log 2>&1 &
	gw_pid=$$!
	$(BIN)/python tests/bench/loadgen.py --url http://127.0.0.1:$(BENCH_PORT) \
	  --merchant-file var/bench-merchant.json --wait-ready 60 --server-pid "$$gw_pid" \
	  --concurrency $(BENCH_CONCURRENCY) --duration $(BENCH_DURATION)

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
