# The two commands a user needs: `make run` and `make test`. Each sets itself up
# on a fresh machine with Python 3.11+ (installs uv with pip when it is missing).

SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PYTEST_ARGS ?=

.PHONY: setup run test lint typecheck pytest protos clean

setup:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@$(UV) sync --locked --quiet

run: setup
	$(UV) run dm run examples/wordcount/run.yaml

lint: setup
	$(UV) run ruff check .
	$(UV) run ruff format --check .

typecheck: setup
	$(UV) run mypy

pytest: setup
	$(UV) run pytest -n 2 $(PYTEST_ARGS)

test: lint typecheck pytest

protos: setup
	$(UV) run python -m scripts.gen_protos

clean:
	rm -rf .dm .venv .mypy_cache .ruff_cache .pytest_cache
