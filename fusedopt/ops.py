"""Backends: modules with the same two functions (``check``, ``update``), the update rules they have kernels for
(``RULES``), and the v2 named entry points built on ``update`` (``sgd_update``, ``adam_update``).

The compiled CPU and CUDA kernels are ``torch.library`` ops (``torch.ops.fusedopt.check`` and the generic
``torch.ops.fusedopt.update(rule, ...)``, schemas in csrc/bindings.cpp, a CPU and, in a CUDA build, a CUDA
implementation); this module registers their fake implementations so ``torch.compile`` can trace through them,
and maps backend names to implementations. Eager calls take the same C++ functions through a direct binding
(cheaper per tensor). Choosing a backend is a dictionary lookup: ``resolve(name, device, dtype, rule)``.
"""
from __future__ import annotations

import importlib.util
import types
import warnings
from typing import Optional

import torch

from fusedopt import reference, rules

try:
    from fusedopt import _C  # noqa: F401  (loading it registers torch.ops.fusedopt.*)

    EXTENSION_ERROR: Exception | None = None
except ImportError as exc:  # not built, or built against another torch
    EXTENSION_ERROR = exc

BACKEND_NAMES = ("auto", "cpu", "cuda", "triton", "reference")
# dtypes the compiled kernels take (fp32 math); others (fp64, and complex via view_as_real of fp64) go to the
# reference path, which computes in the param's own precision.
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

BACKENDS: dict[str, types.ModuleType | types.SimpleNamespace] = {"reference": reference}


def _eager_or_traced(name: str, prefix: str = ""):
    """The compiled op ``name``: bound directly in eager mode (``_C.<prefix><name>``: the binding borrows the
    tensors of the lists, several times cheaper per tensor than torch.ops; see csrc/python.cpp), through
    torch.ops when torch.compile traces the step (the dispatcher then picks the CPU or CUDA kernel)."""
    eager, traced = getattr(_C, prefix + name), getattr(torch.ops.fusedopt, name)

    def call(*args):
        return traced(*args) if torch.compiler.is_compiling() else eager(*args)

    call.__name__ = name
    return call


def _compiled_backend(prefix: str = "") -> types.SimpleNamespace:
    """A compiled backend: its ``check`` and generic ``update`` ops, the rules its kernels have (the C++ rule
    list, csrc/include/fusedopt/rules.h), and the v2 named entries on top of ``update``."""
    ns = types.SimpleNamespace(check=_eager_or_traced("check", prefix), update=_eager_or_traced("update", prefix))
    ns.RULES = frozenset(_C.rules())
    ns.sgd_update = rules.sgd_entry(ns.update)
    ns.adam_update = rules.adam_entry(ns.update)
    return ns


# Whether the extension was built with the CUDA kernels (setup.py: FUSEDOPT_CUDA); a build without them still
# has CUDA tensors go to the reference backend under backend="auto".
HAS_CUDA_KERNELS = EXTENSION_ERROR is None and bool(getattr(_C, "has_cuda", False))

if EXTENSION_ERROR is None:
    BACKENDS["cpu"] = _compiled_backend()
    if HAS_CUDA_KERNELS:
        BACKENDS["cuda"] = _compiled_backend("cuda_")

    @torch.library.register_fake("fusedopt::check")
    def _check_fake(grads):
        return grads[0].new_empty((2,), dtype=torch.float32)

    # The update only mutates its arguments (contract v4; see fusedopt/reference.py), for every rule.
    @torch.library.register_fake("fusedopt::update")
    def _update_fake(rule, params, grads, states, master_params, scalars, is_first, hyper, flags, maximize,
                     lr_tensor, grad_scale, clip_coef, found_inf):
        return None


# --- Triton: imported on first use (importing triton costs ~0.7 s). Its kernels run CUDA tensors, and CPU tensors
# under the Triton interpreter (TRITON_INTERPRET=1 set before fusedopt.triton is first imported). Each function is a
# torch.library custom op, so torch.compile traces a step through it (the kernels stay opaque to the compiler).
TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def _triton():
    import fusedopt.triton

    return fusedopt.triton


if TRITON_AVAILABLE:
    @torch.library.custom_op("fusedopt::triton_check", mutates_args=())
    def _triton_check(grads: list[torch.Tensor]) -> torch.Tensor:
        return _triton().check(grads)

    @_triton_check.register_fake
    def _triton_check_fake(grads):
        return grads[0].new_empty((2,), dtype=torch.float32)

    # Op contract v4's generic update (fusedopt/reference.py): the rule's flat lists, all mutated in place.
    @torch.library.custom_op("fusedopt::triton_update",
                             mutates_args=("params", "grads", "states", "master_params", "scalars"))
    def _triton_update(rule: str, params: list[torch.Tensor], grads: list[torch.Tensor], states: list[torch.Tensor],
                       master_params: list[torch.Tensor], scalars: list[torch.Tensor], is_first: list[bool],
                       hyper: list[float], flags: int, maximize: bool, lr_tensor: Optional[torch.Tensor],
                       grad_scale: Optional[torch.Tensor], clip_coef: Optional[torch.Tensor],
                       found_inf: Optional[torch.Tensor]) -> None:
        _triton().update(rule, params, grads, states, master_params, scalars, is_first, hyper, flags, maximize,
                         lr_tensor, grad_scale, clip_coef, found_inf)

    @_triton_update.register_fake
    def _triton_update_fake(*args):
        return None

    def _triton_entry(name: str, op):
        """Eager calls go straight to the launcher (no dispatcher round trip); torch.compile sees the op."""
        def call(*args):
            if torch.compiler.is_compiling():
                return op(*args)
            return getattr(_triton(), name)(*args)

        call.__name__ = name
        return call

    class _TritonBackend(types.SimpleNamespace):
        @property
        def RULES(self) -> frozenset[str]:  # noqa: N802  (the backend attribute rules_of() reads)
            """The rules fusedopt/triton/rules.py has kernels for (read when a step resolves its backend, which
            imports Triton then anyway)."""
            return frozenset(_triton().RULES)

    _update = _triton_entry("update", _triton_update)
    BACKENDS["triton"] = _TritonBackend(
        check=_triton_entry("check", _triton_check), update=_update,
        sgd_update=rules.sgd_entry(_update), adam_update=rules.adam_entry(_update))


