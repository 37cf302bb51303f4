"""The drop-in contract: fusedopt.SGD/Adam/AdamW behave like their torch.optim namesakes wherever a user or a
library (LR schedulers, GradScaler, checkpointing, DCP, hooks, copies) can tell the difference.

Every expectation is taken from torch.optim itself, run side by side on the same params and grads, not from
hard-coded values. Where the behaviour could depend on the backend (GradScaler, state_dict round trips,
skipped steps) the tests take conftest's ``backend`` fixture: every backend, and a missing compiled one fails.
"""
from __future__ import annotations

import copy
import inspect
import io
import pickle
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.optim.optimizer as torch_optimizer
from torch import nn
from torch.optim import lr_scheduler
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db

import fusedopt
from fusedopt import ops
from helpers import assert_bitwise_equal, assert_close, ieee_sqrt, require_backend, require_rule, snapshot

TORCH = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}
FUSED = {"SGD": fusedopt.SGD, "Adam": fusedopt.Adam, "AdamW": fusedopt.AdamW}
# NAdam, RAdam, Adadelta, Rprop, ASGD, Adagrad, RMSprop, Adamax (issue 12 part 2; Lion, which torch.optim lacks:
# tests/test_lion.py)
for _name in ("NAdam", "RAdam", "Adadelta", "Rprop", "ASGD", "Adagrad", "RMSprop", "Adamax"):
    TORCH[_name], FUSED[_name] = getattr(torch.optim, _name), getattr(fusedopt, _name)
NAMES = tuple(TORCH)
# The ones torch has a fused implementation of (fused=True: GradScaler's in-step unscale and skip).
TORCH_FUSED = tuple(name for name in NAMES if "fused" in inspect.signature(TORCH[name]).parameters)
EXTRAS = (("max_grad_norm", None), ("nonfinite", "ignore"), ("backend", "auto"), ("master_weights", False),
          ("state_dtype", None), ("param_rounding", "nearest"), ("seed", None))
# The contract's fp32 tolerance: 1e-5 relative to each tensor's scale (so near-zero elements do not dominate).
RTOL = 1e-5

# Configs that between them create every state entry and exercise every flag that changes the update.
CONFIGS = [
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    ("SGD", dict(lr=0.1)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), maximize=True)),
    ("AdamW", dict(lr=0.01, amsgrad=True)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, momentum_decay=0.01, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("Adadelta", dict(lr=0.5, rho=0.8, weight_decay=0.1)),
    ("Adadelta", dict(lr=0.5, eps=1e-4, maximize=True)),
    ("Rprop", dict(lr=0.01, etas=(0.3, 1.5), step_sizes=(1e-3, 0.05))),
    ("Rprop", dict(lr=0.02, maximize=True)),
    ("ASGD", dict(lr=0.05, lambd=0.01, t0=2, weight_decay=0.1)),
    ("ASGD", dict(lr=0.05, alpha=0.5, t0=1, maximize=True)),
    # Adagrad, RMSprop, Adamax (issue 12 part 2).
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.2)),
    ("Adagrad", dict(lr=0.1, maximize=True)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, momentum=0.9, centered=True, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, maximize=True)),
    ("Adamax", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    ("Adamax", dict(lr=0.01, eps=1e-3, maximize=True)),
]
CONFIG_IDS = [f"{name}-" + "-".join(f"{k}={v}" for k, v in kwargs.items()) for name, kwargs in CONFIGS]
STATEFUL = [pytest.param(name, kwargs, id=case_id) for (name, kwargs), case_id in zip(CONFIGS, CONFIG_IDS)
            if name != "SGD" or kwargs.get("momentum")]


# --- helpers ---------------------------------------------------------------------------------------------------

def make_params(dtype=torch.float32, seed=0) -> list[nn.Parameter]:
    """Small params of several shapes, a 0-dim one included."""
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(shape, generator=gen).to(dtype)) for shape in [(4, 3), (5,), (2, 2, 2), ()]]


def clone_params(params) -> list[nn.Parameter]:
    return [nn.Parameter(p.detach().clone()) for p in params]


def set_grads(params, step: int) -> None:
    """Deterministic grads for ``step``. The last param first gets a grad at step 1 and the first param has none
    at step 3, so per-param "first step" handling and skipping grad-less params are always exercised."""
    gen = torch.Generator().manual_seed(1000 + step)
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen).to(p.dtype)
        missing = (step == 0 and i == len(params) - 1) or (step == 3 and i == 0)
        p.grad = None if missing else g


def train(opt, params, steps: range) -> None:
    for step in steps:
        set_grads(params, step)
        opt.step()


def torch_and_ours(name: str, kwargs: dict, backend: str = "auto", dtype=torch.float32, **extras):
    """torch.optim's optimizer and ours on equal copies of the same params: (torch_opt, torch_params, opt,
    params). kwargs are deep-copied per optimizer so a tensor lr is not shared between them."""
    torch_params = make_params(dtype)
    params = clone_params(torch_params)
    torch_opt = TORCH[name](torch_params, **copy.deepcopy(kwargs))
    opt = FUSED[name](params, **copy.deepcopy(kwargs), backend=backend, **extras)
    return torch_opt, torch_params, opt, params


def assert_close_rel(actual, expected, name: str, rtol: float = RTOL) -> None:
    """Values within ``rtol`` of ``expected``'s largest magnitude (same shape; inf/NaN must match)."""
    scale = float(expected.detach().abs().nan_to_num(posinf=0.0, neginf=0.0).max()) if expected.numel() else 0.0
    assert_close(actual, expected, rtol=rtol, atol=rtol * scale, equal_nan=True, name=name)


def assert_params_close(actual_params, expected_params, rtol: float = RTOL) -> None:
    for i, (a, e) in enumerate(zip(actual_params, expected_params, strict=True)):
        assert a.dtype == e.dtype, f"param {i}: dtype {a.dtype} != {e.dtype}"
        assert_close_rel(a, e, f"param {i}", rtol)


def assert_same_value(actual, expected, where: str) -> None:
    """Exact structural equality of hyperparameter-like values (tensors compared by value, dtype and shape)."""
    if torch.is_tensor(expected):
        assert torch.is_tensor(actual), f"{where}: {actual!r} is not a tensor like {expected!r}"
        assert_bitwise_equal(actual, expected, name=where)
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), f"{where}: {actual!r} != {expected!r}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same_value(a, e, f"{where}[{i}]")
    else:
        assert type(actual) is type(expected) and actual == expected, f"{where}: {actual!r} != {expected!r}"


def assert_state_dict_like(actual: dict, expected: dict, rtol: float = RTOL, groups: bool = True) -> None:
    """``actual`` has torch's state_dict layout: the same params with state, the same state keys, tensors of the
    same shape, dtype and device with values within ``rtol``; unless not ``groups``, every param_group key of
    ``expected`` with the same value (``actual`` may have more keys)."""
    assert sorted(actual) == sorted(expected), f"top-level keys {sorted(actual)} != {sorted(expected)}"
    # Empty per-param entries are ignored here; test_stateless_sgd_keeps_no_state_entries is strict about them.
    with_state, expected_with_state = ([i for i, s in sd["state"].items() if s] for sd in (actual, expected))
    assert sorted(with_state) == sorted(expected_with_state), \
        f"params with state {sorted(with_state)} != expected {sorted(expected_with_state)}"
    for idx in expected_with_state:
        state, expected_state = actual["state"][idx], expected["state"][idx]
        assert sorted(state) == sorted(expected_state), f"state[{idx}] keys {sorted(state)} != {sorted(expected_state)}"
        for key, value in expected_state.items():
            where = f"state[{idx}][{key!r}]"
            if torch.is_tensor(value):
                got = state[key]
                assert torch.is_tensor(got), f"{where}: {got!r} is not a tensor"
                assert (got.shape, got.dtype, got.device) == (value.shape, value.dtype, value.device), \
                    f"{where}: {got.dtype}{list(got.shape)} on {got.device}, torch: " \
                    f"{value.dtype}{list(value.shape)} on {value.device}"
                if value.device.type != "meta":  # a meta tensor has no values
                    assert_close_rel(got, value, where, rtol)
            else:
                assert_same_value(state[key], value, where)
    assert len(actual["param_groups"]) == len(expected["param_groups"])
    if not groups:
        return
    for gi, (group, expected_group) in enumerate(zip(actual["param_groups"], expected["param_groups"])):
        missing = set(expected_group) - set(group)
        assert not missing, f"param_groups[{gi}] lacks torch's keys {sorted(missing)}"
        for key, value in expected_group.items():
            assert_same_value(group[key], value, f"param_groups[{gi}][{key!r}]")


