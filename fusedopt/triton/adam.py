"""Adam / AdamW as Triton kernels: math.h's adam_element, over all tensors of a call in two launches.

1. ``_adam_steps_kernel`` (one program per TENSOR_BLOCK tensors): unless found_inf, increments every step count
   on the device, and from the new count computes each tensor's bias corrections in float64 into a scratch
   table.
2. ``_adam_kernel`` (one program per BLOCK elements of one tensor): the element update.

A skipped step (found_inf != 0) masks every load and store of the caller's tensors off: nothing is written.
"""

import torch
import triton
import triton.language as tl

from fusedopt.triton import _multi_tensor as mt
from fusedopt.triton.math import (as_pointer, lerp, load_float, maximum, not_skipped, pow_int, prepare_grad,
                                  splat_load, store_float)

# Record of tensor i: numel, then the addresses of param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, master, step
# (absent lists repeat the param's address; constexpr flags keep the kernel from touching them).
_RECORD = 8


@triton.jit(do_not_specialize=["n_tensors"])  # any count, one compilation
def _adam_steps_kernel(records, n_tensors, bias, lr: "fp64", beta1: "fp64", beta2: "fp64", lr_ptr, found_inf_ptr,
                       HAS_LR_TENSOR: tl.constexpr, HAS_FOUND_INF: tl.constexpr, RECORD: tl.constexpr,
                       TENSOR_BLOCK: tl.constexpr):
    t = tl.program_id(0) * TENSOR_BLOCK + tl.arange(0, TENSOR_BLOCK)
    mask = t < n_tensors
    step_ptrs = tl.load(records + t * RECORD + 7, mask=mask, other=0).to(tl.pointer_type(tl.float32))
    step = tl.load(step_ptrs, mask=mask, other=0.0) + 1.0
    tl.store(step_ptrs, step, mask=not_skipped(mask, found_inf_ptr, t, HAS_FOUND_INF))
    # math.h's adam_step, in double from the incremented count as the host computes it there.
    if HAS_LR_TENSOR:
        lr64 = splat_load(lr_ptr, t).to(tl.float64)
    else:
        lr64 = tl.full((), lr, tl.float64)
    step_size = lr64 / (1.0 - pow_int(tl.full((), beta1, tl.float64), step))
    # math.h (like torch) takes bias_correction2 ** 0.5 with pow, which the interpreter lacks: the float64 sqrt
    # differs from it in the last double bit for ~0.1% of counts, and not once in the float (2.2M counts tried).
    bc2_sqrt = tl.sqrt(1.0 - pow_int(tl.full((), beta2, tl.float64), step))
    tl.store(bias + 2 * t, step_size.to(tl.float32), mask=mask)
    tl.store(bias + 2 * t + 1, bc2_sqrt.to(tl.float32), mask=mask)


@triton.jit
def _adam_kernel(records, work, bias, lr: "fp64", beta1: "fp64", beta2: "fp64", eps: "fp64", weight_decay: "fp64",
                 lr_ptr, grad_scale_ptr, clip_coef_ptr, found_inf_ptr,
                 P_KIND: tl.constexpr, S_KIND: tl.constexpr, HAS_MASTER: tl.constexpr, HAS_LR_TENSOR: tl.constexpr,
                 HAS_GRAD_SCALE: tl.constexpr, HAS_CLIP: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
                 AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr, DECOUPLED: tl.constexpr, RECORD: tl.constexpr,
                 BLOCK: tl.constexpr):
    _, t, record, offs, mask = mt.work_item(records, work, RECORD, BLOCK)
    mask = not_skipped(mask, found_inf_ptr, offs, HAS_FOUND_INF)

    # Hyperparameters as math.h's adam_hyper computes them on the host: in double, rounded to float. (Compiled,
    # the float64 arguments are float64 scalars already; interpreted, Python floats: `full` types both.)
    if HAS_LR_TENSOR:
        lr64 = tl.load(lr_ptr).to(tl.float64)
    else:
        lr64 = tl.full((), lr, tl.float64)
    beta2_64 = tl.full((), beta2, tl.float64)
    wd64 = tl.full((), weight_decay, tl.float64)
    lerp_weight = (1.0 - tl.full((), beta1, tl.float64)).to(tl.float32)
    beta2_f = beta2_64.to(tl.float32)
    one_minus_beta2 = (1.0 - beta2_64).to(tl.float32)
    eps_f = tl.full((), eps, tl.float64).to(tl.float32)
    wd_f = wd64.to(tl.float32)
    decay = (1.0 - lr64 * wd64).to(tl.float32)
    step_size = tl.load(bias + 2 * t)
    bc2_sqrt = tl.load(bias + 2 * t + 1)

    p_ptr = as_pointer(tl.load(record + 1), P_KIND)
    g_ptr = as_pointer(tl.load(record + 2), P_KIND)
    m_ptr = as_pointer(tl.load(record + 3), S_KIND)
    v_ptr = as_pointer(tl.load(record + 4), S_KIND)
    g = load_float(g_ptr, offs, mask, P_KIND)
    g = prepare_grad(g, grad_scale_ptr, clip_coef_ptr, g_ptr, offs, mask, P_KIND, HAS_GRAD_SCALE, HAS_CLIP,
                     MAXIMIZE)
    if HAS_MASTER:
        master_ptr = as_pointer(tl.load(record + 6), 0)
        p = load_float(master_ptr, offs, mask, 0)
    else:
        p = load_float(p_ptr, offs, mask, P_KIND)
    m = load_float(m_ptr, offs, mask, S_KIND)
    v = load_float(v_ptr, offs, mask, S_KIND)

    # adam_element; `weight_decay != 0` is a runtime test, so a scheduler may move it to or from 0 freely.
    if DECOUPLED:
        p = tl.where(wd64 != 0.0, p * decay, p)
    else:
        g = tl.where(wd64 != 0.0, tl.fma(p, wd_f, g), g)
    m = lerp(m, g, lerp_weight)
    v = tl.fma(one_minus_beta2 * g, g, v * beta2_f)
    vhat = v
    if AMSGRAD:
        vmax_ptr = as_pointer(tl.load(record + 5), S_KIND)
        vmax = maximum(load_float(vmax_ptr, offs, mask, S_KIND), v)
        store_float(vmax_ptr, offs, vmax, mask, S_KIND)
        vhat = vmax
    denom = tl.div_rn(tl.sqrt_rn(vhat), bc2_sqrt) + eps_f
    p = p - tl.div_rn(step_size * m, denom)

    store_float(m_ptr, offs, m, mask, S_KIND)
    store_float(v_ptr, offs, v, mask, S_KIND)
    if HAS_MASTER:
        store_float(master_ptr, offs, p, mask, 0)
    store_float(p_ptr, offs, p, mask, P_KIND)


