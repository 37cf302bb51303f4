"""The update rules of the Triton backend: each the Triton twin of a rule struct of csrc/include/fusedopt/math.h,
line for line (same order of operations, same roundings: see fusedopt/triton/math.py), run by the one generic
kernel of fusedopt/triton/update.py. fusedopt/rules.py describes each rule to every backend (names and order of
its hyperparameters, flags, states and scalar states); a ``TritonRule`` adds the ``@triton.jit`` functions:

``hyper(h) -> Hyper``
    math.h's ``hyper()``: the per-call coefficients, rounded to fp32 from float64 as torch rounds its Python
    scalars. ``h`` is a tuple of float64 0-d values in ``Rule.hyper`` order (``h[0]`` is lr, lr_tensor's value
    when given; slots past the rule's count hold 0). Once per program of the element kernel.
``per_tensor(h, scalars, first) -> (new scalars, coefficients)`` (None when the rule has neither)
    math.h's ``per_tensor()``, vectorized: one lane per tensor of a block of tensors (``h[0]`` may be a vector
    there). ``scalars`` is the tuple of the tensors' scalar states (fp32, ``Rule.scalars`` order), ``first``
    their is_first (all False unless the rule takes it). Returns the advanced scalar states (stored unless the
    step is skipped) and the fp32 coefficients named by ``coefficients``, computed in float64 from the advanced
    counts as torch.optim does in Python. Run by a pre-pass launch before the elements.
``element(p, g, s, h, t, first, FLAGS, USED) -> (p, s)``
    math.h's ``element<SW>()``: one block of elements, all fp32: ``p`` the param's value, ``g`` the gradient
    already unscaled, clipped and sign-flipped (math.py's prepare_grad, in the kernel), ``s`` the tuple of the
    rule's states (every state of ``Rule.states``; those not in use hold 0 and are not stored; with is_first
    set, none is read: no history yet, they hold 0), ``h`` what ``hyper`` returned, ``t`` the tensor's
    coefficients, ``first`` its is_first (a bool vector; all False unless the rule takes it).

Compile-time switches: ``FLAGS`` is the op's ``flags`` (bit i = ``Rule.flags[i]``), ``USED`` has bit k set when
state k is in use (``Rule.used_states``), both constexpr. Tests on values that do not change the state lists
(weight_decay != 0) stay runtime selects, with the same bits: as a constexpr they would recompile the kernel
whenever a scheduler moves the value to or from 0 (math.h makes them template switches, since the C++ loops are
all compiled ahead of time).
"""
from collections import namedtuple
from dataclasses import dataclass

import triton
import triton.language as tl

from fusedopt import rules
from fusedopt.triton.math import clamp, lerp, maximum, pow_int, pow_real, sign

# Hyperparameter slots of the kernels (float64 runtime arguments, unused ones 0): the most any rule takes.
MAX_HYPER = 8


@dataclass(frozen=True)
class TritonRule:
    """A rule's Triton functions (``@triton.jit``: JITFunctions, or InterpretedFunctions under
    TRITON_INTERPRET=1; see the module docstring) next to its fusedopt/rules.py entry."""
    rule: rules.Rule
    hyper: object
    element: object
    per_tensor: object | None = None
    coefficients: tuple[str, ...] = ()  # what per_tensor returns per tensor, in order (math.h's PerTensor)

    @property
    def name(self) -> str:
        return self.rule.name

    def used_mask(self, used: tuple[str, ...]) -> int:
        """The ``USED`` constexpr: bit k for each state key of ``Rule.states`` in ``used``."""
        return sum(1 << k for k, key in enumerate(self.rule.states) if key in used)


RULES: dict[str, TritonRule] = {}


def register(rule: TritonRule) -> TritonRule:
    assert len(rule.rule.hyper) <= MAX_HYPER, f"{rule.name}: more hyperparameters than the kernels' slots"
    assert (rule.per_tensor is None) == (not rule.rule.scalars and not rule.coefficients), rule.name
    RULES[rule.name] = rule
    return rule


def _bit(names: tuple[str, ...], name: str) -> tl.constexpr:
    return tl.constexpr(1 << names.index(name))


