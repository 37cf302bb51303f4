"""Multi-tensor launches for the Triton kernels (the counterpart of csrc/cpu/multi_tensor.h): argument
validation, the device tables the kernels read, and the one place kernels are launched.

A call over N tensors becomes one launch whatever N: each tensor has a *record* of int64s in a device table
(its numel, then the addresses of its param, grad, states ...), and each program of the grid takes one *work
item* (tensor index, first element) of BLOCK elements. The tables depend only on the tensors' addresses and
sizes (and is_first flags), so they are cached under exactly that key: a steady-state step reuses them and
copies nothing to the device. Nothing in a step reads a device value on the host.
"""
from __future__ import annotations

from collections import OrderedDict
from operator import attrgetter

import torch
import triton
import triton.language as tl
from torch import Tensor

from fusedopt.triton.math import BF16, F16, F32

KIND = {torch.float32: F32, torch.bfloat16: BF16, torch.float16: F16}

# Elements per program. The interpreter runs programs one after another, so it gets fewer, larger ones.
BLOCK_GPU, BLOCK_INTERPRETER = 4096, 8192
NUM_WARPS = 8
# The per-tensor pass (update.py: scalar states such as Adam's step) takes this many tensors per program.
TENSOR_BLOCK = 256

_CACHE_SIZE = 16
_tables: OrderedDict[tuple, tuple[Tensor, Tensor]] = OrderedDict()


@triton.jit
def work_item(records, work, RECORD: tl.constexpr, BLOCK: tl.constexpr):
    """This program's work item (the table layout described above, read by every kernel): its index, its
    tensor's index and record, the element offsets of its block and the mask of those inside the tensor."""
    item = tl.program_id(0).to(tl.int64)
    t = tl.load(work + 2 * item)
    record = records + t * RECORD
    offs = tl.load(work + 2 * item + 1) + tl.arange(0, BLOCK)
    return item, t, record, offs, offs < tl.load(record)


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


def tables(device: torch.device, columns: list[list[Tensor]], numels: tuple[int, ...], block: int,
           extra: tuple[tuple[int, ...], ...] = (), disjoint: list[list[Tensor]] = ()) -> tuple[Tensor, Tensor, int]:
    """(records, work, number of work items) on ``device``. Tensor ``i``'s record is ``[numel, address of
    columns[0][i], columns[1][i], ..., *extra[i]]``; work item ``k`` is ``[tensor index, first element]``. The tensors
    of one param in the ``disjoint`` lists (some of ``columns``) must not overlap in memory: checked when the
    tables are built, as it depends on nothing but the key (addresses, sizes, dtypes)."""
    key = (device, block, numels, extra, tuple(tuple(map(Tensor.data_ptr, col)) for col in columns),
           tuple(col[0].dtype for col in columns if col))
    hit = _tables.get(key)
    if hit is not None:
        _tables.move_to_end(key)
        return hit
    if disjoint:
        check_disjoint(disjoint)
    check_aligned(columns)
    records = []
    for i, numel in enumerate(numels):
        records.append(numel)
        records.extend(col[i].data_ptr() for col in columns)
        if extra:
            records.extend(extra[i])
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
# Validation: every argument, before anything is written, with errors in the C++ ops' words. Each list is checked
# as a whole with C-level map()s (a few tenths of a microsecond per tensor); only when that fails does a loop over
# its tensors find the first bad one for the message. Overlap depends only on addresses and sizes, the tables'
# cache key, so it is checked when tables are built.


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


def check_length(got: int, want: int, what: str) -> None:
    if got != want:
        _fail(f"{what} has {got} entries, expected {want} (one per param)")


_DEVICE, _DTYPE, _LAYOUT = attrgetter("device"), attrgetter("dtype"), attrgetter("layout")


