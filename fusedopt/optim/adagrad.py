"""fusedopt.Adagrad: torch.optim.Adagrad's arguments, state and results, with fusedopt's extras."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.adagrad import adagrad as torch_adagrad

from fusedopt import rules
from fusedopt.optim._base import FusedOptimizer
from fusedopt.optim._checks import checks


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

    with :math:`\eta` = ``lr_decay``. As in torch.optim, every param's state is created by the constructor
    (``sum`` filled with ``initial_accumulator_value``; for params added later with ``add_param_group``, at their
    first step, with the constructor's value, as torch does).
    """

    _RULE = rules.ADAGRAD
    # torch reads the constructor's value (defaults), not the group's, also for params added later.
    _INITIAL_STATE = {"sum": lambda opt, group: opt._hyper(opt.defaults["initial_accumulator_value"])}
    _SPARSE_GRADS = True
    _LEGACY_FLAG_DEFAULTS = dict(foreach=None, maximize=False, differentiable=False, fused=None)

    def __init__(self, params, lr: float | Tensor = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False, fused: bool | None = None,
                 max_grad_norm: float | None = None, nonfinite: str = "ignore", backend: str = "auto",
                 master_weights: bool | str = False, state_dtype: torch.dtype | None = None,
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

    # The rule's and the sum's initial value; torch.optim.Adagrad checks them all, in this order.
    _HYPERPARAMETERS = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")
    _check_hyperparameters = checks(*_HYPERPARAMETERS)

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
