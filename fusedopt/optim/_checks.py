"""Hyperparameter checks shared by the optimizer classes, in torch.optim's words. Each class calls them in its
torch namesake's order; ``at_step`` (see ``_base._readable``) leaves alone a tensor value that cannot be read
without a sync."""
from __future__ import annotations

from torch import Tensor

from fusedopt.optim._base import _readable


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


def check_adam_ranges(lr, betas, eps, weight_decay, at_step: bool) -> None:
    """lr, eps, betas and weight_decay in the order and words of torch's Adam, NAdam, RAdam and Adamax (after
    their own checks of a tensor lr)."""
    check_nonnegative(lr, "learning rate", at_step)
    check_nonnegative(eps, "epsilon value", at_step)
    check_betas(betas, at_step)
    check_nonnegative(weight_decay, "weight_decay value", at_step)