# ---------------------------------------------------------------------------------------------------------------
# SGD (torch.optim.sgd._single_tensor_sgd): math.h's SgdRule.

_SGD_NESTEROV = _bit(rules.SGD.flags, "nesterov")
_SGD_MOMENTUM = _bit(rules.SGD.states, "momentum_buffer")  # in use exactly when momentum != 0

SgdHyper = namedtuple("SgdHyper", "lr weight_decay_on weight_decay momentum one_minus_dampening")


@triton.jit
def sgd_hyper(h):
    return SgdHyper(h[0].to(tl.float32), h[1] != 0.0, h[1].to(tl.float32), h[2].to(tl.float32),
                    (1.0 - h[3]).to(tl.float32))


# Each line is one torch op of _single_tensor_sgd (named at its end); maximize and clipping are prepare_grad's.
@triton.jit
def sgd_element(p, g, s, h, t, first, FLAGS: tl.constexpr, USED: tl.constexpr):
    buf = s[0]
    g = tl.where(h.weight_decay_on, tl.fma(p, h.weight_decay, g), g)  # grad.add(param, alpha=weight_decay)
    if _SGD_MOMENTUM & USED:  # (the constexpr on the left: the interpreter passes ints)
        # buf = grad.clone() (no history yet), then buf.mul_(momentum).add_(grad, alpha=1 - dampening)
        buf = tl.where(first, g, tl.fma(g, h.one_minus_dampening, buf * h.momentum))
        if _SGD_NESTEROV & FLAGS:
            g = tl.fma(buf, h.momentum, g)  # grad.add(buf, alpha=momentum)
        else:
            g = buf
    p = tl.fma(g, -h.lr, p)  # param.add_(grad, alpha=-lr)
    return p, (buf,)


SGD = register(TritonRule(rules.SGD, hyper=sgd_hyper, element=sgd_element))


# ---------------------------------------------------------------------------------------------------------------
# Adam / AdamW (torch.optim.adam._single_tensor_adam): math.h's AdamRule.

_ADAM_AMSGRAD = _bit(rules.ADAM.flags, "amsgrad")
_ADAM_DECOUPLED = _bit(rules.ADAM.flags, "decoupled")

AdamHyper = namedtuple("AdamHyper", "lerp_weight beta2 one_minus_beta2 eps weight_decay_on weight_decay decay")


@triton.jit
def adam_hyper(h):
    lr = h[0]
    beta1 = h[1]
    beta2 = h[2]
    eps = h[3]
    weight_decay = h[4]
    return AdamHyper((1.0 - beta1).to(tl.float32), beta2.to(tl.float32), (1.0 - beta2).to(tl.float32),
                     eps.to(tl.float32), weight_decay != 0.0, weight_decay.to(tl.float32),
                     (1.0 - lr * weight_decay).to(tl.float32))


# math.h's bias_correction: 1 - beta^step, in float64.
@triton.jit
def bias_correction(beta, step):
    return 1.0 - pow_int(beta, step)


@triton.jit
def adam_per_tensor(h, scalars, first):
    # The count advances, then the bias corrections use the new count (as torch.optim does), in float64.
    step = scalars[0] + 1.0
    step_size = h[0] / bias_correction(h[1], step)  # lr / (1 - beta1^step)
    # math.h (like torch) takes bias_correction2 ** 0.5 with pow, which the interpreter lacks: the float64 sqrt
    # differs from it in the last double bit for ~0.1% of counts, and not once in the float (2.2M counts tried).
    bc2_sqrt = tl.sqrt(bias_correction(h[2], step))
    return (step,), (step_size.to(tl.float32), bc2_sqrt.to(tl.float32))


# math.h's AdamRule::decay_and_moments, which NAdam and RAdam share: the weight decay (decoupled when DECOUPLED)
# and the moments. Each line is one torch op of _single_tensor_adam (named at its end).
@triton.jit
def adam_decay_and_moments(p, g, m, v, h, DECOUPLED: tl.constexpr):
    if DECOUPLED:
        p = tl.where(h.weight_decay_on, p * h.decay, p)  # param.mul_(1 - lr * weight_decay)
    else:
        g = tl.where(h.weight_decay_on, tl.fma(p, h.weight_decay, g), g)  # grad.add(param, alpha=weight_decay)
    m = lerp(m, g, h.lerp_weight)  # exp_avg.lerp_(grad, 1 - beta1)
    v = tl.fma(h.one_minus_beta2 * g, g, v * h.beta2)  # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
    return p, g, m, v