def assert_matches_torch(opt, params, torch_opt, torch_params, rtol: float = RTOL, groups: bool = True) -> None:
    assert_params_close(params, torch_params, rtol)
    assert_state_dict_like(opt.state_dict(), torch_opt.state_dict(), rtol, groups)


def train_both_and_compare(torch_opt, torch_params, opt, params, steps: range, groups: bool = True) -> None:
    """The same steps (same grads) on torch's optimizer and ours, then params and state_dicts compared."""
    train(torch_opt, torch_params, steps)
    train(opt, params, steps)
    assert_matches_torch(opt, params, torch_opt, torch_params, groups=groups)


def resume_both(name, torch_params, checkpoint, backend, **kwargs):
    """torch's optimizer on ``torch_params`` and ours on a copy, both constructed with ``kwargs`` and loaded from
    ``checkpoint``: (torch_opt, torch_params, opt, params)."""
    params = clone_params(torch_params)
    torch_opt = TORCH[name](torch_params, **kwargs)
    opt = FUSED[name](params, **kwargs, backend=backend)
    torch_opt.load_state_dict(copy.deepcopy(checkpoint))
    opt.load_state_dict(copy.deepcopy(checkpoint))
    return torch_opt, torch_params, opt, params


def save_load(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def exception_of(fn) -> BaseException:
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def assert_same_error(torch_fn, ours_fn) -> None:
    """Ours raises exactly what torch raises: same type, same message."""
    expected = exception_of(torch_fn)
    actual = exception_of(ours_fn)
    assert (type(actual), str(actual)) == (type(expected), str(expected))


# --- signatures and constructor errors -------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_signature_is_torchs_plus_keyword_only_extras(name):
    def shape(cls):
        return [(p.name, p.kind, p.default) for p in inspect.signature(cls).parameters.values()]

    extras = [(extra, inspect.Parameter.KEYWORD_ONLY, default) for extra, default in EXTRAS]
    assert shape(FUSED[name]) == shape(TORCH[name]) + extras


def _optim_db_error_cases():
    cases = []
    for info in optim_db:
        name = info.optim_cls.__name__
        if info.optim_cls is not TORCH.get(name):
            continue
        for error_input in info.optim_error_inputs_func(device="cpu", dtype=torch.float32):
            desc = error_input.optimizer_error_input.desc
            cases.append(pytest.param(name, error_input, id=f"{name}-{desc}"))
    assert {case.values[0] for case in cases} == set(NAMES), "optim_db lost one of our optimizers"
    return cases


def _raises_like(error_input, fn) -> None:
    if issubclass(error_input.error_type, Warning):
        with pytest.warns(error_input.error_type, match=error_input.error_regex):
            fn()
    else:
        with pytest.raises(error_input.error_type, match=error_input.error_regex):
            fn()


@pytest.mark.parametrize("name, error_input", _optim_db_error_cases())
def test_optim_db_error_inputs(name, error_input):
    """Every error input of torch's own optimizer tests, on torch (to keep the translation honest) and on ours."""
    inputs = error_input.optimizer_error_input
    for cls in (TORCH[name], FUSED[name]):
        if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
            _raises_like(error_input, lambda: cls(inputs.params, **inputs.kwargs))
        else:
            opt = cls(inputs.params, **inputs.kwargs)
            _raises_like(error_input, opt.step)


def _nonleaf():
    return [torch.randn(3, requires_grad=True) * 2]


# (optimizer, params factory, kwargs): inputs torch rejects beyond optim_db's; ours must raise the same.
MORE_TORCH_ERRORS = [
    ("SGD", make_params, dict(lr=-0.1)),
    ("SGD", make_params, dict(weight_decay=-1.0)),
    ("SGD", make_params, dict(nesterov=True)),
    ("SGD", make_params, dict(momentum=0.9, dampening=0.1, nesterov=True)),
    ("SGD", make_params, dict(fused=True, foreach=True)),
    ("Adam", make_params, dict(lr=-1e-3)),
    ("Adam", make_params, dict(eps=-1e-8)),
    ("Adam", make_params, dict(betas=(0.9, 1.0))),
    ("Adam", make_params, dict(betas=(-0.1, 0.9))),
    ("Adam", make_params, dict(fused=True, foreach=True)),
    ("AdamW", make_params, dict(lr=-1e-3)),
    ("AdamW", make_params, dict(betas=(0.9, 1.5))),
    ("AdamW", make_params, dict(eps=-1.0)),
    ("AdamW", make_params, dict(lr=torch.tensor(1e-3), foreach=True)),
    ("AdamW", make_params, dict(fused=True, foreach=True)),
    ("SGD", make_params, dict(fused=True, differentiable=True)),
    ("Adam", make_params, dict(fused=True, differentiable=True)),
    ("AdamW", make_params, dict(fused=True, differentiable=True)),
    ("SGD", list, {}),
    ("Adam", list, {}),
    ("SGD", _nonleaf, {}),
    ("AdamW", _nonleaf, {}),
    ("NAdam", make_params, dict(lr=-1e-3)),
    ("NAdam", make_params, dict(eps=-1e-8)),
    ("NAdam", make_params, dict(betas=(1.0, 0.9))),
    ("NAdam", make_params, dict(betas=(0.9, -0.5))),
    ("NAdam", make_params, dict(weight_decay=-0.1)),
    ("NAdam", make_params, dict(momentum_decay=-0.1)),
    ("NAdam", make_params, dict(lr=torch.tensor([1e-3, 1e-3]))),
    ("NAdam", list, {}),
    ("RAdam", make_params, dict(lr=-1e-3)),
    ("RAdam", make_params, dict(eps=-1e-8)),
    ("RAdam", make_params, dict(betas=(1.0, 0.9))),
    ("RAdam", make_params, dict(betas=(0.9, 1.0))),
    ("RAdam", make_params, dict(weight_decay=-0.1)),
    ("RAdam", _nonleaf, {}),
    ("Adadelta", make_params, dict(lr=-1.0)),
    ("Adadelta", make_params, dict(rho=1.1)),
    ("Adadelta", make_params, dict(rho=-0.1)),
    ("Adadelta", make_params, dict(eps=-1e-6)),
    ("Adadelta", make_params, dict(weight_decay=-0.1)),
    ("Adadelta", make_params, dict(lr=torch.tensor([1.0, 1.0]))),
    ("Rprop", make_params, dict(lr=-0.1)),
    ("Rprop", make_params, dict(etas=(1.0, 1.2))),
    ("Rprop", make_params, dict(etas=(0.5, 1.0))),
    ("Rprop", make_params, dict(etas=(0.0, 2.0))),
    ("Rprop", make_params, dict(lr=torch.tensor([0.1, 0.1]))),
    ("ASGD", make_params, dict(lr=-0.1)),
    ("ASGD", make_params, dict(weight_decay=-0.1)),
    ("ASGD", make_params, dict(lr=torch.tensor([0.1, 0.1]))),
    ("ASGD", list, {}),
    # Adagrad, RMSprop, Adamax (issue 12 part 2)
    ("Adagrad", make_params, dict(lr=-0.1)),
    ("Adagrad", make_params, dict(lr_decay=-0.5, eps=-1.0)),
    ("Adagrad", make_params, dict(weight_decay=-1.0, initial_accumulator_value=-1.0)),
    ("Adagrad", make_params, dict(initial_accumulator_value=-1.0, eps=-1.0)),
    ("Adagrad", make_params, dict(eps=-1e-10)),
    ("Adagrad", make_params, dict(lr=torch.tensor([0.1, 0.2]), lr_decay=-1.0)),
    ("Adagrad", make_params, dict(lr="0.1")),
    ("Adagrad", _nonleaf, {}),
    ("RMSprop", make_params, dict(lr=-0.1, eps=-1.0)),
    ("RMSprop", make_params, dict(eps=-1.0, momentum=-1.0)),
    ("RMSprop", make_params, dict(momentum=-1.0, weight_decay=-1.0)),
    ("RMSprop", make_params, dict(weight_decay=-1.0, alpha=-1.0)),
    ("RMSprop", make_params, dict(alpha=-0.5)),
    ("RMSprop", make_params, dict(lr=torch.tensor([0.1, 0.2]), alpha=-1.0)),
    ("RMSprop", list, {}),
    ("Adamax", make_params, dict(lr=-0.1, eps=-1.0)),
    ("Adamax", make_params, dict(eps=-1.0, betas=(1.0, 0.9))),
    ("Adamax", make_params, dict(betas=(0.9, 1.0), weight_decay=-1.0)),
    ("Adamax", make_params, dict(betas=(-0.1, 0.9))),
    ("Adamax", make_params, dict(weight_decay=-1.0)),
    ("Adamax", make_params, dict(lr=torch.tensor([0.1, 0.2]), eps=-1.0)),
    ("Adamax", _nonleaf, {}),
]


@pytest.mark.parametrize("name, params_fn, kwargs", MORE_TORCH_ERRORS,
                         ids=[f"{n}-{f.__name__}-{kw}" for n, f, kw in MORE_TORCH_ERRORS])
def test_constructor_error_same_as_torch(name, params_fn, kwargs):
    assert_same_error(lambda: TORCH[name](params_fn(), **kwargs), lambda: FUSED[name](params_fn(), **kwargs))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm"),
    (dict(max_grad_norm=float("inf")), ValueError, "max_grad_norm"),
    (dict(max_grad_norm=float("nan")), ValueError, "max_grad_norm"),
    (dict(max_grad_norm="1.0"), ValueError, "max_grad_norm"),
    (dict(nonfinite="warn"), ValueError, "nonfinite"),
    (dict(nonfinite=None), ValueError, "nonfinite"),
    (dict(backend="gpu"), ValueError, "backend"),
    (dict(backend=None), ValueError, "backend"),
    # differentiable=True runs torch's for-loop, which keeps states in the param's dtype
    (dict(differentiable=True, master_weights=True), ValueError, "master_weights"),
    (dict(differentiable=True, state_dtype=torch.bfloat16), ValueError, "state_dtype"),
])
def test_fusedopt_constructor_errors(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        FUSED[name](make_params(), **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_fusedopt_extras_accept_valid_values(name):
    require_backend("cpu")
    # backend="cpu" only where it has the rule's kernel (else refused: test_auto_backend_runs_the_reference_...)
    compiled = [dict(backend="cpu")] if FUSED[name]._RULE.name in ops.rules_of(ops.BACKENDS["cpu"]) else []
    for kwargs in [dict(max_grad_norm=0.0), dict(max_grad_norm=1), dict(nonfinite="skip"),
                   dict(nonfinite="raise"), dict(backend="reference"), dict(backend="auto"), *compiled]:
        opt = FUSED[name](make_params(), **kwargs)
        (key, value), = kwargs.items()
        assert getattr(opt, key) == value


# --- bad input at step time: a clear error, and nothing changes ------------------------------------------------

def _trained(name, kwargs, backend):
    params = make_params()
    opt = FUSED[name](params, **kwargs, backend=backend)
    train(opt, params, range(2))
    set_grads(params, 2)
    return opt, params


def _frozen(opt) -> dict:
    state = snapshot(opt)
    state["grads"] = [g.to_dense() if g is not None and g.is_sparse else g for g in state["grads"]]
    state["state_dict"] = copy.deepcopy(opt.state_dict())
    return state


def _assert_unchanged(opt, before: dict) -> None:
    after = _frozen(opt)
    for kind in ("params", "grads"):
        for i, (b, a) in enumerate(zip(before[kind], after[kind], strict=True)):
            assert (a is None) == (b is None), f"{kind}[{i}] appeared or vanished"
            if a is not None and a.device.type != "meta":  # meta tensors have no values to compare
                assert_bitwise_equal(a, b, name=f"{kind}[{i}]")
    assert_state_dict_like(after["state_dict"], before["state_dict"], rtol=0.0)


def _sparse_grad(p):
    p.grad = torch.ones(p.shape).to_sparse()


def _wrong_shape_grad(p):
    p.grad.data = torch.ones(p.numel() + 1)  # .grad's setter rejects this; .data does not


def _wrong_dtype_grad(p):
    p.grad.data = p.grad.data.double()


# (corrupt, words the error must contain, optimizers it is an error for): SGD takes sparse grads, as torch's does
# (test_torch_path.py).
STEP_ERRORS = [
    (_sparse_grad, ["sparse"], ("Adam",)),
    (_wrong_shape_grad, ["[4, 3]", "[13]"], ("SGD", "Adam")),
    (_wrong_dtype_grad, ["torch.float64", "torch.float32"], ("SGD", "Adam")),
]
BAD_GRAD_CASES = [pytest.param(name, kwargs, corrupt, words, id=f"{corrupt.__name__}-{case_id}")
                  for corrupt, words, names in STEP_ERRORS
                  for (name, kwargs), case_id in zip(CONFIGS[:1] + CONFIGS[3:4], CONFIG_IDS[:1] + CONFIG_IDS[3:4])
                  if name in names]


@pytest.mark.parametrize("name, kwargs, corrupt, words", BAD_GRAD_CASES)
def test_bad_grad_raises_and_changes_nothing(name, kwargs, backend, corrupt, words):
    opt, params = _trained(name, kwargs, backend)
    # The broken grad goes to the last param of the group (the [4, 3] one, moved there): an update that does not
    # validate everything first would already have written the other params by the time it noticed.
    params.append(params.pop(0))
    opt.param_groups[0]["params"] = params
    corrupt(params[-1])
    before = _frozen(opt)
    with pytest.raises(RuntimeError) as info:
        opt.step()
    for word in words:
        assert word in str(info.value), f"error does not name the problem ({word!r}): {info.value}"
    _assert_unchanged(opt, before)


@pytest.mark.parametrize("name", NAMES)
def test_params_on_two_devices_raise_and_change_nothing(name, backend):
    # CPU is the only real device here; "meta" tensors are enough to reach the device check.
    params = make_params()
    meta = nn.Parameter(torch.empty(3, device="meta"))
    opt = FUSED[name]([*params, meta], lr=0.1, backend=backend)
    set_grads(params, 1)
    meta.grad = torch.empty(3, device="meta")
    before = _frozen(opt)
    with pytest.raises(RuntimeError) as info:
        opt.step()
    assert "cpu" in str(info.value) and "meta" in str(info.value), info.value
    _assert_unchanged(opt, before)


# A tensor state of each optimizer that every stateful config keeps.
LOADED_STATE_KEY = {"SGD": "momentum_buffer", "Adam": "exp_avg_sq", "AdamW": "exp_avg_sq", "NAdam": "exp_avg_sq",
                    "RAdam": "exp_avg_sq", "Adadelta": "acc_delta",
                    "Rprop": "step_size", "ASGD": "ax", "Adagrad": "sum", "RMSprop": "square_avg", "Adamax": "exp_inf"}


@pytest.mark.parametrize("name, kwargs", STATEFUL)
def test_load_state_dict_with_wrong_state_shape_raises_and_changes_nothing(name, kwargs, backend):
    opt, params = _trained(name, kwargs, backend)
    bad = copy.deepcopy(opt.state_dict())
    bad["param_groups"][0]["lr"] = 123.0
    key = LOADED_STATE_KEY[name]
    bad["state"][1][key] = torch.zeros(7)
    before = _frozen(opt)
    with pytest.raises((ValueError, RuntimeError)) as info:
        opt.load_state_dict(bad)
    assert key in str(info.value) and "[5]" in str(info.value) and "[7]" in str(info.value), info.value
    _assert_unchanged(opt, before)
    assert opt.param_groups[0]["lr"] == kwargs["lr"]


# --- state_dict: torch's layout, and checkpoints that move between torch and fusedopt ---------------------------

def assert_defaults_are_torchs(opt, torch_opt) -> None:
    assert sorted(opt.defaults) == sorted(torch_opt.defaults)
    for key, value in torch_opt.defaults.items():
        assert_same_value(opt.defaults[key], value, f"defaults[{key!r}]")


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_defaults_are_torchs(name, kwargs):
    """Schedulers and the base class read ``defaults`` (OneCycleLR: momentum/betas; step: differentiable)."""
    torch_opt, _, opt, _ = torch_and_ours(name, kwargs)
    assert_defaults_are_torchs(opt, torch_opt)


@pytest.mark.parametrize("name, kwargs", [
    pytest.param("Adam", dict(lr=0.01, betas=(torch.tensor(0.8), torch.tensor(0.99))), id="Adam-0-dim-betas"),
    pytest.param("AdamW", dict(lr=torch.tensor(0.01)), id="AdamW-tensor-lr"),
    pytest.param("SGD", dict(lr=torch.tensor(0.1), momentum=0.9, weight_decay=torch.tensor(0.01)),
                 id="SGD-tensor-lr-and-weight_decay"),
    pytest.param("AdamW", dict(lr=0.01, betas=(torch.tensor([0.8]), torch.tensor([0.99]))), id="AdamW-1-elem-betas"),
])
def test_tensor_hyperparameters_like_torch(name, kwargs, backend):
    torch_opt, torch_params, opt, params = torch_and_ours(name, kwargs, backend)
    assert_defaults_are_torchs(opt, torch_opt)
    train_both_and_compare(torch_opt, torch_params, opt, params, range(4))


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_state_dict_layout_is_torchs(name, kwargs, backend):
    torch_opt, torch_params, opt, params = torch_and_ours(name, kwargs, backend)
    for o, ps in [(torch_opt, torch_params), (opt, params)]:
        train(o, ps, range(4))
    assert_matches_torch(opt, params, torch_opt, torch_params)
    for state in opt.state_dict()["state"].values():
        if "step" in state:
            assert state["step"].shape == () and state["step"].dtype == torch.float32
    assert opt.state_dict()["state"].keys() == torch_opt.state_dict()["state"].keys()


def test_stateless_sgd_keeps_no_state_entries(backend):
    torch_opt, torch_params, opt, params = torch_and_ours("SGD", dict(lr=0.1), backend)
    train(torch_opt, torch_params, range(2))
    train(opt, params, range(2))
    assert torch_opt.state_dict()["state"] == {}
    assert opt.state_dict()["state"] == {} and len(opt.state) == 0


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("via", ["object", "torch.save"])
def test_torch_checkpoint_continues_like_torch(name, kwargs, backend, via):
    torch_params = make_params()
    torch_opt = TORCH[name](torch_params, **kwargs)
    train(torch_opt, torch_params, range(3))
    checkpoint = copy.deepcopy(torch_opt.state_dict())
    if via == "torch.save":
        checkpoint = save_load(checkpoint)
    params = clone_params(torch_params)
    # Constructed with defaults: every hyperparameter and flag must come from the checkpoint.
    opt = FUSED[name](params, backend=backend)
    opt.load_state_dict(checkpoint)
    assert_matches_torch(opt, params, torch_opt, torch_params, rtol=0.0)
    train_both_and_compare(torch_opt, torch_params, opt, params, range(3, 7))


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("via", ["object", "torch.save"])
def test_fusedopt_checkpoint_continues_in_torch(name, kwargs, backend, via):
    params = make_params()
    opt = FUSED[name](params, **kwargs, backend=backend)
    train(opt, params, range(3))
    checkpoint = copy.deepcopy(opt.state_dict())
    if via == "torch.save":
        checkpoint = save_load(checkpoint)
    torch_params = clone_params(params)
    torch_opt = TORCH[name](torch_params)
    torch_opt.load_state_dict(checkpoint)
    train_both_and_compare(torch_opt, torch_params, opt, params, range(3, 7))


@pytest.mark.parametrize("name, kwargs", STATEFUL)
@pytest.mark.parametrize("source", ["fusedopt", "torch"])
def test_low_precision_params_keep_fp32_state_through_load(name, kwargs, backend, source):
    params = make_params(torch.bfloat16)
    trainer = (FUSED[name](params, **kwargs, backend=backend) if source == "fusedopt"
               else TORCH[name](params, **kwargs))
    train(trainer, params, range(3))
    checkpoint = save_load(copy.deepcopy(trainer.state_dict()))
    loaded = clone_params(params)
    opt = FUSED[name](loaded, backend=backend)
    opt.load_state_dict(checkpoint)
    for idx, saved in checkpoint["state"].items():
        if source == "fusedopt":
            assert all(v.dtype == torch.float32 for v in saved.values()), "fusedopt keeps fp32 state for bf16"
        state = opt.state[loaded[idx]]
        for key, value in saved.items():
            if key == "step":
                assert state[key].dtype == torch.float32 and state[key].shape == ()
            else:
                assert state[key].dtype == torch.float32, f"state[{idx}][{key!r}] became {state[key].dtype}"
            # exactly the saved values: the load must not round fp32 state through bf16
            assert_bitwise_equal(state[key], value.to(torch.float32), name=f"state[{idx}][{key!r}]")
    if source == "fusedopt":
        train(trainer, params, range(3, 5))
        train(opt, loaded, range(3, 5))
        for i, (a, e) in enumerate(zip(loaded, params)):
            assert_bitwise_equal(a, e, name=f"param {i} after continuing")


OLD_TORCH_FLAGS = ("maximize", "foreach", "fused", "differentiable", "capturable", "decoupled_weight_decay")


def _old_checkpoint(name, kwargs):
    """A torch checkpoint after 3 steps, with the flags older torch versions did not save taken out."""
    torch_params = make_params()
    trainer = TORCH[name](torch_params, **kwargs)
    train(trainer, torch_params, range(3))
    old = copy.deepcopy(trainer.state_dict())
    for group in old["param_groups"]:
        for flag in OLD_TORCH_FLAGS:
            group.pop(flag, None)
    return old, torch_params


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_older_state_dict_without_flags_loads_and_steps_like_torch(name, kwargs, backend):
    old, torch_params = _old_checkpoint(name, kwargs)
    torch_opt, torch_params, opt, params = resume_both(name, torch_params, old, backend)
    # the flags themselves: test_older_state_dict_flags_filled_like_torch
    train_both_and_compare(torch_opt, torch_params, opt, params, range(3, 6), groups=False)


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_older_state_dict_flags_filled_like_torch(name, kwargs, backend):
    """Resuming with the run's own (non-default) kwargs: missing flags must get torch's values, not ours."""
    old, torch_params = _old_checkpoint(name, kwargs)
    torch_opt, torch_params, opt, params = resume_both(name, torch_params, old, backend, **kwargs)
    assert_matches_torch(opt, params, torch_opt, torch_params, rtol=0.0)
    train_both_and_compare(torch_opt, torch_params, opt, params, range(3, 6))


def test_legacy_sgd_none_momentum_buffer_loads_like_torch(backend):
    legacy = {"state": {i: {"momentum_buffer": None} for i in range(4)},
              "param_groups": [dict(lr=0.1, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                                    params=list(range(4)))]}
    torch_opt, torch_params, opt, params = resume_both("SGD", make_params(), legacy, backend)
    train_both_and_compare(torch_opt, torch_params, opt, params, range(2), groups=False)
    for o in (torch_opt, opt):
        o.param_groups[0]["momentum"] = 0.9
    train_both_and_compare(torch_opt, torch_params, opt, params, range(2, 5), groups=False)


@pytest.mark.parametrize("name, kwargs", CONFIGS[:1] + CONFIGS[3:], ids=CONFIG_IDS[:1] + CONFIG_IDS[3:])
def test_non_tensor_step_loads(name, kwargs, backend):
    torch_params = make_params()
    trainer = TORCH[name](torch_params, **kwargs)
    train(trainer, torch_params, range(3))
    old = copy.deepcopy(trainer.state_dict())
    for state in old["state"].values():
        if "step" in state:
            state["step"] = state["step"].item()
    torch_opt, torch_params, opt, params = resume_both(name, torch_params, old, backend)
    assert_matches_torch(opt, params, torch_opt, torch_params, rtol=0.0)
    train_both_and_compare(torch_opt, torch_params, opt, params, range(3, 6))


WITH_SCALARS = [pytest.param(name, kwargs, id=case_id) for (name, kwargs), case_id in zip(CONFIGS, CONFIG_IDS)
                if set(FUSED[name]._RULE.scalars) - {"step"}]


@pytest.mark.parametrize("name, kwargs", WITH_SCALARS)
def test_non_tensor_scalar_states_load(name, kwargs, backend):
    """Every scalar state saved as a Python float (NAdam's mu_product, ASGD's eta and mu; torch's __setstate__
    turns them into tensors): ours become 0-dim fp32 tensors on the param's device and the run goes on as torch's."""
    torch_params = make_params()
    trainer = TORCH[name](torch_params, **kwargs)
    train(trainer, torch_params, range(3))
    old = copy.deepcopy(trainer.state_dict())
    for state in old["state"].values():
        for key in FUSED[name]._RULE.scalars:
            state[key] = state[key].item()
    torch_opt, torch_params, opt, params = resume_both(name, torch_params, old, backend)
    for p in params:
        for key in FUSED[name]._RULE.scalars:
            value = opt.state[p][key]
            assert (value.dtype, value.shape, value.device) == (torch.float32, (), p.device), key
    assert_matches_torch(opt, params, torch_opt, torch_params, rtol=0.0)
    train_both_and_compare(torch_opt, torch_params, opt, params, range(3, 6))


def test_adam_checkpoint_into_adamw_decouples_like_torch(backend):
    """torch.optim.AdamW always decouples weight decay, whatever the loaded param_groups say."""
    torch_params = make_params()
    trainer = torch.optim.Adam(torch_params, lr=0.01, weight_decay=0.5)
    train(trainer, torch_params, range(3))
    checkpoint = copy.deepcopy(trainer.state_dict())
    torch_opt, torch_params, opt, params = resume_both("AdamW", torch_params, checkpoint, backend)
    train_both_and_compare(torch_opt, torch_params, opt, params, range(3, 6))


@pytest.mark.parametrize("name, kwargs", CONFIGS[:1] + CONFIGS[3:4], ids=CONFIG_IDS[:1] + CONFIG_IDS[3:4])
def test_named_state_dict_is_torchs(name, kwargs, backend):
    torch_model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    model = copy.deepcopy(torch_model)
    torch_opt = TORCH[name](torch_model.named_parameters(), **kwargs)
    opt = FUSED[name](model.named_parameters(), **kwargs, backend=backend)
    torch_params, params = list(torch_model.parameters()), list(model.parameters())
    train(torch_opt, torch_params, range(3))
    train(opt, params, range(3))
    assert opt.param_groups[0]["param_names"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert_matches_torch(opt, params, torch_opt, torch_params)
    # a named torch checkpoint resumes in ours, and ours in torch
    fresh_model = copy.deepcopy(torch_model)
    resumed = FUSED[name](fresh_model.named_parameters(), backend=backend)
    resumed.load_state_dict(save_load(torch_opt.state_dict()))
    torch_resumed = TORCH[name](copy.deepcopy(model).named_parameters())
    torch_resumed.load_state_dict(save_load(opt.state_dict()))
    assert resumed.param_groups[0]["param_names"] == torch_opt.param_groups[0]["param_names"]
    assert_state_dict_like(resumed.state_dict(), torch_opt.state_dict(), rtol=0.0)
    assert_state_dict_like(opt.state_dict(), torch_resumed.state_dict(), rtol=0.0)


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_state_dict_is_deterministic(name, kwargs):
    _, _, opt, params = torch_and_ours(name, kwargs)
    train(opt, params, range(3))
    first, second = copy.deepcopy(opt.state_dict()), opt.state_dict()
    assert_state_dict_like(second, first, rtol=0.0)
    assert list(second["state"]) == list(first["state"])


# --- GradScaler ------------------------------------------------------------------------------------------------

def make_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


def loss_of(model: nn.Module, step: int) -> torch.Tensor:
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(2000 + step))
    return model(x).square().mean() * 10


INF_STEP = 2
SCALER_STEPS = 6
SCALER_KWARGS = {"SGD": dict(lr=0.05, momentum=0.9, weight_decay=0.01), "Adam": dict(lr=0.01, amsgrad=True),
                 "AdamW": dict(lr=0.01), "NAdam": dict(lr=0.01, weight_decay=0.01),
                 "RAdam": dict(lr=0.01, betas=(0.8, 0.9)), "Adadelta": dict(lr=0.5, weight_decay=0.01),
                 "Rprop": dict(lr=0.01), "ASGD": dict(lr=0.05, t0=2)}
# Adagrad, RMSprop, Adamax (issue 12 part 2)
SCALER_KWARGS.update(Adagrad=dict(lr=0.1, lr_decay=0.01, weight_decay=0.01),
                     RMSprop=dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01),
                     Adamax=dict(lr=0.01, weight_decay=0.01))


def _scaler():
    # A growth interval of 2 makes the scale move both ways within a few steps.
    return torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)


