# Fresh machine: `make demo` runs the CPU demo study, `make test` the test suite.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: demo smoke test lint install clean

$(BIN)/ft-scaling: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/ft-scaling

# The tests also check the benchmark models against Hugging Face's (torch CPU 2.13.0 is on disk).
$(VENV)/.bench: $(BIN)/ft-scaling
	$(BIN)/pip install --quiet -e ".[test,bench]"
	touch $@

demo: install
	$(BIN)/ft-scaling study --gin_file=gin/studies/demo.gin --out=runs/demo

smoke: install
	$(BIN)/ft-scaling study --gin_file=gin/studies/demo.gin --out=runs/smoke --preset=smoke

# Two workers, each test file on one of them (its module fixtures built once).
test: install $(VENV)/.bench
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs
