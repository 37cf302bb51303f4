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

# Builds fusedopt._C in place (ninja under build/ recompiles only what changed; pip's editable build would
# start from scratch every time) and puts the repository on the venv's path, as an editable install does.
build: $(DEPS)
	$(PY) setup.py --quiet build_ext --inplace
	$(PY) -c "import pathlib, site; pathlib.Path(site.getsitepackages()[0], 'fusedopt-repo.pth').write_text('$(CURDIR)\n')"

test: test-cpp test-python

test-python: build
	$(PY) -m pytest tests -q -ra

# Native test of csrc/include/fusedopt/math.h alone (no torch), built with CMake, run with ctest.
test-cpp:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cmake -j $(MAX_JOBS)
	ctest --test-dir build/cmake --output-on-failure

# The default benchmark run (README, "Benchmark"): tables, a verdict, JSON and PNGs under bench/results/.
# Options go through BENCH_ARGS, e.g. `make bench BENCH_ARGS="--suite sweep --optim adamw"`.
bench: build
	$(PY) -m fusedopt.bench $(BENCH_ARGS)

clean:
	rm -rf build $(VENV) fusedopt/_C*.so *.egg-info
