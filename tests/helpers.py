"""Shared test utilities: comparisons that say where and by how much tensors differ, and optimizer snapshots.

Stable API (other test files import it):

- ``assert_close(actual, expected, *, rtol, atol=0.0, equal_nan=False, name="tensor")``
- ``mismatch_report(actual, expected, *, rtol, atol=0.0, equal_nan=False, name="tensor") -> str | None``
- ``max_errors(actual, expected) -> (max_abs, max_rel)`` (floats; NaN/inf positions are skipped)
- ``assert_bitwise_equal(actual, expected, *, name="tensor")`` (same dtype, shape and bits; NaN-safe)
- ``assert_raises_unchanged(call, tensors, *, match, error=RuntimeError)`` (a rejected call writes nothing)
- ``ulp(magnitude, dtype) -> float`` (spacing of ``dtype`` at ``magnitude``)
- ``assert_within_ulps(actual, expected, *, ulps=1, name="tensor")`` (elementwise, in ``expected``'s dtype)
- ``snapshot(optimizer) -> dict`` and ``assert_snapshot_equal(before, after)`` (params, grads, state, bitwise)
- ``require_backend(name)`` (fails, never skips, when a compiled backend is missing)
- ``ieee_sqrt()`` (a context: torch's fp32 CPU square root correctly rounded, as the compiled kernels take it; for
  the reference or torch.optim side of a comparison with a compiled backend)
- ``load_cuda_emu()`` (the CUDA kernels on an emulated grid, on CPU tensors: ``fusedopt_cuda_emu``, registered as
  ``ops.BACKENDS["cuda-emu"]`` with ``update``, ``RULES`` and the named entries) and ``backend_served_by(name, module)`` (the optimizer classes' ``backend=name``
  runs ``module``'s ops within a ``with`` block)
"""
from __future__ import annotations

import contextlib
import importlib
import math
import os
import pathlib
import sys

import numpy as np
import pytest
import torch
from torch import Tensor

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_MAX_LISTED = 5


def _as_real64(t: Tensor) -> Tensor:
    t = t.detach().cpu()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.to(torch.float64)


def _index(flat_index: int, shape: torch.Size) -> tuple[int, ...]:
    index = []
    for size in reversed(shape):
        index.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(index))


def max_errors(actual: Tensor, expected: Tensor) -> tuple[float, float]:
    """Largest absolute and relative (to ``|expected|``) error over the elements where both are finite."""
    a, e = _as_real64(actual), _as_real64(expected)
    finite = torch.isfinite(a) & torch.isfinite(e)
    if not bool(finite.any()):
        return 0.0, 0.0
    diff = (a - e)[finite].abs()
    rel = diff / e[finite].abs()
    rel = torch.where(diff == 0, torch.zeros_like(rel), rel)  # 0/0 is no error
    return float(diff.max()), float(rel.max())


