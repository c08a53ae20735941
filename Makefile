# The CPU workflow. GPU users: see README.md ("On GPUs").
#   make demo    the pipeline on CPU with tiny local models on data_samples/
#                (BACKBONE=qwen2_5_vl or qwen3_vl: the same on that family; default llava_next)
#   make test    set up the CPU environment, lint (ruff), then run the whole test suite
#   make bench   speed and memory benchmarks (run by hand; prints a table)
#   make llamafactory-check   LLaMA-Factory post-trains a tiny Qwen2.5-VL on the demo's output (by hand)
VENV ?= .venv
BACKBONE ?= llava_next
PYTHON ?= python3
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup browser lint test demo bench llamafactory-check clean

setup:
	VENV=$(VENV) PYTHON=$(PYTHON) bash scripts/setup_cpu_env.sh

# Debian's chromium, for the report's browser tests (needs root or sudo when missing).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# ruff, configured in pyproject.toml: lint rules, then the formatting it enforces.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: setup browser lint
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	VENV=$(VENV) BACKBONE=$(BACKBONE) bash scripts/demo.sh

bench: setup
	@if ls bench/*.py >/dev/null 2>&1; then for b in bench/*.py; do $(PY) $$b || exit 1; done; \
	else echo "no benchmarks in bench/"; fi

llamafactory-check: setup
	VENV=$(VENV) bash scripts/llamafactory_check.sh

clean:
	rm -rf exp/demo exp/tiny exp/llamafactory-check .pytest_cache