def _scaled_backward(model, scaler, step):
    scaler.scale(loss_of(model, step)).backward()
    if step == INF_STEP:
        model[0].weight.grad[0, 0] = float("inf")


def _scaler_trace(model, opt, unscale_first: bool) -> list[dict]:
    """Per step: the grads right after scaler.step, then (after update) the scale, params and state."""
    scaler = _scaler()
    assert scaler.is_enabled()
    trace = []
    for step in range(SCALER_STEPS):
        opt.zero_grad()
        _scaled_backward(model, scaler, step)
        if unscale_first:
            scaler.unscale_(opt)
        scaler.step(opt)
        grads = [p.grad.clone() for p in model.parameters()]
        scaler.update()
        params = [p.detach().clone() for p in model.parameters()]
        trace.append(dict(grads=grads, scale=scaler.get_scale(), params=params, state=copy.deepcopy(opt.state_dict())))
    return trace


@pytest.mark.parametrize("name", TORCH_FUSED)
@pytest.mark.parametrize("unscale_first", [False, True], ids=["scaler-step", "unscale_-then-step"])
def test_grad_scaler_matches_torch_fused(name, backend, unscale_first):
    torch_model, model = make_model(), make_model()
    kwargs = SCALER_KWARGS[name]
    # torch's fused optimizers are the reference for unscaling grads in place and skipping inside step().
    torch_opt = TORCH[name](torch_model.parameters(), **kwargs, fused=True)
    opt = FUSED[name](model.parameters(), **kwargs, fused=True, backend=backend)
    assert torch_opt._step_supports_amp_scaling and opt._step_supports_amp_scaling
    expected = _scaler_trace(torch_model, torch_opt, unscale_first)
    actual = _scaler_trace(model, opt, unscale_first)
    assert [t["scale"] for t in actual] == [t["scale"] for t in expected]
    assert expected[INF_STEP]["scale"] < expected[INF_STEP - 1]["scale"], "the inf step must shrink the scale"
    for step, (a, e) in enumerate(zip(actual, expected)):
        for i, (ga, ge) in enumerate(zip(a["grads"], e["grads"])):
            assert_close_rel(ga, ge, f"step {step}: grad {i} after scaler.step")
        for i, (pa, pe) in enumerate(zip(a["params"], e["params"])):
            assert_close_rel(pa, pe, f"step {step}: param {i}")
        assert_state_dict_like(a["state"], e["state"])
    if name != "SGD":
        steps = {float(s["step"]) for s in actual[-1]["state"]["state"].values()}
        assert steps == {SCALER_STEPS - 1.0}, f"the inf step must not count: {steps}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("nonfinite", ["ignore", "skip", "raise"])
