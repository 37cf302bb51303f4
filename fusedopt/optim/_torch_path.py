"""Steps the fused kernels do not take run torch.optim's own single-tensor implementation.

Two cases send a whole step of the optimizer (every param group, each with its own flags) this way:

- any param group with ``differentiable=True`` (autograd through the step: meta-learning, higher-order
  gradients). The kernels write in place outside autograd; torch's functional ``sgd``/``adam``/... with
  ``foreach=False`` record the update in the graph. Grad mode is torch's (``_use_grad_for_differentiable``):
  enabled during the update exactly when the optimizer's default ``differentiable`` is True.
- SGD with a sparse gradient (``nn.Embedding(sparse=True)``): torch's single-tensor SGD adds sparse gradients
  (and keeps a sparse momentum buffer when the first one is sparse), as torch.optim.SGD does; the same for
  Adagrad (torch's single-tensor Adagrad's sparse update).

The update is torch.optim's for-loop (so its results, bit for bit); fusedopt's extras apply around it, with the
same meaning as on the kernel path: the check pass (over all grads; sparse ones coalesced) gives ``grad_norm``
and ``found_nonfinite``; ``nonfinite="raise"`` raises; a skipped step (``nonfinite="skip"``, or GradScaler's
``found_inf``, read on the host here) changes nothing, lazy state included; GradScaler's scale is divided out of
the grads in place; clipping multiplies the gradients the update reads by the clip coefficient, which is a
constant for autograd (``clip_grad_norm_`` runs under no_grad too), and leaves ``.grad`` unclipped.

torch's for-loop keeps states in the param's dtype, so this path refuses, before changing anything, params whose
fusedopt states would have another dtype (bf16/fp16 params with states, ``state_dtype=torch.bfloat16``) and
master weights.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fusedopt.optim import _base

# Returned by FusedOptimizer._validate when the grads are valid and some are sparse (SGD, Adagrad): the step goes here.
SPARSE = object()


def takes(optimizer) -> bool:
    """Whether this step runs here because a param group is differentiable (sparse grads are found by the
    validation of the kernel path, which the usual step skips)."""
    return any(group.get("differentiable") for group in optimizer.param_groups)


def step(optimizer, per_group, loss):
    """One step of ``optimizer`` on torch's single-tensor implementation, for ``per_group``'s (params, grads) of
    every group (not empty). The closure has run (``loss``); the last step's grad_norm/found_nonfinite are reset.
    """
    last = optimizer._last_step
    all_grads = [g for _, grads in per_group for g in grads]
    optimizer._validate(per_group)
    _check_state_dtypes(optimizer)
    device = all_grads[0].device

    grad_scale = getattr(optimizer, "grad_scale", None)
    grad_scale = None if grad_scale is None else grad_scale.reshape(()).to(torch.float32)
    found_inf = getattr(optimizer, "found_inf", None)
    found_inf = None if found_inf is None else found_inf.reshape(()).to(torch.float32)
    skip = found_inf is not None and bool(found_inf > 0)
    if found_inf is not None:
        last["found_nonfinite"] = found_inf > 0
    clip_coef = None
    if optimizer.max_grad_norm is not None or optimizer.nonfinite != "ignore":
        values = [g.detach().coalesce().values() if g.is_sparse else g.detach() for g in all_grads]
        norm, nonfinite = optimizer._check(values, device, grad_scale, ready=False)
        last["grad_norm"] = norm
        last["found_nonfinite"] = nonfinite if found_inf is None else nonfinite | (found_inf > 0)
        if optimizer.nonfinite == "raise":
            optimizer._raise_if_nonfinite(nonfinite, found_inf)
        skip = skip or (optimizer.nonfinite == "skip" and bool(nonfinite))
        if optimizer.max_grad_norm is not None:
            clip_coef = torch.clamp(optimizer.max_grad_norm / (norm + _base.CLIP_EPS), max=1.0)
    if skip:
        return loss

    if grad_scale is not None:  # GradScaler semantics: the grads are unscaled in place, as on the kernel path
        for g in all_grads:
            (g._values() if g.is_sparse else g).div_(grad_scale)
    with torch.set_grad_enabled(bool(optimizer.defaults.get("differentiable"))):
        for group, (params, grads) in zip(optimizer.param_groups, per_group):
            if not params:
                continue
            if clip_coef is not None:
                grads = [_clipped(g, clip_coef) for g in grads]
            optimizer._torch_update(group, params, grads)
    return loss


def _clipped(grad: Tensor, clip_coef: Tensor) -> Tensor:
    return grad * clip_coef.to(grad.dtype)


def _master_words(optimizer) -> str:
    return "a master remainder" if optimizer.master_weights == "remainder" else "an fp32 master copy"


def _check_state_dtypes(optimizer) -> None:
    """torch's for-loop needs states of the param's dtype, and knows no master weights."""
    name = type(optimizer).__name__
    for gi, group in enumerate(optimizer.param_groups):
        keeps_states = bool(optimizer._state_keys(group))
        for pi, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            dtype = _base.state_dtype(p, optimizer.state_dtype)
            if optimizer._keeps_master(p.dtype) or (keeps_states and dtype != p.dtype):
                raise RuntimeError(
                    f"{name}: {optimizer._describe(gi, pi)} is {p.dtype} and would keep "
                    f"{_master_words(optimizer) if optimizer._keeps_master(p.dtype) else f'{dtype} states'}; "
                    f"differentiable=True and sparse gradients run torch.optim's single-tensor implementation, "
                    f"which keeps states in the param's dtype (use float32/float64 params, or state_dtype=None "
                    f"and master_weights=False)")
