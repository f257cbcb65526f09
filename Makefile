# Two commands a new user needs: `make run` and `make test`. Both set up .venv first.
VENV ?= .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))

.PHONY: install run test lint format bench clean

install: $(BIN)/.installed

$(BIN)/.installed: uv.lock pyproject.toml
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv sync --frozen --all-extras --inexact --quiet
	@touch $@

run: install ## Serve the product on embedded Redis and SQLite under ./var
	$(BIN)/dispatcher dev

test: install ## The whole suite
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install ## Measure speed, cost and scale against a direct call (a few minutes; var/bench/)
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
