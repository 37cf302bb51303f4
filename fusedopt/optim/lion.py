"""fusedopt.Lion: the Lion optimizer (Chen et al., 2023) as lion-pytorch computes it, with fusedopt's extras."""
from __future__ import annotations

import torch
from torch import Tensor

from fusedopt import rules
from fusedopt.optim._base import FusedOptimizer
from fusedopt.optim._checks import _readable, check_lr, check_nonnegative


class Lion(FusedOptimizer):
    r"""Lion ("EvoLved Sign Momentum"; Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms",
    Algorithm 2), computed as the ``lion-pytorch`` package does, in the same order.

    Per parameter, with :math:`g` the gradient after unscaling (GradScaler) and clipping (``max_grad_norm``):

    .. math::
        \begin{aligned}
        & g \leftarrow -g \text{ if maximize} \\
        & \theta \leftarrow \theta (1 - \gamma \lambda); \quad
          \theta \leftarrow \theta - \gamma \, \mathrm{sign}(\beta_1 m + (1 - \beta_1) g) \\
        & m \leftarrow \beta_2 m + (1 - \beta_2) g
        \end{aligned}

    with :math:`\mathrm{sign}(0) = 0` (a zero interpolation leaves the param alone) and, as torch's ``sign``,
    :math:`\mathrm{sign}(\mathrm{NaN}) = 0`: a NaN gradient leaves the param where it is but makes its
    ``exp_avg`` NaN, which stops the param from then on (``nonfinite="skip"`` skips such a step instead).

    The one state is ``exp_avg`` (lion-pytorch's name and layout, so checkpoints move between the two); it is
    fp32 for bf16/fp16 params (or ``state_dtype``). Lion keeps no step count: its update does not use one (nor
    does lion-pytorch).

    Where fusedopt decides (Lion has no torch.optim namesake):

    - arguments: ``lr``, ``betas``, ``weight_decay`` (decoupled, as lion-pytorch's default), keyword-only
      ``maximize`` and, accepted for compatibility with the torch.optim classes, ``foreach`` and
      ``capturable``; plus ``max_grad_norm``, ``nonfinite``, ``backend``, ``master_weights``, ``state_dtype``,
      ``param_rounding`` and ``seed`` as described in :class:`fusedopt.SGD`. lion-pytorch's ``use_triton`` and
      ``decoupled_weight_decay`` (weight decay divided by the initial lr) are not offered.
    - checks, in torch.optim's words: ``lr >= 0`` (lion-pytorch asserts ``lr > 0``; 0 is taken, as torch.optim
      takes it, for steps that only initialise state), each beta in [0, 1] (lion-pytorch's range),
      ``weight_decay >= 0``.
    - no ``differentiable=True``: there is no torch implementation to run under autograd, so the argument is not
      taken, and a checkpoint or param group that sets it is refused.
    - complex params are updated as their real view (real and imaginary parts as two real params, torch.optim's
      convention for every algorithm), so the sign is taken per component; lion-pytorch's ``sgn`` would give
      ``z / |z|``.

    Every backend has the rule (math.h's ``LionRule``, for the CPU and CUDA, and its Triton twin).
    """

    _RULE = rules.LION
    # lion-pytorch's checkpoints have none of these flags.
    _LEGACY_FLAG_DEFAULTS = dict(maximize=False, foreach=None, capturable=False)

    def __init__(self, params, lr: float | Tensor = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, maximize: bool = False, foreach: bool | None = None,
                 capturable: bool = False, max_grad_norm: float | None = None, nonfinite: str = "ignore",
                 backend: str = "auto", master_weights: bool | str = False, state_dtype: torch.dtype | None = None,
                 param_rounding: str = "nearest", seed: int | None = None):
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize, foreach=foreach,
                        capturable=capturable)
        self._check_hyperparameters(defaults)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, nonfinite=nonfinite, backend=backend,
                         master_weights=master_weights, state_dtype=state_dtype,
                         param_rounding=param_rounding, seed=seed)

    @classmethod
    def _check_hyperparameters(cls, hp: dict, at_step: bool = False) -> None:
        lr, betas, weight_decay = hp["lr"], hp["betas"], hp["weight_decay"]
        check_lr(lr, at_step)
        if len(betas) != 2:
            raise ValueError(f"Invalid betas: {betas}; expected two values")
        for i, beta in enumerate(betas):
            if isinstance(beta, Tensor) and beta.numel() != 1:
                raise ValueError(f"Tensor betas[{i}] must be 1-element")
            if _readable(beta, at_step) and not 0.0 <= beta <= 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
        check_nonnegative(weight_decay, "weight_decay value", at_step)
        if hp.get("differentiable"):
            raise ValueError("Lion does not support differentiable=True: there is no torch implementation of it "
                             "to run under autograd")

    def _torch_update(self, group: dict, params: list[Tensor], grads: list[Tensor]) -> None:
        # Reached only for a group whose "differentiable" was set by hand after the checks above.
        raise RuntimeError("Lion does not support differentiable=True: there is no torch implementation of it to "
                           "run under autograd")
