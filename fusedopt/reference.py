"""Pure-torch oracle with exactly fusedopt's semantics; also ``backend="reference"``.

This module *defines* the backend op contract, version 2. Every backend (this one, the C++ CPU ops, the CUDA and
Triton kernels) implements the same three functions with the same signatures, so choosing a backend is a
dictionary lookup (see ``fusedopt.ops.BACKENDS``):

``check(grads) -> Tensor``
    One pass over all grads of a (device, dtype) group. Returns a tensor of shape ``[2]`` on the grads' device,
    float32 (float64 for float64 grads): ``[sum of squares, 1.0 if any element is NaN/inf else 0.0]``.

``sgd_update(params, grads, momentum_buffers, master_params, is_first, lr, weight_decay, momentum, dampening,
nesterov, maximize, lr_tensor, grad_scale, clip_coef, found_inf)``
``adam_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, steps, lr, beta1, beta2, eps,
weight_decay, amsgrad, maximize, decoupled, lr_tensor, grad_scale, clip_coef, found_inf)``
    In-place updates of one (device, param dtype) group. Per element, in fp32 (fp64 for fp64 params without
    master weights):

    - if ``found_inf`` (a float tensor) is non-zero: nothing is written at all, step counts included;
    - ``g = grad / grad_scale`` when ``grad_scale`` is given, and that unscaled value is written back to ``grad``
      (GradScaler semantics, as torch's fused optimizers do);
    - ``g = g * clip_coef`` when ``clip_coef`` is given (not written back), negated for ``maximize``;
    - then the torch.optim single-tensor rule (see the ``_sgd`` and ``_adam`` bodies below).

    Arguments:

    - ``master_params``: ``[]``, or one float32 tensor per param with the param's numel (bf16/fp16 params, or
      fp32: then it is just a second copy). When given, the update reads the current value from
      ``master_params[i]`` (not from ``params[i]``), writes the new fp32 value there and writes ``params[i]`` =
      that value rounded to the param's dtype (round to nearest even), in the same pass.
    - State lists (``momentum_buffers``, ``exp_avgs``, ``exp_avg_sqs``, ``max_exp_avg_sqs``): one tensor per param
      with its numel, all float32 or all bfloat16 within one call (float64 only here, for fp64 params). A bf16
      state is loaded to fp32, the math (including the update that uses the new state) runs on the fp32 value,
      and it is stored rounded to nearest even. The lists are empty when unused (SGD without momentum, Adam
      without amsgrad for ``max_exp_avg_sqs``).
    - ``lr_tensor``: None, or a 1-element float32 tensor on the params' device. When given, its value (as a
      double) is the learning rate and the float ``lr`` is ignored: the result equals a call with
      ``lr=float(lr_tensor)``. Device kernels read it on the device (no host sync); this oracle reads it on the
      host.
    - ``steps`` (Adam): 0-dim float32 tensors on the params' device, incremented here only when the step is not
      skipped; the bias corrections use the new count, in double (``lr / (1 - beta1**t)``,
      ``(1 - beta2**t) ** 0.5``), then rounded to the compute dtype, as torch.optim's Python scalars are.
    - ``is_first`` (SGD): host bools; ``is_first[i]`` says momentum buffer ``i`` has no history yet (torch's
      ``buf = g.clone()`` case).
    - ``grad_scale``, ``clip_coef``, ``found_inf``: None or 1-element float tensors on the params' device.

    Every backend validates all arguments before writing anything and raises an error naming the argument and
    its index (``"fusedopt: exp_avgs[3] has dtype ..."``). This oracle checks the new v2 arguments
    (``master_params``, ``lr_tensor``) the same way; the rest is validated by the compiled backends, which
    also refuse tensors whose memory they would misread (a lazy negation bit, data off its element alignment).

    Every backend bumps the version counter of each tensor it writes (params, master params, states, steps,
    and grads when ``grad_scale`` is given), as torch's in-place ops do, so autograd refuses a backward through
    a graph that saved one of them; this oracle gets that from torch's own in-place ops.
"""
from __future__ import annotations

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


def _check_v2_args(params, master_params, lr_tensor) -> None:
    """Validation of the arguments new in contract v2, before anything is written."""
    if master_params:
        if len(master_params) != len(params):
            raise RuntimeError(f"fusedopt: master_params has {len(master_params)} entries, expected {len(params)} "
                             f"(one per param, or none)")
        for i, (p, m) in enumerate(zip(params, master_params)):
            if m.dtype != torch.float32:
                raise RuntimeError(f"fusedopt: master_params[{i}] has dtype {m.dtype}, expected torch.float32")
            if p.dtype == torch.float64:
                raise RuntimeError(f"fusedopt: params[{i}] is float64; master_params are for bf16/fp16/fp32 params")
            if m.numel() != p.numel():
                raise RuntimeError(f"fusedopt: master_params[{i}] has {m.numel()} elements but params[{i}] has "
                                 f"{p.numel()}")
            if m.device != p.device:
                raise RuntimeError(f"fusedopt: master_params[{i}] is on {m.device}, expected {p.device}")
    if lr_tensor is not None:
        if lr_tensor.numel() != 1 or lr_tensor.dtype != torch.float32:
            raise RuntimeError(f"fusedopt: lr_tensor must be a 1-element float32 tensor, got {lr_tensor.dtype} with "
                             f"{lr_tensor.numel()} elements")
        if params and lr_tensor.device != params[0].device:
            raise RuntimeError(f"fusedopt: lr_tensor is on {lr_tensor.device}, expected {params[0].device}")


