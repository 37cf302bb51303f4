"""fusedopt.Adamax: torch.optim.Adamax's arguments, state and results, with fusedopt's extras."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.adamax import adamax as torch_adamax

from fusedopt import rules
from fusedopt.optim._base import FusedOptimizer
from fusedopt.optim._checks import check_adam_ranges, check_tensor_lr


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
    States (``step``, ``exp_avg``, ``exp_inf``) have torch.optim's names and layout; fp32 for bf16/fp16 params
    (or ``state_dtype``), ``step`` a 0-dim fp32 tensor on the param's device.

    Args are torch.optim.Adamax's (``foreach``/``capturable`` are accepted for compatibility), plus keyword-only
    ``max_grad_norm``, ``nonfinite``, ``backend``, ``master_weights`` and ``state_dtype`` as described in
    :class:`fusedopt.SGD`. ``differentiable=True`` runs torch.optim's own single-tensor Adamax (see
    ``fusedopt.optim._torch_path``). Every backend has the rule (math.h's ``AdamaxRule``, for the CPU and CUDA,
    and its Triton twin).
    """

    _RULE = rules.ADAMAX
    _TENSOR_STATE_KEYS = ("exp_avg", "exp_inf")
    _LEGACY_FLAG_DEFAULTS = dict(foreach=None, maximize=False, differentiable=False, capturable=False)

    def __init__(self, params, lr: float | Tensor = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, capturable: bool = False, max_grad_norm: float | None = None,
                 nonfinite: str = "ignore", backend: str = "auto", master_weights: bool = False,
                 state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, capturable=capturable)
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, nonfinite=nonfinite, backend=backend,
                         master_weights=master_weights, state_dtype=state_dtype,
                         param_rounding=param_rounding, seed=seed)

    _HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay")

    @classmethod
    def _check_hyperparameters(cls, hp: dict, at_step: bool = False) -> None:
        # torch.optim.Adamax's checks, in its order and words.
        lr, betas, eps, weight_decay = hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"]
        check_tensor_lr(lr)
        check_adam_ranges(lr, betas, eps, weight_decay, at_step)

    def _init_state(self, param: Tensor, state: dict, group: dict) -> None:
        state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
        state["exp_avg"] = self._new_state(param)
        state["exp_inf"] = self._new_state(param)

    def _state_keys(self, group: dict) -> tuple[str, ...]:
        return ("exp_avg", "exp_inf")

    def _rule_args(self, group: dict) -> tuple[list[float], list[str]]:
        beta1, beta2 = group["betas"]
        return [self._hyper(beta1), self._hyper(beta2), self._hyper(group["eps"]),
                self._hyper(group["weight_decay"])], []

    def _torch_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        # torch.optim.Adamax.step's body for one group, on fusedopt's state (see Adam._torch_update).
        states = self._installed_group_states(group, params)
        beta1, beta2 = group["betas"]
        torch_adamax(params, grads, [state["exp_avg"] for state in states], [state["exp_inf"] for state in states],
                     [state["step"] for state in states], foreach=False, maximize=group["maximize"],
                     differentiable=group["differentiable"], capturable=False,
                     has_complex=any(torch.is_complex(p) for p in params), eps=group["eps"], beta1=beta1,
                     beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"])
