"""fusedopt.Adamax: torch.optim.Adamax's arguments, state and results, with fusedopt's extras."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.adamax import adamax as torch_adamax

from fusedopt import rules
from fusedopt.optim._base import FusedOptimizer
from fusedopt.optim._checks import check_adam_family, checks


class Adamax(FusedOptimizer):
    r"""Adamax (Adam with the infinity norm), a drop-in for :class:`torch.optim.Adamax`.

    Per parameter, with :math:`g` the gradient after unscaling (GradScaler) and clipping (``max_grad_norm``),
    and :math:`t` the parameter's step count after incrementing:

    .. math::
        \begin{aligned}
        & g \leftarrow -g \text{ if maximize}; \quad g \leftarrow g + \lambda \theta \text{ if } \lambda \ne 0 \\
        & m \leftarrow \mathrm{lerp}(m, g, 1 - \beta_1); \quad u \leftarrow \max(\beta_2 u, |g| + \epsilon) \\
        & \theta \leftarrow \theta - \frac{\gamma}{1 - \beta_1^t} \cdot \frac{m}{u}
        \end{aligned}

    The bias correction is computed in double per parameter; the element math is fp32 (fp64 for fp64 params).
    """

    _RULE = rules.ADAMAX
    _LEGACY_FLAG_DEFAULTS = dict(foreach=None, maximize=False, differentiable=False, capturable=False)

    def __init__(self, params, lr: float | Tensor = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, capturable: bool = False, max_grad_norm: float | None = None,
                 nonfinite: str = "ignore", backend: str = "auto", master_weights: bool | str = False,
                 state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, capturable=capturable)
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, nonfinite=nonfinite, backend=backend,
                         master_weights=master_weights, state_dtype=state_dtype,
                         param_rounding=param_rounding, seed=seed)

    _check_hyperparameters = checks(check_adam_family)  # torch.optim.Adamax's, in its order and words

    def _torch_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        # torch.optim.Adamax.step's body for one group, on fusedopt's state (see Adam._torch_update).
        states = self._installed_group_states(group, params)
        beta1, beta2 = group["betas"]
        torch_adamax(params, grads, [state["exp_avg"] for state in states], [state["exp_inf"] for state in states],
                     [state["step"] for state in states], foreach=False, maximize=group["maximize"],
                     differentiable=group["differentiable"], capturable=False,
                     has_complex=any(torch.is_complex(p) for p in params), eps=group["eps"], beta1=beta1,
                     beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"])
