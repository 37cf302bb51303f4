"""The optimizers and implementations compared, as tables.

Each `setup` takes params (with `.grad` already attached) and the clip norm, builds its optimizer once and returns a
function doing one full step; the runner owns the tensors and the timing. Every optimizer runs as two *jobs*: the
bare update, and the whole clipped, checked step (clip to a global norm, skip on a non-finite norm, update): torch
does the latter with `clip_grad_norm_` + an `isfinite` host sync, fusedopt with `max_grad_norm` +
`nonfinite="skip"`. Rows are compared only within a job.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .roofline import job_bytes

Step = Callable[[], None]
Setup = Callable[[list[Tensor], float], Step]


@dataclass(frozen=True)
class OptimSpec:
    name: str  # key: "sgd", "adam", "adamw"
    label: str
    cls: str  # class name in torch.optim and fusedopt
    hyper: dict[str, Any] = field(default_factory=dict)


OPTIMS: dict[str, OptimSpec] = {
    "sgd": OptimSpec("sgd", "SGD (Nesterov)", "SGD", dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-4)),
    "adam": OptimSpec("adam", "Adam", "Adam", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)),
    "adamw": OptimSpec("adamw", "AdamW", "AdamW", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)),
}

TORCH_VARIANTS = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
CLIP_SUFFIX = " + clip/check"


@dataclass(frozen=True)
class Impl:
    name: str
    optim: str
    family: str  # "torch" or "fusedopt"
    variant: str  # torch: for-loop/foreach/fused; fusedopt: the backend name
    clipped: bool
    setup: Setup
    # clip_grad_norm_ scales .grad in place: such rows get their own grads, restored after the untimed check step.
    rewrites_grads: bool = False
    # An error in setup or a step marks the row skipped, with the reason, instead of ending the run (fusedopt
    # backends, which may be missing or half-built); a torch row's error ends the run.
    optional: bool = False
    # Bytes of one state element: torch keeps states in the param dtype, fusedopt in fp32 (fp64 for fp64).
    fp32_states: bool = False

    @property
    def job(self) -> str:
        return "clip+check+update" if self.clipped else "update"

    def bytes_per_param(self, dtype: torch.dtype) -> int:
        size = dtype.itemsize
        state = max(4, size) if self.fp32_states else size
        return job_bytes(self.optim, self.clipped, param_size=size, grad_size=size, state_size=state)


def torch_setup(spec: OptimSpec, variant: str, clipped: bool) -> Setup:
    kwargs = TORCH_VARIANTS[variant]
    # clip_grad_norm_ in the same mode: the for-loop row clips tensor by tensor, the others with foreach kernels.
    clip_foreach = variant != "for-loop"

    def setup(params: list[Tensor], max_norm: float) -> Step:
        opt = getattr(torch.optim, spec.cls)(params, **spec.hyper, **kwargs)
        if not clipped:
            return opt.step

        def step() -> None:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=clip_foreach)
            if bool(torch.isfinite(norm)):  # the host sync users write today
                opt.step()

        return step

    return setup


def fusedopt_setup(spec: OptimSpec, backend: str, clipped: bool) -> Setup:
    def setup(params: list[Tensor], max_norm: float) -> Step:
        import fusedopt  # imported late: a broken package makes these rows reported skips, not a crash

        extra = dict(max_grad_norm=max_norm, nonfinite="skip") if clipped else {}
        return getattr(fusedopt, spec.cls)(params, **spec.hyper, backend=backend, **extra).step

    return setup


def fusedopt_backends(device: torch.device) -> tuple[list[str], dict[str, str]]:
    """fusedopt's backends that run fp32 tensors on `device` (read from fusedopt.ops, so backends added later join
    by themselves), and the reason each other one is left out. The reference is the oracle, not a contender; Triton
    on a CPU would run under its interpreter, which measures nothing."""
    try:
        from fusedopt import ops
    except Exception as exc:  # recorded in the output; the torch rows still run
        return [], {"fusedopt": f"import failed: {type(exc).__name__}: {exc}"}
    names, excluded = [], {}
    for name in ops.BACKENDS:
        if name == "reference":
            excluded[name] = "the pure-torch oracle"
            continue
        if name == "triton" and device.type == "cpu":
            excluded[name] = "runs only under the Triton interpreter on a CPU"
            continue
        try:
            ops.resolve(name, device, torch.float32)
        except Exception as exc:
            excluded[name] = f"cannot run on {device}: {exc}"
            continue
        names.append(name)
    if getattr(ops, "EXTENSION_ERROR", None) is not None:
        excluded.setdefault("cpu", f"extension not built: {ops.EXTENSION_ERROR}")
    return names, excluded


def impls_for(optim: str, backends: list[str]) -> list[Impl]:
    """Torch's three ways and every given fusedopt backend, each as the bare update and as the whole job."""
    spec = OPTIMS[optim]
    out = []
    for clipped in (False, True):
        suffix = CLIP_SUFFIX if clipped else ""
        for variant in TORCH_VARIANTS:
            out.append(Impl(f"torch {variant}{suffix}", optim, "torch", variant, clipped,
                            torch_setup(spec, variant, clipped), rewrites_grads=clipped))
        for backend in backends:
            out.append(Impl(f"fusedopt {backend}{suffix}", optim, "fusedopt", backend, clipped,
                            fusedopt_setup(spec, backend, clipped), optional=True, fp32_states=True))
    return out


def reference_of(impl: Impl) -> str:
    """The row an implementation's first step is checked against: torch's for-loop doing the same job."""
    return "torch for-loop" + (CLIP_SUFFIX if impl.clipped else "")
