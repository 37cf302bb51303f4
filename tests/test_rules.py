"""The C++ update rules (csrc/include/fusedopt/math.h, listed in csrc/include/fusedopt/rules.h) agree with their
descriptions in fusedopt/rules.py: the same names, the same hyperparameter, flag, state and scalar names in the
same order, and the same states in use under every switch, so that the flat lists the optimizer classes lay out
from the Python table are the lists the compiled op reads."""
from __future__ import annotations

import itertools

import pytest
import torch

from fusedopt import ops, reference, rules
from helpers import ieee_sqrt

pytestmark = pytest.mark.skipif(ops.EXTENSION_ERROR is not None,
                                reason=f"fusedopt._C is not built ({ops.EXTENSION_ERROR})")

CPP_RULES = [] if ops.EXTENSION_ERROR is not None else list(ops._C.rules())


def test_every_compiled_rule_is_described_in_python():
    assert CPP_RULES, "the C++ rule list is empty"
    assert len(set(CPP_RULES)) == len(CPP_RULES), CPP_RULES
    assert set(CPP_RULES) <= set(rules.RULES), f"C++ rules without a fusedopt/rules.py entry: {CPP_RULES}"
    # The compiled backend offers exactly the rules it has kernels for.
    assert ops.BACKENDS["cpu"].RULES == frozenset(CPP_RULES)


@pytest.mark.parametrize("name", CPP_RULES)
def test_names_agree(name):
    info, rule = ops._C.rule_info(name), rules.RULES[name]
    assert info["hyper"] == rule.hyper
    assert info["flags"] == rule.flags
    assert info["states"] == rule.states
    assert info["scalars"] == rule.scalars
    assert info["takes_is_first"] == rule.takes_is_first


def test_unknown_rule_is_named():
    with pytest.raises(KeyError, match="unknown update rule 'nope'"):
        ops._C.rule_info("nope")
    p, g = torch.zeros(3), torch.ones(3)
    known = ", ".join(sorted(CPP_RULES))
    for update in (ops._C.update, torch.ops.fusedopt.update):
        with pytest.raises(RuntimeError, match=f"unknown update rule 'nope'; known: {known}"):
            update("nope", [p], [g], [], [], [], [], [0.1], 0, False, None, None, None, None)
    assert torch.equal(p, torch.zeros(3))


def _call(name, hyper, flags, n_states, gen):
    """One update of one 5-element param with ``n_states`` state lists, on the compiled op and the reference;
    returns both sides' params and states."""
    rule = rules.RULES[name]
    p = torch.randn(5, generator=gen)
    g = torch.randn(5, generator=gen)
    sides = []
    for update in (ops._C.update, reference.update):
        params, grads = [p.clone()], [g.clone()]
        states = [torch.zeros(5) for _ in range(n_states)]
        scalars = [torch.zeros(()) for _ in rule.scalars]
        is_first = [True] if rule.takes_is_first else []
        with ieee_sqrt():  # the reference's fp32 sqrt correctly rounded, as math.h's (torch's, MKL VML's, is not)
            update(name, params, grads, states, [], scalars, is_first, hyper, flags, False, None, None, None, None)
        sides.append(params + states + scalars)
    return sides


@pytest.mark.parametrize("name", CPP_RULES)
def test_states_in_use_agree(name):
    """Under every flag combination, with each hyperparameter zero or not (switches such as weight_decay != 0
    follow from values): the op takes the states that Rule.used_states lists, refuses one list more or less,
    and computes what the reference computes."""
    rule = rules.RULES[name]
    gen = torch.Generator().manual_seed(0)
    for flags in range(1 << len(rule.flags)):
        for values in itertools.product((0.0, 0.5), repeat=len(rule.hyper)):
            hyper = list(values)
            used = rule.used_states(rule.hyper_dict(hyper), rule.flag_names(flags))
            where = f"{name} flags={flags} hyper={dict(zip(rule.hyper, values))} states in use {used}"
            ours, theirs = _call(name, hyper, flags, len(used), gen)
            for a, b in zip(ours, theirs):
                # NaN where torch gives NaN too: RMSprop centered with alpha = eps = 0 takes the root of
                # g^2 - g^2 evaluated with an fma (its rounding error, negative for about half of the elements)
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, equal_nan=True, msg=lambda m: f"{where}: {m}")
            for wrong in (len(used) + 1, len(used) - 1):
                if wrong < 0:
                    continue
                with pytest.raises(RuntimeError, match=f"states has {wrong} entries, expected {len(used)} "):
                    _call(name, hyper, flags, wrong, gen)