# Each line is one torch op of _single_tensor_adam (named at its end); maximize and clipping are prepare_grad's.
@triton.jit
def adam_element(p, g, s, h, t, first, FLAGS: tl.constexpr, USED: tl.constexpr):
    m = s[0]
    v = s[1]
    vmax = s[2]
    step_size = t[0]
    bc2_sqrt = t[1]
    p, g, m, v = adam_decay_and_moments(p, g, m, v, h, _ADAM_DECOUPLED & FLAGS)
    vhat = v
    if _ADAM_AMSGRAD & FLAGS:
        vmax = maximum(vmax, v)  # torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        vhat = vmax
    denom = tl.div_rn(tl.sqrt_rn(vhat), bc2_sqrt) + h.eps  # (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    # param.addcdiv_(exp_avg, denom, value=-step_size): the same bits as this (rounding is symmetric).
    p = p - tl.div_rn(step_size * m, denom)
    return p, (m, v, vmax)


ADAM = register(TritonRule(rules.ADAM, hyper=adam_hyper, element=adam_element, per_tensor=adam_per_tensor,
                           coefficients=("step_size", "bc2_sqrt")))


# ---------------------------------------------------------------------------------------------------------------
# NAdam, RAdam, Adadelta, Rprop, ASGD (issue 12 part 2): math.h's NadamRule ... AsgdRule. Coefficients that
# math.h keeps as bools (RAdam's rectified, ASGD's average) travel as 1.0/0.0 in the float32 coefficient table.
# Constants that float32 does not hold exactly (0.96) are float64 values: a Python float literal would be a
# float32 constant.

_NADAM_DECOUPLED = _bit(rules.NADAM.flags, "decoupled")


# NAdam's hyper is Adam's (its first five hyperparameters are Adam's; momentum_decay, h[5], enters per tensor).
@triton.jit
def nadam_per_tensor(h, scalars, first):
    # In float64 from the new count, as torch's Python floats; mu_product is a float32 state, multiplied in
    # float32 (torch: a 0-dim float32 tensor times a Python float), then read back as a float64.
    lr = h[0]
    beta1 = h[1]
    momentum_decay = h[5]
    step = scalars[0] + 1.0  # step_t += 1
    step64 = step.to(tl.float64)
    bias_correction2 = bias_correction(h[2], step)
    base = tl.full((), 0.96, tl.float64)
    mu = beta1 * (1.0 - 0.5 * pow_real(base, step64 * momentum_decay))
    mu_next = beta1 * (1.0 - 0.5 * pow_real(base, (step64 + 1.0) * momentum_decay))
    mu_product = scalars[1] * mu.to(tl.float32)  # mu_product *= mu
    mu_product64 = mu_product.to(tl.float64)
    grad_coef = -lr * (1.0 - mu) / (1.0 - mu_product64)
    exp_avg_coef = (-lr * mu_next) / (1.0 - mu_product64 * mu_next)
    return (step, mu_product), (bias_correction2.to(tl.float32), grad_coef.to(tl.float32),
                                exp_avg_coef.to(tl.float32))


# Each line is one torch op of _single_tensor_nadam (named at its end).
@triton.jit
def nadam_element(p, g, s, h, t, first, FLAGS: tl.constexpr, USED: tl.constexpr):
    m = s[0]
    v = s[1]
    p, g, m, v = adam_decay_and_moments(p, g, m, v, h, _NADAM_DECOUPLED & FLAGS)
    denom = tl.sqrt_rn(tl.div_rn(v, t[0])) + h.eps  # exp_avg_sq.div(bias_correction2).sqrt(), denom.add_(eps)
    p = p + tl.div_rn(t[1] * g, denom)  # param.addcdiv_(grad, denom, value=-lr (1 - mu) / (1 - mu_product))
    p = p + tl.div_rn(t[2] * m, denom)  # param.addcdiv_(exp_avg, denom, value=-lr mu_next / (1 - ...))
    return p, (m, v)


