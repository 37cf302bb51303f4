"""fusedopt.RAdam: torch.optim.RAdam's arguments and results, on fusedopt's update machinery."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.radam import radam as torch_radam

from fusedopt import rules
from fusedopt.optim._base import FusedOptimizer
from fusedopt.optim._checks import check_adam_ranges, check_tensor_lr


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
    decides them on the device, with no host sync); the element math is fp32 (fp64 for fp64 params). States
    (``step``, ``exp_avg``, ``exp_avg_sq``) have torch.optim's names and layout; tensor states are fp32 for
    bf16/fp16 params (or ``state_dtype``), ``step`` a 0-dim fp32 tensor on the param's device.

    Args are torch.optim.RAdam's (``foreach``/``capturable`` are accepted for compatibility), plus keyword-only
    ``max_grad_norm``, ``nonfinite``, ``backend``, ``master_weights`` and ``state_dtype`` as described in
    :class:`fusedopt.SGD`. ``differentiable=True`` runs torch.optim's own single-tensor RAdam (see
    ``fusedopt.optim._torch_path``), with the extras applied around it.
    """

    _RULE = rules.RADAM
    _TENSOR_STATE_KEYS = rules.RADAM.states
    _LEGACY_FLAG_DEFAULTS = dict(foreach=None, maximize=False, differentiable=False, decoupled_weight_decay=False,
                                 capturable=False)

    def __init__(self, params, lr: float | Tensor = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 max_grad_norm: float | None = None, nonfinite: str = "ignore", backend: str = "auto",
                 master_weights: bool = False, state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize, foreach=foreach,
                        capturable=capturable, decoupled_weight_decay=decoupled_weight_decay,
                        differentiable=differentiable)
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, nonfinite=nonfinite, backend=backend,
                         master_weights=master_weights, state_dtype=state_dtype,
                         param_rounding=param_rounding, seed=seed)

    _HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay")

    @classmethod
    def _check_hyperparameters(cls, hp: dict, at_step: bool = False) -> None:
        # torch.optim.RAdam's checks, in its order and words.
        lr, betas, eps, weight_decay = hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"]
        check_tensor_lr(lr)
        check_adam_ranges(lr, betas, eps, weight_decay, at_step)

    def _init_state(self, param: Tensor, state: dict, group: dict) -> None:
        state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
        for key in self._state_keys(group):
            state[key] = self._new_state(param)

    def _state_keys(self, group: dict) -> tuple[str, ...]:
        return self._RULE.states

    def _rule_args(self, group: dict) -> tuple[list[float], list[str]]:
        beta1, beta2 = group["betas"]
        return ([self._hyper(beta1), self._hyper(beta2), self._hyper(group["eps"]), self._hyper(group["weight_decay"])],
                ["decoupled"] if group["decoupled_weight_decay"] else [])

    def _torch_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        # torch.optim.RAdam.step's body for one group, on fusedopt's lazy state.
        states = self._installed_group_states(group, params)
        beta1, beta2 = group["betas"]
        torch_radam(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                    [s["step"] for s in states], foreach=False, capturable=False,
                    differentiable=group["differentiable"], has_complex=any(torch.is_complex(p) for p in params),
                    decoupled_weight_decay=group["decoupled_weight_decay"], maximize=group["maximize"],
                    beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"])
