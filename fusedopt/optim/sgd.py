"""fusedopt.SGD: torch.optim.SGD's arguments and results, on fused multi-tensor kernels."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.sgd import sgd as torch_sgd

from fusedopt import rules
from fusedopt.optim._base import FusedOptimizer
from fusedopt.optim._checks import _readable, check_tensor_lr


class SGD(FusedOptimizer):
    r"""Stochastic gradient descent (optionally with momentum), a drop-in for :class:`torch.optim.SGD`.

    Per parameter, with :math:`g` the gradient after unscaling (GradScaler) and clipping (``max_grad_norm``):

    .. math::
        \begin{aligned}
        & g \leftarrow -g \text{ if maximize}; \quad g \leftarrow g + \lambda \theta \text{ if } \lambda \ne 0 \\
        & \text{if } \mu \ne 0: b \leftarrow g \text{ (first step of this param) else }
              b \leftarrow \mu b + (1 - \tau) g; \quad
              g \leftarrow g + \mu b \text{ if nesterov else } b \\
        & \theta \leftarrow \theta - \gamma g
        \end{aligned}

    All math is fp32 (fp64 for fp64 params). A tensor ``lr`` goes to the kernels as a tensor (never read on the
    host).
    """

    _RULE = rules.SGD
    _SPARSE_GRADS = True
    _LEGACY_FLAG_DEFAULTS = dict(nesterov=False, maximize=False, foreach=None, differentiable=False, fused=False)

    def __init__(self, params, lr: float | Tensor = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float | Tensor = 0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False, fused: bool | None = None,
                 max_grad_norm: float | None = None, nonfinite: str = "ignore", backend: str = "auto",
                 master_weights: bool | str = False, state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, foreach=foreach, differentiable=differentiable,
                        fused=fused)
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, nonfinite=nonfinite, backend=backend,
                         master_weights=master_weights, state_dtype=state_dtype,
                         param_rounding=param_rounding, seed=seed)

    @classmethod
    def _check_hyperparameters(cls, hp: dict, at_step: bool = False) -> None:
        # torch.optim.SGD's checks, in its order and words.
        lr, momentum, weight_decay = hp["lr"], hp["momentum"], hp["weight_decay"]
        check_tensor_lr(lr)
        if _readable(lr, at_step) and lr < 0.0:  # (NaN passes, as in torch)
            raise ValueError(f"Invalid learning rate: {lr}")
        if _readable(momentum, at_step) and momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if _readable(weight_decay, at_step) and weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if hp.get("nesterov") and _readable(momentum, at_step) and _readable(hp["dampening"], at_step) \
                and (momentum <= 0 or hp["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _missing_states(self, states: list[dict | None], group: dict) -> list[int]:
        if group["momentum"] == 0:
            return []
        # The steady state, every param with its buffer: one pass (a generator, not operator.methodcaller: torch.compile
        # traces the step and cannot trace a methodcaller).
        if all(states) and all(state.get("momentum_buffer") is not None for state in states):
            return []
        # torch 1.x checkpoints stored {"momentum_buffer": None} for momentum 0: no history, as if absent.
        return [i for i, state in enumerate(states) if not state or state.get("momentum_buffer") is None]

    def _torch_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        # torch.optim.SGD.step's body for one group: a missing buffer (None) starts as a copy of the grad.
        momentum = group["momentum"]
        buffers = [self.state[p].get("momentum_buffer") if p in self.state else None for p in params] \
            if momentum != 0 else []
        torch_sgd(params, grads, buffers, has_sparse_grad=any(g.is_sparse for g in grads), foreach=False,
                  fused=False, weight_decay=group["weight_decay"], momentum=momentum, lr=group["lr"],
                  dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"])
        for p, buffer in zip(params, buffers):
            self.state[p]["momentum_buffer"] = buffer

    def _after_skippable_first_step(self, fresh: set[Tensor], found_inf: Tensor) -> None:
        # torch starts a momentum buffer as a copy of the first gradient it applies; a skipped first step leaves
        # a zero buffer, which the next step treats as history: b = momentum * 0 + (1 - dampening) * g. With
        # dampening == 0 that is g bitwise (up to the sign of a zero g), exactly torch's fresh buffer, so the
        # buffer can stay and the step needs no host read of found_inf (a sync on GPUs). With dampening != 0 it
        # would be (1 - dampening) * g: only then is found_inf read here, and the buffer dropped on a skip.
        damped = [p for group in self.param_groups if group["momentum"] != 0 and group["dampening"] != 0
                  for p in group["params"] if p in fresh]
        if damped and bool(found_inf > 0):
            for p in damped:
                self.state[p].pop("momentum_buffer", None)