def check_list(tensors: list[Tensor], what: str, device: torch.device, dtypes: tuple, numels: tuple | None,
               length: int | None = None, numels_of_params: bool = True) -> torch.dtype:
    """``tensors`` are dense contiguous real tensors on ``device``, of one dtype among ``dtypes``, with ``numels``
    elements each (one list entry per param); returns their dtype."""
    if length is not None:
        check_length(len(tensors), length, what)
    if (set(map(_DEVICE, tensors)) == {device} and set(map(_LAYOUT, tensors)) == {torch.strided}
            and len(found := set(map(_DTYPE, tensors))) == 1 and next(iter(found)) in dtypes
            and all(map(Tensor.is_contiguous, tensors)) and not any(map(Tensor.is_neg, tensors))
            and (numels is None or tuple(map(Tensor.numel, tensors)) == numels)):
        return tensors[0].dtype
    for i, t in enumerate(tensors):  # find the first bad tensor, for the message
        if t.layout != torch.strided:
            _fail(f"{what}[{i}] is {t.layout}; sparse tensors are not supported")
        if t.device != device:
            _fail(f"{what}[{i}] is on {t.device}, expected {device}")
        if t.is_complex():
            _fail(f"{what}[{i}] is complex ({t.dtype}), which is not supported")
        if not t.is_contiguous():
            _fail(f"{what}[{i}] is not contiguous")
        if t.is_neg():
            _fail(f"{what}[{i}] has its negative bit set (a lazy negation view); pass t.resolve_neg()")
        if t.dtype not in dtypes:
            _fail(f"{what}[{i}] has dtype {t.dtype}, expected {' or '.join(map(str, dtypes))}")
        if t.dtype != tensors[0].dtype:
            _fail(f"{what}[{i}] has dtype {t.dtype} but {what}[0] has {tensors[0].dtype}; one call takes one "
                  f"dtype per list")
        if numels is not None and t.numel() != numels[i]:
            _fail(f"{what}[{i}] has {t.numel()} elements but " +
                  (f"params[{i}] has {numels[i]}" if numels_of_params else f"must have {numels[i]}"))
    raise AssertionError("unreachable: the list check failed but no tensor is bad")


def check_params(params: list[Tensor], grads: list[Tensor], kernel) -> tuple[torch.device, tuple] | None:
    """Params and grads of an update; returns their device and numels (None for an empty call)."""
    check_length(len(grads), len(params), "grads")
    if not params:
        return None
    device = params[0].device
    check_device(device, kernel)
    dtype = check_list(params, "params", device, tuple(KIND), None)
    numels = tuple(map(Tensor.numel, params))
    check_list(grads, "grads", device, (dtype,), numels)
    return device, numels


def check_states(states: dict[str, list[Tensor]], device: torch.device, numels: tuple) -> torch.dtype:
    """State lists, one tensor per param, all float32 or all bfloat16 within a call; returns that dtype."""
    dtypes = (torch.float32, torch.bfloat16)
    for what, tensors in states.items():
        dtypes = (check_list(tensors, what, device, dtypes, numels, len(numels)),)
    return dtypes[0] if states else torch.float32


def check_master(master_params: list[Tensor], device: torch.device, numels: tuple,
                 param_dtype: torch.dtype) -> tuple[bool, bool]:
    """(whether there are masters, whether they are int16 remainders of bf16 params): all float32, or all int16
    with bfloat16 params, as master_params[0] says."""
    if not master_params:
        return False, False
    remainder = master_params[0].dtype == torch.int16
    if remainder and param_dtype != torch.bfloat16:
        _fail(f"master_params[0] is int16 (a master remainder) but params[0] has dtype {param_dtype}; remainders "
              f"hold the low 16 bits of an fp32 master of a bfloat16 param")
    check_list(master_params, "master_params", device, (torch.int16 if remainder else torch.float32,), numels,
               len(numels))
    return True, remainder


def check_disjoint(columns: list[list[Tensor]]) -> None:
    """The tensors of one param (one per column) must not overlap: the kernels read and write them in one pass
    with no alias checks."""
    for i, tensors in enumerate(zip(*columns)):
        spans = {(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in tensors if t.numel()}
        spans = sorted(spans)
        if len(spans) < sum(1 for t in tensors if t.numel()) or any(
                b[0] < a[1] for a, b in zip(spans, spans[1:])):
            _fail(f"the tensors of param {i} (param, grad, master copy and states) must not share memory")


def check_aligned(columns: list[list[Tensor]]) -> None:
    """Every address in the tables is aligned to its element size (torch.frombuffer at an odd offset is not):
    checked when the tables are built, as it depends on the key."""
    for k, col in enumerate(columns):
        for i, t in enumerate(col):
            if t.data_ptr() % t.element_size():
                _fail(f"tensor {i} of argument list {k} ({t.dtype}) is not aligned to its element size "
                      f"({t.element_size()} bytes)")


def bump_versions(*written: list[Tensor]) -> None:
    """The version counter of every tensor a kernel writes goes up, as torch's in-place ops do (autograd then
    refuses a backward through a graph that saved one of them); inference tensors have none."""
    for tensors in written:
        if tensors:
            torch.autograd.graph.increment_version(tensors)


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
