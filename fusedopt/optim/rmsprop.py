"""fusedopt.RMSprop: torch.optim.RMSprop's arguments, state and results, with fusedopt's extras."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.rmsprop import rmsprop as torch_rmsprop

from fusedopt import rules
from fusedopt.optim._base import FusedOptimizer
from fusedopt.optim._checks import check_lr, check_nonnegative


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

    States have torch.optim's names and layout: ``step`` (counted, not used by the update), ``square_avg``,
    ``momentum_buffer`` (when momentum > 0) and ``grad_avg`` (when centered); fp32 for bf16/fp16 params (or
    ``state_dtype``), ``step`` a 0-dim fp32 tensor on the param's device.

    Args are torch.optim.RMSprop's (``foreach``/``capturable`` are accepted for compatibility), plus keyword-only
    ``max_grad_norm``, ``nonfinite``, ``backend``, ``master_weights`` and ``state_dtype`` as described in
    :class:`fusedopt.SGD`. ``differentiable=True`` runs torch.optim's own single-tensor RMSprop (see
    ``fusedopt.optim._torch_path``). Every backend has the rule (math.h's ``RmspropRule``, for the CPU and CUDA,
    and its Triton twin).
    """

    _RULE = rules.RMSPROP
    _TENSOR_STATE_KEYS = ("square_avg", "momentum_buffer", "grad_avg")
    _LEGACY_FLAG_DEFAULTS = dict(momentum=0, centered=False, foreach=None, maximize=False, differentiable=False,
                                 capturable=False)

    def __init__(self, params, lr: float | Tensor = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False, differentiable: bool = False, *,
                 max_grad_norm: float | None = None, nonfinite: str = "ignore", backend: str = "auto",
                 master_weights: bool = False, state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered, weight_decay=weight_decay,
                        capturable=capturable, foreach=foreach, maximize=maximize, differentiable=differentiable)
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, nonfinite=nonfinite, backend=backend,
                         master_weights=master_weights, state_dtype=state_dtype,
                         param_rounding=param_rounding, seed=seed)

    _HYPERPARAMETERS = ("lr", "momentum", "alpha", "eps", "weight_decay")

    @classmethod
    def _check_hyperparameters(cls, hp: dict, at_step: bool = False) -> None:
        # torch.optim.RMSprop's checks, in its order and words.
        check_lr(hp["lr"], at_step)
        for key, words in (("eps", "epsilon value"), ("momentum", "momentum value"),
                           ("weight_decay", "weight_decay value"), ("alpha", "alpha value")):
            check_nonnegative(hp[key], words, at_step)

    def _init_state(self, param: Tensor, state: dict, group: dict) -> None:
        # torch's entries, in its order
        state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
        state["square_avg"] = self._new_state(param)
        if group["momentum"] > 0:
            state["momentum_buffer"] = self._new_state(param)
        if group["centered"]:
            state["grad_avg"] = self._new_state(param)

    def _state_keys(self, group: dict) -> tuple[str, ...]:
        # the rule's order (fusedopt/rules.py): square_avg, grad_avg, momentum_buffer
        return ("square_avg", *(("grad_avg",) if group["centered"] else ()),
                *(("momentum_buffer",) if group["momentum"] > 0 else ()))

    def _rule_args(self, group: dict) -> tuple[list[float], list[str]]:
        return [self._hyper(group["alpha"]), self._hyper(group["eps"]), self._hyper(group["weight_decay"]),
                self._hyper(group["momentum"])], ["centered"] if group["centered"] else []

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
