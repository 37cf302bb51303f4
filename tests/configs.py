"""Optimizer configurations as data (torch's OptimizerInfo style): what test_parity.py runs for every backend.

Each ``OptimConfig`` holds the constructor kwargs that fusedopt and torch.optim share, plus the fusedopt-only
extras (``max_grad_norm``, ``nonfinite``). Two sources:

- ``fusedopt``: written here to cover every option at least once (float and tensor lr, momentum, dampening,
  nesterov, float and tensor weight_decay, maximize, betas, eps, amsgrad, Adam's decoupled_weight_decay,
  torch's implementation flags, and the extras);
- ``optim_db``: torch's own configs, from ``torch.testing._internal.common_optimizers.optim_db``, taken from
  ``optim_inputs_func`` for "cpu" and also for "cuda" (the CUDA-only Adam configs are capturable ones; torch's
  CPU for-loop cannot run ``capturable=True``, so torch runs them without it while fusedopt gets the flag as
  given). torch's tests also run each config with ``differentiable=True``; fusedopt runs torch's own for-loop
  then (tests/test_torch_path.py), not its kernels, so no config here sets it.

The torch side always runs the single-tensor for-loop (``foreach=False``): it is the semantics; torch's
foreach/fused paths differ from it by rounding only.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from lion_pytorch.lion_pytorch import update_fn as lion_pytorch_update
from torch.testing._internal.common_optimizers import optim_db

import fusedopt

# Implementation switches torch.optim and fusedopt both accept; fusedopt ignores them (it always runs its own
# kernels), torch runs the for-loop regardless (see the module docstring).
IMPL_FLAGS = ("foreach", "fused", "capturable")


@dataclass(frozen=True)
class OptimConfig:
    desc: str
    kwargs: dict
    extras: dict = field(default_factory=dict)
    source: str = "fusedopt"

    @property
    def id(self) -> str:
        return f"{self.source}:{self.desc}".replace(" ", "_")

    def torch_kwargs(self) -> dict:
        kwargs = {k: v for k, v in copy.deepcopy(self.kwargs).items() if k not in IMPL_FLAGS}
        return {**kwargs, "foreach": False}

    def fused_kwargs(self, backend: str) -> dict:
        return {**copy.deepcopy(self.kwargs), **self.extras, "backend": backend}

    @property
    def max_grad_norm(self) -> float | None:
        return self.extras.get("max_grad_norm")

    @property
    def has_tensor_hyperparameter(self) -> bool:
        values = [v for value in self.kwargs.values() for v in (value if isinstance(value, tuple) else (value,))]
        return any(torch.is_tensor(v) for v in values)


@dataclass(frozen=True)
class Algorithm:
    name: str
    fused_cls: type
    torch_cls: type
    second_group: dict  # hyperparameters of the second param group in every parity run
    configs: list[OptimConfig]


def _extras(base: dict) -> list[OptimConfig]:
    """fusedopt's own options on top of ``base``. Parity grads have a global norm of about 66 (see
    test_parity.make_grads), so 1.0 clips and 1e6 does not; 0 clips every gradient to zero."""
    return [
        OptimConfig("clip active", base, {"max_grad_norm": 1.0}),
        OptimConfig("clip inactive", base, {"max_grad_norm": 1e6}),
        OptimConfig("clip to zero", {**base, "weight_decay": 0.1}, {"max_grad_norm": 0.0}),
        OptimConfig("nonfinite skip", base, {"nonfinite": "skip"}),
        OptimConfig("nonfinite raise with clip", base, {"nonfinite": "raise", "max_grad_norm": 5.0}),
    ]


def _from_optim_db(cls_name: str) -> list[OptimConfig]:
    info = next(i for i in optim_db if i.optim_cls.__name__ == cls_name)
    configs, seen = [], set()
    for device in ("cpu", "cuda"):
        for optim_input in info.optim_inputs_func(device=device):
            if optim_input.desc in seen:
                continue
            seen.add(optim_input.desc)
            assert optim_input.params is None, "optim_db configs with custom params are not translated here"
            assert not optim_input.kwargs.get("differentiable"), "differentiable=True configs are not kernel configs"
            desc = optim_input.desc if device == "cpu" else f"{optim_input.desc} (cuda config)"
            configs.append(OptimConfig(desc, optim_input.kwargs, source="optim_db"))
    return configs


_SGD_CONFIGS = [
    OptimConfig("lr", {"lr": 0.1}),
    OptimConfig("tensor lr", {"lr": torch.tensor(0.05)}),
    OptimConfig("momentum", {"lr": 0.1, "momentum": 0.9}),
    OptimConfig("dampening", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3}),
    OptimConfig("nesterov", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    OptimConfig("weight_decay", {"lr": 0.1, "weight_decay": 0.1}),
    OptimConfig("tensor weight_decay", {"lr": 0.1, "momentum": 0.5, "weight_decay": torch.tensor(0.2)}),
    OptimConfig("maximize momentum", {"lr": 0.05, "momentum": 0.8, "maximize": True}),
    OptimConfig("everything", {"lr": torch.tensor(0.02), "momentum": 0.9, "nesterov": True,
                               "weight_decay": torch.tensor(0.1), "maximize": True}),
    OptimConfig("impl flags", {"lr": 0.05, "momentum": 0.9, "foreach": False, "fused": True}),
    *_extras({"lr": 0.1, "momentum": 0.9}),
]

_ADAM_COMMON = [
    OptimConfig("lr", {"lr": 0.01}),
    OptimConfig("tensor lr", {"lr": torch.tensor(0.01)}),
    OptimConfig("betas", {"lr": 0.01, "betas": (0.8, 0.95)}),
    OptimConfig("tensor betas", {"lr": 0.01, "betas": (torch.tensor(0.85), torch.tensor(0.99))}),
    OptimConfig("eps", {"lr": 0.01, "eps": 1e-3}),
    OptimConfig("weight_decay", {"lr": 0.01, "weight_decay": 0.1}),
    OptimConfig("amsgrad", {"lr": 0.01, "amsgrad": True}),
    OptimConfig("maximize", {"lr": 0.01, "maximize": True}),
    OptimConfig("everything", {"lr": torch.tensor(0.02), "betas": (0.85, 0.98), "eps": 1e-6, "weight_decay": 0.2,
                               "amsgrad": True, "maximize": True}),
    OptimConfig("impl flags", {"lr": 0.01, "foreach": False, "fused": True, "capturable": True}),
    *_extras({"lr": 0.01, "amsgrad": True, "weight_decay": 0.05}),
]

_ADAM_SECOND_GROUP = {"lr": 0.003, "betas": (0.8, 0.99), "weight_decay": 0.05}
ALGORITHMS = {
    "SGD": Algorithm("SGD", fusedopt.SGD, torch.optim.SGD, {"lr": 0.03, "weight_decay": 0.05},
                     _SGD_CONFIGS + _from_optim_db("SGD")),
    "Adam": Algorithm("Adam", fusedopt.Adam, torch.optim.Adam, _ADAM_SECOND_GROUP,
                      _ADAM_COMMON
                      + [OptimConfig("decoupled_weight_decay", {"lr": 0.01, "weight_decay": 0.1,
                                                                "decoupled_weight_decay": True})]
                      + _from_optim_db("Adam")),
    "AdamW": Algorithm("AdamW", fusedopt.AdamW, torch.optim.AdamW, _ADAM_SECOND_GROUP,
                       _ADAM_COMMON + _from_optim_db("AdamW")),
}

# --- Adagrad, RMSprop, Adamax, Lion (issue 12 part 2), on every backend (tests skip, saying so, a backend built
# without the rule: helpers.require_rule).

_ADAGRAD_CONFIGS = [
    OptimConfig("lr", {"lr": 0.1}),
    OptimConfig("tensor lr", {"lr": torch.tensor(0.05)}),
    OptimConfig("lr_decay", {"lr": 0.1, "lr_decay": 0.05}),
    OptimConfig("initial_accumulator_value", {"lr": 0.1, "initial_accumulator_value": 0.5}),
    OptimConfig("eps", {"lr": 0.1, "eps": 1e-3}),
    OptimConfig("weight_decay", {"lr": 0.1, "weight_decay": 0.1}),
    OptimConfig("tensor weight_decay", {"lr": 0.1, "weight_decay": torch.tensor(0.2)}),
    OptimConfig("maximize", {"lr": 0.1, "maximize": True}),
    OptimConfig("everything", {"lr": torch.tensor(0.05), "lr_decay": 0.02, "weight_decay": 0.1,
                               "initial_accumulator_value": 0.2, "eps": 1e-6, "maximize": True}),
    OptimConfig("impl flags", {"lr": 0.1, "foreach": False, "fused": True}),
    *_extras({"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.05}),
]
ALGORITHMS["Adagrad"] = Algorithm("Adagrad", fusedopt.Adagrad, torch.optim.Adagrad,
                                  {"lr": 0.03, "lr_decay": 0.01, "weight_decay": 0.05},
                                  _ADAGRAD_CONFIGS + _from_optim_db("Adagrad"))

_RMSPROP_CONFIGS = [
    OptimConfig("lr", {"lr": 0.01}),
    OptimConfig("tensor lr", {"lr": torch.tensor(0.01)}),
    OptimConfig("alpha", {"lr": 0.01, "alpha": 0.9}),
    OptimConfig("eps", {"lr": 0.01, "eps": 1e-3}),
    OptimConfig("weight_decay", {"lr": 0.01, "weight_decay": 0.1}),
    OptimConfig("tensor weight_decay", {"lr": 0.01, "weight_decay": torch.tensor(0.2)}),
    OptimConfig("momentum", {"lr": 0.01, "momentum": 0.9}),
    OptimConfig("centered", {"lr": 0.01, "centered": True}),
    OptimConfig("maximize", {"lr": 0.01, "maximize": True}),
    OptimConfig("everything", {"lr": torch.tensor(0.005), "alpha": 0.95, "eps": 1e-6, "weight_decay": 0.1,
                               "momentum": 0.8, "centered": True, "maximize": True}),
    OptimConfig("impl flags", {"lr": 0.01, "foreach": False, "capturable": True}),
    # No weight decay under clipping: with it, one element's g * clip_coef + wd * p cancels to 2e-7 at step 0,
    # where g / (sqrt((1 - alpha) g^2) + eps) is ill-conditioned (eps = 1e-8 ~ the root), so the one ulp by which
    # the two global norms differ moves that param by 3e-5 after 10 steps. Given torch's own clipped grads, the
    # reference equals torch bit for bit there.
    *_extras({"lr": 0.01, "momentum": 0.9, "centered": True}),
]
ALGORITHMS["RMSprop"] = Algorithm("RMSprop", fusedopt.RMSprop, torch.optim.RMSprop,
                                  {"lr": 0.003, "alpha": 0.9, "momentum": 0.5, "weight_decay": 0.05},
                                  _RMSPROP_CONFIGS + _from_optim_db("RMSprop"))

_ADAMAX_CONFIGS = [
    OptimConfig("lr", {"lr": 0.01}),
    OptimConfig("tensor lr", {"lr": torch.tensor(0.01)}),
    OptimConfig("betas", {"lr": 0.01, "betas": (0.8, 0.95)}),
    OptimConfig("eps", {"lr": 0.01, "eps": 1e-3}),
    OptimConfig("weight_decay", {"lr": 0.01, "weight_decay": 0.1}),
    OptimConfig("tensor weight_decay", {"lr": 0.01, "weight_decay": torch.tensor(0.2)}),
    OptimConfig("maximize", {"lr": 0.01, "maximize": True}),
    OptimConfig("everything", {"lr": torch.tensor(0.02), "betas": (0.85, 0.98), "eps": 1e-6, "weight_decay": 0.2,
                               "maximize": True}),
    OptimConfig("impl flags", {"lr": 0.01, "foreach": False, "capturable": True}),
    *_extras({"lr": 0.01, "weight_decay": 0.05}),
]
ALGORITHMS["Adamax"] = Algorithm("Adamax", fusedopt.Adamax, torch.optim.Adamax,
                                 {"lr": 0.003, "betas": (0.8, 0.99), "weight_decay": 0.05},
                                 _ADAMAX_CONFIGS + _from_optim_db("Adamax"))


class LionPytorch(torch.optim.Optimizer):
    """lion-pytorch's Lion (its own update function, ``lion_pytorch.lion_pytorch.update_fn``, on lion-pytorch's
    state) behind fusedopt.Lion's signature, so that the tables can run it where they run a torch.optim class
    with the same kwargs: ``maximize`` negates the grad first (as torch.optim does), ``foreach``/``capturable``
    change nothing, a tensor lr, betas or weight_decay is read as a float (lion-pytorch's update takes Python
    numbers; anything else is passed as it is), and a complex param is updated as its real view (torch.optim's convention, which fusedopt.Lion
    follows). tests/test_lion.py checks that it equals lion_pytorch.Lion itself where both apply."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, maximize=False, foreach=None,
                 capturable=False):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize,
                                      foreach=foreach, capturable=capturable))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, (beta1, beta2) = _number(group["lr"]), _number(group["weight_decay"]), map(_number, group["betas"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["exp_avg"] = torch.zeros_like(p)
                grad = -p.grad if group["maximize"] else p.grad
                real = [torch.view_as_real(t) if t.is_complex() else t for t in (p, grad, state["exp_avg"])]
                lion_pytorch_update(*real, lr, wd, beta1, beta2)
        return loss


def _number(value):
    return float(value) if torch.is_tensor(value) else value


_LION_CONFIGS = [
    OptimConfig("default", {}),
    OptimConfig("lr", {"lr": 0.01}),
    OptimConfig("tensor lr", {"lr": torch.tensor(0.01)}),
    OptimConfig("betas", {"lr": 0.01, "betas": (0.95, 0.98)}),
    OptimConfig("beta1 = 1 and beta2 = 0", {"lr": 0.01, "betas": (1.0, 0.0)}),
    OptimConfig("weight_decay", {"lr": 0.01, "weight_decay": 0.5}),
    OptimConfig("tensor weight_decay", {"lr": 0.01, "weight_decay": torch.tensor(0.2)}),
    OptimConfig("maximize", {"lr": 0.01, "maximize": True}),
    OptimConfig("everything", {"lr": torch.tensor(0.02), "betas": (0.8, 0.9), "weight_decay": 1.0, "maximize": True}),
    OptimConfig("impl flags", {"lr": 0.01, "foreach": False, "capturable": True}),
    *_extras({"lr": 0.01, "weight_decay": 0.1}),
]
# Lion's reference is lion-pytorch (its update), not torch.optim (configs.LionPytorch).
ALGORITHMS["Lion"] = Algorithm("Lion", fusedopt.Lion, LionPytorch, {"lr": 0.003, "betas": (0.8, 0.95),
                                                                    "weight_decay": 0.1}, _LION_CONFIGS)

# (algorithm, config) for every config: what the option-by-option parity tests run.
ALL_CONFIGS = [(alg, config) for alg in ALGORITHMS.values() for config in alg.configs]


def config_id(alg: Algorithm, config: OptimConfig) -> str:
    return f"{alg.name}-{config.id}"


def select(*ids: str) -> list[tuple[Algorithm, OptimConfig]]:
    """(algorithm, config) pairs from ALL_CONFIGS by ``config_id``."""
    chosen = [(a, c) for a, c in ALL_CONFIGS if config_id(a, c) in ids]
    assert len(chosen) == len(ids), f"unknown config ids: {set(ids) - {config_id(a, c) for a, c in chosen}}"
    return chosen


# Configs that together take every distinct path of each algorithm (SGD: no momentum, momentum with dampening,
# nesterov + maximize + tensor lr/weight_decay, clipping; Adam/AdamW: defaults, every option at once, tensor
# betas of odd shapes, decoupled decay, clipping with amsgrad): for the tests that check a behaviour rather
# than an option, and for fp64.
REPRESENTATIVE = select(
    "SGD-optim_db:default", "SGD-fusedopt:dampening", "SGD-fusedopt:everything", "SGD-fusedopt:clip_active",
    "Adam-optim_db:default", "Adam-fusedopt:everything", "Adam-fusedopt:decoupled_weight_decay",
    "Adam-fusedopt:clip_active", "Adam-optim_db:Tensor_lr,_Tensor_betas,_with_capturable_and_amsgrad_(cuda_config)",
    "AdamW-optim_db:default", "AdamW-fusedopt:everything", "AdamW-fusedopt:clip_active",
)


# Adagrad, RMSprop, Adamax, Lion: every distinct path (issue 12 part 2).
REPRESENTATIVE += select(
    "Adagrad-optim_db:default", "Adagrad-fusedopt:everything", "Adagrad-fusedopt:clip_active",
    "RMSprop-optim_db:default", "RMSprop-fusedopt:everything", "RMSprop-fusedopt:clip_active",
    "Adamax-optim_db:default", "Adamax-fusedopt:everything", "Adamax-fusedopt:clip_active",
    "Lion-fusedopt:default", "Lion-fusedopt:everything", "Lion-fusedopt:clip_active",
)

# Algorithms whose torch fp16 run divides by a zero denominator with the default eps (see for_dtype).
FP16_LARGE_EPS = {torch.optim.Adam, torch.optim.AdamW, torch.optim.Adagrad, torch.optim.RMSprop,
                  torch.optim.Adamax}


def for_dtype(alg: Algorithm, kwargs: dict, dtype: torch.dtype) -> dict:
    """Constructor kwargs adjusted for ``dtype`` the way optim_db adjusts its own: for fp16, Adam's eps becomes
    0.1 because torch's fp16 states underflow (g*g < 6e-8 gives v = 0, and 1e-8 rounds to 0 in fp16, so
    torch's own fp16 run divides by zero and has no finite error to compare against). fusedopt's fp16 run with
    a tiny eps is tested separately (test_parity.test_fp16_tiny_eps). The same for the others in FP16_LARGE_EPS:
    NAdam, RAdam, and Adagrad, RMSprop, Adamax, whose fp16 denominators (sqrt of an underflowed sum, |g| + eps)
    are 0 where torch's fp16 eps rounds to 0."""
    if dtype == torch.float16 and alg.torch_cls in FP16_LARGE_EPS:
        return {**kwargs, "eps": 0.1}
    return kwargs


# --- NAdam, RAdam, Adadelta, Rprop, ASGD (issue 12 part 2): the same tables, on every backend (tests skip, saying
# so, a backend built without the rule: helpers.require_rule).

def _adam_like(lr: float, extra: list[OptimConfig]) -> list[OptimConfig]:
    """What NAdam and RAdam share with Adam's options (torch's NAdam/RAdam accept tensor betas, not fused)."""
    return [
        OptimConfig("lr", {"lr": lr}),
        OptimConfig("tensor lr", {"lr": torch.tensor(lr)}),
        OptimConfig("betas", {"lr": lr, "betas": (0.8, 0.95)}),
        OptimConfig("tensor betas", {"lr": lr, "betas": (torch.tensor(0.85), torch.tensor(0.99))}),
        OptimConfig("eps", {"lr": lr, "eps": 1e-3}),
        OptimConfig("weight_decay", {"lr": lr, "weight_decay": 0.1}),
        OptimConfig("decoupled_weight_decay", {"lr": lr, "weight_decay": 0.1, "decoupled_weight_decay": True}),
        OptimConfig("maximize", {"lr": lr, "maximize": True}),
        *extra,
        OptimConfig("impl flags", {"lr": lr, "foreach": False, "capturable": True}),
        *_extras({"lr": lr, "weight_decay": 0.05}),
    ]


_NADAM_CONFIGS = _adam_like(0.01, [
    OptimConfig("momentum_decay", {"lr": 0.01, "momentum_decay": 0.1}),
    OptimConfig("everything", {"lr": torch.tensor(0.02), "betas": (0.85, 0.98), "eps": 1e-6, "weight_decay": 0.2,
                               "momentum_decay": 0.01, "decoupled_weight_decay": True, "maximize": True}),
])

# betas (0.8, 0.9) make RAdam rectify from step 5 on (rho_inf = 19), torch's defaults from step 6 on.
_RADAM_CONFIGS = _adam_like(0.01, [
    OptimConfig("rectified early", {"lr": 0.01, "betas": (0.8, 0.9), "weight_decay": 0.05}),
    OptimConfig("everything", {"lr": torch.tensor(0.02), "betas": (0.85, 0.9), "eps": 1e-6, "weight_decay": 0.2,
                               "decoupled_weight_decay": True, "maximize": True}),
])

_ADADELTA_CONFIGS = [
    OptimConfig("lr", {"lr": 0.5}),
    OptimConfig("tensor lr", {"lr": torch.tensor(0.5)}),
    OptimConfig("rho", {"lr": 0.5, "rho": 0.5}),
    OptimConfig("eps", {"lr": 0.5, "eps": 1e-3}),
    OptimConfig("weight_decay", {"lr": 0.5, "weight_decay": 0.1}),
    OptimConfig("maximize", {"lr": 0.5, "maximize": True}),
    OptimConfig("everything", {"lr": torch.tensor(0.3), "rho": 0.8, "eps": 1e-4, "weight_decay": 0.2,
                               "maximize": True}),
    OptimConfig("impl flags", {"lr": 0.5, "foreach": False, "capturable": True}),
    *_extras({"lr": 0.5, "weight_decay": 0.05}),
]

def _without_weight_decay(configs: list[OptimConfig]) -> list[OptimConfig]:
    """``_extras`` for an algorithm without weight decay (Rprop)."""
    return [OptimConfig(c.desc, {k: v for k, v in c.kwargs.items() if k != "weight_decay"}, c.extras)
            for c in configs]


# step_sizes (1e-3, 0.05) clamp from both sides within 10 steps.
_RPROP_CONFIGS = [
    OptimConfig("lr", {"lr": 0.01}),
    OptimConfig("tensor lr", {"lr": torch.tensor(0.01)}),
    OptimConfig("etas", {"lr": 0.01, "etas": (0.3, 1.5)}),
    OptimConfig("step_sizes", {"lr": 0.01, "step_sizes": (1e-3, 0.05)}),
    OptimConfig("maximize", {"lr": 0.01, "maximize": True}),
    OptimConfig("everything", {"lr": torch.tensor(0.02), "etas": (0.4, 1.3), "step_sizes": (5e-3, 0.03),
                               "maximize": True}),
    OptimConfig("impl flags", {"lr": 0.01, "foreach": False, "capturable": True}),
    *_without_weight_decay(_extras({"lr": 0.01, "step_sizes": (1e-3, 0.05)})),
]

# t0 of a few steps: the average ax moves off the params (mu < 1) within 10 steps.
_ASGD_CONFIGS = [
    OptimConfig("lr", {"lr": 0.05}),
    OptimConfig("tensor lr", {"lr": torch.tensor(0.05)}),
    OptimConfig("lambd", {"lr": 0.05, "lambd": 0.1}),
    OptimConfig("alpha", {"lr": 0.05, "lambd": 0.05, "alpha": 0.5}),
    OptimConfig("t0", {"lr": 0.05, "t0": 3}),
    OptimConfig("weight_decay", {"lr": 0.05, "weight_decay": 0.1}),
    OptimConfig("maximize", {"lr": 0.05, "maximize": True}),
    OptimConfig("everything", {"lr": torch.tensor(0.03), "lambd": 0.01, "alpha": 0.6, "t0": 2, "weight_decay": 0.1,
                               "maximize": True}),
    OptimConfig("impl flags", {"lr": 0.05, "foreach": False, "capturable": True}),
    *_extras({"lr": 0.05, "t0": 3}),
]

ALGORITHMS.update({
    "NAdam": Algorithm("NAdam", fusedopt.NAdam, torch.optim.NAdam, _ADAM_SECOND_GROUP,
                       _NADAM_CONFIGS + _from_optim_db("NAdam")),
    "RAdam": Algorithm("RAdam", fusedopt.RAdam, torch.optim.RAdam, {"lr": 0.003, "betas": (0.8, 0.9),
                                                                      "weight_decay": 0.05},
                       _RADAM_CONFIGS + _from_optim_db("RAdam")),
    "Adadelta": Algorithm("Adadelta", fusedopt.Adadelta, torch.optim.Adadelta,
                          {"lr": 0.3, "rho": 0.8, "weight_decay": 0.05}, _ADADELTA_CONFIGS + _from_optim_db("Adadelta")),
    "Rprop": Algorithm("Rprop", fusedopt.Rprop, torch.optim.Rprop, {"lr": 0.03, "etas": (0.4, 1.4)},
                       _RPROP_CONFIGS + _from_optim_db("Rprop")),
    "ASGD": Algorithm("ASGD", fusedopt.ASGD, torch.optim.ASGD, {"lr": 0.03, "lambd": 0.01, "t0": 4,
                                                                "weight_decay": 0.05},
                      _ASGD_CONFIGS + _from_optim_db("ASGD")),
})
FP16_LARGE_EPS |= {torch.optim.NAdam, torch.optim.RAdam}
ALL_CONFIGS.extend((alg, config) for name in ("NAdam", "RAdam", "Adadelta", "Rprop", "ASGD")
                   for alg in [ALGORITHMS[name]]
                   for config in alg.configs)
REPRESENTATIVE.extend(select(
    "NAdam-optim_db:default", "NAdam-fusedopt:everything", "NAdam-fusedopt:clip_active",
    "RAdam-optim_db:default", "RAdam-fusedopt:everything", "RAdam-fusedopt:clip_active",
    "Adadelta-optim_db:default", "Adadelta-fusedopt:everything", "Adadelta-fusedopt:clip_active",
    "Rprop-optim_db:default", "Rprop-fusedopt:everything", "Rprop-fusedopt:clip_active",
    "ASGD-optim_db:default", "ASGD-fusedopt:everything", "ASGD-fusedopt:clip_active",
))


# --- trimmed products: pairwise coverings -----------------------------------------------------------------------
# A table of cases (say every (algorithm, config, dtype)) times every backend runs each case on every backend; most
# of those runs take no path that another run does not. covering() keeps every case but gives each one only some
# of the values of the other factors (backend, warm start, ...), so that every value of every case's factors
# (its algorithm, dtype, each extra of its config: extras_of) still meets every backend value, and every backend
# value every other trimmed value: a pairwise covering. The tests that use it say what their trimmed product
# still covers.

def extras_of(config: OptimConfig) -> tuple[str, ...]:
    """The fusedopt-only and cross-cutting options a config exercises, which the trimmed tables must take on every
    backend: clipping (active, inactive, to zero), each nonfinite mode, a tensor lr or other tensor hyperparameter,
    maximize, capturable, torch's implementation flags; "plain" for none of them."""
    kwargs, extras = config.kwargs, config.extras
    found = []
    if "max_grad_norm" in extras:
        found.append(f"clip={extras['max_grad_norm']:g}")
    if "nonfinite" in extras:
        found.append(f"nonfinite={extras['nonfinite']}")
    if torch.is_tensor(kwargs.get("lr")):
        found.append("tensor lr")
    if any(torch.is_tensor(v) for key, value in kwargs.items() if key != "lr"
           for v in (value if isinstance(value, tuple) else (value,))):
        found.append("tensor hyperparameter")
    found += [flag for flag in ("maximize", "capturable", "fused", "foreach") if kwargs.get(flag)]
    return tuple(found) or ("plain",)


def covering(cases: list[tuple], tags, choices) -> list[tuple]:
    """``(*case, *choice)`` for every case and at least one of ``choices`` (tuples of the trimmed factors' values,
    e.g. ``[("reference",), ("cpu",)]``, or a function of the case that gives them). ``tags(case)`` are the values
    of the case's own factors (hashable, e.g. ("algorithm", "Adam")). Each case gets the choice that covers the
    most (tag, value) and (value, value) pairs not yet covered, ties going round-robin (so the choices share the
    cases evenly); then a pair still missing adds its first case again, on the choice that has it. Every tag so
    meets every trimmed value it can, and every trimmed value every other (missing_pairs; test_parity checks it)."""
    choices_of = choices if callable(choices) else lambda case: choices
    covered, out = set(), []

    def pairs(case, choice) -> set:
        values = [(i, v) for i, v in enumerate(choice)]
        return {(t, v) for t in tags(case) for v in values} | {(a, b) for a in values for b in values if a < b}

    for n, case in enumerate(cases):
        options = choices_of(case)
        best = max(range(len(options)),
                   key=lambda j: (len(pairs(case, options[j]) - covered), -((j - n) % len(options))))
        covered |= pairs(case, options[best])
        out.append((*case, *options[best]))
    for case in cases:
        for choice in choices_of(case):
            if not pairs(case, choice) <= covered:
                covered |= pairs(case, choice)
                out.append((*case, *choice))
    return out


def missing_pairs(full: list[tuple], trimmed: list[tuple], tags, width: int) -> set:
    """The (tag, value) and (value, value) pairs of ``full`` that ``trimmed`` lacks (both lists of ``(*case,
    *choice)`` tuples, ``width`` the number of trimmed factors at the end): empty for a pairwise covering."""
    def pairs(rows):
        found = set()
        for row in rows:
            case, values = row[:-width], [(i, v) for i, v in enumerate(row[-width:])]
            found |= {(t, v) for t in tags(case) for v in values}
            found |= {(a, b) for a in values for b in values if a < b}
        return found
    return pairs(full) - pairs(trimmed)