NADAM = register(TritonRule(rules.NADAM, hyper=adam_hyper, element=nadam_element, per_tensor=nadam_per_tensor,
                            coefficients=("bias_correction2", "grad_coef", "exp_avg_coef")))


_RADAM_DECOUPLED = _bit(rules.RADAM.flags, "decoupled")

RadamHyper = namedtuple("RadamHyper", AdamHyper._fields + ("lr",))


@triton.jit
def radam_hyper(h):
    a = adam_hyper(h)
    return RadamHyper(a.lerp_weight, a.beta2, a.one_minus_beta2, a.eps, a.weight_decay_on, a.weight_decay, a.decay,
                      h[0].to(tl.float32))


@triton.jit
def radam_per_tensor(h, scalars, first):
    # In float64 from the new count, as torch's Python floats. math.h takes ** 0.5 with pow (as Python does);
    # the float64 sqrt here, as Adam's bc2_sqrt, differs from it at most in the last float64 bit.
    beta2 = h[2]
    step = scalars[0] + 1.0  # step_t += 1
    step64 = step.to(tl.float64)
    bias_correction1 = bias_correction(h[1], step)
    bias_correction2 = bias_correction(beta2, step)
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step64 * pow_int(beta2, step) / bias_correction2
    rectified = rho_t > 5.0
    # (the ratio replaced by 1 where not rectified, so that no lane takes a square root of a negative)
    rect = tl.sqrt(tl.where(rectified, (rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                            ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t), 1.0))
    return (step,), (bias_correction1.to(tl.float32), tl.sqrt(bias_correction2).to(tl.float32),
                     rect.to(tl.float32), rectified.to(tl.float32))


# Each line is one torch op of _single_tensor_radam (named at its end); torch's branch on rho_t, per tensor, is a
# select of the two results.
@triton.jit
def radam_element(p, g, s, h, t, first, FLAGS: tl.constexpr, USED: tl.constexpr):
    m = s[0]
    v = s[1]
    p, g, m, v = adam_decay_and_moments(p, g, m, v, h, _RADAM_DECOUPLED & FLAGS)
    scaled = tl.div_rn(m, t[0]) * h.lr  # bias_corrected_exp_avg * lr
    # bias_correction2 ** 0.5 / exp_avg_sq.sqrt().add_(eps): Tensor.__rtruediv__ is reciprocal(x) * s.
    adaptive_lr = tl.div_rn(tl.full(v.shape, 1.0, tl.float32), tl.sqrt_rn(v) + h.eps) * t[1]
    rectified = (scaled * adaptive_lr) * t[2]  # ... * _compute_adaptive_lr() * _compute_rect()
    p = p - tl.where(t[3] != 0.0, rectified, scaled)  # param.add_(..., alpha=-1.0)
    return p, (m, v)


RADAM = register(TritonRule(rules.RADAM, hyper=radam_hyper, element=radam_element, per_tensor=radam_per_tensor,
                            coefficients=("bias_correction1", "bc2_sqrt", "rect", "rectified")))


AdadeltaHyper = namedtuple("AdadeltaHyper", "lr rho one_minus_rho eps weight_decay_on weight_decay")


@triton.jit
def adadelta_hyper(h):
    return AdadeltaHyper(h[0].to(tl.float32), h[1].to(tl.float32), (1.0 - h[1]).to(tl.float32),
                         h[2].to(tl.float32), h[3] != 0.0, h[3].to(tl.float32))


# math.h's CountOnly::per_tensor: the count is only counted (Rprop's and RMSprop's too).
@triton.jit
def count_only(h, scalars, first):
    return (scalars[0] + 1.0,), ()


