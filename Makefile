VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint test demo

$(BIN)/pytest:
	python3 -m venv $(VENV) && $(BIN)/pip install -e '.[test]'

install: $(BIN)/pytest

lint: install
	$(BIN)/ruff check pgbg migrations tests
	$(BIN)/mypy

test: install
	$(BIN)/pytest

demo: install
	$(BIN)/pgbg demo
