"""fusedopt.RMSprop: torch.optim.RMSprop's arguments, state and results, with fusedopt's extras."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.rmsprop import rmsprop as torch_rmsprop

from fusedopt import rules
from fusedopt.optim._base import FusedOptimizer
from fusedopt.optim._checks import checks


class RMSprop(FusedOptimizer):
    r"""RMSprop, a drop-in for :class:`torch.optim.RMSprop`.

    Per parameter, with :math:`g` the gradient after unscaling (GradScaler) and clipping (``max_grad_norm``):

    .. math::
        \begin{aligned}
        & g \leftarrow -g \text{ if maximize}; \quad g \leftarrow g + \lambda \theta \text{ if } \lambda \ne 0 \\
        & v \leftarrow \alpha v + (1 - \alpha) g^2; \quad
          \tilde v \leftarrow v - \bar g^2 \text{ with } \bar g \leftarrow \mathrm{lerp}(\bar g, g, 1 - \alpha)
          \text{ if centered, else } v \\
        & \text{if } \mu > 0: b \leftarrow \mu b + g / (\sqrt{\tilde v} + \epsilon); \quad
              \theta \leftarrow \theta - \gamma b \quad
          \text{else } \theta \leftarrow \theta - \gamma g / (\sqrt{\tilde v} + \epsilon)
        \end{aligned}

    ``step`` is counted, not used by the update; ``grad_avg`` is kept when centered, ``momentum_buffer`` when
    momentum > 0.
    """

    _RULE = rules.RMSPROP
    _LEGACY_FLAG_DEFAULTS = dict(momentum=0, centered=False, foreach=None, maximize=False, differentiable=False,
                                 capturable=False)

    def __init__(self, params, lr: float | Tensor = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False, differentiable: bool = False, *,
                 max_grad_norm: float | None = None, nonfinite: str = "ignore", backend: str = "auto",
                 master_weights: bool | str = False, state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered, weight_decay=weight_decay,
                        capturable=capturable, foreach=foreach, maximize=maximize, differentiable=differentiable)
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, nonfinite=nonfinite, backend=backend,
                         master_weights=master_weights, state_dtype=state_dtype,
                         param_rounding=param_rounding, seed=seed)

    # torch.optim.RMSprop's checks, in its order and words.
    _check_hyperparameters = checks("lr", "eps", "momentum", "weight_decay", "alpha")

    def _torch_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        # torch.optim.RMSprop.step's body for one group, on fusedopt's state (see Adam._torch_update).
        states = self._installed_group_states(group, params)
        torch_rmsprop(params, grads, [state["square_avg"] for state in states],
                      [state["grad_avg"] for state in states] if group["centered"] else [],
                      [state["momentum_buffer"] for state in states] if group["momentum"] > 0 else [],
                      [state["step"] for state in states], foreach=False, maximize=group["maximize"],
                      differentiable=group["differentiable"], capturable=False,
                      has_complex=any(torch.is_complex(p) for p in params), lr=group["lr"], alpha=group["alpha"],
                      eps=group["eps"], weight_decay=group["weight_decay"], momentum=group["momentum"],
                      centered=group["centered"])
