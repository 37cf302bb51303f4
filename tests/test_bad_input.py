"""Bad and odd input as data, run through every algorithm on every backend.

Two tables:

- ``BAD_INPUTS``: what a step (or a ``load_state_dict``) must refuse. Each row builds the input, names the error
  type and words it must raise, the algorithms and backends it applies to, and what torch.optim does with the
  same input (checked too, so the README's list of differences stays true). A rejected call must leave
  everything as it was, bit for bit: params, grads, every state tensor, the set of state entries, step counts.
  The bad part always sits in the *last* update call of the step (param group 1, its second dtype bucket), so
  an implementation that wrote group 0 or the first bucket before validating would be caught; each row runs
  on a fresh optimizer (no state yet: lazy state must not be left behind) and after a warm-up step.
- ``ODD_INPUTS``: input that is valid but unusual in memory (lazy negation/conjugation bits, misaligned data,
  strided views that interleave, a param listed twice): the result must equal torch.optim's.

A new algorithm joins by adding an entry to ``ALGORITHMS``; a new backend by adding its name to ``BACKENDS``; a
new bad input by adding a row.

Every (row, algorithm) of a table runs, each on some of the row's backends and warm starts, not on all of them: a
pairwise covering (configs.covering), in which every row and every algorithm meets every backend and both warm
starts, and every backend both warm starts (test_tables_meet_every_backend checks it). The checks a row runs
into are the classes' Python and, per backend, one validation generic over the rule (csrc/validate.h,
fusedopt/triton's launcher), so a row on every backend and each backend on every algorithm's states takes the
paths the full product does. "cuda-emu" is the CUDA ops on the emulated grid (``make cuda-emu``): the classes
run with ``backend="cpu"`` served by them (helpers.backend_served_by). Triton runs under its interpreter here
(tests/conftest.py sets TRITON_INTERPRET=1 without a GPU): the sizes stay small.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from torch import nn

import fusedopt
from configs import LionPytorch, covering, missing_pairs
from helpers import (assert_close, assert_snapshot_equal, backend_served_by, load_cuda_emu, require_backend,
                     require_rule, snapshot)

BACKENDS = ("reference", "cpu", "triton", "cuda-emu")


@dataclass(frozen=True)
class Algorithm:
    fused_cls: type
    torch_cls: type
    kwargs: dict


ALGORITHMS = {
    "SGD": Algorithm(fusedopt.SGD, torch.optim.SGD, dict(lr=0.1)),
    "SGD-momentum": Algorithm(fusedopt.SGD, torch.optim.SGD,
                              dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    "Adam": Algorithm(fusedopt.Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True)),
    "AdamW": Algorithm(fusedopt.AdamW, torch.optim.AdamW, dict(lr=0.01)),
    # NAdam, RAdam, Adadelta, Rprop, ASGD (issue 12 part 2)
    "NAdam": Algorithm(fusedopt.NAdam, torch.optim.NAdam, dict(lr=0.01, weight_decay=0.1,
                                                               decoupled_weight_decay=True)),
    "RAdam": Algorithm(fusedopt.RAdam, torch.optim.RAdam, dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1)),
    "Adadelta": Algorithm(fusedopt.Adadelta, torch.optim.Adadelta, dict(lr=0.5, weight_decay=0.1)),
    "Rprop": Algorithm(fusedopt.Rprop, torch.optim.Rprop, dict(lr=0.01, step_sizes=(1e-3, 0.05))),
    "ASGD": Algorithm(fusedopt.ASGD, torch.optim.ASGD, dict(lr=0.05, t0=0, weight_decay=0.1)),
    # Adagrad, RMSprop, Adamax, Lion (issue 12 part 2). Lion's torch_cls is lion-pytorch's update
    # (configs.LionPytorch).
    "Adagrad": Algorithm(fusedopt.Adagrad, torch.optim.Adagrad,
                         dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1)),
    "RMSprop": Algorithm(fusedopt.RMSprop, torch.optim.RMSprop,
                         dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01)),
    "Adamax": Algorithm(fusedopt.Adamax, torch.optim.Adamax, dict(lr=0.01, weight_decay=0.01)),
    "Lion": Algorithm(fusedopt.Lion, LionPytorch, dict(lr=0.01, weight_decay=0.1)),
}
ADAMS = ("Adam", "AdamW")
SGDS = ("SGD", "SGD-momentum")
# The rows of an option or a state apply to every algorithm that has it.
STATEFUL = tuple(name for name in ALGORITHMS if name != "SGD")
WITH_STEP = tuple(name for name, a in ALGORITHMS.items() if "step" in a.fused_cls._RULE.scalars)
WITH_SCALARS = tuple(name for name, a in ALGORITHMS.items() if set(a.fused_cls._RULE.scalars) - {"step"})
NO_SPARSE = tuple(name for name, a in ALGORITHMS.items() if not a.fused_cls._SPARSE_GRADS)
WITH = {hyper: tuple(name for name, a in ALGORITHMS.items() if hyper in a.fused_cls._HYPERPARAMETERS)
        for hyper in ("betas", "eps", "weight_decay")}

BETAS_BELOW_1 = tuple(name for name in WITH["betas"] if name != "Lion")  # betas in [0, 1) (Lion's in [0, 1])
# Algorithms whose torch.optim step divides by 1 - beta1**t, which beta1 = 1 makes zero.
BETA1_DIVIDES = (*ADAMS, "Adamax")


def _require(backend: str, algorithm: str | None = None) -> None:
    """Fails when the backend is not built; skips, saying so, an algorithm whose rule it has no kernel for yet."""
    if algorithm is not None:
        require_rule(backend, ALGORITHMS[algorithm].fused_cls)
    if backend == "cuda-emu":
        load_cuda_emu()  # fails, never skips, when it is not built
        return
    require_backend(backend)
    if backend == "triton":
        import fusedopt.triton as ft

        if not ft.INTERPRETED:
            pytest.skip("these tables use CPU tensors; with a GPU the Triton kernels are compiled (test_triton.py "
                        "covers them on CUDA tensors)")


def _cls_backend(backend: str | None) -> str | None:
    """The ``backend=`` the optimizer classes take for a backend of this table."""
    return "cpu" if backend == "cuda-emu" else backend


@pytest.fixture(autouse=True)
def _emulated_cuda_serves_cpu(request):
    """In a "cuda-emu" case, ``backend="cpu"`` runs the emulated CUDA ops for the whole test."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("backend") != "cuda-emu":
        yield
        return
    with backend_served_by("cpu", load_cuda_emu()):
        yield


