"""SGD as a Triton kernel: math.h's sgd_element over all tensors of a call in one launch (one program per BLOCK
elements of one tensor). A skipped step (found_inf != 0) masks every load and store off: nothing is written."""

import triton
import triton.language as tl

from fusedopt.triton import _multi_tensor as mt
from fusedopt.triton.math import (as_pointer, load_float, not_skipped, prepare_grad, splat_load,
                                  store_float)

# Record of tensor i: numel, then the addresses of param, grad, momentum_buffer, master, then is_first (0/1).
# Absent lists repeat the param's address; constexpr flags keep the kernel from touching them.
_RECORD = 6


@triton.jit
def _sgd_kernel(records, work, lr: "fp64", weight_decay: "fp64", momentum: "fp64", dampening: "fp64",
                lr_ptr, grad_scale_ptr, clip_coef_ptr, found_inf_ptr,
                P_KIND: tl.constexpr, S_KIND: tl.constexpr, HAS_MASTER: tl.constexpr, HAS_LR_TENSOR: tl.constexpr,
                HAS_GRAD_SCALE: tl.constexpr, HAS_CLIP: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
                HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr,
                RECORD: tl.constexpr, BLOCK: tl.constexpr):
    _, _, record, offs, mask = mt.work_item(records, work, RECORD, BLOCK)
    mask = not_skipped(mask, found_inf_ptr, offs, HAS_FOUND_INF)

    # math.h's sgd_hyper: the float values of the (double) hyperparameters.
    if HAS_LR_TENSOR:
        lr_f = tl.load(lr_ptr).to(tl.float32)
    else:
        lr_f = tl.full((), lr, tl.float64).to(tl.float32)
    wd64 = tl.full((), weight_decay, tl.float64)
    wd_f = wd64.to(tl.float32)
    momentum_f = tl.full((), momentum, tl.float64).to(tl.float32)
    one_minus_dampening = (1.0 - tl.full((), dampening, tl.float64)).to(tl.float32)

    p_ptr = as_pointer(tl.load(record + 1), P_KIND)
    g_ptr = as_pointer(tl.load(record + 2), P_KIND)
    g = load_float(g_ptr, offs, mask, P_KIND)
    g = prepare_grad(g, grad_scale_ptr, clip_coef_ptr, g_ptr, offs, mask, P_KIND, HAS_GRAD_SCALE, HAS_CLIP,
                     MAXIMIZE)
    if HAS_MASTER:
        master_ptr = as_pointer(tl.load(record + 4), 0)
        p = load_float(master_ptr, offs, mask, 0)
    else:
        p = load_float(p_ptr, offs, mask, P_KIND)

    # sgd_element; `weight_decay != 0` is a runtime test, so a scheduler may move it to or from 0 freely.
    g = tl.where(wd64 != 0.0, tl.fma(p, wd_f, g), g)
    if HAS_MOMENTUM:
        buf_ptr = as_pointer(tl.load(record + 3), S_KIND)
        is_first = splat_load(record + 5, offs)  # no history yet: torch's `buf = g.clone()`
        buf = load_float(buf_ptr, offs, mask & (is_first == 0), S_KIND)
        buf = tl.where(is_first != 0, g, tl.fma(g, one_minus_dampening, buf * momentum_f))
        store_float(buf_ptr, offs, buf, mask, S_KIND)
        if NESTEROV:
            g = tl.fma(buf, momentum_f, g)
        else:
            g = buf
    p = tl.fma(g, -lr_f, p)

    if HAS_MASTER:
        store_float(master_ptr, offs, p, mask, 0)
    store_float(p_ptr, offs, p, mask, P_KIND)


def sgd_update(params, grads, momentum_buffers, master_params, is_first, lr, weight_decay, momentum, dampening,
               nesterov, maximize, lr_tensor=None, grad_scale=None, clip_coef=None, found_inf=None) -> None:
    checked = mt.check_params(params, grads, _sgd_kernel)
    has_momentum = momentum != 0
    # Without momentum the buffers and is_first are unused (empty, by convention).
    states = {"momentum_buffers": momentum_buffers} if has_momentum else {}
    if checked is None:
        for what, lst in {**states, "master_params": master_params}.items():
            mt.check_length(len(lst), 0, what)
        return
    device, numels = checked
    state_dtype = mt.check_states(states, device, numels)
    has_master = mt.check_master(master_params, device, numels)
    if has_momentum:
        mt.check_length(len(is_first), len(params), "is_first")
    mt.check_optional(device, lr_tensor, grad_scale, clip_coef, found_inf)

    block = mt.block_size(_sgd_kernel)
    columns = [params, grads, momentum_buffers if has_momentum else params, master_params if has_master else params]
    first = tuple(int(bool(f)) for f in is_first) if has_momentum else (0,) * len(params)
    disjoint = [params, grads, *states.values(), *([master_params] if has_master else [])]
    records, work, n_work = mt.tables(device, columns, numels, block, extra=first, disjoint=disjoint)
    mt.bump_versions(params, master_params, *states.values(), grads if grad_scale is not None else [])
    if n_work == 0:
        return
    dummy = records
    mt.launch(_sgd_kernel, (n_work,), records, work, float(lr), float(weight_decay), float(momentum),
              float(dampening), mt.pointer_or_dummy(lr_tensor, dummy), mt.pointer_or_dummy(grad_scale, dummy),
              mt.pointer_or_dummy(clip_coef, dummy), mt.pointer_or_dummy(found_inf, dummy),
              P_KIND=mt.KIND[params[0].dtype], S_KIND=mt.KIND[state_dtype], HAS_MASTER=has_master,
              HAS_LR_TENSOR=lr_tensor is not None, HAS_GRAD_SCALE=grad_scale is not None,
              HAS_CLIP=clip_coef is not None, HAS_FOUND_INF=found_inf is not None, HAS_MOMENTUM=has_momentum,
              NESTEROV=bool(nesterov), MAXIMIZE=bool(maximize), RECORD=_RECORD, BLOCK=block)
