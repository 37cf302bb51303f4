"""Hyperparameter checks shared by the optimizer classes, in torch.optim's words. Each class checks in its torch
namesake's order, most of them declared as data: ``_check_hyperparameters = checks("lr", "eps", ...)``. ``at_step``
(see ``_readable``) leaves alone a tensor value that cannot be read without a sync. Also the checks of the
extras every class shares that have data of their own (``master_weights``; ``param_rounding`` and ``seed``, and
their state_dict entry)."""
from __future__ import annotations

import numbers

import torch
from torch import Tensor

# torch's words for a value out of range, where they are not "{key} value".
_WORDS = {"lr": "learning rate", "eps": "epsilon value"}
PARAM_ROUNDINGS = ("nearest", "stochastic")


def _readable(value, at_step: bool) -> bool:
    """Whether a hyperparameter's value may be compared on the host: always at construction (torch.optim reads
    it there too); at step time not for a tensor off the CPU (reading it would wait for the device) or while
    torch.compile traces the step."""
    if not at_step or not torch.is_tensor(value):
        return True
    return value.device.type == "cpu" and not torch.compiler.is_compiling()


def check_lr(lr, at_step: bool) -> None:
    """torch's checks of lr in every class but SGD (which lets NaN through: ``lr < 0.0``)."""
    check_tensor_lr(lr)
    check_nonnegative(lr, "learning rate", at_step)


def check_tensor_lr(lr) -> None:
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")


def check_nonnegative(value, what: str, at_step: bool) -> None:
    """``Invalid {what}: {value}`` unless ``0 <= value`` (so NaN is refused, as torch's ``not 0.0 <= x``)."""
    if _readable(value, at_step) and not 0.0 <= value:
        raise ValueError(f"Invalid {what}: {value}")


def check_betas(betas, at_step: bool) -> None:
    """Two betas in [0, 1) (Adam, NAdam, RAdam, Adamax)."""
    if at_step and len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas}; expected two values")
    for i in (0, 1):  # torch indexes them (an IndexError for one beta, more are not looked at)
        beta = betas[i]
        if _readable(beta, at_step) and not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")


def _check_entry(hp: dict, key: str, at_step: bool) -> None:
    """One group entry as torch checks it: lr (a 1-element tensor, then >= 0), Adam's betas, or ``>= 0``."""
    if key == "lr":
        check_lr(hp["lr"], at_step)
    elif key == "betas":
        check_betas(hp["betas"], at_step)
    else:
        check_nonnegative(hp[key], _WORDS.get(key, f"{key} value"), at_step)


def checks(*steps):
    """A class's ``_check_hyperparameters`` (a staticmethod ``(hp, at_step=False)``) from its checks in torch's
    order: a group key is checked by ``_check_entry``, a function is called as ``f(hp, at_step)``."""
    def check_hyperparameters(hp: dict, at_step: bool = False) -> None:
        for step in steps:
            if callable(step):
                step(hp, at_step)
            else:
                _check_entry(hp, step, at_step)
    return staticmethod(check_hyperparameters)


def check_adam_family(hp: dict, at_step: bool = False) -> None:
    """torch's checks of Adam, NAdam, RAdam and Adamax, in their order and words (after Adam's own checks of a
    tensor lr): a tensor lr of one element; lr, eps, betas and weight_decay in range."""
    for key in ("lr", "eps", "betas", "weight_decay"):
        _check_entry(hp, key, at_step)


def check_master_weights(master_weights) -> None:
    """The constructor's check of ``master_weights``: False, True (an fp32 master copy) or ``"remainder"`` (the low
    16 bits of an fp32 master next to each bf16 param; math.h's split_bf16)."""
    if isinstance(master_weights, str) and master_weights != "remainder":
        raise ValueError(f"Invalid master_weights: {master_weights!r}; expected True, False or 'remainder'")
    if not isinstance(master_weights, (bool, str)):
        raise TypeError(f"master_weights must be True, False or 'remainder', got {master_weights!r}")


def check_remainder_dtype(owner: str, param_dtype: torch.dtype, describe=None) -> None:
    """master_weights="remainder" for a param of ``param_dtype`` (a low-precision one): bf16 only, a float16 param
    (named by ``describe()`` when given) is refused. ``owner``: the optimizer class's name."""
    if param_dtype != torch.float16:
        return
    where = "a float16 param" if describe is None else f"{describe()} (float16)"
    raise ValueError(
        f"{owner}: master_weights='remainder' keeps the low 16 bits of an fp32 master next to a bfloat16 param, "
        f"whose 16 bits are the fp32 value's top half; {where} is not that top half (5 exponent bits to fp32's 8), "
        f"so no 16-bit remainder holds fp32's range and precision. Use bfloat16 params, or master_weights=True (an "
        f"fp32 copy) for float16 ones")


def _is_seed(seed) -> bool:
    """A stochastic rounding key: an integer (not a bool) in [0, 2**64)."""
    return isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and 0 <= seed < 2**64


def check_param_rounding(param_rounding, seed, master_weights, differentiable: bool) -> None:
    """The constructor's checks of ``param_rounding`` and ``seed``."""
    if not isinstance(param_rounding, str) or param_rounding not in PARAM_ROUNDINGS:
        raise ValueError(f"Invalid param_rounding: {param_rounding!r}; expected 'nearest' or 'stochastic'")
    if param_rounding == "nearest":
        if seed is not None:
            raise ValueError("seed is the key of param_rounding='stochastic'; it does not apply to 'nearest'")
        return
    if master_weights == "remainder":
        raise ValueError("param_rounding='stochastic' is for bf16 params without a master copy; "
                         "master_weights='remainder' keeps one, and needs each param to be its master rounded to "
                         "nearest, so that the 16-bit remainder holds the rest exactly: with a master there is "
                         "nothing to round stochastically")
    if master_weights is not False:
        raise ValueError(f"param_rounding='stochastic' is for bf16 params without a master copy; "
                         f"master_weights={master_weights!r} keeps an fp32 one, which holds the exact value (the "
                         f"params are rounded to nearest from it): with a master there is nothing to round "
                         f"stochastically")
    if differentiable:
        raise ValueError("param_rounding='stochastic' does not apply to differentiable=True (torch.optim's "
                         "single-tensor implementation runs the step)")
    if seed is not None and not _is_seed(seed):
        raise ValueError(f"Invalid seed: {seed!r}; expected an integer in [0, 2**64)")


def check_loaded_rounding(value) -> None:
    """A state_dict's ``"param_rounding"`` entry (None: absent): ``{"seed": int in [0, 2**64), "step": a
    non-negative integer or one-element integer tensor}``; checked before anything is loaded."""
    if value is None:
        return
    if not isinstance(value, dict) or set(value) != {"seed", "step"}:
        raise ValueError(f"loaded state dict has an invalid 'param_rounding' entry {value!r}; expected "
                         f"{{'seed': int, 'step': int or tensor}}")
    seed, step = value["seed"], value["step"]
    if not _is_seed(seed):
        raise ValueError(f"loaded state dict's param_rounding seed is {seed!r}; expected an integer in [0, 2**64)")
    if torch.is_tensor(step):
        ok = step.numel() == 1 and not step.is_floating_point() and not step.is_complex() \
            and step.dtype != torch.bool and step.device.type != "meta" and int(step.item()) >= 0
    else:
        ok = isinstance(step, numbers.Integral) and not isinstance(step, bool) and step >= 0
    if not ok:
        raise ValueError(f"loaded state dict's param_rounding step is {step!r}; expected a non-negative integer "
                         f"or one-element integer tensor")
