"""Pure-torch oracle with exactly fusedopt's semantics; also ``backend="reference"``.

Every backend (this one, the C++ CPU ops, later CUDA and Triton) implements the same three functions with the
same signatures, so choosing a backend is a dictionary lookup (see ``fusedopt.ops.BACKENDS``):

``check(grads) -> Tensor``
    One pass over all grads of a (device, dtype) group. Returns a tensor of shape ``[2]`` on the grads' device,
    float32 (float64 for float64 grads): ``[sum of squares, 1.0 if any element is NaN/inf else 0.0]``.

``sgd_update(params, grads, momentum_buffers, is_first, lr, weight_decay, momentum, dampening, nesterov,
maximize, grad_scale, clip_coef, found_inf)``
``adam_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay,
amsgrad, maximize, decoupled, grad_scale, clip_coef, found_inf)``
    In-place updates. Per element, in fp32 (fp64 for fp64 params):

    - if ``found_inf`` (a float tensor) is non-zero: nothing is written at all, step counts included;
    - ``g = grad / grad_scale`` when ``grad_scale`` is given, and that unscaled value is written back to ``grad``
      (GradScaler semantics, as torch's fused optimizers do);
    - ``g = g * clip_coef`` when ``clip_coef`` is given (not written back), negated for ``maximize``;
    - then the torch.optim single-tensor rule (see the ``_sgd`` and ``_adam`` bodies below).

    ``steps`` are 0-dim float32 tensors, incremented here; Adam's bias corrections use the new count, in double.
    ``is_first[i]`` says the momentum buffer ``i`` has no history yet (torch's ``buf = g.clone()`` case).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the update math runs in: fp32, or fp64 for fp64 params."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check(grads: list[Tensor]) -> Tensor:
    # Accumulates in the compute dtype: fp64 grads beyond fp32's range must not overflow the sum of squares.
    dtype = compute_dtype(grads[0].dtype)
    device = grads[0].device
    sumsq = torch.zeros((), dtype=dtype, device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    for g in grads:
        g = g.detach().to(dtype)
        sumsq = sumsq + (g * g).sum()
        nonfinite = nonfinite | ~torch.isfinite(g).all()
    return torch.stack([sumsq, nonfinite.to(dtype)])


def _prepare_grad(grad: Tensor, grad_scale: Tensor | None, clip_coef: Tensor | None, maximize: bool,
                  dtype) -> Tensor:
    g = grad.detach().to(dtype)
    if grad_scale is not None:
        g = g / grad_scale.to(dtype)
        grad.detach().copy_(g)
    if clip_coef is not None:
        g = g * clip_coef.to(dtype)
    return -g if maximize else g


def _prepared(params, grads, grad_scale, clip_coef, maximize):
    """(index, param, its value and the prepared grad in the compute dtype) for each param of an update."""
    for i, (p, grad) in enumerate(zip(params, grads, strict=True)):
        dtype = compute_dtype(p.dtype)
        yield i, p, p.detach().to(dtype), _prepare_grad(grad, grad_scale, clip_coef, maximize, dtype)


def _skipped(found_inf: Tensor | None) -> bool:
    return found_inf is not None and bool(found_inf.item() != 0)


def sgd_update(params, grads, momentum_buffers, is_first, lr, weight_decay, momentum, dampening, nesterov,
               maximize, grad_scale=None, clip_coef=None, found_inf=None) -> None:
    if _skipped(found_inf):
        return
    for i, p, p32, g in _prepared(params, grads, grad_scale, clip_coef, maximize):
        if weight_decay != 0:
            g = g + weight_decay * p32
        if momentum != 0:
            buf = momentum_buffers[i]
            if is_first[i]:
                new_buf = g.clone()
            else:
                new_buf = buf.to(g.dtype) * momentum + (1 - dampening) * g
            buf.copy_(new_buf)
            g = g + momentum * new_buf if nesterov else new_buf
        p.detach().copy_(p32 - lr * g)


def adam_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps,
                weight_decay, amsgrad, maximize, decoupled, grad_scale=None, clip_coef=None,
                found_inf=None) -> None:
    if _skipped(found_inf):
        return
    for i, p, p32, g in _prepared(params, grads, grad_scale, clip_coef, maximize):
        dtype = g.dtype
        steps[i] += 1
        step = float(steps[i].item())
        if weight_decay != 0:
            if decoupled:
                p32 = p32 * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * p32
        m = exp_avgs[i].to(dtype).lerp(g, 1 - beta1)
        v = exp_avg_sqs[i].to(dtype) * beta2 + (1 - beta2) * g * g
        exp_avgs[i].copy_(m)
        exp_avg_sqs[i].copy_(v)
        if amsgrad:
            v = torch.maximum(max_exp_avg_sqs[i].to(dtype), v)
            max_exp_avg_sqs[i].copy_(v)
        step_size = lr / (1 - beta1**step)
        bc2_sqrt = math.sqrt(1 - beta2**step)
        denom = v.sqrt() / bc2_sqrt + eps
        p.detach().copy_(p32 - step_size * (m / denom))
