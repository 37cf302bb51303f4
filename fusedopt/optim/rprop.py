"""fusedopt.Rprop: torch.optim.Rprop's arguments and results, on fusedopt's update machinery."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.rprop import rprop as torch_rprop

from fusedopt import rules
from fusedopt.optim._base import FusedOptimizer, group_lr
from fusedopt.optim._checks import _readable, check_lr


class Rprop(FusedOptimizer):
    r"""Rprop (resilient backpropagation), a drop-in for :class:`torch.optim.Rprop`.

    Per element, with :math:`g` the gradient after unscaling (GradScaler) and clipping (``max_grad_norm``),
    :math:`g'` the previous step's (state ``prev``) and :math:`\eta` the state ``step_size`` (initially lr):

    .. math::
        \begin{aligned}
        & g \leftarrow -g \text{ if maximize} \\
        & f = \eta_+ \text{ if } g g' > 0, \; \eta_- \text{ if } g g' < 0, \; 1 \text{ if } g g' = 0; \quad
          \eta \leftarrow \mathrm{clamp}(\eta f, \eta_{min}, \eta_{max}) \\
        & g \leftarrow 0 \text{ where } f = \eta_-; \quad \theta \leftarrow \theta - \mathrm{sign}(g) \eta; \quad
          g' \leftarrow g
        \end{aligned}

    The element math is fp32 (fp64 for fp64 params); complex params are two real numbers each, as in torch.
    ``step`` is only counted; a bf16 ``step_size`` (``state_dtype``) rounds lr and each update.
    """

    _RULE = rules.RPROP
    _INITIAL_STATE = {"step_size": group_lr}  # torch's: every step size starts at lr
    _LEGACY_FLAG_DEFAULTS = dict(foreach=None, maximize=False, differentiable=False, capturable=False)

    def __init__(self, params, lr: float | Tensor = 1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), *,
                 capturable: bool = False, foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, max_grad_norm: float | None = None, nonfinite: str = "ignore",
                 backend: str = "auto", master_weights: bool | str = False, state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        defaults = dict(lr=lr, etas=etas, step_sizes=step_sizes, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, capturable=capturable)
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, nonfinite=nonfinite, backend=backend,
                         master_weights=master_weights, state_dtype=state_dtype,
                         param_rounding=param_rounding, seed=seed)

    @classmethod
    def _check_hyperparameters(cls, hp: dict, at_step: bool = False) -> None:
        # torch.optim.Rprop's checks, in its order and words (it does not check step_sizes).
        lr, etas = hp["lr"], hp["etas"]
        check_lr(lr, at_step)
        if at_step:
            for key in ("etas", "step_sizes"):
                if len(hp[key]) != 2:
                    raise ValueError(f"Invalid {key}: {hp[key]}; expected two values")
        if all(_readable(eta, at_step) for eta in etas) and not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")

    def _torch_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        # torch.optim.Rprop.step's body for one group, on fusedopt's lazy state.
        states = self._installed_group_states(group, params)
        (etaminus, etaplus), (step_size_min, step_size_max) = group["etas"], group["step_sizes"]
        torch_rprop(params, grads, [s["prev"] for s in states], [s["step_size"] for s in states],
                    [s["step"] for s in states], foreach=False, capturable=False, maximize=group["maximize"],
                    differentiable=group["differentiable"], has_complex=any(torch.is_complex(p) for p in params),
                    step_size_min=step_size_min, step_size_max=step_size_max, etaminus=etaminus, etaplus=etaplus)
