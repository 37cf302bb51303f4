"""Pure-torch oracle with exactly fusedopt's semantics; also ``backend="reference"``.

This module *defines* the backend op contract, version 4 (version 3 plus stochastic rounding, opt-in through
flags bit 16). Every backend (this one, the C++ CPU ops, the CUDA and Triton kernels) implements the same two
functions with the same signatures, so choosing a backend is a dictionary lookup (see ``fusedopt.ops.BACKENDS``),
and one ``update`` serves every algorithm (its *rule*):

``check(grads) -> Tensor``
    One pass over all grads of a (device, dtype) group. Returns a tensor of shape ``[2]`` on the grads' device,
    float32 (float64 for float64 grads): ``[sum of squares, 1.0 if any element is NaN/inf else 0.0]``.

``update(rule, params, grads, states, master_params, scalars, is_first, hyper, flags, maximize, lr_tensor,
grad_scale, clip_coef, found_inf)``
    In-place update of one (device, param dtype) group by the rule named ``rule`` (fusedopt/rules.py says each
    rule's hyperparameters, switches and states). Per element, in fp32 (fp64 for fp64 params without master
    weights):

    - if ``found_inf`` (a float tensor) is non-zero: nothing is written at all, scalar states included;
    - ``g = grad / grad_scale`` when ``grad_scale`` is given, and that unscaled value is written back to ``grad``
      (GradScaler semantics, as torch's fused optimizers do);
    - ``g = g * clip_coef`` when ``clip_coef`` is given (not written back), negated for ``maximize``;
    - then the torch.optim single-tensor rule (see the bodies in ``RULE_BODIES`` below).

    The rule's lists are flat, so that one schema takes every rule. With ``n = len(params)``:

    - ``states``: the rule's tensor states in use (``Rule.used_states``: SGD's ``momentum_buffer`` only when
      momentum != 0, Adam's ``max_exp_avg_sq`` only with amsgrad), list by list: ``states[k * n + i]`` is state
      ``k`` of param ``i``. Errors name them by list (``exp_avgs[3]``).
    - ``scalars``: the rule's one-element float32 states (``Rule.scalars``: Adam's ``step``, NAdam's ``step`` and
      ``mu_product``, ASGD's ``step``, ``eta`` and ``mu``), the same way:
      ``scalars[j * n + i]``; advanced by the op (Adam: incremented, then the bias corrections use the new
      count), on the device, unless the step is skipped.
    - ``is_first``: ``[]`` or one host bool per param (rules with ``takes_is_first``: SGD's ``buf = g.clone()``
      case, a momentum buffer with no history yet).
    - ``hyper``: the rule's hyperparameters as host floats, in ``Rule.hyper`` order; ``hyper[0]`` is lr.
    - ``flags``: an int, bit ``i`` set when switch ``Rule.flags[i]`` is on (SGD: nesterov; Adam: amsgrad,
      decoupled).
    - Stochastic rounding (contract v4, ``param_rounding="stochastic"``): bit 16 of ``flags``
      (``rules.STOCHASTIC_ROUNDING``) rounds the new values of bf16 params without master copies stochastically
      instead of to nearest even. ``hyper`` then continues with the seed's low and high 32-bit words and one id
      per param (integers below 2^32), and ``scalars`` with the rounding step (a one-element int64 tensor on
      the params' device, only read). Element ``e`` of param ``i`` gets the high 16 bits of word ``e % 4`` of
      Philox 4x32-10 keyed by the seed, counter ``(e // 4 low word, e // 4 high word, id i, step)``, added to
      the low half of its fp32 bits before truncation (``float_to_bf16_stochastic`` below; math.h's section
      of the same name). So the bits depend on nothing but (seed, id, step, element index): every backend,
      thread count and bucketing gives the same ones. ``master_params`` must then be ``[]``: with an fp32 master
      the param is that exact value rounded, and with a remainder the param must be the nearest bf16 for the
      16 low bits to hold the rest exactly, so there is nothing to round stochastically.

    Arguments:

    - ``master_params``: ``[]``, or one float32 tensor per param with the param's numel (bf16/fp16 params, or
      fp32: then it is just a second copy). When given, the update reads the current value from
      ``master_params[i]`` (not from ``params[i]``), writes the new fp32 value there and writes ``params[i]`` =
      that value rounded to the param's dtype (round to nearest even), in the same pass.
      Or, for bfloat16 params only, one int16 tensor per param with its numel: *master remainders*
      (``master_weights="remainder"``). The fp32 master is then ``join_bf16(params[i], master_params[i])`` and
      the new value is stored back into both by ``split_bf16`` (below; math.h's functions of the same names):
      exactly the fp32 master, so every value and state equals the float32-master call's bit for bit, and the
      param is that master rounded to nearest, ties away from zero (the float32-master call rounds a tie to
      even: the two differ by one bf16 ulp at ties whose truncated value is even). One kind per call: the
      kind of ``master_params[0]``.
    - State tensors: one per param and state with the param's numel, all float32 or all bfloat16 within one
      call (float64 only here, for fp64 params). A bf16 state is loaded to fp32, the math (including the update
      that uses the new state) runs on the fp32 value, and it is stored rounded to nearest even.
    - ``lr_tensor``: None, or a 1-element float32 tensor on the params' device. When given, its value (as a
      double) is the learning rate and the float ``lr`` is ignored: the result equals a call with
      ``lr=float(lr_tensor)``. Device kernels read it on the device (no host sync); this oracle reads it on the
      host.
    - Scalar states (``step``...): 0-dim float32 tensors on the params' device. Coefficients computed from them
      (Adam's ``lr / (1 - beta1**t)``, ``(1 - beta2**t) ** 0.5``) are computed in double, then rounded to the
      compute dtype, as torch.optim's Python scalars are.
    - ``grad_scale``, ``clip_coef``, ``found_inf``: None or 1-element float tensors on the params' device.

    Every backend validates all arguments before writing anything and raises an error naming the argument and
    its index (``"fusedopt: exp_avgs[3] has dtype ..."``). This oracle checks ``master_params``, ``lr_tensor`` and the
    lengths of the flat lists the same way; the rest is validated by the compiled backends, which
    also refuse tensors whose memory they would misread (a lazy negation bit, data off its element alignment).

    Every backend bumps the version counter of each tensor it writes (params, master params, states, scalar
    states, and grads when ``grad_scale`` is given), as torch's in-place ops do, so autograd refuses a backward through
    a graph that saved one of them; this oracle gets that from torch's own in-place ops.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fusedopt import rules


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the update math runs in: fp32, or fp64 for fp64 params."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check(grads: list[Tensor]) -> Tensor:
    # Squares and adds in float64, as the kernels do (exact squares of fp32 values: the fp32 result is the exact sum
    # rounded, but in rare cases; csrc/cpu/norm.cpp), and returns it in the compute dtype (fp64 grads: fp64).
    dtype = compute_dtype(grads[0].dtype)
    device = grads[0].device
    sumsq = torch.zeros((), dtype=torch.float64, device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    for g in grads:
        g = g.detach().to(torch.float64)
        sumsq = sumsq + (g * g).sum()
        nonfinite = nonfinite | ~torch.isfinite(g).all()
    return torch.stack([sumsq, nonfinite.to(torch.float64)]).to(dtype)


def split_bf16(master: Tensor) -> tuple[Tensor, Tensor]:
    """(bf16 param, int16 remainder) holding the float32 ``master`` exactly: math.h's split_bf16 on the bit
    patterns (the param is the master rounded to nearest, ties away from zero; NaNs keep float_to_bf16's quiet
    NaN and their low payload bits). Integer ops in int64, so no step depends on signed overflow."""
    u = master.detach().contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    low = u & 0xFFFF
    up = low >> 15  # the low half >= 0x8000: the magnitude rounds up
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    hi = torch.where(nan, (u >> 16) | 0x0040, (u >> 16) + up)
    return _int16(hi).view(torch.bfloat16), _int16(low)


def join_bf16(param: Tensor, remainder: Tensor) -> Tensor:
    """The float32 master of a bf16 ``param`` and its int16 ``remainder`` (math.h's join_bf16): split_bf16's
    rounding carry taken back, unless the param is a NaN or a zero."""
    hi = param.detach().contiguous().view(torch.int16).to(torch.int64) & 0xFFFF
    lo = remainder.detach().reshape(hi.shape).to(torch.int64)
    mag = hi & 0x7FFF
    down = ((lo < 0) & (mag != 0) & (mag <= 0x7F80)).to(torch.int64)
    return _int32(((hi - down) << 16) | (lo & 0xFFFF)).view(torch.float32)


def _int16(x: Tensor) -> Tensor:
    """The low 16 bits of non-negative int64 values as int16 (two's complement)."""
    return (x - ((x & 0x8000) << 1)).to(torch.int16)


def _int32(x: Tensor) -> Tensor:
    """The low 32 bits of non-negative int64 values as int32 (two's complement)."""
    return (x - ((x & 0x80000000) << 1)).to(torch.int32)


def is_remainder(masters: list[Tensor]) -> bool:
    """Whether an update's master_params are bf16 master remainders (int16) rather than float32 copies."""
    return bool(masters) and masters[0].dtype == torch.int16


def _check_v2_args(params, master_params, lr_tensor) -> None:
    """Validation of the arguments new in contract v2, before anything is written."""
    if master_params:
        if len(master_params) != len(params):
            raise RuntimeError(f"fusedopt: master_params has {len(master_params)} entries, expected {len(params)} "
                             f"(one per param, or none)")
        remainder = is_remainder(master_params)
        if remainder and params and params[0].dtype != torch.bfloat16:
            raise RuntimeError(f"fusedopt: master_params[0] is int16 (a master remainder) but params[0] has dtype "
                               f"{params[0].dtype}; remainders hold the low 16 bits of an fp32 master of a bfloat16 "
                               f"param")
        want = torch.int16 if remainder else torch.float32
        for i, (p, m) in enumerate(zip(params, master_params)):
            if m.dtype != want:
                raise RuntimeError(f"fusedopt: master_params[{i}] has dtype {m.dtype}, expected {want}")
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
        if master is not None and master.dtype == torch.int16:
            value = join_bf16(p, master).reshape(p.shape)
        else:
            value = (master if master is not None else p).detach().reshape(p.shape).to(dtype)
        yield i, value, _prepare_grad(grad, grad_scale, clip_coef, maximize, dtype), _store(p, master)


def _store(param: Tensor, master: Tensor | None):
    """Writes a param's new value: to the fp32 master (when kept) and, rounded to nearest even, to the param;
    or, with a remainder, split into the param and the remainder."""
    def store(value: Tensor) -> None:
        if master is not None and master.dtype == torch.int16:
            hi, lo = split_bf16(value.to(torch.float32))
            param.detach().copy_(hi.reshape(param.shape))
            master.detach().copy_(lo.reshape(master.shape))
            return
        if master is not None:
            master.detach().copy_(value.reshape(master.shape))
        param.detach().copy_(value)
    return store


# --- Stochastic rounding of bf16 params (op contract v4: fusedopt.rules.rounding_args; math.h's section of the
# same name, mirrored here in int64 torch arithmetic): Philox 4x32-10 keyed by the seed, counter (element // 4 as
# two words, param id, step); element e takes the high 16 bits of output word e % 4.

_MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(high, low) 32-bit words of the 64-bit product of the constant ``a`` and ``b`` (int64 values < 2^32): from
    16-bit halves of ``b``, so that no int64 product overflows."""
    lo_part = a * (b & 0xFFFF)  # < 2^48
    hi_part = a * (b >> 16)     # < 2^48; the product is hi_part * 2^16 + lo_part
    low = (((hi_part & 0xFFFF) << 16) + lo_part) & _MASK32
    high = (hi_part + (lo_part >> 16)) >> 16
    return high, low


def philox4x32_10(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: int, k1: int):
    """math.h's philox4x32_10 on int64 tensors holding uint32 words (one counter per element)."""
    for round_ in range(10):
        if round_ > 0:
            k0, k1 = (k0 + PHILOX_W0) & _MASK32, (k1 + PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def rounding_bits(numel: int, seed_lo: int, seed_hi: int, param_id: int, step: int, device=None) -> Tensor:
    """The 16 random bits (int64 values) of elements 0..numel-1 of one param (math.h's rounding_bits)."""
    q = torch.arange((numel + 3) // 4, dtype=torch.int64, device=device)
    full = torch.full_like(q, 0)
    words = philox4x32_10(q & _MASK32, q >> 32, full + (param_id & _MASK32), full + (step & _MASK32), seed_lo,
                          seed_hi)
    return (torch.stack(words, dim=1).reshape(-1)[:numel]) >> 16


def float_to_bf16_stochastic(x: Tensor, random16: Tensor) -> Tensor:
    """math.h's float_to_bf16_stochastic: fp32 ``x`` rounded to bf16 with 16 random bits per element (int64):
    the bits of x plus the random bits, truncated; NaN as the round-to-nearest cast (quiet bit, sign, payload)."""
    u = x.contiguous().view(torch.int32).to(torch.int64) & _MASK32
    rounded = ((u + random16) & _MASK32) >> 16
    nan = (u >> 16) | 0x0040
    bits = torch.where(torch.isnan(x.reshape(u.shape)), nan, rounded)
    return bits.to(torch.int32).to(torch.int16).view(torch.bfloat16)  # wraps to the 16 bits as int16


def _store_stochastic(param: Tensor, rounding: rules.Rounding, index: int, step: int):
    """Writes a param's new value rounded stochastically to bf16 (no master copy: the op refuses one)."""
    def store(value: Tensor) -> None:
        value = value.to(torch.float32).reshape(-1)
        bits = rounding_bits(value.numel(), rounding.seed_lo, rounding.seed_hi, rounding.param_ids[index], step,
                             value.device)
        param.detach().copy_(float_to_bf16_stochastic(value, bits).reshape(param.shape))
    return store


def _skipped(found_inf: Tensor | None) -> bool:
    return found_inf is not None and bool(found_inf.item() != 0)


def _lr(lr: float, lr_tensor: Tensor | None) -> float:
    return lr if lr_tensor is None else float(lr_tensor.item())


def _sgd(i, p32, g, states, scalars, first, h, flags):
    """torch.optim.sgd._single_tensor_sgd on one param; ``states`` and ``scalars`` map keys to its tensors."""
    if h["weight_decay"] != 0:
        g = g.add(p32, alpha=h["weight_decay"])
    if h["momentum"] != 0:
        buf = states["momentum_buffer"]
        if first:
            new_buf = g.clone()
        else:
            new_buf = buf.to(g.dtype).mul(h["momentum"]).add_(g, alpha=1 - h["dampening"])
        buf.copy_(new_buf)  # a bf16 buffer is stored rounded; this step uses the fp32 value
        g = g.add(new_buf, alpha=h["momentum"]) if "nesterov" in flags else new_buf
    return p32.add(g, alpha=-h["lr"])


def _decay_and_moments(p32, g, states, h, flags):
    """Adam's weight decay (coupled, or decoupled with the flag "decoupled") and moment updates, as Adam, NAdam
    and RAdam share them: (param, grad, exp_avg, exp_avg_sq) after them. bf16 states are stored rounded; the
    step goes on with the fp32 values."""
    lr, beta1, beta2, weight_decay = h["lr"], h["beta1"], h["beta2"], h["weight_decay"]
    if weight_decay != 0:
        if "decoupled" in flags:
            p32 = p32 * (1 - lr * weight_decay)
        else:
            g = g.add(p32, alpha=weight_decay)
    m = states["exp_avg"].to(g.dtype).lerp(g, 1 - beta1)
    v = states["exp_avg_sq"].to(g.dtype).mul(beta2).addcmul_(g, g, value=1 - beta2)
    states["exp_avg"].copy_(m)
    states["exp_avg_sq"].copy_(v)
    return p32, g, m, v


def _adam(i, p32, g, states, scalars, first, h, flags):
    """torch.optim.adam._single_tensor_adam on one param."""
    dtype = g.dtype
    lr, beta1, beta2, eps = h["lr"], h["beta1"], h["beta2"], h["eps"]
    scalars["step"] += 1
    step = float(scalars["step"].item())
    p32, g, m, v = _decay_and_moments(p32, g, states, h, flags)
    if "amsgrad" in flags:
        v = torch.maximum(states["max_exp_avg_sq"].to(dtype), v)
        states["max_exp_avg_sq"].copy_(v)
    step_size = lr / (1 - beta1**step)
    bc2_sqrt = (1 - beta2**step) ** 0.5  # as torch.optim writes it (pow, not sqrt)
    denom = (v.sqrt() / bc2_sqrt).add_(eps)
    return p32.addcdiv(m, denom, value=-step_size)


# The per-param body of each rule: (index, current value and prepared grad in the compute dtype, its states and
# scalar states by key, is_first, hyperparameters by name (lr already from lr_tensor), the switches that are on)
# -> the new value. Scalar states are advanced here (the caller has already returned for a skipped step).
RULE_BODIES = {"sgd": _sgd, "adam": _adam}


# --- Adagrad, RMSprop, Adamax, Lion: torch.optim's single-tensor loops (Lion: lion-pytorch's update_fn), op for
# op, so that fp32 results equal theirs. States are read in the compute dtype and written back rounded; the rest
# of the step uses the unrounded values (see the module docstring).

def _adagrad(i, p32, g, states, scalars, first, h, flags):
    """torch.optim.adagrad._single_tensor_adagrad on one (dense) param."""
    scalars["step"] += 1
    step = float(scalars["step"].item())
    if h["weight_decay"] != 0:
        g = g.add(p32, alpha=h["weight_decay"])
    clr = h["lr"] / (1 + (step - 1) * h["lr_decay"])
    state_sum = states["sum"].to(g.dtype).addcmul(g, g, value=1)
    states["sum"].copy_(state_sum)
    std = state_sum.sqrt().add_(h["eps"])
    return p32.addcdiv(g, std, value=-clr)


def _rmsprop(i, p32, g, states, scalars, first, h, flags):
    """torch.optim.rmsprop._single_tensor_rmsprop on one param."""
    dtype = g.dtype
    alpha, momentum = h["alpha"], h["momentum"]
    scalars["step"] += 1  # counted as torch does; the update does not use it
    if h["weight_decay"] != 0:
        g = g.add(p32, alpha=h["weight_decay"])
    square_avg = states["square_avg"].to(dtype).mul(alpha).addcmul_(g, g, value=1 - alpha)
    states["square_avg"].copy_(square_avg)
    if "centered" in flags:
        grad_avg = states["grad_avg"].to(dtype).lerp(g, 1 - alpha)
        states["grad_avg"].copy_(grad_avg)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    avg = avg.add_(h["eps"])
    if momentum > 0:
        buf = states["momentum_buffer"].to(dtype).mul(momentum).addcdiv_(g, avg)
        states["momentum_buffer"].copy_(buf)
        return p32.add(buf, alpha=-h["lr"])
    return p32.addcdiv(g, avg, value=-h["lr"])


def _adamax(i, p32, g, states, scalars, first, h, flags):
    """torch.optim.adamax._single_tensor_adamax (not capturable) on one param."""
    dtype = g.dtype
    beta1 = h["beta1"]
    scalars["step"] += 1
    step = float(scalars["step"].item())
    if h["weight_decay"] != 0:
        g = g.add(p32, alpha=h["weight_decay"])
    exp_avg = states["exp_avg"].to(dtype).lerp(g, 1 - beta1)
    exp_inf = torch.maximum(states["exp_inf"].to(dtype).mul(h["beta2"]), g.abs().add_(h["eps"]))
    states["exp_avg"].copy_(exp_avg)
    states["exp_inf"].copy_(exp_inf)
    clr = h["lr"] / (1 - beta1**step)
    return p32.addcdiv(exp_avg, exp_inf, value=-clr)


def _lion(i, p32, g, states, scalars, first, h, flags):
    """lion-pytorch's update_fn (Chen et al. 2023, Algorithm 2) on one param: decay, the sign of the
    interpolated momentum (sign(0) = 0), then the momentum update."""
    dtype = g.dtype
    lr, beta1, beta2 = h["lr"], h["beta1"], h["beta2"]
    if h["weight_decay"] != 0:  # lion-pytorch multiplies by 1 - lr * 0 = 1 too: the same bits
        p32 = p32.mul(1.0 - lr * h["weight_decay"])
    exp_avg = states["exp_avg"].to(dtype)
    update = exp_avg.mul(beta1).add(g, alpha=1.0 - beta1).sgn_()
    p32 = p32.add(update, alpha=-lr)
    states["exp_avg"].copy_(exp_avg.mul(beta2).add_(g, alpha=1.0 - beta2))
    return p32


RULE_BODIES.update(adagrad=_adagrad, rmsprop=_rmsprop, adamax=_adamax, lion=_lion)


def _check_steps(scalars: dict[str, list[Tensor]]) -> None:
    # As the compiled ops: a count below 0 would divide by a zero bias correction.
    for i, step in enumerate(scalars.get("step", ())):
        if not float(step) >= 0.0:
            raise RuntimeError(f"fusedopt: steps[{i}] is {float(step):g}; step counts must be non-negative")


def update(rule, params, grads, states, master_params, scalars, is_first, hyper, flags, maximize, lr_tensor=None,
           grad_scale=None, clip_coef=None, found_inf=None) -> None:
    r = rules.get(rule)
    n = len(params)
    hyper, flags, scalars, rounding = rules.rounding_args(r, params, master_params, hyper, flags, scalars)
    h = r.hyper_dict(hyper)
    on = r.flag_names(flags)
    used = r.used_states(h, on)
    _check_v2_args(params, master_params, lr_tensor)
    _check_layout(r, n, used, states, scalars, is_first)
    by_state = {k: states[j * n:(j + 1) * n] for j, k in enumerate(used)}
    by_scalar = {k: scalars[j * n:(j + 1) * n] for j, k in enumerate(r.scalars)}
    _check_steps(by_scalar)
    if _skipped(found_inf):
        return
    h["lr"] = _lr(h["lr"], lr_tensor)
    body = RULE_BODIES[rule]
    step = int(rounding.step.item()) if rounding is not None else 0
    for i, p32, g, store in _prepared(params, grads, master_params, grad_scale, clip_coef, maximize):
        if rounding is not None:
            store = _store_stochastic(params[i], rounding, i, step)
        first = bool(is_first[i]) if is_first else False
        store(body(i, p32, g, {k: v[i] for k, v in by_state.items()}, {k: v[i] for k, v in by_scalar.items()},
                   first, h, on))


def _check_layout(r, n, used, states, scalars, is_first) -> None:
    """The flat lists' lengths, as the compiled ops check them."""
    if len(states) != len(used) * n:
        raise RuntimeError(f"fusedopt: states has {len(states)} entries, expected {len(used) * n} ({len(used)} "
                           f"state lists ({', '.join(map(rules.list_name, used)) or 'none'}) of {n} params)")
    if len(scalars) != len(r.scalars) * n:
        raise RuntimeError(f"fusedopt: scalars has {len(scalars)} entries, expected {len(r.scalars) * n}")
    if is_first and len(is_first) != n:
        raise RuntimeError(f"fusedopt: is_first has {len(is_first)} entries, expected {n} (one per param)")


sgd_update = rules.sgd_entry(update)
adam_update = rules.adam_entry(update)


# --- NAdam, RAdam, Adadelta, Rprop, ASGD: torch.optim's _single_tensor_<name> on one param, with torch's ops in
# torch's order (so fp32 results are torch's for-loop's, bit for bit where the ops are the same). The per-tensor
# scalars (the step count, NAdam's mu_product, ASGD's eta and mu) are read and advanced here on the host; every
# coefficient is a function of the scalar states and the hyperparameters alone, computed in double as torch's
# Python floats are, so a device kernel computes it once per tensor from the states on the device (no host sync).

def _nadam(i, p32, g, states, scalars, first, h, flags):
    """torch.optim.nadam._single_tensor_nadam. Per tensor, in double from the new step t: bc2 = 1 - beta2^t,
    mu = beta1 (1 - 0.5 * 0.96^(t psi)), mu_next the same at t + 1; mu_product (fp32) *= fp32(mu), then the
    coefficients -lr (1 - mu) / (1 - mu_product) and -lr mu_next / (1 - mu_product * mu_next)."""
    lr, beta1, beta2, eps = h["lr"], h["beta1"], h["beta2"], h["eps"]
    scalars["step"] += 1
    step = float(scalars["step"].item())
    bias_correction2 = 1 - beta2**step
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * h["momentum_decay"])))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * h["momentum_decay"])))
    scalars["mu_product"] *= mu  # an fp32 multiply, as torch's 0-dim fp32 state
    mu_product = float(scalars["mu_product"].item())
    p32, g, m, v = _decay_and_moments(p32, g, states, h, flags)
    denom = v.div(bias_correction2).sqrt().add_(eps)
    p32 = p32.addcdiv(g, denom, value=-lr * (1.0 - mu) / (1.0 - mu_product))
    return p32.addcdiv(m, denom, value=(-lr * mu_next) / (1.0 - mu_product * mu_next))