def mismatch_report(actual: Tensor, expected: Tensor, *, rtol: float, atol: float | Tensor = 0.0,
                    equal_nan: bool = False, name: str = "tensor") -> str | None:
    """None when ``|actual - expected| <= atol + rtol * |expected|`` everywhere (inf must match exactly, NaN
    only where ``equal_nan``); else a description: how many elements differ, the worst ones and where.
    ``atol`` may be a tensor of per-element tolerances (broadcastable to ``expected``)."""
    if actual.shape != expected.shape:
        return f"{name}: shape {list(actual.shape)} != expected {list(expected.shape)}"
    if actual.is_complex() != expected.is_complex():
        return f"{name}: dtype {actual.dtype} vs expected {expected.dtype} (complex on one side only)"
    a, e = _as_real64(actual), _as_real64(expected)
    both_nan = a.isnan() & e.isnan()
    same_inf = torch.isinf(a) & (a == e)
    tol = _as_real64(atol) if torch.is_tensor(atol) else atol
    ok = (a - e).abs() <= tol + rtol * e.abs()
    ok |= same_inf | (both_nan if equal_nan else torch.zeros_like(ok))
    bad = ~ok
    count = int(bad.sum())
    if count == 0:
        return None
    shape = a.shape
    lines = [f"{name} ({actual.dtype} vs {expected.dtype}, shape {list(shape)}): {count} of {a.numel()} elements "
             f"({100.0 * count / a.numel():.3g}%) differ beyond rtol={rtol:g} "
             f"atol={'per element' if torch.is_tensor(atol) else format(atol, 'g')}"]
    max_abs, max_rel = max_errors(actual, expected)
    lines.append(f"  max abs err {max_abs:.6g}, max rel err {max_rel:.6g} (over finite elements)")
    nan_mismatch = int((a.isnan() ^ e.isnan()).sum())
    if nan_mismatch:
        lines.append(f"  NaN in one tensor only at {nan_mismatch} elements")
    flat_a, flat_e, flat_bad = a.reshape(-1), e.reshape(-1), bad.reshape(-1)
    err = (flat_a - flat_e).abs().nan_to_num(nan=math.inf)
    worst = torch.argsort(torch.where(flat_bad, err, torch.full_like(err, -1.0)), descending=True)[:min(count,
                                                                                                       _MAX_LISTED)]
    lines.append("  worst elements:")
    for i in worst.tolist():
        lines.append(f"    {_index(i, shape)}: actual {flat_a[i].item():.9g}, expected {flat_e[i].item():.9g}, "
                     f"abs err {abs(flat_a[i].item() - flat_e[i].item()):.3g}")
    return "\n".join(lines)


def assert_close(actual: Tensor, expected: Tensor, *, rtol: float, atol: float | Tensor = 0.0,
                 equal_nan: bool = False, name: str = "tensor") -> None:
    """``mismatch_report`` as an assertion (values only; dtypes may differ, e.g. fp32 state vs bf16 state)."""
    report = mismatch_report(actual, expected, rtol=rtol, atol=atol, equal_nan=equal_nan, name=name)
    assert report is None, report


def _bits(t: Tensor) -> Tensor:
    t = t.detach().cpu()
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.is_floating_point():
        t = t.contiguous().view(_INT_OF_SIZE[t.element_size()])
    return t


def assert_bitwise_equal(actual: Tensor, expected: Tensor, *, name: str = "tensor") -> None:
    """Same dtype, shape and bit patterns (so NaN equals the same NaN, and -0.0 differs from 0.0)."""
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != expected {expected.dtype}"
    assert actual.shape == expected.shape, f"{name}: shape {list(actual.shape)} != expected {list(expected.shape)}"
    if not torch.equal(_bits(actual), _bits(expected)):
        report = mismatch_report(actual, expected, rtol=0.0, atol=0.0, equal_nan=True, name=name)
        raise AssertionError(report or f"{name}: same values but different bits (signed zeros or NaN payloads)")



def assert_raises_unchanged(call, tensors: list[Tensor], *, match: str, error=RuntimeError) -> None:
    """``call()`` raises ``error`` with a message matching ``match`` and leaves every tensor of ``tensors`` bit for
    bit as it was: bad input is rejected before anything is written."""
    before = [t.clone() for t in tensors]
    with pytest.raises(error, match=match):
        call()
    for i, (after, was) in enumerate(zip(tensors, before)):
        assert_bitwise_equal(after, was, name=f"tensors[{i}] after the rejected call")


