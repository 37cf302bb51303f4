"""The implementations compared, as a table. Each `setup` takes params (with `.grad` already attached), builds
its optimizer once and returns a function doing one full step; the runner owns the tensors and the timing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .roofline import ADAMW_UPDATE_BYTES, CLIPPED_CHECKED_ADAMW_BYTES

ADAMW_HYPERPARAMS = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
MAX_GRAD_NORM = 1.0

Setup = Callable[[list[Tensor]], Callable[[], None]]


@dataclass(frozen=True)
class Impl:
    name: str
    setup: Setup
    # Does the whole job: clip to MAX_GRAD_NORM, skip on a non-finite norm, AdamW update. Rows that do are held to
    # 32 B/param and must end with the baseline's params; a row that does less is held to its own smaller floor.
    clipped: bool = True
    # clip_grad_norm_ scales .grad in place; the runner restores such grads after each step (untimed).
    rewrites_grads: bool = False
    # May be missing or broken while it is being written: skipped with the reason printed instead of failing.
    optional: bool = False

    @property
    def bytes_per_param(self) -> int:
        return CLIPPED_CHECKED_ADAMW_BYTES if self.clipped else ADAMW_UPDATE_BYTES


def torch_clip_check_adamw(**impl_kwargs) -> Setup:
    """What users write today: clip, one host sync on the norm, then the optimizer."""

    def setup(params: list[Tensor]) -> Callable[[], None]:
        opt = torch.optim.AdamW(params, **ADAMW_HYPERPARAMS, **impl_kwargs)

        def step() -> None:
            norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            if bool(torch.isfinite(norm)):
                opt.step()

        return step

    return setup


def torch_adamw(**impl_kwargs) -> Setup:
    def setup(params: list[Tensor]) -> Callable[[], None]:
        return torch.optim.AdamW(params, **ADAMW_HYPERPARAMS, **impl_kwargs).step

    return setup


def fusedopt_adamw(backend: str) -> Setup:
    def setup(params: list[Tensor]) -> Callable[[], None]:
        import fusedopt  # imported late: the package may not exist yet, which makes this row a reported skip

        opt = fusedopt.AdamW(params, **ADAMW_HYPERPARAMS, max_grad_norm=MAX_GRAD_NORM, nonfinite="skip",
                             backend=backend)
        return opt.step

    return setup


BASELINE = "clip+isfinite+AdamW(fused)"
IMPLS: tuple[Impl, ...] = (
    Impl("clip+isfinite+AdamW(for-loop)", torch_clip_check_adamw(foreach=False), rewrites_grads=True),
    Impl("clip+isfinite+AdamW(foreach)", torch_clip_check_adamw(foreach=True), rewrites_grads=True),
    Impl(BASELINE, torch_clip_check_adamw(fused=True), rewrites_grads=True),
    Impl("AdamW(fused), no clip/check", torch_adamw(fused=True), clipped=False),
    Impl("fusedopt.AdamW(cpu)", fusedopt_adamw("cpu"), optional=True),
)
