VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint test demo

$(BIN)/pytest:
	python3 -m venv $(VENV) && $(BIN)/pip install -e '.[test]'

install: $(BIN)/pytest

lint: install
	$(BIN)/ruff check pgbg migrations tests examples
	$(BIN)/mypy
	cd examples/shop && MYPYPATH=../.. ../../$(BIN)/mypy --strict shop migrations/env.py

test: install
	$(BIN)/pytest

demo: install
	$(BIN)/pgbg demo
