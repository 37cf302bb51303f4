# `make bench` runs the benchmark, `make test` the tests; both set up .venv/ from scratch when needed. `make test`
# also runs the CUDA kernels on an emulated grid (build/cuda-emu, and under ASan + UBSan: build/cuda-emu-asan), and
# compiles them against a CUDA torch in .venv-cuda/ and imports them, when nvcc is on the PATH.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
MAX_JOBS ?= 2
export MAX_JOBS
# pytest-xdist workers of the test runs (one per core): the tests share no state across processes (tests/conftest.py).
TEST_JOBS ?= $(MAX_JOBS)
# loadgroup: the tests of one xdist_group (tests/test_distributed.py) stay on one worker.
XDIST = -n $(TEST_JOBS) --dist loadgroup
HAVE_NVCC := $(shell command -v nvcc 2> /dev/null)

.PHONY: build test test-prereqs test-python test-cpp cpp-build test-cuda-build cuda-build cuda-build-ext \
	cuda-sanitize cuda-emu cuda-emu-asan test-cuda-emu test-cuda-emu-asan gpu-check gpu-check-dry-run gpu-wheels bench clean

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

# Everything the suites need is built first, the independent builds side by side (make -j): the two venvs'
# installs are mostly downloads and unpacking, and each build ends in a few long translation units that leave a
# core idle. Then the suites run one after the other (each on every core), without rebuilding.
test:
	$(MAKE) --no-print-directory -j $(MAX_JOBS) --output-sync=target test-prereqs CUDA_BUILD_ENV="$(CUDA_CHECK_ENV)"
	$(CPP_TESTS)
	$(PYTHON_TESTS)
	$(CUDA_EMU_ASAN_TESTS)
	$(CUDA_BUILD_TESTS)

# The CUDA build first: its venv's install is the longest download, which the other builds overlap.
test-prereqs: $(if $(HAVE_NVCC),cuda-build-ext) build cuda-emu cuda-emu-asan cpp-build

# The whole suite, the emulated CUDA cases of tests/test_cuda.py ("cuda-emu") included.
PYTHON_TESTS = $(PY) -m pytest tests -q -ra $(XDIST)
test-python: build cuda-emu
	$(PYTHON_TESTS)

# The CUDA kernels of csrc/cuda compiled as host C++ against the emulation in csrc/tests/cuda_emu (no nvcc, no GPU),
# as the Python module fusedopt_cuda_emu in $(CUDA_EMU)/ (tests/helpers.py: load_cuda_emu). Incremental (ninja).
CUDA_EMU := build/cuda-emu
CUDA_EMU_ASAN := build/cuda-emu-asan
cuda-emu: $(DEPS)
	$(PY) csrc/tests/cuda_emu/build.py $(CUDA_EMU)

cuda-emu-asan: $(DEPS)
	$(PY) csrc/tests/cuda_emu/build.py --sanitize $(CUDA_EMU_ASAN)

# Only the emulated CUDA tests (test-python runs them too).
test-cuda-emu: build cuda-emu
	$(PY) -m pytest tests/test_cuda.py -q -ra $(XDIST) -k cuda-emu

# The emulated CUDA tests with the kernels under AddressSanitizer + UBSan: an out-of-bounds access of a kernel
# aborts the run with ASan's report. An ASan'ed extension needs the ASan runtime loaded first (LD_PRELOAD, as
# gcc reports it) and libstdc++ right after it (else ASan's __cxa_throw interceptor finds no real one and the
# first C++ exception, e.g. a validation error, aborts); Python itself leaks by design (detect_leaks=0). pytest
# captures only sys.stdout/stderr (--capture=sys), so that ASan's report, written to fd 2, is seen before the abort
# (an xdist worker's fd 2 is the run's own; the aborted worker's test fails the run, named as the crashed one).
# EMU_ASAN_TESTS selects the cases: a share of the emulated ones that takes every kernel, dtype path, table
# overflow, misaligned and skipped case (ASan makes the kernels several times slower), and the stochastic
# rounding of bf16 params (tests/test_stochastic_rounding.py: its kernel path, clipped and not, and the op's reads).
EMU_ASAN_TESTS ?= cuda-emu and (test_op_block_order or test_adam_without or test_op_validation or \
	test_adam_steps_over_several or test_update_op_rules or \
	test_op_check[cuda-emu-float32] or sgd-float16-states_bfloat16-master-plain or \
	adam-float32-states_float32-found_inf or adam-float16-states_bfloat16-lr_tensor or \
	cuda-emu-Adam-fusedopt:clip_active-bfloat16-master_weights-bf16_states or \
	test_backends_equal_cpu_bitwise[Adam-fusedopt:everything-cuda-emu] or \
	test_backends_equal_cpu_bitwise[SGD-fusedopt:clip_active-cuda-emu] or \
	test_op_reads_the_rounding_step_and_writes_nothing_else[cuda-emu])