def kernel_ready(params: list[torch.Tensor], grads: list[torch.Tensor]) -> bool:
    """True when every grad is valid for its param (dtype, shape, device, dense) and every param and grad is a
    contiguous, element-aligned real tensor on one device without a lazy negation bit, no param is an inference
    tensor, and no two of them share memory (so no param is listed twice): checked in one native call, so the
    step's per-param Python work stays small. False sends the step through the Python validation (clear errors)
    and the general path."""
    if EXTENSION_ERROR is not None or torch.compiler.is_compiling():
        return False
    return _C.kernel_ready(params, grads)


# Which compiled backend serves a device type under backend="auto".
_KERNEL_FOR_DEVICE = {"cpu": "cpu", "cuda": "cuda"}
_warned: set[str] = set()


def check_backend_name(name: str) -> None:
    """Validate a user's ``backend=`` argument at construction time."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"Invalid backend: {name!r}; expected one of {', '.join(map(repr, BACKEND_NAMES))}")
    if name == "triton" and not TRITON_AVAILABLE:
        raise RuntimeError("fusedopt backend 'triton' is not available: the triton package is not installed "
                           "(pip install triton==3.9.0, the version requirements.txt pins)")
    if name == "cuda" and EXTENSION_ERROR is None and not HAS_CUDA_KERNELS:
        raise RuntimeError(
            "fusedopt backend 'cuda' is not available: fusedopt._C was built without the CUDA kernels (a CPU-only "
            "torch, or no nvcc at build time). Rebuild against a CUDA torch with FUSEDOPT_CUDA=1 (see README), or "
            "use backend='auto'."
        )
    if name != "auto" and name not in BACKENDS:
        raise RuntimeError(
            f"fusedopt backend {name!r} is not available: the compiled extension fusedopt._C failed to import "
            f"({EXTENSION_ERROR}). Build it with `make build` or `pip install --no-build-isolation -e .` (see "
            f"README), or use "
            f"backend='auto' to fall back to the pure-torch reference."
        )


def check_backend_rule(name: str, rule: str) -> None:
    """At construction: a backend named explicitly must have a kernel for the optimizer's update rule (the same
    error ``resolve`` raises at a step); "auto" falls back to the reference instead, and the reference has every
    rule."""
    backend = BACKENDS.get(name)
    if name not in ("auto", "reference") and backend is not None and rule not in rules_of(backend):
        raise RuntimeError(_no_kernel_message(name, rule, backend))


def _no_kernel_message(name: str, rule: str, backend) -> str:
    return (f"fusedopt backend {name!r} has no kernel for the update rule {rule!r} (it has "
            f"{', '.join(sorted(rules_of(backend)))}); use backend='auto' or 'reference'")


def rules_of(backend) -> frozenset[str]:
    """The update rules a backend has kernels for (the reference has every rule)."""
    return backend.RULES


def resolve(name: str, device: torch.device, dtype: torch.dtype, rule: str | None = None):
    """The backend module that runs tensors of ``device``/``dtype`` for the user's choice ``name`` (and, when
    given, the update rule ``rule``: under "auto", a rule the compiled backend has no kernel for yet runs on the
    reference, with a warning; a backend named explicitly must have it)."""
    backend = _resolve(name, device, dtype)
    if rule is not None and rule not in rules_of(backend):
        if name != "auto":
            raise RuntimeError(_no_kernel_message(name, rule, backend))
        _warn_once(f"no-{rule}-kernel-{device.type}",
                   f"fusedopt: no compiled {device.type} kernel for the update rule {rule!r} yet; using the slow "
                   f"pure-torch reference")
        return reference
    return backend


def _resolve(name: str, device: torch.device, dtype: torch.dtype):
    if dtype not in KERNEL_DTYPES:
        return reference
    if name == "auto":
        name = _KERNEL_FOR_DEVICE.get(device.type, "reference")
        if name not in BACKENDS:
            why = EXTENSION_ERROR if EXTENSION_ERROR is not None else f"fusedopt._C was built without {name} kernels"
            _warn_once(
                f"no-{name}-kernels",
                f"fusedopt: compiled kernels unavailable ({why}); using the slow pure-torch reference",
            )
            name = "reference"
        elif name == "reference":
            _warn_once(device.type, f"fusedopt: no compiled kernels for {device.type} tensors yet; using the "
                                    f"slow pure-torch reference")
    elif name == "triton":
        _triton().check_device(device)  # CUDA compiled, CPU interpreted: each only in its mode
    elif name != "reference" and _KERNEL_FOR_DEVICE.get(device.type) != name:
        raise RuntimeError(f"fusedopt backend {name!r} cannot run tensors on device {device}")
    return BACKENDS[name]


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