@contextlib.contextmanager
def ieee_sqrt():
    """Within the block, torch's square root of fp32 CPU tensors is correctly rounded (numpy's float32 sqrt, IEEE
    on every platform), as every compiled kernel takes it (math.h's std::sqrt, CUDA's and Triton's sqrt_rn).
    torch's own there is MKL VML's ``vmsSqrt`` (aten/src/ATen/cpu/vml.h), which is not correctly rounded (1 ulp
    off IEEE in ~16% of elements on this machine). Run the side made of torch ops (fusedopt/reference.py,
    torch.optim's for-loop) of a comparison with a compiled backend under it, so that the two sides differ only
    where their formulas or their sums do, not where torch's sqrt does. Patched: ``torch.sqrt``,
    ``Tensor.sqrt`` and ``Tensor.sqrt_`` (all that reference.py and torch.optim's single-tensor loops call; no
    ``_foreach_sqrt``); every other call (not a plain fp32 CPU tensor, one that requires grad, an ``out=``)
    falls through to torch's. Yields a one-element list counting the patched calls, so that a test can tell the
    patch was used."""
    originals = torch.sqrt, Tensor.sqrt, Tensor.sqrt_
    calls = [0]

    def patched(t) -> bool:
        # plain tensors only: a subclass (DTensor, Parameter) has its own dispatch and no numpy view
        return type(t) is Tensor and t.dtype == torch.float32 and t.device.type == "cpu" and not t.requires_grad

    def correctly_rounded(t: Tensor) -> Tensor:
        calls[0] += 1
        with np.errstate(invalid="ignore"):  # NaN for a negative, silently, as torch's
            root = np.sqrt(t.detach().contiguous().numpy())
        return torch.from_numpy(np.asarray(root)).reshape(t.shape)

    def torch_sqrt(input, *args, **kwargs):
        if args or kwargs or not patched(input):
            return originals[0](input, *args, **kwargs)
        return correctly_rounded(input)

    def sqrt(self: Tensor) -> Tensor:
        return correctly_rounded(self) if patched(self) else originals[1](self)

    def sqrt_(self: Tensor) -> Tensor:
        return self.copy_(correctly_rounded(self)) if patched(self) else originals[2](self)

    torch.sqrt, Tensor.sqrt, Tensor.sqrt_ = torch_sqrt, sqrt, sqrt_
    try:
        yield calls
    finally:
        torch.sqrt, Tensor.sqrt, Tensor.sqrt_ = originals


def ulp(magnitude: float, dtype: torch.dtype) -> float:
    """The spacing of ``dtype`` numbers at ``magnitude`` (one unit in the last place); below the smallest
    normal number, the smallest subnormal."""
    info = torch.finfo(dtype)
    magnitude = abs(float(magnitude))
    if magnitude < info.tiny:
        return info.eps * info.tiny
    return info.eps * 2.0 ** math.floor(math.log2(magnitude))


def assert_within_ulps(actual: Tensor, expected: Tensor, *, ulps: int = 1, name: str = "tensor") -> None:
    """Every element of ``actual`` within ``ulps`` units in the last place of the matching ``expected`` element,
    counted in ``expected``'s dtype (the spacing above ``|expected|``)."""
    magnitude = expected.detach().cpu()
    magnitude = (torch.view_as_real(magnitude) if magnitude.is_complex() else magnitude).abs()
    spacing = torch.nextafter(magnitude, torch.full_like(magnitude, math.inf)) - magnitude  # real view's shape
    assert_close(actual, expected, rtol=0.0, atol=ulps * spacing, name=f"{name} (within {ulps} ulp)")


def _clone(value):
    return value.detach().clone() if torch.is_tensor(value) else value