# --- the standard input: two param groups, the second with two dtypes (two update calls) ----------------------

class Setup:
    """Params in two groups (group 1: an fp32 and a bf16 param, so two update calls), grads set, and the
    optimizer made on demand (``opt()``), after ``warm`` steps. ``last`` is the param of the step's last call."""

    def __init__(self, algorithm: str, backend: str | None, warm: int, extras: dict | None = None):
        self.algorithm = ALGORITHMS[algorithm]
        self.backend = backend  # None: torch.optim's class
        self.warm = warm
        self.extras = extras or {}
        gen = torch.Generator().manual_seed(0)
        self.groups = [
            [nn.Parameter(torch.randn(4, 3, generator=gen)), nn.Parameter(torch.randn(5, generator=gen))],
            [nn.Parameter(torch.randn(3, generator=gen)),
             nn.Parameter(torch.randn(2, 2, generator=gen).to(torch.bfloat16))],
        ]
        self.gen = gen
        self._opt = None

    @property
    def last(self) -> nn.Parameter:
        return self.groups[1][-1]

    def set_grads(self) -> None:
        for group in self.groups:
            for p in group:
                p.grad = torch.randn(p.shape, generator=self.gen).to(p.dtype)

    def opt(self, **group_extras):
        if self._opt is None:
            algo = self.algorithm
            groups = [{"params": self.groups[0]}, {"params": self.groups[1], **group_extras}]
            if self.backend is None:
                self._opt = algo.torch_cls(groups, **algo.kwargs)
            else:
                self._opt = algo.fused_cls(groups, **algo.kwargs, **self.extras, backend=_cls_backend(self.backend))
            for _ in range(self.warm):
                self.set_grads()
                self._opt.step()
            self.set_grads()
        return self._opt

    def opt_with_state(self):
        """The optimizer after at least one step (a fresh one is stepped once), grads set anew."""
        opt = self.opt()
        if not opt.state:
            opt.step()
            self.set_grads()
        return opt


def _state_dict_with(setup: Setup, change: Callable[[dict], None]) -> Callable[[], None]:
    """A load_state_dict of the optimizer's own (warmed-up) state, changed by ``change``."""
    opt = setup.opt_with_state()  # a fresh optimizer's state dict would have nothing to load
    sd = copy.deepcopy(opt.state_dict())
    change(sd)
    return lambda: opt.load_state_dict(sd)


def _last_state_id(sd: dict) -> int:
    return sd["param_groups"][1]["params"][-1]


# --- the builders: each returns the call that must raise -------------------------------------------------------

def _set_hyper(key, value):
    def build(setup):
        opt = setup.opt()
        opt.param_groups[1][key] = value
        return opt.step
    build.__name__ = f"param_groups[1][{key!r}] = {value!r}"
    return build


def _betas_list_changed_in_place(setup):
    # After a valid step (whose checks must not be taken as still valid for a list changed in place).
    opt = setup.opt()
    opt.param_groups[1]["betas"] = betas = [0.9, 0.999]
    opt.step()
    setup.set_grads()
    betas[0] = 1.0
    return opt.step


def _sparse_grad(setup):
    opt = setup.opt()
    setup.last.grad = torch.ones(setup.last.shape, dtype=setup.last.dtype).to_sparse()
    return opt.step


def _grad_of_wrong_shape(setup):
    opt = setup.opt()
    setup.last.grad.data = torch.ones(setup.last.numel() + 1, dtype=setup.last.dtype)
    return opt.step


def _grad_of_wrong_dtype(setup):
    opt = setup.opt()
    setup.last.grad.data = setup.last.grad.data.double()
    return opt.step


def _param_on_meta(setup):
    opt = setup.opt()
    meta = nn.Parameter(torch.empty(3, device="meta"))
    meta.grad = torch.empty(3, device="meta")
    opt.param_groups[1]["params"].append(meta)
    return opt.step


def _inference_param(setup):
    opt = setup.opt()
    with torch.inference_mode():
        p = nn.Parameter(torch.ones(2, 2, dtype=torch.bfloat16))
    p.grad = torch.ones(2, 2, dtype=torch.bfloat16)
    opt.param_groups[1]["params"][-1] = p
    return opt.step


