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
# Everything is installed from lock files with hashes (requirements/README.md), never from the
# ranges in pyproject.toml: `make lock` turns those ranges into the pins.
DEV_LOCK := requirements/dev.txt
EMBEDDED_LOCK := requirements/embedded.txt
RUNTIME_LOCK := requirements/runtime.txt
TOOLS_LOCK := requirements/tools.txt
# One stamp per lock: pip runs again only when that lock or pyproject.toml is newer than it.
INSTALLED := $(VENV)/.installed-dev
INSTALLED_EMBEDDED := $(VENV)/.installed-embedded
NEW_MASTER_KEY := $(BIN)/python -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'

# make bench: see tests/bench/bench.py.
BENCH_DURATION ?= 20
PG_ADMIN := psql -h 127.0.0.1 -U postgres -d postgres -X -q -v ON_ERROR_STOP=1

.PHONY: help install run test lint audit lock lock-upgrade bench chaos clean distclean

help:
	@echo 'make run        start the gateway on embedded PostgreSQL + Redis under ./var, with simulators'
	echo 'make test       ruff, mypy, import contracts, dependency audit and pytest (needs PostgreSQL and Redis on 127.0.0.1)'
	echo 'make lint       ruff, mypy, import contracts and the dependency audit (pip-audit) only'
	echo 'make lock       rewrite requirements/*.txt after a change to pyproject.toml (keeps other pins)'
	echo 'make lock-upgrade  the same, upgrading every pin to the newest release that fits'
	echo 'make bench      load test POST /v1/payments against a gateway on the local PostgreSQL/Redis'
	echo 'make chaos      the full fault-injection suite (restarts the local PostgreSQL and Redis!)'
	echo 'make install    create .venv and install the gateway with its dev tools'
	echo 'make clean      remove caches and build files; make distclean also removes .venv and var/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# install_lock LOCK: exactly the hashed pins of LOCK (pip refuses a file whose hash differs, and
# a dependency the lock lacks), then the project itself without its dependencies and built with
# the locked setuptools. `pip check` fails when pyproject.toml needs a package the lock lacks.
define install_lock
	$(BIN)/python -m pip install --quiet --require-hashes -r $(1)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check || { echo 'make: the lock does not satisfy pyproject.toml: run make lock' >&2; exit 1; }
endef

# dev.txt holds everything embedded.txt holds, at the same versions, so it satisfies that stamp too.
$(INSTALLED): $(DEV_LOCK) pyproject.toml | $(BIN)/python
	$(call install_lock,$(DEV_LOCK))
	touch $@ $(INSTALLED_EMBEDDED)

$(INSTALLED_EMBEDDED): $(EMBEDDED_LOCK) pyproject.toml | $(BIN)/python
	$(call install_lock,$(EMBEDDED_LOCK))
	touch $@

install: $(INSTALLED)

# uv writes the locks: universal (every platform's markers), for Python 3.11, with the hashes of
# every file of each pinned version. An existing lock's pins are kept unless LOCK_ARGS says
# --upgrade or --upgrade-package NAME. embedded.txt and runtime.txt are resolved under dev.txt,
# so each package has one version everywhere. [build-system] requires goes in on stdin.
$(BIN)/uv: $(TOOLS_LOCK) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r $(TOOLS_LOCK)
	touch $@
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
  --custom-compile-command 'make lock' $(LOCK_ARGS)
BUILD_REQUIRES = $(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'

lock: $(BIN)/uv
	$(BUILD_REQUIRES) | $(UV_COMPILE) pyproject.toml - --extra dev --extra embedded -o $(DEV_LOCK)
	$(BUILD_REQUIRES) | $(UV_COMPILE) pyproject.toml - --extra embedded -c $(DEV_LOCK) -o $(EMBEDDED_LOCK)
	$(BUILD_REQUIRES) | $(UV_COMPILE) pyproject.toml - -c $(DEV_LOCK) -o $(RUNTIME_LOCK)
	$(UV_COMPILE) requirements/tools.in -o $(TOOLS_LOCK)

lock-upgrade:
	$(MAKE) lock LOCK_ARGS=--upgrade

# GATEWAY_MASTER_KEY encrypts merchants' secrets in var/pgdata: generated once into
# var/master.key and reused on every later run, unless the environment or gateway.env sets one.
# `gateway demo` runs with GATEWAY_ALLOW_DEV_KEYS=true (the development keys and simulators of
# config/routing.yaml; `gateway serve` refuses them) and keeps var/ readable by this user only.
run: $(INSTALLED_EMBEDDED)
	@mkdir -p -m 700 var
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
	$(MAKE) audit

# pip-audit over the pins of every lock (dev.txt holds those of embedded.txt and runtime.txt):
# a known advisory fails; an advisory service that cannot be reached only warns
# (docs/security.md). AUDIT_ARGS='--service osv' or '--ignore-vuln ID' go to scripts/audit_lock.py.
audit: $(INSTALLED)
	$(BIN)/python scripts/audit_lock.py $(AUDIT_ARGS) $(DEV_LOCK) $(TOOLS_LOCK)

# dev.txt holds the embedded extra too, so that tests/integration/test_embedded.py (what
# `make run` stands on) runs in CI instead of being skipped.
test: $(INSTALLED)
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