def snapshot(optimizer: torch.optim.Optimizer) -> dict:
    """Copies of every param, grad and state value, in param-group order (what a skipped step must not touch)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {
        "params": [_clone(p) for p in params],
        "grads": [None if p.grad is None else _clone(p.grad) for p in params],
        "state": [{key: _clone(value) for key, value in optimizer.state.get(p, {}).items()} for p in params],
    }


def assert_snapshot_equal(before: dict, after: dict) -> None:
    """Bitwise equality of two ``snapshot``s: params, grads, state keys and state values."""
    for i, (b, a) in enumerate(zip(before["params"], after["params"], strict=True)):
        assert_bitwise_equal(a, b, name=f"param {i}")
    for i, (b, a) in enumerate(zip(before["grads"], after["grads"], strict=True)):
        assert (a is None) == (b is None), f"grad {i}: {'set' if a is not None else 'None'} after, not before"
        if a is not None:
            assert_bitwise_equal(a, b, name=f"grad {i}")
    for i, (b, a) in enumerate(zip(before["state"], after["state"], strict=True)):
        assert sorted(a) == sorted(b), f"state of param {i}: keys {sorted(a)} != before {sorted(b)}"
        for key in b:
            if torch.is_tensor(b[key]):
                assert_bitwise_equal(a[key], b[key], name=f"state[{i}][{key!r}]")
            else:
                assert a[key] == b[key], f"state[{i}][{key!r}]: {a[key]!r} != before {b[key]!r}"


def require_backend(name: str) -> None:
    """Fail (not skip) when the backend ``name`` is unavailable: a skip would hide a broken build."""
    from fusedopt import ops

    if name not in ops.BACKENDS:
        raise AssertionError(f"fusedopt backend {name!r} is not available (extension import error: "
                             f"{ops.EXTENSION_ERROR}); build it with `pip install --no-build-isolation -e .`")


def require_rule(backend: str, optimizer_cls) -> None:
    """Skip, saying why, a case of an optimizer whose update rule the backend ``backend`` (a name of
    ``ops.BACKENDS``, or "cuda-emu") has no kernel for yet: the case runs once the backend lists the rule
    (``ops.rules_of``). An unavailable backend fails, as ``require_backend``."""
    from fusedopt import ops

    module = load_cuda_emu() if backend == "cuda-emu" else None
    if module is None:
        require_backend(backend)
        module = ops.BACKENDS[backend]
    rule = optimizer_cls._RULE.name
    if rule not in ops.rules_of(module):
        pytest.skip(f"backend {backend!r} has no kernel for the update rule {rule!r} yet (it has "
                    f"{', '.join(sorted(ops.rules_of(module)))})")


# The emulated CUDA backend: csrc/cuda's kernels compiled as host C++ against csrc/tests/cuda_emu, built by
# `make cuda-emu` into build/cuda-emu/ (FUSEDOPT_CUDA_EMU_DIR points elsewhere, e.g. at the ASan build).
CUDA_EMU_DIR = pathlib.Path(os.environ.get("FUSEDOPT_CUDA_EMU_DIR",
                                           pathlib.Path(__file__).resolve().parents[1] / "build" / "cuda-emu"))


def load_cuda_emu():
    """The module ``fusedopt_cuda_emu`` (check and update of op contract v4 on CPU tensors, plus set_seed/seed/
    stats), registered as ``ops.BACKENDS["cuda-emu"]`` with what every backend offers besides: ``RULES`` (the
    module's ``rules()``) and the v2 named entries ``sgd_update``/``adam_update`` (fusedopt/rules.py) on its
    ``update``. Fails, never skips, when it is not built."""
    from fusedopt import ops, rules

    if "cuda-emu" in ops.BACKENDS:
        return ops.BACKENDS["cuda-emu"]
    if str(CUDA_EMU_DIR) not in sys.path:
        sys.path.insert(0, str(CUDA_EMU_DIR))
    try:
        module = importlib.import_module("fusedopt_cuda_emu")
    except ImportError as exc:
        raise AssertionError(f"the emulated CUDA backend is not built in {CUDA_EMU_DIR} ({exc}): run "
                             f"`make cuda-emu`") from exc
    module.RULES = frozenset(module.rules())
    module.sgd_update = rules.sgd_entry(module.update)
    module.adam_update = rules.adam_entry(module.update)
    ops.BACKENDS["cuda-emu"] = module
    return module


@contextlib.contextmanager
def backend_served_by(name: str, module):
    """Within the block, the backend ``name`` (as the optimizer classes' ``backend=name`` resolves it, e.g. "cpu"
    for CPU tensors) runs ``module``'s check/update: the classes then drive the emulated CUDA kernels on CPU
    tensors."""
    from fusedopt import ops

    saved = ops.BACKENDS[name]
    ops.BACKENDS[name] = module
    try:
        yield module
    finally:
        ops.BACKENDS[name] = saved