def _overlapping_params(setup):
    opt = setup.opt()
    base = torch.randn(8, generator=setup.gen)
    views = [nn.Parameter(base[:5]), nn.Parameter(base[3:])]
    for p in views:
        p.grad = torch.randn(p.shape, generator=setup.gen)
    opt.param_groups[1]["params"][1:] = views
    return opt.step


def _grad_aliasing_its_param(setup):
    opt = setup.opt()
    setup.last.grad = setup.last.detach()
    return opt.step


def _nan_grad(setup):
    opt = setup.opt()
    setup.last.grad[0, 0] = float("nan")
    return opt.step


def _replaced_state(setup):
    # A state tensor replaced by hand in the first update call: only the kernels see it (the step does not
    # re-check state it created), so it must be the first call for nothing to change.
    opt = setup.opt_with_state()
    state = opt.state[setup.groups[0][0]]
    state[_tensor_state_key(setup, state)] = torch.zeros(7)
    return opt.step


def _tensor_state_key(setup, state: dict) -> str:
    """The first of the algorithm's tensor states that ``state`` holds."""
    return next(key for key in setup.algorithm.fused_cls._TENSOR_STATE_KEYS if key in state)


def _step_set_by_hand(setup):
    # In the first update call, as _replaced_state.
    opt = setup.opt_with_state()
    opt.state[setup.groups[0][0]]["step"].fill_(-1.0)
    return opt.step


def _loaded_step(value):
    def change(sd):
        sd["state"][_last_state_id(sd)]["step"] = copy.deepcopy(value)  # a load may keep (and step) it
    def build(setup):
        return _state_dict_with(setup, change)
    build.__name__ = f"loaded step {value!r}"
    return build


def _loaded_scalar_state(value):
    def change(sd):
        state = sd["state"][_last_state_id(sd)]
        key = next(k for k in state if k != "step" and state[k].dim() == 0)  # NAdam's mu_product, ASGD's eta
        state[key] = copy.deepcopy(value)
    def build(setup):
        return _state_dict_with(setup, change)
    build.__name__ = f"loaded scalar state {value!r}"
    return build


def _loaded_state_of_wrong_shape(setup):
    def change(sd):
        state = sd["state"][_last_state_id(sd)]
        state[_tensor_state_key(setup, state)] = torch.zeros(7)
    return _state_dict_with(setup, change)


def _loaded_hyper(key, value):
    def change(sd):
        sd["param_groups"][1][key] = value
    def build(setup):
        return _state_dict_with(setup, change)
    build.__name__ = f"loaded param_groups[1][{key!r}] = {value!r}"
    return build


def _fp16_param_added(setup):
    opt = setup.opt()
    p = nn.Parameter(torch.ones(3, dtype=torch.float16))
    p.grad = torch.ones(3, dtype=torch.float16)
    opt.param_groups[1]["params"].append(p)
    return opt.step


def _loaded_remainder(change_tensor):
    def change(sd):
        state = sd["state"][_last_state_id(sd)]
        state["master_remainder"] = change_tensor(state["master_remainder"])
    def build(setup):
        opt = setup.opt()
        if "master_remainder" not in opt.state.get(setup.last, {}):  # made by a step (Adagrad: state before one)
            opt.step()
            setup.set_grads()
        return _state_dict_with(setup, change)
    build.__name__ = "loaded remainder changed"
    return build


# param_rounding="stochastic" (issue 13): the rows below run with it (extras); group 1's bf16 param is rounded so.
STOCHASTIC = dict(param_rounding="stochastic", seed=5)


def _fp16_param_rounded_stochastically(setup):
    opt = setup.opt()
    p = nn.Parameter(torch.ones(2, 2, dtype=torch.float16))
    p.grad = torch.ones(2, 2, dtype=torch.float16)
    opt.param_groups[1]["params"][-1] = p
    return opt.step


def _loaded_rounding(value):
    def change(sd):
        sd["param_rounding"] = copy.deepcopy(value)
    def build(setup):
        return _state_dict_with(setup, change)
    build.__name__ = f"loaded param_rounding {value!r}"
    return build


NOT_RUN = object()  # torch.optim has no such input (a fusedopt-only option)
# Algorithms whose torch.optim step divides by a Python float that a step count of 0 makes zero (a step count
# loaded or set as -1 is incremented to 0 first).
STEP_DIVIDES = (*ADAMS, "RAdam", "Adamax")
# Algorithms whose torch.optim step reads the step count on the host (a meta tensor has no value to read).
STEP_READ = (*ADAMS, "NAdam", "RAdam", "ASGD", "Adagrad", "Adamax")


def _only(error: type, names) -> dict:
    """``torch_raises`` of a row where only the algorithms ``names`` raise ``error`` in torch.optim."""
    return {name: error for name in names}


@dataclass(frozen=True)
class BadInput:
    id: str
    build: Callable[[Setup], Callable[[], None]]
    error: type
    words: tuple[str, ...]
    # The exception type torch.optim raises on the same input (a load: at the next step), None if it accepts it;
    # or one per algorithm (a dict).
    torch_raises: object
    algorithms: tuple[str, ...] = tuple(ALGORITHMS)
    backends: tuple[str, ...] = BACKENDS
    extras: dict = field(default_factory=dict)
    why: str = ""  # why a row leaves out algorithms or backends


