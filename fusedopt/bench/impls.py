"""The optimizers and implementations compared, as tables.

Each `setup` takes params (with `.grad` already attached) and the clip norm, builds its optimizer once and returns a
function doing one full step; the runner owns the tensors and the timing. Every optimizer runs as two *jobs*: the
bare update, and the whole clipped, checked step (clip to a global norm, skip on a non-finite norm, update): torch
does the latter with `clip_grad_norm_` + an `isfinite` host sync, fusedopt with `max_grad_norm` +
`nonfinite="skip"`. Rows are compared only within a job.

The algorithms and their hyperparameters are the table in optims.py. The "torch" family is the baseline people run
today: torch.optim's class (for-loop, foreach, fused), or for Lion, which torch.optim lacks, lion-pytorch.
A fusedopt row runs only on a compiled kernel: where its backend has none for the algorithm's rule yet, the row is
skipped with that reason (NoKernel) instead of timing the reference fallback under the backend's name.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Collection

import torch
from torch import Tensor

from .optims import DEFAULT_OPTIMS, OPTIMS, OptimSpec  # noqa: F401  (the table, re-exported)
from .roofline import job_bytes

Step = Callable[[], None]
Setup = Callable[[list[Tensor], float], Step]

# The baselines' ways, per kind of baseline, as constructor keywords; the first is what every row's first step is
# checked against. torch.optim takes foreach for every algorithm here and fused for SGD, Adam, AdamW and Adagrad
# (torch 2.13); a way the class or the device does not take is absent (see absent_variants), not a failed row.
TORCH_VARIANTS = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
BASELINE_VARIANTS = {"torch": TORCH_VARIANTS, "lion-pytorch": {"lion-pytorch": dict(use_triton=False)}}
CLIP_SUFFIX = " + clip/check"


@dataclass(frozen=True)
class Impl:
    name: str
    optim: str
    family: str  # "torch" (the baseline: torch.optim or lion-pytorch) or "fusedopt"
    variant: str  # baseline: for-loop/foreach/fused/lion-pytorch; fusedopt: the backend name
    clipped: bool
    setup: Setup
    # An error in setup or a step marks the row skipped, with the reason, instead of ending the run (fusedopt
    # backends, which may be missing or half-built); a torch row's error ends the run.
    optional: bool = False
    # Bytes of one state element: torch keeps states in the param dtype, fusedopt in fp32 (fp64 for fp64).
    fp32_states: bool = False
    # fusedopt's master_weights for low-precision params (roofline.MASTER_MODES): "none", "master" (True) or
    # "remainder"; it changes what the update moves for the value (roofline.value_bytes).
    master: str = "none"

    @property
    def job(self) -> str:
        return "clip+check+update" if self.clipped else "update"

    def bytes_per_param(self, dtype: torch.dtype) -> int:
        size = dtype.itemsize
        state = max(4, size) if self.fp32_states else size
        return job_bytes(self.optim, self.clipped, param_size=size, grad_size=size, state_size=state,
                         master=self.master)


def baseline_optimizer(spec: OptimSpec, variant: str, params: list[Tensor]) -> torch.optim.Optimizer:
    kwargs = BASELINE_VARIANTS[spec.baseline][variant]
    if spec.baseline == "lion-pytorch":
        from lion_pytorch import Lion  # imported late: not installed makes the variant absent, not a crash

        return Lion(params, **spec.hyper, **kwargs)
    return getattr(torch.optim, spec.cls)(params, **spec.hyper, **kwargs)


def baseline_name(spec: OptimSpec, variant: str) -> str:
    """A baseline row's name: "torch for-loop", ..., or the package's name ("lion-pytorch")."""
    return f"torch {variant}" if spec.baseline == "torch" else variant


def torch_setup(spec: OptimSpec, variant: str, clipped: bool) -> Setup:
    """A baseline row ("torch" family: torch.optim's ways, or lion-pytorch, which is torch ops too). Clipped, it
    runs clip_grad_norm_ in the same mode: the for-loop row clips tensor by tensor, torch's foreach and fused rows
    with foreach kernels, lion-pytorch with clip_grad_norm_'s default (what its users call)."""
    clip_foreach = None if spec.baseline != "torch" else variant != "for-loop"

    def setup(params: list[Tensor], max_norm: float) -> Step:
        opt = baseline_optimizer(spec, variant, params)
        if not clipped:
            return opt.step

        def step() -> None:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=clip_foreach)
            if bool(torch.isfinite(norm)):  # the host sync users write today
                opt.step()

        return step

    return setup


