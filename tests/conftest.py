"""Fixtures shared by the test files. ``backend`` runs a test once per fusedopt backend; the compiled one must
exist: a missing or broken extension fails the "cpu" cases instead of skipping them.

Without a GPU, the Triton backend's tests (test_triton.py, its own file: the interpreter is too slow for the
shared ``backend`` matrix) run its kernels on CPU tensors under the Triton interpreter, which must be chosen
before anything imports triton: it is set here, at collection, and only then. No other test file runs Triton
kernels, and torch's CPU compiler (inductor's C++ backend) does not use Triton, so they are unaffected.

`make test` runs the suite on pytest-xdist workers (``-n 2 --dist loadgroup``), separate processes that each
import this file, so each sets TRITON_INTERPRET for itself before its triton import. What one process could
share with another is kept per process or per test: torch's thread count, the ISA variant of the CPU loops
(test_cpu_isa.py) and the emulated CUDA module's block-order seed are process state, set by the tests that use
them (and put back where a later test would see it); files go to ``tmp_path`` (per worker); the distributed
launches take free ports from the OS (dist_worker.free_port, torchrun --standalone); torch.compile's cache
directory is safe for concurrent use (it locks its entries). tests/test_distributed.py's one module-scoped launch
stays on one worker (its xdist_group)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import load_cuda_emu, require_backend, require_rule  # noqa: E402

BACKEND_NAMES = ("reference", "cpu")


@pytest.fixture(params=BACKEND_NAMES)
def backend(request) -> str:
    require_backend(request.param)
    return request.param


@pytest.fixture(autouse=True)
def _backend_has_the_rule(request):
    """A case of an algorithm on a backend without a kernel for its rule yet is skipped, saying so (and runs once
    the backend has it): a case parametrized by ``backend`` and by ``alg`` (a configs.Algorithm) or ``name`` (a
    fusedopt class name)."""
    import fusedopt

    params = getattr(getattr(request.node, "callspec", None), "params", {})
    if "backend" not in params:
        return
    alg, name = params.get("alg"), params.get("name")
    cls = getattr(alg, "fused_cls", None) or (getattr(fusedopt, name, None) if isinstance(name, str) else None)
    if hasattr(cls, "_RULE"):
        require_rule(params["backend"], cls)


@pytest.fixture
def cuda_emu():
    """The CUDA kernels on the emulated grid (fusedopt_cuda_emu of `make cuda-emu`, on CPU tensors), registered as
    ``ops.BACKENDS["cuda-emu"]``; fails when not built. ``helpers.backend_served_by("cpu", cuda_emu)`` makes the
    optimizer classes run it."""
    return load_cuda_emu()