BAD_INPUTS = [
    BadInput("sparse grad", _sparse_grad, RuntimeError, ("sparse gradients", "parameter 1 of param group 1"),
             {**_only(RuntimeError, NO_SPARSE), "Lion": None}, NO_SPARSE,
             why="torch.optim.SGD and Adagrad take sparse grads (lion-pytorch adds one to its dense state)"),
    BadInput("grad of wrong shape", _grad_of_wrong_shape, RuntimeError,
             ("parameter 1 of param group 1", "[2, 2]", "[5]"), RuntimeError),
    BadInput("grad of wrong dtype", _grad_of_wrong_dtype, RuntimeError,
             ("parameter 1 of param group 1", "torch.float64", "torch.bfloat16"),
             {name: None if name in (*SGDS, "Adadelta", "Rprop", "ASGD", "Adagrad", "Lion") else RuntimeError
              for name in ALGORITHMS}),
    BadInput("params on two devices", _param_on_meta, RuntimeError, ("one device", "cpu", "meta"),
             _only(RuntimeError, ("ASGD",)),  # its step reads eta on the host, and a meta one has no value
             why="torch.optim updates each param on its own device"),
    BadInput("inference-mode param", _inference_param, RuntimeError,
             ("parameter 1 of param group 1", "inference tensor"), RuntimeError),
    BadInput("overlapping params", _overlapping_params, RuntimeError,
             ("parameter 1 of param group 1", "parameter 2 of param group 1", "share memory"), None),
    BadInput("grad aliasing its param", _grad_aliasing_its_param, RuntimeError,
             ("parameter 1 of param group 1", "share memory"), None),
    BadInput("betas[0] = 1", _set_hyper("betas", (1.0, 0.999)), ValueError,
             ("Invalid beta parameter at index 0: 1.0", "param group 1"), _only(ZeroDivisionError, BETA1_DIVIDES),
             BETAS_BELOW_1),
    # beta2 = 1.5: Adam's sqrt of a negative bias correction fails; Adamax's max(1.5 u, |g| + eps) only grows.
    BadInput("betas[1] > 1", _set_hyper("betas", (0.9, 1.5)), ValueError,
             ("Invalid beta parameter at index 1: 1.5", "param group 1"), _only(RuntimeError, ADAMS), WITH["betas"]),
    BadInput("betas list changed in place", _betas_list_changed_in_place, ValueError,
             ("Invalid beta parameter at index 0: 1.0",), _only(ZeroDivisionError, BETA1_DIVIDES), BETAS_BELOW_1),
    BadInput("negative beta", _set_hyper("betas", (-0.1, 0.999)), ValueError,
             ("Invalid beta parameter at index 0: -0.1",), None, WITH["betas"]),
    BadInput("negative lr", _set_hyper("lr", -0.1), ValueError, ("Invalid learning rate: -0.1", "param group 1"),
             None),
    BadInput("string lr", _set_hyper("lr", "0.1"), TypeError, ("lr", "'0.1'", "param group 1"),
             {name: None if name == "Rprop" else TypeError for name in ALGORITHMS}),  # Rprop: lr only at init
    BadInput("negative eps", _set_hyper("eps", -1e-8), ValueError, ("Invalid epsilon value: -1e-08",), None,
             WITH["eps"]),
    BadInput("negative weight_decay", _set_hyper("weight_decay", -0.1), ValueError,
             ("Invalid weight_decay value: -0.1",), None, WITH["weight_decay"]),
    BadInput("string weight_decay", _set_hyper("weight_decay", "0"), TypeError, ("weight_decay", "'0'"), TypeError,
             WITH["weight_decay"]),
    BadInput("negative momentum", _set_hyper("momentum", -0.5), ValueError, ("Invalid momentum value: -0.5",),
             None, (*SGDS, "RMSprop")),
    BadInput("rho > 1", _set_hyper("rho", 1.5), ValueError, ("Invalid rho value: 1.5", "param group 1"), None,
             ("Adadelta",)),
    BadInput("etas out of order", _set_hyper("etas", (1.2, 0.5)), ValueError,
             ("Invalid eta values: 1.2, 0.5", "param group 1"), None, ("Rprop",)),
    BadInput("nesterov with dampening", _set_hyper("nesterov", True), ValueError,
             ("Nesterov momentum requires a momentum and zero dampening",), None, ("SGD-momentum",)),
    BadInput("NaN grad under nonfinite='raise'", _nan_grad, RuntimeError,
             ("non-finite", "parameter 1 of param group 1"), NOT_RUN, extras=dict(nonfinite="raise")),
    BadInput("state tensor replaced by hand", _replaced_state, RuntimeError,
             ("parameter 0 of param group 0", "7"), NOT_RUN, STATEFUL, ("cpu", "triton"),
             why="SGD keeps no state; the reference backend leaves state checks to the compiled ones"),
    BadInput("step set to -1 by hand", _step_set_by_hand, RuntimeError,
             ("parameter 0 of param group 0", "steps[0] is -1"), _only(ZeroDivisionError, STEP_DIVIDES),
             WITH_STEP,
             ("cpu", "reference"),
             why="the Triton (and CUDA) kernels never read step counts on the host"),
    BadInput("loaded step of -1", _loaded_step(torch.tensor(-1.0)), ValueError,
             ("'step' is -1", "parameter 1 of param group 1"), _only(ZeroDivisionError, STEP_DIVIDES),
             WITH_STEP),
    BadInput("loaded step NaN", _loaded_step(float("nan")), ValueError, ("'step' is nan",), None, WITH_STEP),
    BadInput("loaded step on meta", _loaded_step(torch.tensor(1.0, device="meta")), ValueError,
             ("'step'", "meta", "parameter 1 of param group 1"), _only(RuntimeError, STEP_READ), WITH_STEP),
    BadInput("loaded step a string", _loaded_step("3"), ValueError, ("'step'", "str"), ValueError, WITH_STEP),
    BadInput("loaded scalar state a string", _loaded_scalar_state("0.5"), ValueError,
             ("must be a number or a one-element real tensor", "str", "parameter 1 of param group 1"), TypeError,
             WITH_SCALARS),
    BadInput("loaded scalar state of two elements", _loaded_scalar_state(torch.ones(2)), ValueError,
             ("must be a number or a one-element real tensor", "[2]", "parameter 1 of param group 1"),
             RuntimeError, WITH_SCALARS),
    BadInput("loaded state of wrong shape", _loaded_state_of_wrong_shape, ValueError,
             ("has shape [7]", "[2, 2]", "parameter 1 of param group 1"), RuntimeError, STATEFUL),
    BadInput("loaded betas[0] = 1", _loaded_hyper("betas", (1.0, 0.999)), ValueError,
             ("Invalid beta parameter at index 0: 1.0", "param group 1"), _only(ZeroDivisionError, BETA1_DIVIDES),
             BETAS_BELOW_1),
    BadInput("loaded negative lr", _loaded_hyper("lr", -1.0), ValueError, ("Invalid learning rate: -1.0",), None),
    # master_weights="remainder" (issue 13): what only that mode refuses.
    BadInput("float16 param under remainder", _fp16_param_added, ValueError,
             ("parameter 2 of param group 1 (float16)", "master_weights=True"), NOT_RUN,
             extras=dict(master_weights="remainder")),
    BadInput("loaded remainder of wrong dtype", _loaded_remainder(lambda r: r.float()), ValueError,
             ("'master_remainder' has dtype torch.float32", "int16", "parameter 1 of param group 1"), NOT_RUN,
             extras=dict(master_weights="remainder")),
    BadInput("loaded remainder of wrong shape", _loaded_remainder(lambda r: torch.zeros(7, dtype=torch.int16)),
             ValueError, ("'master_remainder' has shape [7]", "[2, 2]", "parameter 1 of param group 1"), NOT_RUN,
             extras=dict(master_weights="remainder")),
    BadInput("fp16 param under stochastic rounding", _fp16_param_rounded_stochastically, RuntimeError,
             ("param_rounding='stochastic' rounds bfloat16 params", "parameter 1 of param group 1", "float16"),
             NOT_RUN, extras=STOCHASTIC),
    BadInput("loaded rounding seed out of range", _loaded_rounding({"seed": -1, "step": 3}), ValueError,
             ("param_rounding seed is -1",), NOT_RUN, extras=STOCHASTIC),
    BadInput("loaded rounding step negative", _loaded_rounding({"seed": 1, "step": torch.tensor(-2)}), ValueError,
             ("param_rounding step",), NOT_RUN, extras=STOCHASTIC),
    BadInput("loaded rounding entry without a step", _loaded_rounding({"seed": 1}), ValueError,
             ("invalid 'param_rounding' entry",), NOT_RUN, extras=STOCHASTIC),
]


