"""fusedopt.Adam and fusedopt.AdamW: torch.optim's arguments and results, on fused multi-tensor kernels."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.adam import adam as torch_adam

from fusedopt import rules
from fusedopt.optim._base import FusedOptimizer
from fusedopt.optim._checks import check_adam_family


def _to_scalar(beta):
    """A 1-element tensor hyperparameter becomes 0-dim, as torch.optim stores it."""
    return beta.squeeze() if isinstance(beta, Tensor) and beta.dim() != 0 else beta


class Adam(FusedOptimizer):
    r"""Adam, a drop-in for :class:`torch.optim.Adam` (AdamW with ``decoupled_weight_decay=True``).

    Per parameter, with :math:`g` the gradient after unscaling (GradScaler) and clipping (``max_grad_norm``),
    and :math:`t` the parameter's step count after incrementing:

    .. math::
        \begin{aligned}
        & g \leftarrow -g \text{ if maximize} \\
        & \theta \leftarrow \theta (1 - \gamma \lambda) \text{ if decoupled, else }
              g \leftarrow g + \lambda \theta \\
        & m \leftarrow \mathrm{lerp}(m, g, 1 - \beta_1); \quad v \leftarrow \beta_2 v + (1 - \beta_2) g^2;
          \quad \hat v \leftarrow \max(\hat v, v) \text{ if amsgrad else } v \\
        & \theta \leftarrow \theta - \frac{\gamma}{1 - \beta_1^t} \cdot
              \frac{m}{\sqrt{\hat v} / \sqrt{1 - \beta_2^t} + \epsilon}
        \end{aligned}

    The bias corrections are computed in double per parameter; the element math is fp32 (fp64 for fp64
    params). ``max_exp_avg_sq`` is kept with ``amsgrad=True`` only.
    """

    _RULE = rules.ADAM
    _LEGACY_FLAG_DEFAULTS = dict(amsgrad=False, maximize=False, foreach=None, capturable=False,
                                 differentiable=False, decoupled_weight_decay=False, fused=None)

    def __init__(self, params, lr: float | Tensor = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, decoupled_weight_decay: bool = False,
                 max_grad_norm: float | None = None, nonfinite: str = "ignore", backend: str = "auto",
                 master_weights: bool | str = False, state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        self._check_hyperparameters(dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach,
                                         capturable=capturable))
        betas = tuple(_to_scalar(beta) for beta in betas)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=capturable, differentiable=differentiable,
                        fused=fused, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, nonfinite=nonfinite, backend=backend,
                         master_weights=master_weights, state_dtype=state_dtype,
                         param_rounding=param_rounding, seed=seed)

    @classmethod
    def _check_hyperparameters(cls, hp: dict, at_step: bool = False) -> None:
        # The same checks, in the same order and words, as torch.optim.Adam.
        betas, foreach, capturable = hp["betas"], hp.get("foreach"), hp.get("capturable", False)
        if isinstance(hp["lr"], Tensor) and foreach and not capturable:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        check_adam_family(hp, at_step)
        if not ((isinstance(betas[0], float) and isinstance(betas[1], float))
                or (isinstance(betas[0], Tensor) and isinstance(betas[1], Tensor))):
            raise ValueError("betas must be either both floats or both Tensors")
        for i, beta in enumerate(betas):
            if isinstance(beta, Tensor):
                if not capturable and foreach:
                    raise ValueError(f"betas[{i}] as a Tensor is not supported for capturable=False and "
                                     f"foreach=True")
                if beta.numel() != 1:
                    raise ValueError(f"Tensor betas[{i}] must be 1-element")

    def _torch_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        # torch.optim.Adam.step's body for one group, on fusedopt's lazy state (the same layout for the dtypes
        # this path takes; `step` lives on the param's device, which torch's non-capturable loop reads as a float).
        states = self._installed_group_states(group, params)
        steps = [state["step"] for state in states]
        if group["differentiable"] and any(step.requires_grad for step in steps):
            raise RuntimeError("`requires_grad` is not supported for `step` in differentiable mode")
        beta1, beta2 = group["betas"]
        torch_adam(params, grads, [state["exp_avg"] for state in states], [state["exp_avg_sq"] for state in states],
                   [state["max_exp_avg_sq"] for state in states] if group["amsgrad"] else [], steps,
                   foreach=False, capturable=False, differentiable=group["differentiable"], fused=False,
                   has_complex=any(torch.is_complex(p) for p in params),
                   decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=group["amsgrad"], beta1=beta1,
                   beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                   maximize=group["maximize"])


class AdamW(Adam):
    r"""AdamW, a drop-in for :class:`torch.optim.AdamW`: :class:`Adam` with decoupled weight decay
    (default 1e-2). See :class:`Adam` for the math and the fusedopt keyword-only extras."""

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True  # as torch.optim.AdamW: loading an Adam checkpoint stays AdamW

    def __init__(self, params, lr: float | Tensor = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, max_grad_norm: float | None = None, nonfinite: str = "ignore",
                 backend: str = "auto", master_weights: bool | str = False, state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, max_grad_norm=max_grad_norm, nonfinite=nonfinite,
                         backend=backend, master_weights=master_weights, state_dtype=state_dtype,
                         param_rounding=param_rounding, seed=seed)
