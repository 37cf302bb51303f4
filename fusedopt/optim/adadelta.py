"""fusedopt.Adadelta: torch.optim.Adadelta's arguments and results, on fusedopt's update machinery."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.adadelta import adadelta as torch_adadelta

from fusedopt import rules
from fusedopt.optim._base import FusedOptimizer, _readable
from fusedopt.optim._checks import check_lr, check_nonnegative


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
    for fp64 params). States (``step``, ``square_avg``, ``acc_delta``) have torch.optim's names and layout; tensor
    states are fp32 for bf16/fp16 params (or ``state_dtype``), ``step`` (only counted) a 0-dim fp32 tensor on
    the param's device.

    Args are torch.optim.Adadelta's (``foreach``/``capturable`` are accepted for compatibility), plus keyword-only
    ``max_grad_norm``, ``nonfinite``, ``backend``, ``master_weights`` and ``state_dtype`` as described in
    :class:`fusedopt.SGD`. ``differentiable=True`` runs torch.optim's own single-tensor Adadelta (see
    ``fusedopt.optim._torch_path``), with the extras applied around it.
    """

    _RULE = rules.ADADELTA
    _TENSOR_STATE_KEYS = rules.ADADELTA.states
    _LEGACY_FLAG_DEFAULTS = dict(foreach=None, maximize=False, differentiable=False, capturable=False)

    def __init__(self, params, lr: float | Tensor = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0, foreach: bool | None = None, *, capturable: bool = False,
                 maximize: bool = False, differentiable: bool = False, max_grad_norm: float | None = None,
                 nonfinite: str = "ignore", backend: str = "auto", master_weights: bool = False,
                 state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        capturable=capturable, foreach=foreach, differentiable=differentiable)
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, nonfinite=nonfinite, backend=backend,
                         master_weights=master_weights, state_dtype=state_dtype,
                         param_rounding=param_rounding, seed=seed)

    _HYPERPARAMETERS = ("lr", "rho", "eps", "weight_decay")

    @classmethod
    def _check_hyperparameters(cls, hp: dict, at_step: bool = False) -> None:
        # torch.optim.Adadelta's checks, in its order and words.
        lr, rho, eps, weight_decay = hp["lr"], hp["rho"], hp["eps"], hp["weight_decay"]
        check_lr(lr, at_step)
        if _readable(rho, at_step) and not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_nonnegative(eps, "epsilon value", at_step)
        check_nonnegative(weight_decay, "weight_decay value", at_step)

    def _init_state(self, param: Tensor, state: dict, group: dict) -> None:
        state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
        for key in self._state_keys(group):
            state[key] = self._new_state(param)

    def _state_keys(self, group: dict) -> tuple[str, ...]:
        return self._RULE.states

    def _rule_args(self, group: dict) -> tuple[list[float], list[str]]:
        return [self._hyper(group["rho"]), self._hyper(group["eps"]), self._hyper(group["weight_decay"])], []

    def _torch_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        # torch.optim.Adadelta.step's body for one group, on fusedopt's lazy state.
        states = self._installed_group_states(group, params)
        torch_adadelta(params, grads, [s["square_avg"] for s in states], [s["acc_delta"] for s in states],
                       [s["step"] for s in states], capturable=False, foreach=False,
                       differentiable=group["differentiable"], has_complex=any(torch.is_complex(p) for p in params),
                       lr=group["lr"], rho=group["rho"], eps=group["eps"], weight_decay=group["weight_decay"],
                       maximize=group["maximize"])