# Each line is one torch op of _single_tensor_adadelta (named at its end).
@triton.jit
def adadelta_element(p, g, s, h, t, first, FLAGS: tl.constexpr, USED: tl.constexpr):
    square_avg = s[0]
    acc_delta = s[1]
    g = tl.where(h.weight_decay_on, tl.fma(p, h.weight_decay, g), g)  # grad.add(param, alpha=weight_decay)
    square_avg = tl.fma(h.one_minus_rho * g, g, square_avg * h.rho)  # square_avg.mul_(rho).addcmul_(g, g, 1 - rho)
    std = tl.sqrt_rn(square_avg + h.eps)  # square_avg.add(eps).sqrt_()
    delta = tl.sqrt_rn(acc_delta + h.eps)  # acc_delta.add(eps).sqrt_()
    delta = tl.div_rn(delta, std) * g  # delta.div_(std).mul_(grad)
    acc_delta = tl.fma(h.one_minus_rho * delta, delta, acc_delta * h.rho)  # acc_delta.mul_(rho).addcmul_(...)
    p = tl.fma(delta, -h.lr, p)  # param.add_(delta, alpha=-lr)
    return p, (square_avg, acc_delta)


ADADELTA = register(TritonRule(rules.ADADELTA, hyper=adadelta_hyper, element=adadelta_element,
                               per_tensor=count_only))


RpropHyper = namedtuple("RpropHyper", "etaminus etaplus step_size_min step_size_max")


@triton.jit
def rprop_hyper(h):
    return RpropHyper(h[1].to(tl.float32), h[2].to(tl.float32), h[3].to(tl.float32), h[4].to(tl.float32))


# Each line is one torch op of _single_tensor_rprop (named at its end), in its order; all selects.
@triton.jit
def rprop_element(p, g, s, h, t, first, FLAGS: tl.constexpr, USED: tl.constexpr):
    prev = s[0]
    step_size = s[1]
    factor = sign(g * prev)  # sign = grad.mul(prev).sign()
    factor = tl.where(factor > 0.0, h.etaplus, factor)  # sign[sign.gt(0)] = etaplus
    factor = tl.where(factor < 0.0, h.etaminus, factor)  # sign[sign.lt(0)] = etaminus
    factor = tl.where(factor == 0.0, 1.0, factor)  # sign[sign.eq(0)] = 1
    # step_size.mul_(sign).clamp_(step_size_min, step_size_max)
    step_size = clamp(step_size * factor, h.step_size_min, h.step_size_max)
    g = tl.where(factor == h.etaminus, 0.0, g)  # grad[sign.eq(etaminus)] = 0
    p = tl.fma(-1.0 * sign(g), step_size, p)  # param.addcmul_(grad.sign(), step_size, value=-1)
    return p, (g, step_size)  # prev.copy_(grad)


RPROP = register(TritonRule(rules.RPROP, hyper=rprop_hyper, element=rprop_element, per_tensor=count_only))


AsgdHyper = namedtuple("AsgdHyper", "weight_decay_on weight_decay")


@triton.jit
def asgd_hyper(h):
    return AsgdHyper(h[4] != 0.0, h[4].to(tl.float32))


@triton.jit
def asgd_per_tensor(h, scalars, first):
    # The update reads eta and mu as they were; then they advance from the new count, in float64 as torch's
    # Python floats (stored as float32).
    lr = h[0]
    lambd = h[1]
    eta = scalars[1].to(tl.float64)
    mu = scalars[2]
    step = scalars[0] + 1.0  # step_t += 1
    step64 = step.to(tl.float64)
    new_eta = lr / pow_real(1.0 + lambd * lr * step64, h[2])  # lr / (1 + lambd lr step)^alpha
    since = step64 - h[3]
    new_mu = 1.0 / tl.where(since > 1.0, since, 1.0)  # 1 / max(1, step - t0) (Python's max)
    return (step, new_eta.to(tl.float32), new_mu.to(tl.float32)), \
        ((1.0 - lambd * eta).to(tl.float32), (-eta).to(tl.float32), mu, (mu != 1.0).to(tl.float32))


# Each line is one torch op of _single_tensor_asgd (named at its end); torch's branch on mu, per tensor, is a
# select.
@triton.jit
def asgd_element(p, g, s, h, t, first, FLAGS: tl.constexpr, USED: tl.constexpr):
    ax = s[0]
    g = tl.where(h.weight_decay_on, tl.fma(p, h.weight_decay, g), g)  # grad.add(param, alpha=weight_decay)
    p = p * t[0]  # param.mul_(1 - lambd * eta)
    p = tl.fma(g, t[1], p)  # param.add_(grad, alpha=-eta)
    averaged = ax + (p - ax) * t[2]  # ax.add_(param.sub(ax).mul_(mu))
    ax = tl.where(t[3] != 0.0, averaged, p)  # or ax.copy_(param)
    return p, (ax,)


