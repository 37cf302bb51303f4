"""Hyperparameter checks shared by the optimizer classes, in torch.optim's words. Each class checks in its torch
namesake's order, most of them declared as data: ``_check_hyperparameters = checks("lr", "eps", ...)``. ``at_step``
(see ``_base._readable``) leaves alone a tensor value that cannot be read without a sync."""
from __future__ import annotations

from torch import Tensor

from fusedopt.optim._base import _readable

# torch's words for a value out of range, where they are not "{key} value".
_WORDS = {"lr": "learning rate", "eps": "epsilon value"}


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