WARM_IDS = {0: "first-step", 1: "after-one-step"}


def _row_tags(row) -> set:
    case, algorithm = row
    return {("row", case.id), ("algorithm", algorithm)}


def _covered(rows: list[tuple]) -> list[tuple]:
    """(case, algorithm, backend, warm): configs.covering of the (row, algorithm) ``rows`` over the row's backends
    and both warm starts."""
    return covering(rows, _row_tags, lambda row: [(b, warm) for b in row[0].backends for warm in WARM_IDS])


def _bad_rows() -> list[tuple]:
    return _covered([(case, algorithm) for case in BAD_INPUTS for algorithm in case.algorithms])


def _bad_cases(rows):
    for case, algorithm, backend, warm in rows:
        yield pytest.param(case, algorithm, backend, warm, id=f"{case.id}-{algorithm}-{backend}-{WARM_IDS[warm]}")


def _frozen(opt) -> dict:
    """Everything a rejected call must leave alone: params, grads, state (snapshot), which params have state
    entries, and the groups' hyperparameters."""
    state = snapshot(opt)
    state["grads"] = [g.to_dense() if g is not None and g.is_sparse else g for g in state["grads"]]
    state["entries"] = sorted(id(p) for p in opt.state)
    state["groups"] = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return state


def _assert_unchanged(opt, before: dict) -> None:
    after = _frozen(opt)
    meta = [i for i, p in enumerate(after["params"]) if p.device.type == "meta"]  # no values to compare
    for key in ("params", "grads"):
        for i in reversed(meta):
            del before[key][i], after[key][i]
    assert_snapshot_equal(before, after)
    assert after["entries"] == before["entries"], "the set of params with state entries changed"
    assert repr(after["groups"]) == repr(before["groups"]), "param_groups changed"


@pytest.mark.parametrize("case, algorithm, backend, warm", list(_bad_cases(_bad_rows())))
def test_bad_input_raises_and_changes_nothing(case, algorithm, backend, warm):
    _require(backend, algorithm)
    _assert_refused(case, Setup(algorithm, backend, warm, case.extras))