def test_grad_scaler_with_max_grad_norm_matches_unscale_clip_step(name, nonfinite, backend):
    """With any non-finite policy: under GradScaler an inf in the scaled grads is the scaler's signal to skip,
    not an error."""
    max_norm = 0.5
    kwargs = SCALER_KWARGS[name]
    torch_model, model = make_model(), make_model()
    torch_opt = TORCH[name](torch_model.parameters(), **kwargs)
    opt = FUSED[name](model.parameters(), **kwargs, max_grad_norm=max_norm, nonfinite=nonfinite, backend=backend)
    torch_scaler, scaler = _scaler(), _scaler()
    clipped_steps = 0
    for step in range(SCALER_STEPS):
        torch_opt.zero_grad()
        _scaled_backward(torch_model, torch_scaler, step)
        torch_scaler.unscale_(torch_opt)
        unscaled = [p.grad.clone() for p in torch_model.parameters()]
        total = nn.utils.clip_grad_norm_(torch_model.parameters(), max_norm)
        torch_scaler.step(torch_opt)
        torch_scaler.update()

        opt.zero_grad()
        _scaled_backward(model, scaler, step)
        scaler.step(opt)
        scaler.update()

        assert scaler.get_scale() == torch_scaler.get_scale(), f"step {step}"
        assert opt.found_nonfinite.dtype == torch.bool and opt.found_nonfinite.shape == ()
        assert opt.grad_norm.dtype == torch.float32 and opt.grad_norm.shape == ()
        if step == INF_STEP:
            assert bool(opt.found_nonfinite), "the inf step must be reported"
        else:
            assert not bool(opt.found_nonfinite)
            clipped_steps += bool(total > max_norm)
            assert_close_rel(opt.grad_norm, total, f"step {step}: grad_norm (unscaled, before clipping)")
            # grads are unscaled in place, but not clipped (clipping is folded into the update)
            for i, (g, u) in enumerate(zip(model.parameters(), unscaled)):
                assert_close_rel(g.grad, u, f"step {step}: grad {i}")
        assert_params_close(list(model.parameters()), list(torch_model.parameters()))
        assert_state_dict_like(opt.state_dict(), torch_opt.state_dict())
    assert clipped_steps >= 2, "max_norm must be small enough to clip"


