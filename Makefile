# mailpipe — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test lint test-unit test-integration services bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

## run: create the venv, install, and run everything in one process (SQLite + in-memory broker)
run: $(VENV)/.installed
	$(BIN)/mailpipe serve

## services: install/start what the integration tests talk to (Dovecot, PostgreSQL, RabbitMQ)
services:
	bash tests/setup-machine.sh

## lint: the lint and type gate: ruff (rules in pyproject.toml [tool.ruff]), then mypy ([tool.mypy])
lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy

## test: install what tests need, run the gate (`lint`; a finding fails the target), then the whole suite:
## unit tests on both cores (pytest-xdist), then the integration tests one at a time (they share this run's
## Dovecot, RabbitMQ vhost and PostgreSQL database)
test: lint services
	$(BIN)/pytest -m "not integration" -n 2
	$(BIN)/pytest -m integration

test-unit: $(VENV)/.installed-test
	$(BIN)/pytest -m "not integration" -n 2

test-integration: $(VENV)/.installed-test services
	$(BIN)/pytest -m integration

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
