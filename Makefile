# The two commands a newcomer needs: `make demo` (the main job) and `make test` (the whole suite).
# Both set up .venv first (scripts/setup_env.sh; idempotent, seconds when up to date).
PY := .venv/bin/python

.PHONY: setup test test-fast demo

setup:
	@scripts/setup_env.sh

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

demo: setup
	@scripts/demo.sh
