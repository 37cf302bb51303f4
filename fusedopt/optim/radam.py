"""fusedopt.RAdam: torch.optim.RAdam's arguments and results, on fusedopt's update machinery."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.radam import radam as torch_radam

from fusedopt import rules
from fusedopt.optim._base import FusedOptimizer
from fusedopt.optim._checks import check_adam_family, checks


class RAdam(FusedOptimizer):
    r"""RAdam (rectified Adam), a drop-in for :class:`torch.optim.RAdam` (with decoupled weight decay when
    ``decoupled_weight_decay=True``).

    Per parameter, with :math:`g` the gradient after unscaling (GradScaler) and clipping (``max_grad_norm``)
    and :math:`t` the parameter's step count after incrementing:

    .. math::
        \begin{aligned}
        & g \leftarrow -g \text{ if maximize} \\
        & \theta \leftarrow \theta (1 - \gamma \lambda) \text{ if decoupled, else }
              g \leftarrow g + \lambda \theta \\
        & m \leftarrow \mathrm{lerp}(m, g, 1 - \beta_1); \quad v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        & \rho_\infty = \frac{2}{1 - \beta_2} - 1; \quad \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t} \\
        & \text{if } \rho_t > 5: \theta \leftarrow \theta - \gamma \frac{m}{1 - \beta_1^t} \cdot
              \frac{\sqrt{1 - \beta_2^t}}{\sqrt v + \epsilon} \cdot
              \sqrt{\frac{(\rho_t - 4)(\rho_t - 2) \rho_\infty}{(\rho_\infty - 4)(\rho_\infty - 2) \rho_t}}
          \text{, else } \theta \leftarrow \theta - \gamma \frac{m}{1 - \beta_1^t}
        \end{aligned}

    The branch and the coefficients are per parameter, from its step count (computed in double; a device kernel
    decides them on the device, with no host sync); the element math is fp32 (fp64 for fp64 params).
    """

    _RULE = rules.RADAM
    _LEGACY_FLAG_DEFAULTS = dict(foreach=None, maximize=False, differentiable=False, decoupled_weight_decay=False,
                                 capturable=False)

    def __init__(self, params, lr: float | Tensor = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 max_grad_norm: float | None = None, nonfinite: str = "ignore", backend: str = "auto",
                 master_weights: bool | str = False, state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize, foreach=foreach,
                        capturable=capturable, decoupled_weight_decay=decoupled_weight_decay,
                        differentiable=differentiable)
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, nonfinite=nonfinite, backend=backend,
                         master_weights=master_weights, state_dtype=state_dtype,
                         param_rounding=param_rounding, seed=seed)

    _check_hyperparameters = checks(check_adam_family)  # torch.optim.RAdam's, in its order and words

    def _torch_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        # torch.optim.RAdam.step's body for one group, on fusedopt's lazy state.
        states = self._installed_group_states(group, params)
        beta1, beta2 = group["betas"]
        torch_radam(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                    [s["step"] for s in states], foreach=False, capturable=False,
                    differentiable=group["differentiable"], has_complex=any(torch.is_complex(p) for p in params),
                    decoupled_weight_decay=group["decoupled_weight_decay"], maximize=group["maximize"],
                    beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"])