def _assert_refused(case: BadInput, setup: Setup) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference backend's "slow path" notice on meta tensors
        action = case.build(setup)
        opt = setup.opt()
        before = _frozen(opt)
        with pytest.raises(case.error) as info:
            action()
    for word in case.words:
        assert word in str(info.value), f"error does not say {word!r}: {info.value}"
    _assert_unchanged(opt, before)


# The whole table once more under master_weights="remainder" (the standard input's bf16 param then keeps a
# remainder): one algorithm per row, the first of those it applies to among these, covered over the row's
# backends and both warm starts as the table is.
_REMAINDER_ALGORITHMS = ("AdamW", "SGD-momentum", "Lion", "Adagrad", "NAdam", "Rprop", "Adadelta", "ASGD", "RMSprop",
                         "RAdam", "Adamax", "Adam", "SGD")


def _remainder_pairs() -> list[tuple]:
    """(case, algorithm) per row but those of the mode itself (they run in the table) and those of stochastic
    rounding, which the constructor refuses with a master (tests/test_stochastic_rounding.py)."""
    return [(case, next(a for a in _REMAINDER_ALGORITHMS if a in case.algorithms)) for case in BAD_INPUTS
            if case.extras.get("master_weights") != "remainder" and "param_rounding" not in case.extras]


def _remainder_rows() -> list[tuple]:
    return _covered(_remainder_pairs())


@pytest.mark.parametrize("case, algorithm, backend, warm", list(_bad_cases(_remainder_rows())))
def test_bad_input_under_remainder_raises_and_changes_nothing(case, algorithm, backend, warm):
    _require(backend, algorithm)
    _assert_refused(case, Setup(algorithm, backend, warm, {**case.extras, "master_weights": "remainder"}))


def _torch_cases():
    for case in BAD_INPUTS:
        if case.torch_raises is not NOT_RUN:
            for algorithm in case.algorithms:
                yield pytest.param(case, algorithm, id=f"{case.id}-{algorithm}")


@pytest.mark.parametrize("case, algorithm", list(_torch_cases()))
def test_what_torch_optim_does_with_the_same_input(case, algorithm):
    """The table's ``torch_raises`` column, checked (the README's differences list quotes it)."""
    setup = Setup(algorithm, None, warm=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        action = case.build(setup)
        expected = case.torch_raises.get(algorithm) if isinstance(case.torch_raises, dict) else case.torch_raises

        def action_then_step():  # a load is accepted by torch; its next step meets what was loaded
            action()
            setup.opt().step()
        if expected is None:
            action_then_step()
        else:
            with pytest.raises(expected):
                action_then_step()


# --- all or nothing, on the example -----------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_rejected_step_leaves_no_state_so_next_sgd_step_is_torchs(backend):
    """SGD with momentum and dampening: a step rejected because of the group's second param must not create the
    first param's momentum buffer, or the next step would damp the first gradient (p = 0.95 instead of torch's
    0.90). The rejection comes from a check the kernels also make (a grad aliasing its param), which the step
    used to leave to them, after creating state."""
    _require(backend)
    p, q = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(2))
    opt = fusedopt.SGD([p, q], lr=0.1, momentum=0.9, dampening=0.5, backend=_cls_backend(backend))
    p.grad = torch.ones(1)
    q.grad = q.detach()
    with pytest.raises(RuntimeError, match="parameter 1 of param group 0"):
        opt.step()
    assert not opt.state
    q.grad = torch.ones(2)
    opt.step()
    ref_p, ref_q = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(2))
    ref = torch.optim.SGD([ref_p, ref_q], lr=0.1, momentum=0.9, dampening=0.5)
    ref_p.grad, ref_q.grad = torch.ones(1), torch.ones(2)
    ref.step()
    assert float(p.detach()) == float(ref_p.detach()) == pytest.approx(0.9)
    assert torch.equal(opt.state[p]["momentum_buffer"], ref.state[ref_p]["momentum_buffer"])


@pytest.mark.parametrize("algorithm", STATEFUL)
@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda-emu"])
def test_call_refused_by_a_kernel_takes_back_the_new_state(algorithm, backend):
    """Only the kernels check a state tensor replaced by hand. When they refuse the step's first call, the
    state just created for another param of that call is taken back out, and the error names the param."""
    _require(backend, algorithm)
    algo = ALGORITHMS[algorithm]
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    opt = algo.fused_cls(model.named_parameters(), **algo.kwargs, backend=_cls_backend(backend))
    named = dict(model.named_parameters())
    named["1.bias"].grad = torch.ones(1)
    opt.step()
    state = opt.state[named["1.bias"]]
    state[next(key for key in algo.fused_cls._TENSOR_STATE_KEYS if key in state)] = torch.zeros(7)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before, states_before = _frozen(opt), len(opt.state)  # 1, or every param's for Adagrad (its constructor's)
    with pytest.raises(RuntimeError, match="parameter '1.bias'") as info:
        opt.step()
    assert "7" in str(info.value)
    _assert_unchanged(opt, before)
    assert len(opt.state) == states_before


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors_name_the_param_by_its_name(backend):
    _require(backend)
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    opt = fusedopt.AdamW(model.named_parameters(), lr=0.01, backend=_cls_backend(backend))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model[1].weight.grad.data = torch.ones(3)
    with pytest.raises(RuntimeError, match=r"gradient of parameter '1\.weight' does not match"):
        opt.step()


