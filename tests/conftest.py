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

from helpers import class_backend, load_cuda_emu, require_backend  # noqa: E402

BACKEND_NAMES = ("reference", "cpu")


@pytest.fixture(params=BACKEND_NAMES)
def backend(request) -> str:
    """A backend name for the optimizer classes. In a case parametrized by a configs.Algorithm (``alg``) whose
    update rule the compiled "cpu" backend has no kernel for yet (or by ``name``, a fusedopt class name), the
    "cpu" case runs ``backend="auto"``: the fallback onto the reference that such an algorithm takes on CPU
    tensors (helpers.class_backend)."""
    import fusedopt

    require_backend(request.param)
    callspec = getattr(request.node, "callspec", None)
    params = callspec.params if callspec is not None else {}
    alg, name = params.get("alg"), params.get("name")
    cls = alg.fused_cls if hasattr(alg, "fused_cls") else getattr(fusedopt, name, None) if isinstance(name, str) \
        else None
    if isinstance(cls, type) and hasattr(cls, "_RULE"):
        return class_backend(request.param, cls._RULE.name)
    return request.param


@pytest.fixture
def cuda_emu():
    """The CUDA kernels on the emulated grid (fusedopt_cuda_emu of `make cuda-emu`, on CPU tensors), registered as
    ``ops.BACKENDS["cuda-emu"]``; fails when not built. ``helpers.backend_served_by("cpu", cuda_emu)`` makes the
    optimizer classes run it."""
    return load_cuda_emu()
