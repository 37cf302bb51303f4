"""Update rules as data: what every backend's generic ``update`` op needs to know about an algorithm.

A rule is named by a string (``"sgd"``, ``"adam"``, ...). Each backend implements it once: the per-element
function in csrc/include/fusedopt/math.h (used by the CPU loop and the CUDA kernel template), its Triton mirror
in fusedopt/triton/rules.py, and its pure-torch oracle in fusedopt/reference.py. This table says how the op's
flat arguments are laid out for the rule (see ``reference.update`` for the contract), so that the op schema,
the validation, the fake impl, the eager binding and the optimizer classes are written once for all rules.
The C++ rules carry the same names (``kName``, their state and hyperparameter names): tests/test_rules.py
checks that both sides agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch


@dataclass(frozen=True)
class Rule:
    name: str
    # Per-call hyperparameters, in the order of the op's ``hyper`` list (host doubles). ``hyper[0]`` is the
    # learning rate, which ``lr_tensor`` replaces when given.
    hyper: tuple[str, ...]
    # Structural switches chosen by the user (bit i of the op's ``flags`` is ``flags[i]``). Switches that follow
    # from a hyperparameter's value (weight_decay != 0) are derived by each backend, not passed.
    flags: tuple[str, ...]
    # Per-param tensor states with the param's numel (their state_dict keys), in the op's order.
    states: tuple[str, ...]
    # Per-param one-element float32 states (state_dict keys, e.g. "step"), advanced by the op on the device
    # unless the step is skipped.
    scalars: tuple[str, ...] = ()
    # States present only under a condition on (hyper, flags): state key -> predicate. The op's ``states`` list
    # holds only the states in use, in ``states`` order.
    optional: Mapping[str, Callable[[dict, frozenset], bool]] = field(default_factory=dict)
    # Whether the op takes ``is_first`` (one bool per param: its state has no history yet).
    takes_is_first: bool = False

    def flag_bits(self, flags) -> int:
        """The op's ``flags`` int from the names of the switches that are on."""
        return sum(1 << self.flags.index(name) for name in flags)

    def flag_names(self, bits: int) -> frozenset[str]:
        return frozenset(name for i, name in enumerate(self.flags) if bits >> i & 1)

    def hyper_dict(self, hyper) -> dict[str, float]:
        if len(hyper) != len(self.hyper):
            raise RuntimeError(f"fusedopt: rule {self.name!r} takes {len(self.hyper)} hyperparameters "
                               f"({', '.join(self.hyper)}), got {len(hyper)}")
        return dict(zip(self.hyper, map(float, hyper)))

    def used_states(self, hyper: dict[str, float], flags: frozenset[str]) -> tuple[str, ...]:
        """The state keys whose tensors the op's ``states`` list holds, in order."""
        return tuple(k for k in self.states if k not in self.optional or self.optional[k](hyper, flags))


RULES: dict[str, Rule] = {}


def register(rule: Rule) -> Rule:
    RULES[rule.name] = rule
    return rule


def get(name: str) -> Rule:
    try:
        return RULES[name]
    except KeyError:
        raise RuntimeError(f"fusedopt: unknown update rule {name!r}; known: {', '.join(sorted(RULES))}") from None


def list_name(key: str) -> str:
    """How the op's errors name the list of a state key: ``exp_avg`` -> ``exp_avgs``."""
    return key + "s"


SGD = register(Rule(
    "sgd", hyper=("lr", "weight_decay", "momentum", "dampening"), flags=("nesterov",),
    states=("momentum_buffer",), optional={"momentum_buffer": lambda h, f: h["momentum"] != 0},
    takes_is_first=True))

ADAM = register(Rule(
    "adam", hyper=("lr", "beta1", "beta2", "eps", "weight_decay"), flags=("amsgrad", "decoupled"),
    states=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), scalars=("step",),
    optional={"max_exp_avg_sq": lambda h, f: "amsgrad" in f}))


# --- The per-algorithm entry points of op contract v2 (``sgd_update``, ``adam_update``), on top of a backend's
# ``update``: every backend offers them under these names (tests and callers that name the algorithm's lists).

def sgd_entry(update):
    def sgd_update(params, grads, momentum_buffers, master_params, is_first, lr, weight_decay, momentum, dampening,
                   nesterov, maximize, lr_tensor=None, grad_scale=None, clip_coef=None, found_inf=None) -> None:
        update("sgd", params, grads, list(momentum_buffers), master_params, [], list(is_first),
               [lr, weight_decay, momentum, dampening], SGD.flag_bits(["nesterov"] if nesterov else []), maximize,
               lr_tensor, grad_scale, clip_coef, found_inf)
    return sgd_update


def adam_entry(update):
    def adam_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, steps, lr, beta1, beta2,
                    eps, weight_decay, amsgrad, maximize, decoupled, lr_tensor=None, grad_scale=None,
                    clip_coef=None, found_inf=None) -> None:
        flags = [name for name, on in (("amsgrad", amsgrad), ("decoupled", decoupled)) if on]
        states = [*exp_avgs, *exp_avg_sqs, *(max_exp_avg_sqs if amsgrad else ())]
        update("adam", params, grads, states, master_params, list(steps), [],
               [lr, beta1, beta2, eps, weight_decay], ADAM.flag_bits(flags), maximize, lr_tensor, grad_scale,
               clip_coef, found_inf)
    return adam_update


# --- NAdam, RAdam, Adadelta, Rprop, ASGD (issue 12 part 2). Each rule's per-tensor scalar math is a function of
# its scalar states and the hyperparameters only (never of the elements), so a device kernel computes it per tensor
# from the step count on the device, without a host sync; the bodies in fusedopt/reference.py say it exactly.

