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
from fusedopt.triton.math import lerp, maximum, pow_int

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


@triton.jit
def adam_per_tensor(h, scalars, first):
    # The count advances, then the bias corrections use the new count (as torch.optim does), in float64.
    step = scalars[0] + 1.0
    step_size = h[0] / (1.0 - pow_int(h[1], step))  # lr / (1 - beta1^step)
    # math.h (like torch) takes bias_correction2 ** 0.5 with pow, which the interpreter lacks: the float64 sqrt
    # differs from it in the last double bit for ~0.1% of counts, and not once in the float (2.2M counts tried).
    bc2_sqrt = tl.sqrt(1.0 - pow_int(h[2], step))
    return (step,), (step_size.to(tl.float32), bc2_sqrt.to(tl.float32))


# Each line is one torch op of _single_tensor_adam (named at its end); maximize and clipping are prepare_grad's.
@triton.jit
def adam_element(p, g, s, h, t, first, FLAGS: tl.constexpr, USED: tl.constexpr):
    m = s[0]
    v = s[1]
    vmax = s[2]
    step_size = t[0]
    bc2_sqrt = t[1]
    if _ADAM_DECOUPLED & FLAGS:
        p = tl.where(h.weight_decay_on, p * h.decay, p)  # param.mul_(1 - lr * weight_decay)
    else:
        g = tl.where(h.weight_decay_on, tl.fma(p, h.weight_decay, g), g)  # grad.add(param, alpha=weight_decay)
    m = lerp(m, g, h.lerp_weight)  # exp_avg.lerp_(grad, 1 - beta1)
    v = tl.fma(h.one_minus_beta2 * g, g, v * h.beta2)  # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
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