@pytest.mark.parametrize("name", TORCH_FUSED)
def test_found_inf_step_changes_nothing_like_torch_fused(name, backend):
    """torch's test_fused_does_not_step_if_foundinf: grad_scale and found_inf set by hand, as GradScaler does."""
    kwargs = SCALER_KWARGS[name]
    torch_opt, torch_params, opt, params = torch_and_ours(name, dict(kwargs, fused=True), backend)
    set_grads(params, 1)
    set_grads(torch_params, 1)
    before = _frozen(opt)
    for o in (opt, torch_opt):
        o.grad_scale = torch.full((), 4.0)
        o.found_inf = torch.ones(())
    torch_opt.step()
    opt.step()
    for p_before, p in zip(before["params"], params):
        assert_bitwise_equal(p, p_before, name="param")
    for g_before, p in zip(before["grads"], params):
        assert_bitwise_equal(p.grad, g_before, name="grad (not unscaled on a skipped step)")
    assert bool(opt.found_nonfinite)
    if name == "SGD":
        _next_step_starts_momentum_like_torch(opt, params, before, kwargs)
    else:
        assert_state_dict_like(opt.state_dict(), torch_opt.state_dict(), rtol=0.0)
        assert all(float(s["step"]) == 0 for s in opt.state.values())


def _next_step_starts_momentum_like_torch(opt, params, before, kwargs):
    """After a skipped first SGD step the next real step starts the momentum buffer as torch's first step does.
    With dampening == 0 a zero buffer stays (no host read of found_inf): momentum * 0 + g is bitwise g, torch's
    fresh buffer. With dampening it would be (1 - dampening) * g, so no buffer may be left."""
    if kwargs.get("dampening", 0) == 0:
        assert all(not s["momentum_buffer"].any() for s in opt.state.values())
    else:
        assert all("momentum_buffer" not in s for s in opt.state.values())
    del opt.grad_scale, opt.found_inf
    reference = torch.optim.SGD(clone_params(before["params"]), **kwargs)
    set_grads(reference.param_groups[0]["params"], 1)
    reference.step()
    opt.step()
    assert_matches_torch(opt, params, reference, reference.param_groups[0]["params"], groups=False)


