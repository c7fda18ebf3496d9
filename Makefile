# Set-up is part of every target: `make run` and `make test` work on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench setup data clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,postgres]"
	touch $(STAMP)

setup: $(STAMP) data

# Fashion-MNIST offline from Debian's package, when apt is there (otherwise: see README).
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
	  echo "note: could not install dataset-fashion-mnist; its test will be skipped"; fi

run: setup
	$(BIN)/tune-losses sweep quickstart

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/losses.py
	$(BIN)/python benchmarks/repeats.py
	$(BIN)/python benchmarks/sweep_overhead.py

clean:
	rm -rf runs .pytest_cache