ASGD = register(TritonRule(rules.ASGD, hyper=asgd_hyper, element=asgd_element, per_tensor=asgd_per_tensor,
                           coefficients=("decay", "neg_eta", "mu", "average")))


# ---------------------------------------------------------------------------------------------------------------
# Adagrad, RMSprop, Adamax, Lion (issue 12 part 2): math.h's rules of the same names.

# Adagrad (torch.optim.adagrad._single_tensor_adagrad, dense grads): math.h's AdagradRule.

AdagradHyper = namedtuple("AdagradHyper", "weight_decay_on weight_decay eps")


@triton.jit
def adagrad_hyper(h):
    return AdagradHyper(h[2] != 0.0, h[2].to(tl.float32), h[3].to(tl.float32))


@triton.jit
def adagrad_per_tensor(h, scalars, first):
    # The count advances, then clr = lr / (1 + (step - 1) * lr_decay) from the new count, in float64.
    step = scalars[0] + 1.0
    clr = h[0] / (1.0 + (step.to(tl.float64) - 1.0) * h[1])
    return (step,), (clr.to(tl.float32),)


# Each line is one torch op of _single_tensor_adagrad (named at its end); maximize and clipping are prepare_grad's.
@triton.jit
def adagrad_element(p, g, s, h, t, first, FLAGS: tl.constexpr, USED: tl.constexpr):
    state_sum = s[0]
    clr = t[0]
    g = tl.where(h.weight_decay_on, tl.fma(p, h.weight_decay, g), g)  # grad.add(param, alpha=weight_decay)
    state_sum = tl.fma(g, g, state_sum)  # state_sum.addcmul_(grad, grad, value=1): 1 * g is g
    std = tl.sqrt_rn(state_sum) + h.eps  # state_sum.sqrt().add_(eps)
    p = p - tl.div_rn(clr * g, std)  # param.addcdiv_(grad, std, value=-clr): the same bits (rounding is symmetric)
    return p, (state_sum,)


ADAGRAD = register(TritonRule(rules.ADAGRAD, hyper=adagrad_hyper, element=adagrad_element,
                              per_tensor=adagrad_per_tensor, coefficients=("clr",)))


# RMSprop (torch.optim.rmsprop._single_tensor_rmsprop): math.h's RmspropRule.

_RMSPROP_CENTERED = _bit(rules.RMSPROP.flags, "centered")
_RMSPROP_MOMENTUM = _bit(rules.RMSPROP.states, "momentum_buffer")  # in use exactly when momentum > 0

RmspropHyper = namedtuple("RmspropHyper", "lr alpha one_minus_alpha eps weight_decay_on weight_decay momentum")


@triton.jit
def rmsprop_hyper(h):
    return RmspropHyper(h[0].to(tl.float32), h[1].to(tl.float32), (1.0 - h[1]).to(tl.float32), h[2].to(tl.float32),
                        h[3] != 0.0, h[3].to(tl.float32), h[4].to(tl.float32))


# Each line is one torch op of _single_tensor_rmsprop (named at its end); maximize and clipping are prepare_grad's.
@triton.jit
def rmsprop_element(p, g, s, h, t, first, FLAGS: tl.constexpr, USED: tl.constexpr):
    square_avg = s[0]
    grad_avg = s[1]
    buf = s[2]
    g = tl.where(h.weight_decay_on, tl.fma(p, h.weight_decay, g), g)  # grad.add(param, alpha=weight_decay)
    # square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    square_avg = tl.fma(h.one_minus_alpha * g, g, square_avg * h.alpha)
    if _RMSPROP_CENTERED & FLAGS:
        grad_avg = lerp(grad_avg, g, h.one_minus_alpha)  # grad_avg.lerp_(grad, 1 - alpha)
        # square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_(): (-1) * grad_avg is -grad_avg
        avg = tl.sqrt_rn(tl.fma(-grad_avg, grad_avg, square_avg))
    else:
        avg = tl.sqrt_rn(square_avg)  # square_avg.sqrt()
    avg = avg + h.eps  # avg.add_(eps)
    if _RMSPROP_MOMENTUM & USED:
        buf = buf * h.momentum + tl.div_rn(g, avg)  # buf.mul_(momentum).addcdiv_(grad, avg): 1 * g is g
        p = tl.fma(buf, -h.lr, p)  # param.add_(buf, alpha=-lr)
    else:
        p = p - tl.div_rn(h.lr * g, avg)  # param.addcdiv_(grad, avg, value=-lr): the same bits (symmetric rounding)
    return p, (square_avg, grad_avg, buf)