@pytest.mark.parametrize("kwargs", [dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
                                    dict(lr=0.05, momentum=0.9, nesterov=True)], ids=["dampening", "nesterov"])
def test_skipped_first_sgd_step_then_like_torch(kwargs, backend):
    torch_opt, torch_params, opt, params = torch_and_ours("SGD", kwargs, backend)
    set_grads(params, 1)
    before = _frozen(opt)
    opt.grad_scale = torch.full((), 4.0)
    opt.found_inf = torch.ones(())
    opt.step()
    _next_step_starts_momentum_like_torch(opt, params, before, kwargs)


# --- LR schedulers ---------------------------------------------------------------------------------------------

SCHEDULERS = {
    "StepLR": (None, lambda o: lr_scheduler.StepLR(o, step_size=3, gamma=0.5)),
    "CosineAnnealingLR": (None, lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=1e-3)),
    "OneCycleLR": (None, lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=12)),
    "LinearLR-tensor-lr": (torch.tensor(0.05), lambda o: lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=5)),
}


def _hyper_trace(opt) -> list:
    def plain(v):
        return float(v) if torch.is_tensor(v) else v
    return [(type(g["lr"]), plain(g["lr"]), g.get("momentum"), tuple(map(plain, g.get("betas", ()))))
            for g in opt.param_groups]


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("name, kwargs", [("SGD", dict(lr=0.05, momentum=0.9)), ("AdamW", dict(lr=0.05))])
def test_lr_scheduler_drives_ours_like_torch(scheduler, name, kwargs, backend):
    lr, make_scheduler = SCHEDULERS[scheduler]
    if lr is not None:
        kwargs = dict(kwargs, lr=lr)
    torch_opt, torch_params, opt, params = torch_and_ours(name, kwargs, backend)
    assert isinstance(opt, torch.optim.Optimizer)
    torch_sched, sched = make_scheduler(torch_opt), make_scheduler(opt)
    for step in range(10):
        for o, ps, s in [(torch_opt, torch_params, torch_sched), (opt, params, sched)]:
            set_grads(ps, step)
            with warnings.catch_warnings():
                # e.g. "lr_scheduler.step() before optimizer.step()": the scheduler did not see our step
                warnings.simplefilter("error")
                o.step()
                s.step()
        assert _hyper_trace(opt) == _hyper_trace(torch_opt), f"step {step}"
        assert sched.get_last_lr() == torch_sched.get_last_lr()
    assert_matches_torch(opt, params, torch_opt, torch_params)


