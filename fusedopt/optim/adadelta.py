"""fusedopt.Adadelta: torch.optim.Adadelta's arguments and results, on fusedopt's update machinery."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.adadelta import adadelta as torch_adadelta

from fusedopt import rules
from fusedopt.optim._base import FusedOptimizer
from fusedopt.optim._checks import _readable, checks


def _check_rho(hp: dict, at_step: bool) -> None:
    rho = hp["rho"]
    if _readable(rho, at_step) and not 0.0 <= rho <= 1.0:
        raise ValueError(f"Invalid rho value: {rho}")


class Adadelta(FusedOptimizer):
    r"""Adadelta, a drop-in for :class:`torch.optim.Adadelta`.

    Per parameter, with :math:`g` the gradient after unscaling (GradScaler) and clipping (``max_grad_norm``):

    .. math::
        \begin{aligned}
        & g \leftarrow -g \text{ if maximize}; \quad g \leftarrow g + \lambda \theta \text{ if } \lambda \ne 0 \\
        & v \leftarrow \rho v + (1 - \rho) g^2; \quad
          \Delta = \frac{\sqrt{u + \epsilon}}{\sqrt{v + \epsilon}} g; \quad
          u \leftarrow \rho u + (1 - \rho) \Delta^2 \\
        & \theta \leftarrow \theta - \gamma \Delta
        \end{aligned}

    with :math:`v` the state ``square_avg`` and :math:`u` the state ``acc_delta``. The element math is fp32 (fp64
    for fp64 params); ``step`` is only counted.
    """

    _RULE = rules.ADADELTA
    _LEGACY_FLAG_DEFAULTS = dict(foreach=None, maximize=False, differentiable=False, capturable=False)

    def __init__(self, params, lr: float | Tensor = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0, foreach: bool | None = None, *, capturable: bool = False,
                 maximize: bool = False, differentiable: bool = False, max_grad_norm: float | None = None,
                 nonfinite: str = "ignore", backend: str = "auto", master_weights: bool | str = False,
                 state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        capturable=capturable, foreach=foreach, differentiable=differentiable)
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, nonfinite=nonfinite, backend=backend,
                         master_weights=master_weights, state_dtype=state_dtype,
                         param_rounding=param_rounding, seed=seed)

    # torch.optim.Adadelta's checks, in its order and words.
    _check_hyperparameters = checks("lr", _check_rho, "eps", "weight_decay")

    def _torch_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        # torch.optim.Adadelta.step's body for one group, on fusedopt's lazy state.
        states = self._installed_group_states(group, params)
        torch_adadelta(params, grads, [s["square_avg"] for s in states], [s["acc_delta"] for s in states],
                       [s["step"] for s in states], capturable=False, foreach=False,
                       differentiable=group["differentiable"], has_complex=any(torch.is_complex(p) for p in params),
                       lr=group["lr"], rho=group["rho"], eps=group["eps"], weight_decay=group["weight_decay"],
                       maximize=group["maximize"])