def _radam(i, p32, g, states, scalars, first, h, flags):
    """torch.optim.radam._single_tensor_radam. Per tensor, in double from the new step t: bc1, bc2,
    rho_t = rho_inf - 2 t beta2^t / bc2 and, when rho_t > 5 (the rectified branch, chosen per tensor from t), the
    rectification term; the element math of both branches is the same up to the factor lr * rect * sqrt(bc2) /
    (sqrt(v) + eps), which torch writes as the reciprocal of sqrt(v) + eps times sqrt(bc2)."""
    lr, beta1, beta2, eps = h["lr"], h["beta1"], h["beta2"], h["eps"]
    scalars["step"] += 1
    step = float(scalars["step"].item())
    p32, g, m, v = _decay_and_moments(p32, g, states, h, flags)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    bias_corrected_exp_avg = m / bias_correction1
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2
    if rho_t > 5.0:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        adaptive_lr = (bias_correction2**0.5) / v.sqrt().add_(eps)  # Tensor.__rtruediv__: reciprocal(x) * s
        return p32.add(bias_corrected_exp_avg * lr * adaptive_lr * rect, alpha=-1.0)
    return p32.add(bias_corrected_exp_avg * lr, alpha=-1.0)


def _adadelta(i, p32, g, states, scalars, first, h, flags):
    """torch.optim.adadelta._single_tensor_adadelta (the step count is only counted)."""
    dtype = g.dtype
    rho, eps = h["rho"], h["eps"]
    scalars["step"] += 1
    if h["weight_decay"] != 0:
        g = g.add(p32, alpha=h["weight_decay"])
    square_avg = states["square_avg"].to(dtype).mul(rho).addcmul_(g, g, value=1 - rho)
    std = square_avg.add(eps).sqrt_()
    delta = states["acc_delta"].to(dtype).add(eps).sqrt_()
    delta.div_(std).mul_(g)
    acc_delta = states["acc_delta"].to(dtype).mul(rho).addcmul_(delta, delta, value=1 - rho)
    states["square_avg"].copy_(square_avg)
    states["acc_delta"].copy_(acc_delta)
    return p32.add(delta, alpha=-h["lr"])