# --- the rest of the Optimizer API -----------------------------------------------------------------------------

def _quadratic_closure(opt, params, calls: list):
    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = sum((p * p * (i + 1)).sum() for i, p in enumerate(params))
        loss.backward()
        return loss
    return closure


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_closure_called_once_and_loss_returned(name, kwargs):
    torch_opt, torch_params, opt, params = torch_and_ours(name, kwargs)
    for _ in range(3):
        torch_calls, calls = [], []
        expected = torch_opt.step(_quadratic_closure(torch_opt, torch_params, torch_calls))
        actual = opt.step(_quadratic_closure(opt, params, calls))
        assert len(calls) == len(torch_calls) == 1
        assert_close_rel(actual.detach(), expected.detach(), "loss")
    assert_matches_torch(opt, params, torch_opt, torch_params)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_like_torch(set_to_none):
    torch_opt, torch_params, opt, params = torch_and_ours("Adam", dict(lr=0.01))
    results = []
    for o, ps in [(torch_opt, torch_params), (opt, params)]:
        set_grads(ps, 1)
        old = [p.grad for p in ps]
        o.zero_grad(set_to_none=set_to_none)
        results.append([(p.grad is None, p.grad is o_g, None if p.grad is None else float(p.grad.abs().sum()))
                        for p, o_g in zip(ps, old)])
    assert results[1] == results[0]


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_add_param_group_like_torch(name, kwargs, backend):
    torch_params = make_params()
    params = clone_params(torch_params)
    torch_opt = TORCH[name](torch_params[:2], **kwargs)
    opt = FUSED[name](params[:2], **kwargs, backend=backend)
    train(torch_opt, torch_params, range(2))
    train(opt, params, range(2))
    torch_opt.add_param_group({"params": torch_params[2:], "lr": 0.03})
    opt.add_param_group({"params": params[2:], "lr": 0.03})
    train_both_and_compare(torch_opt, torch_params, opt, params, range(2, 6))
    assert_same_error(lambda: torch_opt.add_param_group({"params": [torch_params[0]]}),
                      lambda: opt.add_param_group({"params": [params[0]]}))
    assert len(opt.param_groups) == 2


def _record_step_hooks(opt, params, events: list) -> None:
    handles = [
        torch_optimizer.register_optimizer_step_pre_hook(lambda o, a, k: events.append("global pre")),
        torch_optimizer.register_optimizer_step_post_hook(lambda o, a, k: events.append("global post")),
        opt.register_step_pre_hook(lambda o, a, k: events.append("pre")),
        opt.register_step_post_hook(lambda o, a, k: events.append("post")),
    ]
    replacement = []
    # a pre hook may replace step's arguments
    handles.append(opt.register_step_pre_hook(
        lambda o, a, k: (a, {"closure": _quadratic_closure(o, params, replacement)})))
    try:
        opt.step()
    finally:
        for handle in handles:
            handle.remove()
    events.append(f"replacement closure called {len(replacement)} time(s)")
    opt.step()  # removed hooks stay removed
    events.append("end")


@pytest.mark.parametrize("name", NAMES)
def test_step_hooks_like_torch(name):
    torch_opt, torch_params, opt, params = torch_and_ours(name, dict(lr=0.1))
    expected, actual = [], []
    _record_step_hooks(torch_opt, torch_params, expected)
    _record_step_hooks(opt, params, actual)
    assert actual == expected
    assert expected[:4] == ["global pre", "pre", "post", "global post"]
    assert_matches_torch(opt, params, torch_opt, torch_params)


def _record_state_dict_hooks(opt, params, events: list) -> dict:
    def log(tag):
        return lambda *args: events.append(tag)

    def add_marker(o, state_dict):
        events.append("sd post: marker")
        state_dict["marker"] = 1
        return state_dict

    def rewrite(o, state_dict):
        # a load pre hook may hand back a new state dict: it is the one that must be loaded
        events.append("load pre: rewrite")
        new = copy.deepcopy(state_dict)
        new["param_groups"][0]["lr"] = 0.25
        for state in new["state"].values():
            for key, value in state.items():
                state[key] = value * 0 + 5 if key == "step" else value * 2
        return new

    opt.register_state_dict_pre_hook(log("sd pre"))
    opt.register_state_dict_pre_hook(log("sd pre (prepended)"), prepend=True)
    opt.register_state_dict_post_hook(add_marker)
    opt.register_state_dict_post_hook(log("sd post (prepended)"), prepend=True)
    opt.register_load_state_dict_pre_hook(rewrite)
    opt.register_load_state_dict_pre_hook(log("load pre (prepended)"), prepend=True)
    opt.register_load_state_dict_post_hook(log("load post"))
    opt.register_load_state_dict_post_hook(log("load post (prepended)"), prepend=True)
    train(opt, params, range(2))
    saved = opt.state_dict()
    events.append(f"marker in state_dict: {saved.get('marker')}")
    opt.load_state_dict(saved)
    return opt.state_dict()


@pytest.mark.parametrize("name, kwargs", [
    pytest.param(*CONFIGS[0], id=CONFIG_IDS[0]),
    pytest.param(*CONFIGS[3], id=CONFIG_IDS[3]),
])
def test_state_dict_hooks_like_torch(name, kwargs, backend):
    torch_opt, torch_params, opt, params = torch_and_ours(name, kwargs, backend)
    expected_events, events = [], []
    expected = _record_state_dict_hooks(torch_opt, torch_params, expected_events)
    actual = _record_state_dict_hooks(opt, params, events)
    assert events == expected_events
    assert expected["param_groups"][0]["lr"] == 0.25, "torch loads what the load pre hook returned"
    assert_state_dict_like(actual, expected)


def test_repr_is_torchs_plus_extras():
    torch_params, params = make_params(), make_params()
    torch_opt = torch.optim.AdamW([{"params": torch_params[:2]}, {"params": torch_params[2:], "lr": 0.5}])
    opt = fusedopt.AdamW([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}],
                         max_grad_norm=1.0, nonfinite="skip", backend="reference")
    lines = iter(repr(opt).splitlines())
    missing = [line for line in repr(torch_opt).splitlines() if line not in lines]  # in order
    assert not missing, f"torch's repr lines missing or out of order: {missing}\n{opt!r}"
    for extra in ["max_grad_norm: 1.0", "nonfinite: skip", "backend: reference"]:
        assert extra in repr(opt)


def _public_attrs(opt) -> dict:
    return {k: getattr(opt, k) for k in dir(opt) if not k.startswith("_") and not callable(getattr(opt, k))}


def _assert_same_public_attrs(actual, expected) -> None:
    a, e = _public_attrs(actual), _public_attrs(expected)
    assert sorted(a) == sorted(e)
    assert {"max_grad_norm", "nonfinite", "backend", "grad_norm", "found_nonfinite"} <= set(e)
    for key in e:
        if key in ("state", "param_groups"):  # keyed by / holding the params: compared through state_dict
            continue
        if isinstance(e[key], dict):
            assert sorted(a[key]) == sorted(e[key]), key
            for k in e[key]:
                assert_same_value(a[key][k], e[key][k], f"{key}[{k!r}]")
        elif e[key] is None:
            assert a[key] is None, key
        else:
            assert_same_value(a[key], e[key], key)
    assert_state_dict_like(actual.state_dict(), expected.state_dict(), rtol=0.0)