ASAN_PRELOAD = $(shell $(CXX) -print-file-name=libasan.so) $(shell $(CXX) -print-file-name=libstdc++.so)
CUDA_EMU_ASAN_TESTS = FUSEDOPT_CUDA_EMU_DIR=$(CURDIR)/$(CUDA_EMU_ASAN) LD_PRELOAD="$(ASAN_PRELOAD)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	$(PY) -m pytest tests/test_cuda.py tests/test_stochastic_rounding.py -q -ra $(XDIST) -p no:cacheprovider \
	--capture=sys --durations=5 \
	-k "$(EMU_ASAN_TESTS)"
test-cuda-emu-asan: build cuda-emu-asan
	$(CUDA_EMU_ASAN_TESTS)

# Native test of csrc/include/fusedopt/math.h alone (no torch), built with CMake, run with ctest.
CPP_TESTS = ctest --test-dir build/cmake --output-on-failure -j $(MAX_JOBS)
cpp-build:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cmake -j $(MAX_JOBS)

test-cpp: cpp-build
	$(CPP_TESTS)

# The CUDA build check: a second venv with the CUDA torch wheel (requirements-cuda.txt), the extension built with
# FUSEDOPT_CUDA=1 out of place (build/cuda: the CPU build above is untouched), its CUDA kernels imported and
# found registered, and tests/test_cuda.py run against it (it skips without a GPU, and runs in full with one).
# The CUDA torch wheel brings the triton it was built with, so requirements.txt's triton pin is left out there.
CUDA_VENV := .venv-cuda
CUDA_PY := $(CUDA_VENV)/bin/python
CUDA_DEPS := $(CUDA_VENV)/.deps-installed
CUDA_BUILD := build/cuda

$(CUDA_DEPS): requirements.txt requirements-cuda.txt
	test -x $(CUDA_PY) || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install --quiet --upgrade pip==23.2.1
	$(CUDA_PY) -m pip install --quiet -r requirements-cuda.txt $$(grep -v -e '^torch==' -e '^triton==' -e '^#' requirements.txt)
	touch $@

# Extra build switches of the CUDA build (setup.py). `make test`'s build check (no GPU to run it) compiles the
# CUDA kernels for sm_90 only and the CPU loops of that build for the baseline ISA only: the AVX2/AVX-512 variants
# are the CPU build's, compiled and tested there from the same sources, and a second GPU arch adds only device
# code generation of the same kernels. It halves the check's compile time on CI's 2 cores; `make cuda-build`
# builds what ships (both archs, every variant).
CUDA_BUILD_ENV ?=
CUDA_CHECK_ENV ?= FUSEDOPT_CPU_CLONES=0 FUSEDOPT_CUDA_ARCHS=90

