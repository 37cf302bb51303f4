# `make bench` runs the benchmark, `make test` the tests; both set up .venv/ from scratch when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
MAX_JOBS ?= 2
export MAX_JOBS

.PHONY: build test test-python test-cpp bench clean

$(DEPS): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==23.2.1
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# Builds fusedopt._C in place (ninja rebuilds only what changed) and installs the package in editable mode.
build: $(DEPS)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .

test: test-cpp test-python

test-python: build
	$(PY) -m pytest tests -q -ra

# Native test of csrc/include/fusedopt/math.h alone (no torch), built with CMake, run with ctest.
test-cpp:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cmake -j $(MAX_JOBS)
	ctest --test-dir build/cmake --output-on-failure

bench: build
	$(PY) -m fusedopt.bench $(BENCH_ARGS)

clean:
	rm -rf build $(VENV) fusedopt/_C*.so *.egg-info
