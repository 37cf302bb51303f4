"""fusedopt.NAdam: torch.optim.NAdam's arguments and results, on fusedopt's update machinery."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.nadam import nadam as torch_nadam

from fusedopt import rules
from fusedopt.optim._base import FusedOptimizer
from fusedopt.optim._checks import check_adam_family, checks


class NAdam(FusedOptimizer):
    r"""NAdam (Adam with Nesterov momentum), a drop-in for :class:`torch.optim.NAdam` (NAdamW with
    ``decoupled_weight_decay=True``).

    Per parameter, with :math:`g` the gradient after unscaling (GradScaler) and clipping (``max_grad_norm``),
    :math:`t` the parameter's step count after incrementing and :math:`\psi` the momentum decay:

    .. math::
        \begin{aligned}
        & g \leftarrow -g \text{ if maximize} \\
        & \theta \leftarrow \theta (1 - \gamma \lambda) \text{ if decoupled, else }
              g \leftarrow g + \lambda \theta \\
        & \mu_t = \beta_1 (1 - \tfrac12 0.96^{t \psi}); \quad \mu_{t+1} = \beta_1 (1 - \tfrac12 0.96^{(t+1) \psi});
          \quad P \leftarrow P \mu_t \text{ (the state mu\_product)} \\
        & m \leftarrow \mathrm{lerp}(m, g, 1 - \beta_1); \quad v \leftarrow \beta_2 v + (1 - \beta_2) g^2;
          \quad d = \sqrt{v / (1 - \beta_2^t)} + \epsilon \\
        & \theta \leftarrow \theta - \gamma \frac{1 - \mu_t}{1 - P} \frac{g}{d}
              - \gamma \frac{\mu_{t+1}}{1 - P \mu_{t+1}} \frac{m}{d}
        \end{aligned}

    The per-parameter coefficients are computed in double from the step count and ``mu_product`` (0-dim fp32
    states on the param's device, as ``step``); the element math is fp32 (fp64 for fp64 params).
    """

    _RULE = rules.NADAM
    _INITIAL_STATE = {"mu_product": 1.0}
    _LEGACY_FLAG_DEFAULTS = dict(maximize=False, foreach=None, capturable=False, differentiable=False,
                                 decoupled_weight_decay=False)

    def __init__(self, params, lr: float | Tensor = 2e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, max_grad_norm: float | None = None, nonfinite: str = "ignore",
                 backend: str = "auto", master_weights: bool | str = False, state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, foreach=foreach,
                        capturable=capturable, differentiable=differentiable)
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, nonfinite=nonfinite, backend=backend,
                         master_weights=master_weights, state_dtype=state_dtype,
                         param_rounding=param_rounding, seed=seed)

    # torch.optim.NAdam's checks, in its order and words.
    _check_hyperparameters = checks(check_adam_family, "momentum_decay")

    def _torch_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        # torch.optim.NAdam.step's body for one group, on fusedopt's lazy state (step and mu_product live on the
        # param's device, which torch's non-capturable loop reads as floats).
        states = self._installed_group_states(group, params)
        beta1, beta2 = group["betas"]
        torch_nadam(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                    [s["mu_product"] for s in states], [s["step"] for s in states], foreach=False, capturable=False,
                    differentiable=group["differentiable"], has_complex=any(torch.is_complex(p) for p in params),
                    decoupled_weight_decay=group["decoupled_weight_decay"], maximize=group["maximize"],
                    beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                    momentum_decay=group["momentum_decay"], eps=group["eps"])
