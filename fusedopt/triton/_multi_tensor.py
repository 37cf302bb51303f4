"""Multi-tensor launches for the Triton kernels (the counterpart of csrc/cpu/multi_tensor.h): argument
validation, the device tables the kernels read, and the one place kernels are launched.

A call over N tensors becomes one launch whatever N: each tensor has a *record* of int64s in a device table
(its numel, then the addresses of its param, grad, states ...), and each program of the grid takes one *work
item* (tensor index, first element) of BLOCK elements. The tables depend only on the tensors' addresses and
sizes (and SGD's is_first flags), so they are cached under exactly that key: a steady-state step reuses them and
copies nothing to the device. Nothing in a step reads a device value on the host.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

from fusedopt.triton.math import BF16, F16, F32

KIND = {torch.float32: F32, torch.bfloat16: BF16, torch.float16: F16}

# Elements per program. The interpreter runs programs one after another, so it gets fewer, larger ones.
BLOCK_GPU, BLOCK_INTERPRETER = 4096, 8192
NUM_WARPS = 8
# Adam's/SGD's scalar per-tensor pass (steps) takes this many tensors per loop iteration.
TENSOR_BLOCK = 256

_CACHE_SIZE = 16
_tables: OrderedDict[tuple, tuple[Tensor, Tensor]] = OrderedDict()


def interpreted(kernel) -> bool:
    """Whether ``kernel`` runs under the Triton interpreter (TRITON_INTERPRET=1 when it was defined)."""
    return type(kernel).__name__ == "InterpretedFunction"


def block_size(kernel) -> int:
    return BLOCK_INTERPRETER if interpreted(kernel) else BLOCK_GPU


def launch(kernel, grid, *args, **meta):
    """Every kernel launch of the Triton backend goes through here (tests wrap it to count launches and to
    inspect the arguments). No fp contraction, as math.h is built (-ffp-contract=off)."""
    if interpreted(kernel):
        kernel[grid](*args, **meta)
    else:
        kernel[grid](*args, **meta, num_warps=NUM_WARPS, enable_fp_fusion=False)


def tables(device: torch.device, columns: list[list[Tensor]], numels: list[int], block: int,
           extra: tuple[int, ...] = ()) -> tuple[Tensor, Tensor, int]:
    """(records, work, number of work items) on ``device``. Tensor ``i``'s record is ``[numel, address of
    columns[0][i], columns[1][i], ..., extra[i]]``; work item ``k`` is ``[tensor index, first element]``."""
    key = (device, block, tuple(numels), extra, tuple(tuple(t.data_ptr() for t in col) for col in columns))
    hit = _tables.get(key)
    if hit is not None:
        _tables.move_to_end(key)
        return hit
    records = []
    for i, numel in enumerate(numels):
        records.append(numel)
        records.extend(col[i].data_ptr() for col in columns)
        if extra:
            records.append(extra[i])
    work = [v for i, numel in enumerate(numels) for start in range(0, numel, block) for v in (i, start)]
    n_work = len(work) // 2
    # One host-to-device copy for both tables; the work table starts 16-byte aligned.
    pad = len(records) % 2
    both = torch.tensor(records + [0] * pad + work, dtype=torch.int64).to(device)
    hit = (both[:len(records)], both[len(records) + pad:], n_work)
    _tables[key] = hit
    if len(_tables) > _CACHE_SIZE:
        _tables.popitem(last=False)
    return hit


def clear_cache() -> None:
    _tables.clear()


# ---------------------------------------------------------------------------------------------------------------
# Validation: every argument, before anything is written, with errors in the C++ ops' words.


def _fail(message: str):
    raise RuntimeError(f"fusedopt: {message}")


def check_device(device: torch.device, kernel) -> None:
    if device.type == "cuda":
        if interpreted(kernel):
            _fail(f"the Triton kernels were defined under TRITON_INTERPRET=1 (CPU interpreter) and cannot run "
                  f"{device} tensors; unset it before importing fusedopt")
        return
    if device.type == "cpu":
        if not interpreted(kernel):
            _fail("the Triton backend runs CPU tensors only under the Triton interpreter: set "
                  "TRITON_INTERPRET=1 before importing fusedopt (it is for tests; use backend='cpu')")
        return
    _fail(f"the Triton backend cannot run tensors on {device}")


def check_dense(t: Tensor, what: str, i: int, device: torch.device) -> None:
    if t.layout != torch.strided:
        _fail(f"{what}[{i}] is {t.layout}; sparse tensors are not supported")
    if t.device != device:
        _fail(f"{what}[{i}] is on {t.device}, expected {device}")
    if t.is_complex():
        _fail(f"{what}[{i}] is complex ({t.dtype}), which is not supported")
    if not t.is_contiguous():
        _fail(f"{what}[{i}] is not contiguous")


def check_length(got: int, want: int, what: str) -> None:
    if got != want:
        _fail(f"{what} has {got} entries, expected {want} (one per param)")


def check_like(t: Tensor, param: Tensor, dtype: torch.dtype, what: str, i: int) -> None:
    check_dense(t, what, i, param.device)
    if t.dtype != dtype:
        _fail(f"{what}[{i}] has dtype {t.dtype}, expected {dtype}")
    if t.numel() != param.numel():
        _fail(f"{what}[{i}] has {t.numel()} elements but params[{i}] has {param.numel()}")


def check_params(params: list[Tensor], grads: list[Tensor], kernel) -> torch.device | None:
    """Params and grads of an update; returns their device (None for an empty call)."""
    check_length(len(grads), len(params), "grads")
    if not params:
        return None
    device = params[0].device
    check_device(device, kernel)
    for i, (p, g) in enumerate(zip(params, grads)):
        check_dense(p, "params", i, device)
        if p.dtype not in KIND:
            _fail(f"params[{i}] has dtype {p.dtype}; the Triton kernels take float32, bfloat16 or float16")
        if p.dtype != params[0].dtype:
            _fail(f"params[{i}] has dtype {p.dtype} but params[0] has {params[0].dtype}; one call takes one "
                  f"param dtype")
        check_like(g, p, p.dtype, "grads", i)
    return device


def check_states(params: list[Tensor], columns: dict[str, list[Tensor]]) -> torch.dtype:
    """State lists (each one per param), all float32 or all bfloat16 within a call; returns that dtype."""
    state_dtype = None
    for what, states in columns.items():
        check_length(len(states), len(params), what)
        for i, (s, p) in enumerate(zip(states, params)):
            if state_dtype is None:
                state_dtype = s.dtype
                if s.dtype not in (torch.float32, torch.bfloat16):
                    _fail(f"{what}[{i}] has dtype {s.dtype}; states are float32 or bfloat16")
            check_like(s, p, state_dtype, what, i)
    return state_dtype or torch.float32


def check_master(params: list[Tensor], master_params: list[Tensor]) -> bool:
    if not master_params:
        return False
    check_length(len(master_params), len(params), "master_params")
    for i, (m, p) in enumerate(zip(master_params, params)):
        check_like(m, p, torch.float32, "master_params", i)
    return True


def check_disjoint(i: int, tensors: list[Tensor]) -> None:
    # The kernels read and write a param's tensors in one pass with no alias checks: their memory must not
    # overlap.
    spans = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in tensors if t.numel()]
    for a in range(len(spans)):
        for b in range(a + 1, len(spans)):
            if spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]:
                _fail(f"the tensors of param {i} (param, grad, master copy and states) must not share memory")


def check_scalar(t: Tensor | None, what: str, device: torch.device, float32_only: bool = False) -> None:
    """grad_scale, clip_coef, found_inf, lr_tensor: one-element floating tensors on the params' device."""
    if t is None:
        return
    if t.device != device:
        _fail(f"{what} is on {t.device}, expected {device}")
    if t.numel() != 1:
        _fail(f"{what} must have one element, got {t.numel()}")
    if float32_only and t.dtype != torch.float32:
        _fail(f"{what} must be a float32 tensor, got {t.dtype}")
    if not t.is_floating_point():
        _fail(f"{what} must be a floating tensor, got {t.dtype}")


def check_optional(device: torch.device, lr_tensor, grad_scale, clip_coef, found_inf) -> None:
    check_scalar(lr_tensor, "lr_tensor", device, float32_only=True)
    check_scalar(grad_scale, "grad_scale", device)
    check_scalar(clip_coef, "clip_coef", device)
    check_scalar(found_inf, "found_inf", device)


def pointer_or_dummy(t: Tensor | None, dummy: Tensor) -> Tensor:
    """An optional scalar tensor argument: absent ones pass a dummy the kernel never reads (a constexpr flag
    says so)."""
    return dummy if t is None else t
