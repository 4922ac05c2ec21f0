# The two commands a user needs: `make run` and `make test`. Each sets itself up
# on a fresh machine with Python 3.11+ (installs uv with pip when it is missing).

SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PYTEST_ARGS ?=

.PHONY: setup run test lint typecheck pytest protos clean browser bundle dev bench redis

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

# Headless Chromium opens the `dm graph` page in a test; installed where we can
# (as root, or through passwordless sudo). With CI=true a missing Chromium fails
# that test instead of skipping it (tests/conftest.py).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else false; fi && \
	    ($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "note: chromium is not installed; the graph page test will skip (fail with CI=true)"

# Tests marked `emulator` start the gcloud Firestore/Pub/Sub emulators themselves.
pytest: setup browser
	$(UV) run pytest -n 2 $(PYTEST_ARGS)

test: lint typecheck pytest

# Celery's broker in the bench; installed where we can (the bench skips Celery without it).
redis:
	@command -v redis-server >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null 2>&1; } || \
	  echo "note: redis-server is not installed; the bench will skip Celery"

# dm beside Prefect and Celery (their own envs under .bench/), then dm alone (engine
# scale, Firestore cost on the emulator): writes BENCHMARKS.md and bench/results/.
# Not part of `make test`; takes the better part of an hour. BENCH_ARGS: see
# `uv run python -m bench.peers --help`.
BENCH_ARGS ?=
bench: setup redis
	$(UV) run python -m bench.peers $(BENCH_ARGS)

protos: setup
	$(UV) run python -m scripts.gen_protos

# The local rehearsal of the deployment: four functions-framework processes, the
# Firestore/Pub/Sub emulators, a Cloud Tasks stand-in (Ctrl-C stops everything).
dev: setup
	$(UV) run dm dev

# build/functions.zip: what terraform deploys (main.py, the packages, pinned requirements.txt).
bundle: setup
	$(UV) run python -m scripts.bundle

clean:
	rm -rf .dm .venv .mypy_cache .ruff_cache .pytest_cache build .bench
