"""fusedopt.ASGD: torch.optim.ASGD's arguments and results, on fusedopt's update machinery."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.asgd import asgd as torch_asgd

from fusedopt import rules
from fusedopt.optim._base import FusedOptimizer, group_lr
from fusedopt.optim._checks import checks


class ASGD(FusedOptimizer):
    r"""Averaged stochastic gradient descent, a drop-in for :class:`torch.optim.ASGD`.

    Per parameter, with :math:`g` the gradient after unscaling (GradScaler) and clipping (``max_grad_norm``),
    :math:`\eta` and :math:`\mu` the states ``eta`` (initially lr) and ``mu`` (initially 1) as they were before
    the step, and :math:`t` the step count after incrementing:

    .. math::
        \begin{aligned}
        & g \leftarrow -g \text{ if maximize}; \quad g \leftarrow g + \lambda \theta \text{ if } \lambda \ne 0 \\
        & \theta \leftarrow \theta (1 - \lambda_d \eta) - \eta g; \quad
          a \leftarrow \theta \text{ if } \mu = 1 \text{ else } a + (\theta - a) \mu \\
        & \eta \leftarrow \frac{\gamma}{(1 + \lambda_d \gamma t)^\alpha}; \quad \mu \leftarrow \frac{1}{\max(1, t - t_0)}
        \end{aligned}

    with :math:`\lambda_d` = ``lambd`` and :math:`a` the state ``ax`` (the average). The new ``eta`` and ``mu`` are
    computed in double from the step count (a device kernel does it per tensor on the device, no host sync). The
    element math is fp32 (fp64 for fp64 params).
    """

    _RULE = rules.ASGD
    _INITIAL_STATE = {"eta": group_lr, "mu": 1.0}
    _LEGACY_FLAG_DEFAULTS = dict(foreach=None, maximize=False, differentiable=False, capturable=False)

    def __init__(self, params, lr: float | Tensor = 1e-2, lambd: float = 1e-4, alpha: float = 0.75,
                 t0: float = 1e6, weight_decay: float = 0, foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, capturable: bool = False, *, max_grad_norm: float | None = None,
                 nonfinite: str = "ignore", backend: str = "auto", master_weights: bool | str = False,
                 state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        defaults = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, capturable=capturable)
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, nonfinite=nonfinite, backend=backend,
                         master_weights=master_weights, state_dtype=state_dtype,
                         param_rounding=param_rounding, seed=seed)

    # torch.optim.ASGD's checks, in its order and words (it does not check lambd, alpha, t0).
    _check_hyperparameters = checks("lr", "weight_decay")

    def _torch_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        # torch.optim.ASGD.step's body for one group, on fusedopt's lazy state.
        states = self._installed_group_states(group, params)
        torch_asgd(params, grads, [s["ax"] for s in states], [s["mu"] for s in states], [s["eta"] for s in states],
                   [s["step"] for s in states], foreach=False, maximize=group["maximize"],
                   differentiable=group["differentiable"], capturable=False,
                   has_complex=any(torch.is_complex(p) for p in params), lambd=group["lambd"], lr=group["lr"],
                   t0=group["t0"], alpha=group["alpha"], weight_decay=group["weight_decay"])