@functools.lru_cache(maxsize=None)
def _probe(optim: str, variant: str, device: str) -> str | None:
    spec = OPTIMS[optim]
    p = torch.zeros(2, device=device, requires_grad=True)
    p.grad = torch.ones(2, device=device)
    try:
        baseline_optimizer(spec, variant, [p]).step()
    except Exception as exc:  # e.g. TypeError: unexpected keyword argument 'fused'; ImportError
        return f"{type(exc).__name__}: {exc}"
    return None


def absent_variants(optim: str, device: torch.device | str = "cpu") -> dict[str, str]:
    """The baseline's ways that cannot run the algorithm on `device` (one step on a 2-element fp32 tensor raised),
    with the error: these rows are left out of the run and listed as absent, not failed."""
    spec = OPTIMS[optim]
    out = {}
    for variant in BASELINE_VARIANTS[spec.baseline]:
        why = _probe(optim, variant, str(torch.device(device)))
        if why is not None:
            out[variant] = why
    return out


class NoKernel(Exception):
    """A fusedopt row whose backend has no compiled kernel for the rule: skipped (with this as the reason) rather
    than timing what backend="auto" would fall back to, the pure-torch reference, under the backend's name."""


# The master_weights argument of each master mode.
MASTER_WEIGHTS = {"none": False, "master": True, "remainder": "remainder"}


def fusedopt_setup(spec: OptimSpec, backend: str, clipped: bool, master: str = "none") -> Setup:
    def setup(params: list[Tensor], max_norm: float) -> Step:
        import fusedopt  # imported late: a broken package makes these rows reported skips, not a crash
        from fusedopt import ops

        cls = getattr(fusedopt, spec.cls)
        rule = cls._RULE.name
        device, dtype = params[0].device, params[0].dtype
        if rule not in ops.rules_of(ops.BACKENDS[backend]):
            raise NoKernel(f"fusedopt's {backend} backend has no compiled kernel for the update rule {rule!r} yet "
                           f"(backend='auto' would run the pure-torch reference): not timed")
        ran = ops.resolve(backend, device, dtype, rule)
        if ran is not ops.BACKENDS[backend]:  # e.g. a dtype the kernels do not take
            name = next((k for k, v in ops.BACKENDS.items() if v is ran), repr(ran))
            raise NoKernel(f"fusedopt's {backend} backend would run {rule!r} on {device} {dtype} on the {name} "
                           f"backend: not timed")
        extra = dict(max_grad_norm=max_norm, nonfinite="skip") if clipped else {}
        if master != "none":
            extra["master_weights"] = MASTER_WEIGHTS[master]
        return cls(params, **spec.hyper, backend=backend, **extra).step

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


def impls_for(optim: str, backends: list[str], device: torch.device | str = "cpu",
              masters: tuple[str, ...] = ("none",)) -> list[Impl]:
    """The baseline's ways that run on `device` (torch's for-loop, foreach and fused where torch has them; or
    lion-pytorch) and every given fusedopt backend in each master mode of `masters` ("fusedopt cuda remainder"),
    each as the bare update and as the whole job."""
    spec = OPTIMS[optim]
    absent = absent_variants(optim, device)
    out = []
    for clipped in (False, True):
        suffix = CLIP_SUFFIX if clipped else ""
        for variant in BASELINE_VARIANTS[spec.baseline]:
            if variant not in absent:
                out.append(Impl(baseline_name(spec, variant) + suffix, optim, "torch", variant, clipped,
                                torch_setup(spec, variant, clipped)))
        for backend in backends:
            for master in masters:
                mode = "" if master == "none" else f" {master}"
                out.append(Impl(f"fusedopt {backend}{mode}{suffix}", optim, "fusedopt", backend, clipped,
                                fusedopt_setup(spec, backend, clipped, master), optional=True, fp32_states=True,
                                master=master))
    return out


def untimed_by(impl: Impl, untimed: Collection[str]) -> bool:
    """Whether `--untimed` (baseline ways to check but not time) leaves this row out of the timing."""
    return impl.family == "torch" and impl.variant in untimed


def reference_of(impl: Impl) -> str:
    """The row an implementation's first step is checked against: the baseline's first way (torch's for-loop, or
    lion-pytorch) doing the same job."""
    spec = OPTIMS[impl.optim]
    return baseline_name(spec, next(iter(BASELINE_VARIANTS[spec.baseline]))) + (CLIP_SUFFIX if impl.clipped else "")