def _trained_with_extras(backend):
    params = make_params()
    opt = fusedopt.AdamW(params, lr=0.01, amsgrad=True, max_grad_norm=0.5, nonfinite="skip", backend=backend)
    train(opt, params, range(3))
    assert opt.grad_norm is not None and opt.found_nonfinite is not None
    return opt, params


@pytest.mark.parametrize("copier", [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))],
                         ids=["deepcopy", "pickle"])
def test_copies_keep_all_public_attributes(copier, backend):
    opt, params = _trained_with_extras(backend)
    copied = copier(opt)
    _assert_same_public_attrs(copied, opt)
    # the copy is a working optimizer on its own params, and steps as the original does
    copied_params = [p for g in copied.param_groups for p in g["params"]]
    assert all(c is not p for c, p in zip(copied_params, params))
    train(opt, params, range(3, 5))
    train(copied, copied_params, range(3, 5))
    assert_params_close(copied_params, params, rtol=0.0)
    _assert_same_public_attrs(copied, opt)


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_params_without_grads_get_no_state(name, kwargs, backend):
    torch_opt, torch_params, opt, params = torch_and_ours(name, kwargs, backend)
    before = [p.detach().clone() for p in params]
    assert opt.step() is None and torch_opt.step() is None  # no grads anywhere: a no-op
    # No state, except what torch.optim creates at construction (Adagrad: every param's).
    assert_state_dict_like(opt.state_dict(), torch_opt.state_dict(), rtol=0.0)
    eager = bool(torch_opt.state)
    assert eager or (not opt.state and opt.state_dict()["state"] == {})
    for p, b in zip(params, before):
        assert_bitwise_equal(p, b, name="param")
    for o, ps in [(torch_opt, torch_params), (opt, params)]:
        for step in range(3):
            set_grads(ps, step)
            ps[1].grad = None
            o.step()
    assert eager or params[1] not in opt.state
    assert_bitwise_equal(params[1], before[1], name="param without grad")
    assert_matches_torch(opt, params, torch_opt, torch_params)


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_dcp_init_step_leaves_params_unchanged(name, kwargs, backend):
    from torch.distributed.checkpoint.state_dict import _init_optim_state

    torch_opt, torch_params, opt, params = torch_and_ours(name, kwargs, backend)
    before = [p.detach().clone() for p in params]
    # The init step (zero grads, lr 0) takes square roots of values that are not 0 (Adadelta's sqrt(0 + eps),
    # RMSprop's momentum buffer g / (sqrt(v) + eps) with g = weight_decay * p): torch's and the reference's under
    # a correctly rounded fp32 sqrt, as the compiled kernels take it (torch's own, MKL VML's, is 1 ulp off in
    # places), so that every backend's states are torch's exactly.
    with ieee_sqrt():
        _init_optim_state(torch_opt)
        _init_optim_state(opt)
    for p, b in zip(params, before):
        assert_bitwise_equal(p, b, name="param after DCP's init step")
    assert all(p.grad is None for p in params)
    assert_matches_torch(opt, params, torch_opt, torch_params, rtol=0.0)
    train_both_and_compare(torch_opt, torch_params, opt, params, range(1, 4))


# --- backend choice --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_auto_backend_runs_the_compiled_cpu_kernels(monkeypatch, dtype):
    require_backend("cpu")
    assert ops.resolve("auto", torch.device("cpu"), dtype) is ops.BACKENDS["cpu"]
    real, calls = ops.BACKENDS["cpu"], []

    def spy(fn_name):
        def call(*args, **kwargs):
            calls.append(fn_name)
            return getattr(real, fn_name)(*args, **kwargs)
        return call

    monkeypatch.setitem(ops.BACKENDS, "cpu", SimpleNamespace(**{n: spy(n) for n in ("check", "update")},
                                                              RULES=real.RULES))
    params = make_params(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "falling back to the reference" warning either
        for opt in [fusedopt.AdamW(params, max_grad_norm=1.0), fusedopt.SGD(params, momentum=0.9)]:
            calls.clear()
            train(opt, params, range(1, 2))
            assert calls == (["check"] if opt.max_grad_norm else []) + ["update"]


def test_missing_extension_is_explained_and_only_auto_falls_back(monkeypatch):
    """Without the compiled extension: backend="cpu" fails at construction naming the cause and the fix;
    backend="auto" warns once and runs the reference, with torch's results."""
    from fusedopt import ops
    monkeypatch.setattr(ops, "EXTENSION_ERROR", ImportError("simulated: fusedopt._C is not built"))
    monkeypatch.setattr(ops, "BACKENDS", {"reference": ops.reference})
    monkeypatch.setattr(ops, "_warned", set())
    p = torch.nn.Parameter(torch.linspace(-1, 1, 5))
    with pytest.raises(RuntimeError, match=r"not available.*simulated: fusedopt\._C is not built.*pip install"):
        fusedopt.AdamW([p], backend="cpu")
    q = torch.nn.Parameter(p.detach().clone())
    opt, torch_opt = fusedopt.AdamW([p], backend="auto"), torch.optim.AdamW([q])
    for step in range(2):
        p.grad, q.grad = torch.full((5,), 0.5), torch.full((5,), 0.5)
        if step == 0:
            with pytest.warns(RuntimeWarning, match="compiled kernels unavailable.*reference"):
                opt.step()
        else:
            opt.step()
        torch_opt.step()
    torch.testing.assert_close(p, q, rtol=1e-6, atol=0)


# --- an algorithm without a compiled kernel: "auto" falls back, warning once (a named backend refuses at
# construction: test_parity.test_auto_backend_runs_the_reference_for_a_rule_without_kernels). Every rule has its
# kernels now: the CPU backend is made to lack the rule (its RULES without it) ---------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_auto_backend_without_the_rule_runs_the_reference_with_a_warning(name, monkeypatch):
    """CPU tensors under "auto": the reference's results bit for bit, and one RuntimeWarning that says so."""
    require_backend("cpu")
    monkeypatch.setattr(ops.BACKENDS["cpu"], "RULES", ops.BACKENDS["cpu"].RULES - {FUSED[name]._RULE.name})
    monkeypatch.setattr(ops, "_warned", set())
    params, reference_params = make_params(), make_params()
    opt = FUSED[name](params, backend="auto")
    reference = FUSED[name](reference_params, backend="reference")
    with pytest.warns(RuntimeWarning, match=f"no compiled cpu kernel for the update rule "
                                            f"'{FUSED[name]._RULE.name}'"):
        train(opt, params, range(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not at every step
        train(opt, params, range(1, 3))
    train(reference, reference_params, range(3))
    for i, (p, q) in enumerate(zip(params, reference_params)):
        assert_bitwise_equal(p, q, name=f"param {i}")
    assert_state_dict_like(opt.state_dict(), reference.state_dict(), rtol=0.0, groups=False)


def test_adagrad_matches_torch_fused_adagrad(backend):
    """torch's fused CPU Adagrad (its own kernel) against ours: the same math, rounding apart."""
    kwargs = dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.2, eps=1e-6)
    torch_params = make_params()
    params = clone_params(torch_params)
    torch_opt = torch.optim.Adagrad(torch_params, **kwargs, fused=True)
    require_rule(backend, fusedopt.Adagrad)
    opt = fusedopt.Adagrad(params, **kwargs, fused=True, backend=backend)
    train_both_and_compare(torch_opt, torch_params, opt, params, range(6))
