# Set-up is part of every target: `make run` and `make test` work on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check lint bench setup data services clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,postgres,cluster]"
	$(BIN)/python -c "from tune_losses.losses import fused; print(fused.build())"
	touch $(STAMP)

setup: $(STAMP) data

# Fashion-MNIST offline from Debian's package, when apt is there (otherwise: see README).
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
	  echo "note: could not install dataset-fashion-mnist; its test will be skipped"; fi

# What the tests use besides Ray and MLflow: a PostgreSQL server (tests/e2e/test_postgres.py), headless Chromium
# (tests/e2e/test_browser.py) and Compose's config check (tests/e2e/test_docker.py), from Debian's packages when apt is
# there and we are root; otherwise those tests are skipped (failed under CI).
services:
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  missing=""; \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	  [ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	  command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	  command -v tmux >/dev/null || missing="$$missing tmux"; \
	  if [ -n "$$missing" ]; then echo "installing$$missing (Debian) for the tests"; \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1)) || \
	    echo "note: could not install$$missing; the tests that need them are skipped"; fi; fi

run: setup
	$(BIN)/tune-losses sweep quickstart

# ruff (lint, then the formatting) and mypy on tune_losses/, as configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The inner loop: lint, types and the fast tests (not marked slow), under 90 s on 2 CPUs.
check: lint
	$(BIN)/python -m pytest -q -m "not slow"

# Everything (what CI runs: .ci/run).
test: setup services lint
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/losses.py
	$(BIN)/python benchmarks/repeats.py
	$(BIN)/python benchmarks/sweep_overhead.py

clean:
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache
