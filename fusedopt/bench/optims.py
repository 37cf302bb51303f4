"""The algorithms benchmarked, as data: one row per algorithm, with the hyperparameters every implementation of it
gets, and which tensor states its update reads and writes (for the byte floor in roofline.py).

The states come from fusedopt's own class for the algorithm: its ``_rule_args`` maps a param group to the update
rule's hyperparameters and switches, and ``rules.Rule.used_states`` says which of the rule's states
(fusedopt/rules.py) the update then takes. So the byte floor has one source of truth, the rule table.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class OptimSpec:
    name: str  # key: "sgd", "adam", ...
    label: str
    cls: str  # the class name in fusedopt (and in torch.optim, when the baseline is torch's)
    hyper: dict[str, Any] = field(default_factory=dict)
    # Who is measured against fusedopt: "torch" (torch.optim.<cls>: its for-loop, foreach and fused ways where they
    # exist) or "lion-pytorch" (lion_pytorch.Lion; torch.optim has no Lion).
    baseline: str = "torch"


OPTIMS: dict[str, OptimSpec] = {s.name: s for s in (
    OptimSpec("sgd", "SGD (Nesterov)", "SGD", dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-4)),
    OptimSpec("adam", "Adam", "Adam", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)),
    OptimSpec("adamw", "AdamW", "AdamW", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)),
    # torch's defaults, written out: the usual way each is run.
    OptimSpec("adagrad", "Adagrad", "Adagrad", dict(lr=1e-2, lr_decay=0.0, eps=1e-10)),
    OptimSpec("rmsprop", "RMSprop (momentum)", "RMSprop", dict(lr=1e-2, alpha=0.99, eps=1e-8, momentum=0.9)),
    OptimSpec("adamax", "Adamax", "Adamax", dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8)),
    OptimSpec("nadam", "NAdam", "NAdam", dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, momentum_decay=4e-3)),
    OptimSpec("radam", "RAdam", "RAdam", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)),
    OptimSpec("adadelta", "Adadelta", "Adadelta", dict(lr=1.0, rho=0.9, eps=1e-6)),
    OptimSpec("rprop", "Rprop", "Rprop", dict(lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0))),
    OptimSpec("asgd", "ASGD", "ASGD", dict(lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6)),
    OptimSpec("lion", "Lion", "Lion", dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=1e-2), baseline="lion-pytorch"),
)}
# What the default run takes (its time budget: a few minutes on a 2-core CPU); `--optim all` takes every row.
DEFAULT_OPTIMS = ("sgd", "adam", "adamw")

# States an update only overwrites under a condition on the rule's hyperparameters: then they are written and not
# read. ASGD's average is a copy of the param while mu == 1, i.e. for the first t0 steps (mu = 1/max(1, step - t0)),
# and the update decides that per tensor from mu (fusedopt/reference.py, _asgd); no run of this harness takes 1e5
# steps of one row.
WRITE_ONLY: dict[str, dict[str, Callable[[dict[str, float]], bool]]] = {
    "asgd": {"ax": lambda h: h["t0"] >= 1e5},
}


@dataclass(frozen=True)
class Traffic:
    """Which tensor states one update of an algorithm reads and which it writes (besides reading p and g and
    writing p)."""
    rule: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]


@functools.lru_cache(maxsize=None)
def traffic(optim: str) -> Traffic:
    """The states the algorithm's update reads and writes at the row's hyperparameters, from fusedopt's class and
    its rule (every used state is read and written, except the WRITE_ONLY ones)."""
    import torch

    import fusedopt

    spec = OPTIMS[optim]
    cls = getattr(fusedopt, spec.cls, None)
    if cls is None:
        raise RuntimeError(f"fusedopt has no class {spec.cls} (for the benchmark row {optim!r})")
    opt = cls([torch.zeros(1, requires_grad=True)], **spec.hyper, backend="reference")
    group = opt.param_groups[0]
    hyper, flags = opt._rule_args(group)
    rule = opt._RULE
    h = rule.hyper_dict([float(group["lr"]), *hyper])
    used = rule.used_states(h, frozenset(flags))
    write_only = {k for k, when in WRITE_ONLY.get(rule.name, {}).items() if when(h)}
    return Traffic(rule.name, tuple(k for k in used if k not in write_only), used)