class _Recorder:
    """A backend that records the tensors each update call gets, then runs the real one."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        if name == "RULES":
            return self.inner.RULES

        def call(*args):
            self.calls.append([t for a in args if isinstance(a, list) for t in a if torch.is_tensor(t)])
            return getattr(self.inner, name)(*args)
        return call


@pytest.mark.parametrize("case", ["neg-bit grads", "neg-bit param", "misaligned param and grads",
                                  "conjugated complex param and grad"])
def test_kernels_get_plain_aligned_memory(case, monkeypatch):
    """What reaches a kernel has no lazy negation/conjugation bit and is aligned to its element size (a wrong
    sign, undefined behaviour on the CPU and a fault on a GPU otherwise): the step resolves such tensors through
    temporaries."""
    from fusedopt import ops

    recorder = _Recorder(ops.BACKENDS["cpu"])
    monkeypatch.setitem(ops.BACKENDS, "cpu", recorder)
    build = next(c for c in ODD_INPUTS if c.id == case).build
    params, grads = build(torch.Generator().manual_seed(0))
    _run(lambda ps: fusedopt.Adam(ps, lr=0.01, max_grad_norm=1.0, backend="cpu"), params, grads, steps=2)
    assert recorder.calls
    for tensors in recorder.calls:
        for t in tensors:
            assert not (t.is_neg() or t.is_conj()), "a kernel got a tensor with a lazy bit"
            assert t.data_ptr() % t.element_size() == 0, "a kernel got misaligned memory"


@pytest.mark.parametrize("make, words", [
    (lambda t: torch._neg_view(t), "negative bit"),
    (lambda t: torch.frombuffer(bytearray(4 * t.numel() + 1), dtype=torch.float32, offset=1, count=t.numel()),
     "not aligned"),
], ids=["neg-bit", "misaligned"])
@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda-emu"])
def test_ops_refuse_what_their_kernels_would_misread(make, words, backend):
    """The ops themselves (called directly, not through an optimizer) refuse such tensors, writing nothing."""
    from fusedopt import ops
    from helpers import assert_raises_unchanged

    _require(backend)
    op = ops.BACKENDS[backend]
    param, buf = torch.ones(6), torch.zeros(6)
    grad = make(torch.ones(6))
    assert_raises_unchanged(
        lambda: op.sgd_update([param], [grad], [buf], [], [False], 0.1, 0.0, 0.9, 0.0, False, False,
                              None, None, None, None),
        [param, buf], match=words)


# --- odd but valid memory: equal to torch.optim ----------------------------------------------------------------

def _neg_bit_grads(gen):
    params = [nn.Parameter(torch.randn(5, generator=gen)), nn.Parameter(torch.randn(1, generator=gen))]

    def grads(step):
        g = torch.randn(5, generator=gen)
        # A contiguous tensor whose neg bit is set (its memory holds -g), and the example.
        return [torch._neg_view(-g), torch.complex(torch.zeros(1), -g[:1]).conj().imag]
    return params, grads


def _neg_bit_param(gen):
    params = [nn.Parameter(torch._neg_view(torch.randn(6, generator=gen)))]
    assert params[0].is_neg()
    return params, lambda step: [torch.randn(6, generator=gen)]


def _misaligned(gen):
    def unaligned(values):
        buffer = bytearray(4 * values.numel() + 1)
        t = torch.frombuffer(buffer, dtype=torch.float32, offset=1, count=values.numel())
        t.copy_(values)
        assert t.data_ptr() % 4 != 0
        return t
    params = [nn.Parameter(unaligned(torch.randn(7, generator=gen))), nn.Parameter(torch.randn(3, generator=gen))]
    return params, lambda step: [unaligned(torch.randn(7, generator=gen)), unaligned(torch.randn(3, generator=gen))]


def _interleaved_views(gen):
    base = torch.randn(4, 6, generator=gen)
    params = [nn.Parameter(base[:, :3]), nn.Parameter(base[:, 3:])]  # spans overlap, elements do not
    return params, lambda step: [torch.randn(4, 3, generator=gen) for _ in range(2)]


def _listed_twice(gen):
    p = nn.Parameter(torch.randn(5, generator=gen))
    params = [p, nn.Parameter(torch.randn(3, generator=gen)), p]

    def grads(step):
        g, h = torch.randn(5, generator=gen), torch.randn(3, generator=gen)
        return [g, h, g]
    return params, grads


def _empty_listed_twice(gen):
    # No memory to overlap, so only its identity shows it is listed twice (Adam's step count still goes up twice).
    p = nn.Parameter(torch.randn(0, generator=gen))
    params = [p, nn.Parameter(torch.randn(3, generator=gen)), p]

    def grads(step):
        g = torch.randn(0, generator=gen)
        return [g, torch.randn(3, generator=gen), g]
    return params, grads


def _conj_complex(gen):
    params = [nn.Parameter(torch.randn(4, dtype=torch.complex64, generator=gen).conj())]
    return params, lambda step: [torch.randn(4, dtype=torch.complex64, generator=gen).conj()]


@dataclass(frozen=True)
class OddInput:
    id: str
    build: Callable  # generator -> (params, grads(step) -> list of grads, one per listed param)
    torch_runs_it: bool = True  # False: torch.optim refuses it; compared with torch on resolved copies
    backends: tuple[str, ...] = BACKENDS


ODD_INPUTS = [
    OddInput("neg-bit grads", _neg_bit_grads),
    OddInput("neg-bit param", _neg_bit_param),
    OddInput("misaligned param and grads", _misaligned),
    OddInput("interleaved strided views", _interleaved_views),
    OddInput("param listed twice", _listed_twice),
    OddInput("empty param listed twice", _empty_listed_twice),
    # torch.optim's view_as_real refuses a conjugated tensor.
    OddInput("conjugated complex param and grad", _conj_complex, torch_runs_it=False),
]


def _plain(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype).copy_(t)


def _run(make_opt, params, grads, steps: int = 3):
    opt = make_opt(params)
    for step in range(steps):
        for p, g in zip(params, grads(step)):
            p.grad = g
        opt.step()
    return opt


def _odd_rows() -> list[tuple]:
    """(case, algorithm, backend): configs.covering of every (row, algorithm) over the row's backends."""
    rows = [(case, algorithm) for case in ODD_INPUTS for algorithm in ALGORITHMS]
    return covering(rows, _row_tags, lambda row: [(b,) for b in row[0].backends])


