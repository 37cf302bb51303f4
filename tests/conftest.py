"""Fixtures shared by the test files. ``backend`` runs a test once per fusedopt backend; the compiled one must
exist: a missing or broken extension fails the "cpu" cases instead of skipping them.

Without a GPU, the Triton backend's tests (test_triton.py, its own file: the interpreter is too slow for the
shared ``backend`` matrix) run its kernels on CPU tensors under the Triton interpreter, which must be chosen
before anything imports triton: it is set here, at collection, and only then. No other test file runs Triton
kernels, and torch's CPU compiler (inductor's C++ backend) does not use Triton, so they are unaffected."""
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