def adam_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, steps, lr, beta1, beta2,
                eps, weight_decay, amsgrad, maximize, decoupled, lr_tensor=None, grad_scale=None, clip_coef=None,
                found_inf=None) -> None:
    checked = mt.check_params(params, grads, _adam_kernel)
    states = {"exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}
    if amsgrad:
        states["max_exp_avg_sqs"] = max_exp_avg_sqs
    if checked is None:
        for what, lst in {**states, "master_params": master_params, "steps": steps}.items():
            mt.check_length(len(lst), 0, what)
        return
    device, numels = checked
    state_dtype = mt.check_states(states, device, numels)
    has_master = mt.check_master(master_params, device, numels)
    mt.check_list(steps, "steps", device, (torch.float32,), (1,) * len(numels), len(numels), numels_of_params=False)
    mt.check_optional(device, lr_tensor, grad_scale, clip_coef, found_inf)

    block = mt.block_size(_adam_kernel)
    columns = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else params,
               master_params if has_master else params, steps]
    disjoint = [params, grads, *states.values(), *([master_params] if has_master else [])]
    records, work, n_work = mt.tables(device, columns, numels, block, disjoint=disjoint)
    mt.bump_versions(params, master_params, *states.values(), steps, grads if grad_scale is not None else [])
    dummy = records
    lr_arg, found_inf_arg = mt.pointer_or_dummy(lr_tensor, dummy), mt.pointer_or_dummy(found_inf, dummy)
    bias = torch.empty((len(params), 2), dtype=torch.float32, device=device)  # step_size, bc2_sqrt per tensor
    mt.launch(_adam_steps_kernel, (triton.cdiv(len(params), mt.TENSOR_BLOCK),), records, len(params), bias,
              float(lr), float(beta1), float(beta2), lr_arg, found_inf_arg, HAS_LR_TENSOR=lr_tensor is not None,
              HAS_FOUND_INF=found_inf is not None, RECORD=_RECORD, TENSOR_BLOCK=mt.TENSOR_BLOCK)
    if n_work == 0:
        return
    mt.launch(_adam_kernel, (n_work,), records, work, bias, float(lr), float(beta1), float(beta2), float(eps),
              float(weight_decay), lr_arg, mt.pointer_or_dummy(grad_scale, dummy),
              mt.pointer_or_dummy(clip_coef, dummy), found_inf_arg,
              P_KIND=mt.KIND[params[0].dtype], S_KIND=mt.KIND[state_dtype], HAS_MASTER=has_master,
              HAS_LR_TENSOR=lr_tensor is not None, HAS_GRAD_SCALE=grad_scale is not None,
              HAS_CLIP=clip_coef is not None, HAS_FOUND_INF=found_inf is not None, AMSGRAD=bool(amsgrad),
              MAXIMIZE=bool(maximize), DECOUPLED=bool(decoupled), RECORD=_RECORD, BLOCK=block)
