"""fusedopt.Adagrad: torch.optim.Adagrad's arguments, state and results, with fusedopt's extras."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.adagrad import adagrad as torch_adagrad

from fusedopt import rules
from fusedopt.optim._base import FusedOptimizer, state_dtype
from fusedopt.optim._checks import check_lr, check_nonnegative


class Adagrad(FusedOptimizer):
    r"""Adagrad, a drop-in for :class:`torch.optim.Adagrad`.

    Per parameter, with :math:`g` the gradient after unscaling (GradScaler) and clipping (``max_grad_norm``),
    and :math:`t` the parameter's step count after incrementing:

    .. math::
        \begin{aligned}
        & g \leftarrow -g \text{ if maximize}; \quad g \leftarrow g + \lambda \theta \text{ if } \lambda \ne 0 \\
        & \tilde\gamma \leftarrow \gamma / (1 + (t - 1) \eta); \quad s \leftarrow s + g^2 \\
        & \theta \leftarrow \theta - \tilde\gamma \, g / (\sqrt{s} + \epsilon)
        \end{aligned}

    with :math:`\eta` = ``lr_decay``. States (``step``, ``sum``) have torch.optim's names and layout; as in
    torch.optim, every param's state is created by the constructor (``sum`` filled with
    ``initial_accumulator_value``; for params added later with ``add_param_group``, at their first step, with the
    constructor's value, as torch does). ``sum`` is fp32 for bf16/fp16 params (or ``state_dtype``); ``step`` is a
    0-dim fp32 tensor on the param's device.

    Args are torch.optim.Adagrad's (``foreach``/``fused`` are accepted for compatibility), plus keyword-only
    ``max_grad_norm``, ``nonfinite``, ``backend``, ``master_weights`` and ``state_dtype`` as described in
    :class:`fusedopt.SGD`. ``differentiable=True`` and sparse gradients are supported as in torch.optim.Adagrad:
    such a step runs torch.optim's own single-tensor Adagrad (see ``fusedopt.optim._torch_path``), with the
    extras applied around it. Every backend has the rule (math.h's ``AdagradRule``, for the CPU and CUDA, and its
    Triton twin).
    """

    _RULE = rules.ADAGRAD
    _TENSOR_STATE_KEYS = ("sum",)
    _SPARSE_GRADS = True
    _LEGACY_FLAG_DEFAULTS = dict(foreach=None, maximize=False, differentiable=False, fused=None)

    def __init__(self, params, lr: float | Tensor = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False, fused: bool | None = None,
                 max_grad_norm: float | None = None, nonfinite: str = "ignore", backend: str = "auto",
                 master_weights: bool = False, state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, fused=fused)
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, nonfinite=nonfinite, backend=backend,
                         master_weights=master_weights, state_dtype=state_dtype,
                         param_rounding=param_rounding, seed=seed)
        # torch.optim.Adagrad creates every param's state here, so its state_dict has them before any step.
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, self.state[p], group)

    _HYPERPARAMETERS = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    @classmethod
    def _check_hyperparameters(cls, hp: dict, at_step: bool = False) -> None:
        # torch.optim.Adagrad's checks, in its order and words.
        check_lr(hp["lr"], at_step)
        for key, words in (("lr_decay", "lr_decay value"), ("weight_decay", "weight_decay value"),
                           ("initial_accumulator_value", "initial_accumulator_value value"),
                           ("eps", "epsilon value")):
            check_nonnegative(hp[key], words, at_step)

    def _init_state(self, param: Tensor, state: dict, group: dict) -> None:
        # torch reads the constructor's value (defaults), not the group's, also for params added later.
        value = self.defaults["initial_accumulator_value"]
        state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
        state["sum"] = torch.full_like(param, complex(value, value) if param.is_complex() else value,
                                       dtype=state_dtype(param, self.state_dtype),
                                       memory_format=torch.preserve_format)

    def _state_keys(self, group: dict) -> tuple[str, ...]:
        return ("sum",)

    def _rule_args(self, group: dict) -> tuple[list[float], list[str]]:
        return [self._hyper(group["lr_decay"]), self._hyper(group["weight_decay"]), self._hyper(group["eps"])], []

    def _torch_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        # torch.optim.Adagrad.step's body for one group, on fusedopt's state (the same layout for the dtypes this
        # path takes; `step` on the param's device, which torch's loop reads as a float).
        states = self._installed_group_states(group, params)
        torch_adagrad(params, grads, [state["sum"] for state in states], [state["step"] for state in states],
                      fused=False, grad_scale=None, found_inf=None, has_sparse_grad=any(g.is_sparse for g in grads),
                      foreach=False, differentiable=group["differentiable"],
                      has_complex=any(torch.is_complex(p) for p in params), lr=group["lr"],
                      weight_decay=group["weight_decay"], lr_decay=group["lr_decay"], eps=group["eps"],
                      maximize=group["maximize"])