NADAM = register(Rule(
    "nadam", hyper=("lr", "beta1", "beta2", "eps", "weight_decay", "momentum_decay"), flags=("decoupled",),
    states=("exp_avg", "exp_avg_sq"), scalars=("step", "mu_product")))

RADAM = register(Rule(
    "radam", hyper=("lr", "beta1", "beta2", "eps", "weight_decay"), flags=("decoupled",),
    states=("exp_avg", "exp_avg_sq"), scalars=("step",)))

ADADELTA = register(Rule(
    "adadelta", hyper=("lr", "rho", "eps", "weight_decay"), flags=(),
    states=("square_avg", "acc_delta"), scalars=("step",)))

# lr only sets the initial step_size (the class's _INITIAL_STATE); the update reads the step_size state.
RPROP = register(Rule(
    "rprop", hyper=("lr", "etaminus", "etaplus", "step_size_min", "step_size_max"), flags=(),
    states=("prev", "step_size"), scalars=("step",)))

ASGD = register(Rule(
    "asgd", hyper=("lr", "lambd", "alpha", "t0", "weight_decay"), flags=(),
    states=("ax",), scalars=("step", "eta", "mu")))

# --- Adagrad, RMSprop, Adamax, Lion (issue 12 part 2) ---

ADAGRAD = register(Rule(
    "adagrad", hyper=("lr", "lr_decay", "weight_decay", "eps"), flags=(), states=("sum",), scalars=("step",)))

RMSPROP = register(Rule(
    "rmsprop", hyper=("lr", "alpha", "eps", "weight_decay", "momentum"), flags=("centered",),
    states=("square_avg", "grad_avg", "momentum_buffer"), scalars=("step",),
    optional={"grad_avg": lambda h, f: "centered" in f, "momentum_buffer": lambda h, f: h["momentum"] > 0}))

ADAMAX = register(Rule(
    "adamax", hyper=("lr", "beta1", "beta2", "eps", "weight_decay"), flags=(), states=("exp_avg", "exp_inf"),
    scalars=("step",)))

# Lion keeps no step count (its update does not use one; lion-pytorch keeps none either).
LION = register(Rule("lion", hyper=("lr", "beta1", "beta2", "weight_decay"), flags=(), states=("exp_avg",)))


# --- Stochastic rounding of bf16 params (issue 13, op contract v4; math.h's kFlagStochasticRounding) ---
# Bit 16 of the update op's ``flags``, above every rule's own flag bits: the params (bf16, no master copy) are
# rounded stochastically instead of to nearest. Then ``hyper`` holds the rule's values, the seed's low and high
# 32-bit words, and one id per param (each an integer in [0, 2^32), exact as a double), and ``scalars`` holds the
# rule's scalar states and then the rounding step: a one-element int64 tensor on the params' device, read (never
# written) by the op.
STOCHASTIC_ROUNDING = 1 << 16


@dataclass(frozen=True)
class Rounding:
    """The stochastic rounding arguments of one update call (see ``rounding_args``)."""
    seed_lo: int
    seed_hi: int
    param_ids: tuple[int, ...]
    step: object  # the int64 tensor


def rounding_args(rule: Rule, params, master_params, hyper, flags: int, scalars):
    """Splits an update call's ``hyper``, ``flags`` and ``scalars`` into the rule's own and the stochastic
    rounding arguments, validated in the compiled ops' words (csrc/validate.h: check_rounding_hyper,
    fill_rounding). Returns ``(hyper, flags, scalars, Rounding or None)``."""
    if flags < 0 or not flags & STOCHASTIC_ROUNDING:
        return hyper, flags, scalars, None
    n, k = len(params), len(rule.hyper)
    if len(hyper) != k + 2 + n:
        raise RuntimeError(f"fusedopt: rule {rule.name!r} with stochastic rounding takes {k} hyperparameters "
                           f"({', '.join(rule.hyper)}), the seed's two 32-bit words and one id per param "
                           f"({k + 2 + n} values for {n} params), got {len(hyper)}")
    words = []
    for j, v in enumerate(hyper[k:]):
        v = float(v)
        if not (0.0 <= v < 2.0**32 and v == int(v)):
            what = ("the seed's low word", "the seed's high word")[j] if j < 2 else f"the id of params[{j - 2}]"
            raise RuntimeError(f"fusedopt: hyper[{k + j}] ({what}) is {v:g}; expected an integer in [0, 2^32)")
        words.append(int(v))
    if n and params[0].dtype != torch.bfloat16:
        raise RuntimeError(f"fusedopt: stochastic rounding (flags bit 16) rounds bfloat16 params; params[0] has "
                           f"dtype {params[0].dtype}")
    if master_params:
        raise RuntimeError(f"fusedopt: stochastic rounding (flags bit 16) is for params without a master copy, but "
                           f"master_params has {len(master_params)} entries")
    at = len(rule.scalars) * n
    if len(scalars) != at + 1:
        raise RuntimeError(f"fusedopt: scalars has {len(scalars)} entries, expected {at + 1} ({len(rule.scalars)} "
                           f"scalar lists ({', '.join(rule.scalars) or 'none'}) of {n} params, then the rounding "
                           f"step)")
    step = scalars[at]
    if not (step.layout == torch.strided and step.dtype == torch.int64 and step.numel() == 1
            and (n == 0 or step.device == params[0].device)):
        where = f" on {params[0].device}" if n else ""
        raise RuntimeError(f"fusedopt: the rounding step (scalars[{at}]) must be a one-element int64 tensor{where}, "
                           f"got {step.dtype} with {step.numel()} elements on {step.device}")
    return (list(hyper[:k]), flags & ~STOCHASTIC_ROUNDING, list(scalars[:at]),
            Rounding(words[0], words[1], tuple(words[2:]), step))