# CUDA_HOME for the CUDA build: the toolkit folder of the nvcc on the PATH (which may be a wrapper script), as
# nvcc itself reports it (recursively expanded: nvcc runs only in the recipes that use it).
NVCC_HOME = $(realpath $(shell nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^\#\$$ _HERE_=//p' | head -n 1)/..)

# The import check (check_cuda_build.py), then tests/test_cuda_build.py and the GPU cases of tests/test_cuda.py
# from the CUDA build; only where nvcc is on the PATH.
define CUDA_BUILD_TESTS
@if [ -n "$(HAVE_NVCC)" ]; then \
	cd $(CUDA_BUILD)/lib.* && PYTHONPATH=$$PWD $(CURDIR)/$(CUDA_PY) $(CURDIR)/tests/check_cuda_build.py $(CURDIR)/$(CUDA_BUILD) && \
	CUDA_HOME=$(NVCC_HOME) PYTHONPATH=$$PWD $(CURDIR)/$(CUDA_PY) -m pytest $(XDIST) \
		$(CURDIR)/tests/test_cuda_build.py $(CURDIR)/tests/test_cuda.py -q -ra -p no:cacheprovider -k "not cuda-emu"; \
else \
	echo "test-cuda-build skipped: no nvcc on the PATH (the CUDA kernels were not compiled)"; \
fi
endef
test-cuda-build: $(if $(HAVE_NVCC),cuda-build-ext)
	$(CUDA_BUILD_TESTS)

# Builds into $(CUDA_BUILD)/lib.*/fusedopt (Python files and _C) ...
cuda-build-ext: $(CUDA_DEPS)
	@echo "CUDA_HOME=$(NVCC_HOME)"; start=$$(date +%s); \
	$(CUDA_BUILD_ENV) CUDA_HOME=$(NVCC_HOME) FUSEDOPT_CUDA=1 $(CUDA_PY) setup.py --quiet build --build-base $(CUDA_BUILD) && \
	echo "CUDA build: $$(( $$(date +%s) - start )) s"

# ... then checks the import and the registrations.
cuda-build: cuda-build-ext
	cd $(CUDA_BUILD)/lib.* && PYTHONPATH=$$PWD $(CURDIR)/$(CUDA_PY) $(CURDIR)/tests/check_cuda_build.py $(CURDIR)/$(CUDA_BUILD)

# On a GPU machine: the op-level CUDA tests under compute-sanitizer (memcheck, then racecheck and synccheck for
# the reductions' shared memory). No caching allocator, so that an access past a tensor hits unallocated memory.
SANITIZE_TESTS ?= test_op_
COMPUTE_SANITIZER ?= $(shell $(CUDA_PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/nvidia/cu13/bin/compute-sanitizer
cuda-sanitize: cuda-build
	cd $(CUDA_BUILD)/lib.* && for tool in memcheck racecheck synccheck; do \
		PYTHONPATH=$$PWD PYTORCH_NO_CUDA_MEMORY_CACHING=1 $(COMPUTE_SANITIZER) --tool $$tool --error-exitcode 1 \
			$(CURDIR)/$(CUDA_PY) -m pytest $(CURDIR)/tests/test_cuda.py -q -x -p no:cacheprovider \
			-k "$(SANITIZE_TESTS) and not cuda-emu" || exit 1; \
	done

# On a fresh GPU machine (torch, Triton, nvcc, compute-sanitizer installed; no .venv): build against the installed
# torch, the GPU tests, the op tests under compute-sanitizer and the GPU benchmark, within 8 minutes, results under
# bench/results/gpu-check-DATE/ (and in $(OUT) when set, as the device tool's). See bench/gpu_check.py.
GPU_PY ?= python3
gpu-check:
	$(GPU_PY) bench/gpu_check.py $(if $(OUT),--out $(OUT))

gpu-check-dry-run:
	$(PY) bench/gpu_check.py --dry-run

# Where pip works: the wheels of the pure-Python test dependencies the GPU image lacks, at requirements.txt's pins,
# into .whl/ (ignored by git) for the device tool to carry (carry: [".whl"]); gpu-check installs them first.
GPU_WHEELS := $(shell grep -E '^(lion-pytorch|expecttest)==' requirements.txt)
gpu-wheels: $(DEPS)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: -d .whl $(GPU_WHEELS)

# The default benchmark run (README, "Benchmark"): tables, a verdict, JSON and PNGs under bench/results/.
# Options go through BENCH_ARGS, e.g. `make bench BENCH_ARGS="--suite sweep --optim adamw"`.
bench: build
	$(PY) -m fusedopt.bench $(BENCH_ARGS)

clean:
	rm -rf build $(VENV) $(CUDA_VENV) fusedopt/_C*.so *.egg-info