def _odd_cases():
    for case, algorithm, backend in _odd_rows():
        yield pytest.param(case, algorithm, backend, id=f"{case.id}-{algorithm}-{backend}")


@pytest.mark.parametrize("case, algorithm, backend", list(_odd_cases()))
def test_odd_input_gives_torchs_result(case, algorithm, backend):
    _require(backend, algorithm)
    algo = ALGORITHMS[algorithm]
    params, grads = case.build(torch.Generator().manual_seed(1))
    ref_params, ref_grads = case.build(torch.Generator().manual_seed(1))
    if not case.torch_runs_it:
        ref_params = [nn.Parameter(_plain(p.detach())) for p in ref_params]
        ref_grads = (lambda inner: lambda step: [_plain(g) for g in inner(step)])(ref_grads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "duplicate parameters" warning
        opt = _run(lambda ps: algo.fused_cls(ps, **algo.kwargs, backend=_cls_backend(backend)), params, grads)
        ref = _run(lambda ps: algo.torch_cls(ps, **algo.kwargs, foreach=False), ref_params, ref_grads)
    for i, (p, r) in enumerate(zip(params, ref_params)):
        assert_close(_plain(p.detach()), r.detach(), rtol=1e-5, atol=1e-6, name=f"param {i}")
        for key, value in ref.state[r].items():
            mine = opt.state[p][key]
            if key == "step":
                assert float(mine) == float(value), f"param {i}: step {float(mine)} != torch's {float(value)}"
            else:
                assert_close(mine, value, rtol=1e-5, atol=1e-6, name=f"param {i} state {key!r}")


def test_tables_meet_every_backend():
    """The trimmed tables keep every (row, algorithm) and cover every pair of the full products: every row and every
    algorithm on every backend (and warm start), every backend with both warm starts."""
    full_bad = [(c, a, b, w) for c in BAD_INPUTS for a in c.algorithms for b in c.backends for w in WARM_IDS]
    full_odd = [(c, a, b) for c in ODD_INPUTS for a in ALGORITHMS for b in c.backends]
    full_remainder = [(c, a, b, w) for c, a in _remainder_pairs() for b in c.backends for w in WARM_IDS]
    for full, trimmed, width in ((full_bad, _bad_rows(), 2), (full_odd, _odd_rows(), 1),
                                 (full_remainder, _remainder_rows(), 2)):
        assert not missing_pairs(full, trimmed, _row_tags, width)
        assert {(c.id, a) for c, a, *_ in trimmed} == {(c.id, a) for c, a, *_ in full}
        assert len(trimmed) < len(full)


# --- autograd's in-place check -----------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_after_step_raises_like_torch(algorithm, backend):
    """A graph that saved the weights cannot be back-propagated after the step changed them in place."""
    _require(backend, algorithm)
    algo = ALGORITHMS[algorithm]
    for cls, extra in ((algo.torch_cls, {}), (algo.fused_cls, {"backend": _cls_backend(backend)})):
        w = nn.Parameter(torch.randn(3, 2))
        opt = cls([w], **algo.kwargs, **extra)
        loss = (w * w).sum()
        loss.backward(retain_graph=True)
        opt.step()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scaled", [False, True], ids=["plain", "grad_scale"])
@pytest.mark.parametrize("master", [True, "remainder"], ids=["master", "remainder"])
def test_every_written_tensor_has_its_version_bumped(algorithm, backend, scaled, master):
    """Params, states, step counts, master copies or remainders and (when unscaled in place, under GradScaler)
    grads."""
    _require(backend, algorithm)
    algo = ALGORITHMS[algorithm]
    params = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(5).to(torch.bfloat16))]
    opt = algo.fused_cls(params, **algo.kwargs, backend=_cls_backend(backend), master_weights=master)
    for p in params:
        p.grad = torch.randn(p.shape).to(p.dtype)
    opt.step()
    if scaled:
        opt.grad_scale = torch.tensor(2.0)
    written = [*params, *(v for p in params for v in opt.state[p].values() if torch.is_tensor(v))]
    read_only = [p.grad for p in params]
    before = [t._version for t in written + read_only]
    opt.step()
    after = [t._version for t in written + read_only]
    for i, (b, a) in enumerate(zip(before[:len(written)], after[:len(written)])):
        assert a > b, f"written tensor {i} kept version {b}"
    for i, (b, a) in enumerate(zip(before[len(written):], after[len(written):])):
        assert (a > b) == scaled, f"grad {i}: version {b} -> {a} (written only when unscaled in place)"
