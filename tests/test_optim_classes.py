"""What FusedOptimizer derives from a class's update rule (fusedopt/optim/_base.py), so that a class is its
constructor, its checks and its data (``_RULE``, ``_INITIAL_STATE``, ``_GROUP_KEYS``): every rule argument found
in the param group, the state laid out as the rule says, the shared docstring paragraphs true to the code."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from configs import ALGORITHMS

MATH_H = Path(__file__).resolve().parents[1] / "csrc" / "include" / "fusedopt" / "math.h"
CLASSES = sorted({a.fused_cls for a in ALGORITHMS.values()}, key=lambda cls: cls.__name__)


def _optimizer(cls, **kwargs):
    return cls([torch.zeros(3, requires_grad=True)], backend="reference", **kwargs)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_rule_arguments_come_from_the_group(cls):
    opt = _optimizer(cls)
    rule, group = opt._RULE, opt.param_groups[0]
    hyper, flags = opt._rule_args(group)
    assert len(hyper) == len(rule.hyper) - 1 and all(type(h) is float for h in hyper), hyper
    assert set(flags) <= set(rule.flags), flags
    assert set(cls._HYPERPARAMETERS) <= set(group), f"{cls._HYPERPARAMETERS} not all in {sorted(group)}"
    assert cls._TENSOR_STATE_KEYS == rule.states
    assert set(cls._INITIAL_STATE) <= {*rule.states, *rule.scalars}, cls._INITIAL_STATE


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_fresh_state_is_the_rules(cls):
    """Scalar states are 0-dim fp32 on the param's device, tensor states the param's shape and layout, and the
    states in use are those the update call takes (``_state_keys``)."""
    opt = _optimizer(cls)
    param, group = opt.param_groups[0]["params"][0], opt.param_groups[0]
    state: dict = {}
    opt._init_state(param, state, group)
    assert set(state) == {*opt._RULE.scalars, *opt._state_keys(group)}
    for key in opt._RULE.scalars:
        assert state[key].shape == () and state[key].dtype == torch.float32, key
    for key in opt._state_keys(group):
        assert state[key].shape == param.shape and state[key].stride() == param.stride(), key


@pytest.mark.parametrize("cls,kwargs,expected", [
    ("NAdam", dict(lr=0.25), {"step": 0.0, "mu_product": 1.0, "exp_avg": 0.0, "exp_avg_sq": 0.0}),
    ("ASGD", dict(lr=0.25), {"step": 0.0, "eta": 0.25, "mu": 1.0, "ax": 0.0}),
    ("Rprop", dict(lr=0.25), {"step": 0.0, "prev": 0.0, "step_size": 0.25}),
    ("Adagrad", dict(lr=0.25, initial_accumulator_value=0.5), {"step": 0.0, "sum": 0.5}),
    ("RMSprop", dict(momentum=0.5, centered=True),
     {"step": 0.0, "square_avg": 0.0, "grad_avg": 0.0, "momentum_buffer": 0.0}),
    ("SGD", dict(momentum=0.5), {"momentum_buffer": 0.0}),
    ("SGD", dict(), {}),
])
def test_initial_values_are_torchs(cls, kwargs, expected):
    """The values torch.optim's namesake starts its states at (``_INITIAL_STATE``; the rest start at zero), for
    every element, complex params in both parts."""
    cls = next(c for c in CLASSES if c.__name__ == cls)
    for dtype in (torch.float32, torch.complex64):
        opt = cls([torch.zeros(3, dtype=dtype, requires_grad=True)], backend="reference", **kwargs)
        param, group = opt.param_groups[0]["params"][0], opt.param_groups[0]
        state: dict = {}
        opt._init_state(param, state, group)
        assert sorted(state) == sorted(expected)
        for key, value in expected.items():
            got = torch.view_as_real(state[key]) if state[key].is_complex() else state[key]
            assert torch.equal(got, torch.full_like(got, value)), f"{cls.__name__} {dtype} {key}: {state[key]}"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_docstring_names_what_exists(cls):
    """The shared paragraphs (fusedopt/optim/_doc.py) name the class's torch namesake, its states and a rule
    struct that math.h has; Lion, with no namesake, keeps its own text."""
    doc = cls.__doc__
    if "_RULE" not in cls.__dict__:  # AdamW: Adam's rule, and a pointer to Adam's docstring
        assert ":class:`Adam`" in doc
        return
    if not hasattr(torch.optim, cls.__name__):
        assert "Args are torch.optim" not in doc
        return
    assert f"Args are torch.optim.{cls.__name__}'s" in doc
    for key in (*cls._RULE.scalars, *cls._RULE.states):
        assert f"``{key}``" in doc, key
    struct = re.search(r"``(\w+Rule)``\s+of\s+csrc/include/fusedopt/math.h", doc).group(1)
    assert re.search(rf"^struct {struct}\b", MATH_H.read_text(), re.M), struct
    assert ("sparse gradients" in doc) == cls._SPARSE_GRADS
