# vzfleet — the two commands are `make run` and `make test` (run as root on Debian 12).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

.PHONY: install run test check unit privileged bench clean help

help:
	@echo "make install  apt packages, CRIU >= 4.2, .venv, vz* commands in /usr/local/sbin (idempotent)"
	@echo "make run      install, start the node agent, create and start demo container 101, vzlist"
	@echo "make test     install, static checks, the whole test suite (unit + privileged + integration)"
	@echo "make check    ruff, mypy --strict, import layering"
	@echo "make bench    benchmarks (print figures and ratios against a baseline)"

install:
	@bash scripts/install-system.sh >/dev/null
	@bash scripts/install-python.sh

run: install
	@bash scripts/demo.sh

check:
	$(VENV)/bin/ruff check agent scheduler cli tests integration bench
	$(VENV)/bin/mypy agent scheduler cli bench/migration.py
	$(VENV)/bin/lint-imports

test: install
	$(MAKE) --no-print-directory check
	$(PY) -m pytest -q tests integration

unit:
	$(PY) -m pytest -q tests -m "not privileged"

bench: install
	@for b in bench/*; do [ -x "$$b" ] && "$$b"; done; true

clean:
	rm -rf $(VENV) vzapi .pytest_cache .mypy_cache .ruff_cache