def _prepare_grad(grad: Tensor, grad_scale: Tensor | None, clip_coef: Tensor | None, maximize: bool,
                  dtype) -> Tensor:
    g = grad.detach().to(dtype)
    if grad_scale is not None:
        g = g / grad_scale.to(dtype)
        grad.detach().copy_(g)
    if clip_coef is not None:
        g = g * clip_coef.to(dtype)
    return -g if maximize else g


def _prepared(params, grads, master_params, grad_scale, clip_coef, maximize):
    """(index, param's current value and the prepared grad in the compute dtype, and a function that stores the
    new value) for each param of an update."""
    for i, (p, grad) in enumerate(zip(params, grads, strict=True)):
        master = master_params[i] if master_params else None
        dtype = torch.float32 if master is not None else compute_dtype(p.dtype)
        value = (master if master is not None else p).detach().reshape(p.shape).to(dtype)
        yield i, value, _prepare_grad(grad, grad_scale, clip_coef, maximize, dtype), _store(p, master)


def _store(param: Tensor, master: Tensor | None):
    """Writes a param's new value: to the fp32 master (when kept) and, rounded to nearest even, to the param."""
    def store(value: Tensor) -> None:
        if master is not None:
            master.detach().copy_(value.reshape(master.shape))
        param.detach().copy_(value)
    return store


def _skipped(found_inf: Tensor | None) -> bool:
    return found_inf is not None and bool(found_inf.item() != 0)


def _lr(lr: float, lr_tensor: Tensor | None) -> float:
    return lr if lr_tensor is None else float(lr_tensor.item())


def sgd_update(params, grads, momentum_buffers, master_params, is_first, lr, weight_decay, momentum, dampening,
               nesterov, maximize, lr_tensor=None, grad_scale=None, clip_coef=None, found_inf=None) -> None:
    _check_v2_args(params, master_params, lr_tensor)
    if _skipped(found_inf):
        return
    lr = _lr(lr, lr_tensor)
    # torch.optim's own ops (add with alpha, addcmul, addcdiv), which round as math.h does (fused where they fuse).
    for i, p32, g, store in _prepared(params, grads, master_params, grad_scale, clip_coef, maximize):
        if weight_decay != 0:
            g = g.add(p32, alpha=weight_decay)
        if momentum != 0:
            buf = momentum_buffers[i]
            if is_first[i]:
                new_buf = g.clone()
            else:
                new_buf = buf.to(g.dtype).mul(momentum).add_(g, alpha=1 - dampening)
            buf.copy_(new_buf)  # a bf16 buffer is stored rounded; this step uses the fp32 value
            g = g.add(new_buf, alpha=momentum) if nesterov else new_buf
        store(p32.add(g, alpha=-lr))


def adam_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, steps, lr, beta1, beta2,
                eps, weight_decay, amsgrad, maximize, decoupled, lr_tensor=None, grad_scale=None, clip_coef=None,
                found_inf=None) -> None:
    _check_v2_args(params, master_params, lr_tensor)
    for i, step in enumerate(steps):  # as the CPU op: a count below 0 would divide by a zero bias correction
        if not float(step) >= 0.0:
            raise RuntimeError(f"fusedopt: steps[{i}] is {float(step):g}; step counts must be non-negative")
    if _skipped(found_inf):
        return
    lr = _lr(lr, lr_tensor)
    for i, p32, g, store in _prepared(params, grads, master_params, grad_scale, clip_coef, maximize):
        dtype = g.dtype
        steps[i] += 1
        step = float(steps[i].item())
        if weight_decay != 0:
            if decoupled:
                p32 = p32 * (1 - lr * weight_decay)
            else:
                g = g.add(p32, alpha=weight_decay)
        # bf16 states are stored rounded; this step goes on with the fp32 values.
        m = exp_avgs[i].to(dtype).lerp(g, 1 - beta1)
        v = exp_avg_sqs[i].to(dtype).mul(beta2).addcmul_(g, g, value=1 - beta2)
        exp_avgs[i].copy_(m)
        exp_avg_sqs[i].copy_(v)
        if amsgrad:
            v = torch.maximum(max_exp_avg_sqs[i].to(dtype), v)
            max_exp_avg_sqs[i].copy_(v)
        step_size = lr / (1 - beta1**step)
        bc2_sqrt = (1 - beta2**step) ** 0.5  # as torch.optim writes it (pow, not sqrt)
        denom = (v.sqrt() / bc2_sqrt).add_(eps)
        store(p32.addcdiv(m, denom, value=-step_size))