RMSPROP = register(TritonRule(rules.RMSPROP, hyper=rmsprop_hyper, element=rmsprop_element,
                              per_tensor=count_only))


# Adamax (torch.optim.adamax._single_tensor_adamax, not differentiable, not capturable): math.h's AdamaxRule.

# Adamax's hyper is Adam's (the same five hyperparameters; the element reads lerp_weight, beta2, eps, weight decay).
@triton.jit
def adamax_per_tensor(h, scalars, first):
    # The count advances, then clr = lr / (1 - beta1^step) from the new count, in float64.
    step = scalars[0] + 1.0
    clr = h[0] / bias_correction(h[1], step)
    return (step,), (clr.to(tl.float32),)


# Each line is one torch op of _single_tensor_adamax (named at its end); maximize and clipping are prepare_grad's.
@triton.jit
def adamax_element(p, g, s, h, t, first, FLAGS: tl.constexpr, USED: tl.constexpr):
    exp_avg = s[0]
    exp_inf = s[1]
    clr = t[0]
    g = tl.where(h.weight_decay_on, tl.fma(p, h.weight_decay, g), g)  # grad.add(param, alpha=weight_decay)
    exp_avg = lerp(exp_avg, g, h.lerp_weight)  # exp_avg.lerp_(grad, 1 - beta1)
    # torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf): a NaN on either side wins
    exp_inf = maximum(exp_inf * h.beta2, tl.abs(g) + h.eps)
    p = p - tl.div_rn(clr * exp_avg, exp_inf)  # param.addcdiv_(exp_avg, exp_inf, value=-clr): the same bits
    return p, (exp_avg, exp_inf)


ADAMAX = register(TritonRule(rules.ADAMAX, hyper=adam_hyper, element=adamax_element,
                             per_tensor=adamax_per_tensor, coefficients=("clr",)))


# Lion (lion-pytorch's update_fn, Chen et al. 2023, Algorithm 2): math.h's LionRule. No scalar states.

LionHyper = namedtuple("LionHyper", "lr weight_decay_on decay beta1 one_minus_beta1 beta2 one_minus_beta2")


@triton.jit
def lion_hyper(h):
    lr = h[0]
    beta1 = h[1]
    beta2 = h[2]
    weight_decay = h[3]
    return LionHyper(lr.to(tl.float32), weight_decay != 0.0, (1.0 - lr * weight_decay).to(tl.float32),
                     beta1.to(tl.float32), (1.0 - beta1).to(tl.float32), beta2.to(tl.float32),
                     (1.0 - beta2).to(tl.float32))


# Each line is one torch op of lion-pytorch's update_fn (named at its end); maximize and clipping are prepare_grad's.
@triton.jit
def lion_element(p, g, s, h, t, first, FLAGS: tl.constexpr, USED: tl.constexpr):
    exp_avg = s[0]
    p = tl.where(h.weight_decay_on, p * h.decay, p)  # p.data.mul_(1 - lr * wd)
    # exp_avg.clone().mul_(beta1).add(grad, alpha=1 - beta1).sgn_()
    update = sign(tl.fma(g, h.one_minus_beta1, exp_avg * h.beta1))
    p = tl.fma(update, -h.lr, p)  # p.add_(update, alpha=-lr)
    exp_avg = tl.fma(g, h.one_minus_beta2, exp_avg * h.beta2)  # exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)
    return p, (exp_avg,)


LION = register(TritonRule(rules.LION, hyper=lion_hyper, element=lion_element))