def _rprop(i, p32, g, states, scalars, first, h, flags):
    """torch.optim.rprop._single_tensor_rprop: per element, the factor is etaplus, etaminus or 1 by the sign of
    g * prev (torch's sign of NaN is 0: factor 1, and sign(g) = 0 leaves the param); the grad is zeroed where the
    factor equals etaminus (compared in the compute dtype, as torch compares). The step count is only counted."""
    dtype = g.dtype
    etaminus, etaplus = h["etaminus"], h["etaplus"]
    scalars["step"] += 1
    sign = g.mul(states["prev"].to(dtype)).sign()
    sign[sign.gt(0)] = etaplus
    sign[sign.lt(0)] = etaminus
    sign[sign.eq(0)] = 1
    step_size = states["step_size"].to(dtype).mul(sign).clamp_(h["step_size_min"], h["step_size_max"])
    g = g.clone(memory_format=torch.preserve_format)
    g[sign.eq(etaminus)] = 0
    states["step_size"].copy_(step_size)
    states["prev"].copy_(g)
    return p32.addcmul(g.sign(), step_size, value=-1)


def _asgd(i, p32, g, states, scalars, first, h, flags):
    """torch.optim.asgd._single_tensor_asgd: the update reads eta and mu as they were before the step; after it,
    from the new step t (in double): eta = lr / (1 + lambd lr t)^alpha, mu = 1 / max(1, t - t0). Averaging is a
    copy while mu == 1 (a per-tensor choice from mu), else ax += (p - ax) * mu."""
    lr, lambd = h["lr"], h["lambd"]
    scalars["step"] += 1
    if h["weight_decay"] != 0:
        g = g.add(p32, alpha=h["weight_decay"])
    eta = float(scalars["eta"].item())
    p32 = p32.mul(1 - lambd * eta)
    p32 = p32.add(g, alpha=-eta)
    mu = scalars["mu"]
    if float(mu.item()) != 1:
        ax = states["ax"].to(g.dtype)
        ax = ax.add(p32.sub(ax).mul_(mu))
    else:
        ax = p32
    states["ax"].copy_(ax)
    step = float(scalars["step"].item())
    scalars["eta"].fill_(lr / ((1 + lambd * lr * step) ** h["alpha"]))
    mu.fill_(1 / max(1, step - h["t0"]))
    return p32


RULE_BODIES.update({"nadam": _nadam, "radam": _radam, "adadelta": _adadelta, "rprop": _rprop, "asgd": _asgd})

RULES = frozenset(RULE_BODIES)  # the rules this backend runs (fusedopt.ops.rules_of): every body above
