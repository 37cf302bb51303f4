"""The check pass as Triton kernels: global sum of squares and a non-finite flag over all grads.

Deterministic: each program writes the partial sum (one tl.sum over its BLOCK elements) and the non-finite flag
of its block to its own slot; one more program adds the partials. Every element is squared in float64 (exact for
fp32 values) and every addition is in float64, as in the CPU and CUDA kernels, whose fp32 result this then equals
(csrc/cpu/norm.cpp says when it would not). One launch per grad dtype plus one, whatever the number of grads.
"""

import torch
import triton
import triton.language as tl

from fusedopt.triton import _multi_tensor as mt
from fusedopt.triton.math import as_pointer, is_nonfinite, load_float

_RECORD = 2  # numel, address of the grad
_REDUCE_BLOCK = 1024


@triton.jit
def _partials_kernel(records, work, partials, G_KIND: tl.constexpr, RECORD: tl.constexpr, BLOCK: tl.constexpr):
    item, _, record, offs, mask = mt.work_item(records, work, RECORD, BLOCK)
    g = load_float(as_pointer(tl.load(record + 1), G_KIND), offs, mask, G_KIND)
    g64 = g.to(tl.float64)
    tl.store(partials + 2 * item, tl.sum(g64 * g64, axis=0))  # exact squares
    # The flag comes from the bits, not from the sum: a finite grad whose square overflows is not non-finite.
    tl.store(partials + 2 * item + 1, tl.max(is_nonfinite(g).to(tl.float64), axis=0))


@triton.jit(do_not_specialize=["n_partials"])  # any count, one compilation
def _reduce_kernel(partials, n_partials, out, BLOCK: tl.constexpr):
    total = tl.zeros((BLOCK,), tl.float64)
    flag = tl.zeros((BLOCK,), tl.float64)
    for start in range(0, n_partials, BLOCK):
        k = start + tl.arange(0, BLOCK)
        mask = k < n_partials
        total += tl.load(partials + 2 * k, mask=mask, other=0.0)
        flag = tl.maximum(flag, tl.load(partials + 2 * k + 1, mask=mask, other=0.0))
    tl.store(out, tl.sum(total, axis=0).to(tl.float32))
    tl.store(out + 1, tl.max(flag, axis=0).to(tl.float32))


def check(grads: list[torch.Tensor]) -> torch.Tensor:
    """``[sum of squares, 1.0 if any element is NaN/inf else 0.0]`` (float32) on the grads' device."""
    if not grads:
        mt._fail("check needs at least one grad")
    device = grads[0].device
    mt.check_device(device, _partials_kernel)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for dtype, group in by_dtype.items():
        if dtype not in mt.KIND:
            i = next(i for i, g in enumerate(grads) if g.dtype == dtype)
            mt._fail(f"grads[{i}] has dtype {dtype}; the Triton kernels take float32, bfloat16 or float16")
        mt.check_list(group, "grads", device, (dtype,), None)
    block = mt.block_size(_partials_kernel)
    launches = []
    for dtype, group in by_dtype.items():
        records, work, n_work = mt.tables(device, [group], tuple(map(torch.Tensor.numel, group)), block)
        launches.append((dtype, records, work, n_work))
    n_partials = sum(n for *_, n in launches)
    partials = torch.empty((max(n_partials, 1), 2), dtype=torch.float64, device=device)
    offset = 0
    for dtype, records, work, n_work in launches:
        if n_work:
            mt.launch(_partials_kernel, (n_work,), records, work, partials[offset:], G_KIND=mt.KIND[dtype],
                      RECORD=_RECORD, BLOCK=block)
        offset += n_work
    out = torch.empty(2, dtype=torch.float32, device=device)
    mt.launch(_reduce_kernel, (1,), partials, n_partials, out, BLOCK=_REDUCE_BLOCK)
    return out
