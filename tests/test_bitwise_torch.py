"""fp32 on the CPU: fusedopt's cpu backend bit for bit equal to torch.optim's single-tensor for-loop
(``foreach=False``, the path users compare with), over the configs of configs.py (torch's optim_db included), 10
steps, params and every state entry, on sizes 0, 1, 7, 4097 and 65541 (vector bodies and scalar tails of torch's
kernels and of ours) plus a 0-dim, a transposed and a strided param.

math.h rounds as torch's CPU pointwise kernels do (its header lists them; fma where torch computes one). What is
bitwise (torch 2.13, x86-64 with AVX2) and what is not, and why:
- SGD: every config, clipping included where its coefficient is exact (inactive: clamped to 1; max_grad_norm 0).
- Adam/AdamW: torch's ``Tensor.sqrt`` on fp32 CPU tensors is MKL VML's ``vmsSqrt`` (aten/src/ATen/cpu/vml.h), which
  is not correctly rounded (1 ulp off IEEE sqrt in ~16% of elements on this machine); math.h's, like the CUDA and
  Triton kernels, is IEEE. With torch's sqrt replaced by a correctly rounded one (numpy's: helpers.ieee_sqrt) every
  config with float hyperparameters is bitwise, which shows that the other roundings match; unpatched, results
  agree to 1e-5 (test_parity.py) and the first step's moments are bitwise.
- Rprop, ASGD (no square root): every config, against torch as it is.
- NAdam, RAdam, Adadelta: as Adam, for their square roots (``exp_avg_sq.div(bc2).sqrt()``, ``exp_avg_sq.sqrt()``,
  Adadelta's two ``.sqrt_()``): bitwise with ``ieee_sqrt``, which patches both. Their per-tensor coefficients
  (NAdam's fp32 ``mu_product`` product and mu terms, RAdam's rectification and its branch, ASGD's eta and mu) are
  computed as torch's Python floats are, so those match too; RAdam's steps before it rectifies take no root and
  are bitwise with torch's own sqrt.
- Adam/AdamW with a tensor lr or tensor betas: torch keeps them 0-dim fp32 tensors and computes the bias
  corrections, the step size and AdamW's decay factor in fp32 tensor arithmetic (fp32 pow, fp32 division), where
  fusedopt computes them in double as for float hyperparameters: not bitwise (tolerance tests in test_parity.py).
- Active clipping: fusedopt's global norm sums the squares in another order than ``clip_grad_norm_`` (whose sum
  order depends on torch's reduction kernels), so the norms differ by about an ulp. Given the same coefficient
  the clipped step is bitwise (test_clip_bitwise_given_the_coefficient).
- GradScaler: fusedopt divides by the scale, torch's for-loop path multiplies by its fp32 reciprocal; equal bits
  for the power-of-two scales GradScaler uses (test_grad_scaler_bitwise).
- Adagrad, RMSprop (with ieee_sqrt: both take torch's fp32 sqrt), Adamax and Lion (no sqrt: torch as it is; Lion
  against lion-pytorch's update_fn): bitwise in every config but active clipping (above) and, for Adagrad with
  lr_decay and for Adamax, a tensor lr, which torch divides in fp32 (TENSOR_HYPERPARAMETERS_BITWISE).
- backend="reference" (fusedopt/reference.py) is written in torch.optim's ops: bitwise in the same configs with
  torch's own sqrt (test_reference_backend_bitwise).
torch run with ``ATEN_CPU_CAPABILITY=default`` fuses nothing, so there fp32 results differ from torch's in the
last bit as before; the tests run torch's default (vectorized) kernels.

``python tests/test_bitwise_torch.py`` prints the percentage of bit-equal elements per config (plain torch, no
sqrt patch).
"""
from __future__ import annotations

import contextlib
import math

import pytest
import torch

from configs import ALL_CONFIGS, Algorithm, OptimConfig, config_id, select
from fusedopt import ops
from helpers import assert_bitwise_equal, ieee_sqrt, require_backend, require_rule
from test_parity import (clone_params, flat, fused_step, make_grads, make_params, param_groups, run_fused, run_torch,
                         set_grads, states)

STEPS = 10
SPECS = (
    (("empty", (0,), "contiguous"), ("one", (1,), "contiguous"), ("seven", (7,), "contiguous"),
     ("big", (4097,), "contiguous")),
    (("huge", (65541,), "contiguous"), ("scalar", (), "contiguous"), ("weight_t", (5, 3), "transposed"),
     ("every_other", (4, 6), "strided")),
)
NAMES = [name for group in SPECS for name, _, _ in group]
# make_grads' grads have a global norm of about 260 for SPECS: 1.0 and 5.0 clip, 0 and 1e6 give exact factors.
EXACT_CLIP = (None, 0.0, 1e6)


@pytest.fixture(autouse=True)
def _cpu_backend_and_one_torch_thread():
    """The compiled backend must exist (never skipped); torch's side on one thread (see test_parity's fixture of
    the same purpose), except where a test says otherwise."""
    require_backend("cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The algorithms whose torch.optim step takes square roots (of fp32 tensors: MKL VML's on the CPU).
TAKES_SQRT = ("Adam", "AdamW", "NAdam", "RAdam", "Adadelta", "Adagrad", "RMSprop")


def torch_sqrt_patch(alg: Algorithm):
    """A fresh context for one use: ieee_sqrt for the algorithms whose step calls sqrt, nothing for the others
    (SGD, Rprop, ASGD)."""
    return ieee_sqrt() if alg.name in TAKES_SQRT else contextlib.nullcontext([1])


def bitwise_with_torch(alg: Algorithm, config: OptimConfig) -> bool:
    """Whether the config is claimed bitwise (Adam/AdamW: with ieee_sqrt); see the module docstring."""
    if config.max_grad_norm not in EXACT_CLIP:
        return False
    if alg.name in TENSOR_HYPERPARAMETERS_BITWISE:
        return TENSOR_HYPERPARAMETERS_BITWISE[alg.name](config.kwargs)
    # torch computes with a tensor lr or beta in fp32 tensor math where fusedopt computes in double (all but SGD)
    return not (alg.name != "SGD" and config.has_tensor_hyperparameter)


# Adagrad, RMSprop, Adamax, Lion: torch keeps a tensor lr a 0-dim fp32 tensor. RMSprop only passes it as an alpha
# or value (read as its value, as fusedopt reads it); Adagrad divides it by 1 + (step - 1) * lr_decay and Adamax
# by its bias correction, both in fp32 tensor math where fusedopt divides in double (exact for Adagrad without
# lr_decay). A tensor weight_decay goes in as an alpha (its value). configs.LionPytorch reads floats.
TENSOR_HYPERPARAMETERS_BITWISE = {
    "Adagrad": lambda kw: not (torch.is_tensor(kw.get("lr")) and kw.get("lr_decay", 0) != 0),
    "RMSprop": lambda kw: True,
    "Adamax": lambda kw: not torch.is_tensor(kw.get("lr")),
    "Lion": lambda kw: True,
}


BITWISE = [(a, c) for a, c in ALL_CONFIGS if bitwise_with_torch(a, c)]


def assert_runs_bitwise(actual, expected) -> None:
    for name, a, e in zip(NAMES, actual.params, expected.params, strict=True):
        assert_bitwise_equal(a, e, name=f"param {name!r}")
    for name, sa, se in zip(NAMES, actual.states, expected.states, strict=True):
        assert sorted(sa) == sorted(se), f"state keys of {name!r}: {sorted(sa)} vs torch's {sorted(se)}"
        for key in se:
            assert_bitwise_equal(sa[key], se[key], name=f"state[{name!r}][{key!r}]")


def runs(alg: Algorithm, config: OptimConfig, backend: str = "cpu", steps: int = STEPS):
    require_rule(backend, alg.fused_cls)
    groups = make_params(torch.float32, specs=SPECS)
    grads = make_grads(torch.float32, steps, specs=SPECS)
    fused = run_fused(alg, config, backend, clone_params(groups), grads)
    # The reference backend is torch ops, torch's sqrt included: compared with torch as it is.
    patch = torch_sqrt_patch(alg) if backend == "cpu" else contextlib.nullcontext([1])
    with patch as calls:
        expected = run_torch(alg, config, clone_params(groups), grads)
    assert calls[0] > 0, f"torch.optim's {alg.name} did not call Tensor.sqrt: the patch no longer applies"
    return fused, expected


@pytest.mark.parametrize("alg,config", BITWISE, ids=[config_id(a, c) for a, c in BITWISE])
def test_bitwise(alg, config):
    assert_runs_bitwise(*runs(alg, config))


@pytest.mark.parametrize("alg,config", BITWISE, ids=[config_id(a, c) for a, c in BITWISE])
def test_reference_backend_bitwise(alg, config):
    """backend="reference" writes torch.optim's ops (add with alpha, addcmul, lerp, addcdiv) in its order: the
    same bits as torch.optim, Adam's sqrt included (both are torch's)."""
    assert_runs_bitwise(*runs(alg, config, backend="reference"))


@pytest.mark.parametrize("alg,config", select("SGD-fusedopt:everything", "Adam-optim_db:amsgrad",
                                              "AdamW-fusedopt:weight_decay"))
def test_bitwise_with_torch_on_two_threads(alg, config):
    """torch on two threads splits the 65541-element tensor at 32771, not a multiple of its vector width: the
    scalar tails there round like the vector bodies (fused), so the result is the same."""
    torch.set_num_threads(2)
    assert_runs_bitwise(*runs(alg, config))


@pytest.mark.parametrize("alg,config", select("Adam-optim_db:default", "Adam-optim_db:nonzero_weight_decay",
                                              "AdamW-optim_db:amsgrad"))
def test_adam_first_step_moments_bitwise_with_torchs_own_sqrt(alg, config):
    """Without the sqrt patch: the moments of the first step (which no sqrt has touched yet) are bitwise."""
    groups = make_params(torch.float32, specs=SPECS)
    grads = make_grads(torch.float32, 1, specs=SPECS)
    fused = run_fused(alg, config, "cpu", clone_params(groups), grads)
    expected = run_torch(alg, config, clone_params(groups), grads)
    for name, sa, se in zip(NAMES, fused.states, expected.states, strict=True):
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key in se:
                assert_bitwise_equal(sa[key], se[key], name=f"state[{name!r}][{key!r}]")


CLIP_CONFIGS = select("SGD-fusedopt:clip_active", "Adam-fusedopt:clip_active", "AdamW-fusedopt:clip_active",
                      "SGD-fusedopt:nonfinite_raise_with_clip")


@pytest.mark.parametrize("alg,config", CLIP_CONFIGS, ids=[config_id(a, c) for a, c in CLIP_CONFIGS])
def test_clip_bitwise_given_the_coefficient(alg, config):
    """Active clipping folded into the update: torch.optim's step on grads multiplied by clip_grad_norm_'s
    coefficient computed from fusedopt's norm (``clamp(max_norm / (norm + 1e-6), max=1)``, torch's formula)
    equals fusedopt's clipped step bit for bit, step after step."""
    groups = make_params(torch.float32, specs=SPECS)
    grads = make_grads(torch.float32, STEPS, specs=SPECS)
    fused_params, torch_params = flat(clone_params(groups)), flat(clone_params(groups))
    ours = alg.fused_cls(param_groups(alg, [fused_params[:4], fused_params[4:]]), **config.fused_kwargs("cpu"))
    theirs = alg.torch_cls(param_groups(alg, [torch_params[:4], torch_params[4:]]), **config.torch_kwargs())
    for step_grads in grads:
        set_grads(fused_params, step_grads)
        set_grads(torch_params, step_grads)
        norm = fused_step(ours)
        coef = torch.clamp(config.max_grad_norm / (norm + 1e-6), max=1.0)
        assert float(coef) < 1.0, "the config should clip"
        for p in torch_params:
            p.grad.mul_(coef)
        with torch_sqrt_patch(alg):
            theirs.step()
    assert_runs_bitwise(_Run(fused_params, states(ours, fused_params)),
                        _Run(torch_params, states(theirs, torch_params)))


def _fused_then_torch(alg: Algorithm, config: OptimConfig, groups):
    """``(is_torch, params, optimizer)``: fusedopt's (cpu backend), then torch's, each over its own copy of
    ``groups``' params, in two param groups (the first four, the rest)."""
    for is_torch in (False, True):
        params = flat(clone_params(groups))
        cls, kwargs = (alg.torch_cls, config.torch_kwargs()) if is_torch else \
            (alg.fused_cls, config.fused_kwargs("cpu"))
        yield is_torch, params, cls(param_groups(alg, [params[:4], params[4:]]), **kwargs)


# One config per algorithm, the first bitwise one: what the tests below vary around it.
FIRST_BITWISE = list({a.name: (a, c) for a, c in reversed(BITWISE)}.values())[::-1]


@pytest.mark.parametrize("alg,config", FIRST_BITWISE, ids=[config_id(a, c) for a, c in FIRST_BITWISE])
def test_bitwise_with_step_counts_that_differ_within_a_group(alg, config):
    """Params of one group whose step counts differ (param i has no grad at the steps s with (s + i) % 3 == 0,
    so neighbours in a call are one or two steps apart, and some agree): the CPU loop computes the per-tensor
    coefficients once per run of equal step counts (cpu/update.h), which must give each param torch's bits."""
    groups = make_params(torch.float32, specs=SPECS)
    grads = [[None if (s + i) % 3 == 0 else g for i, g in enumerate(step)]
             for s, step in enumerate(make_grads(torch.float32, STEPS, specs=SPECS))]
    fused = run_fused(alg, config, "cpu", clone_params(groups), grads)
    with torch_sqrt_patch(alg):
        expected = run_torch(alg, config, clone_params(groups), grads)
    steps = {float(s["step"]) for s in fused.states if "step" in s}
    assert not any("step" in s for s in expected.states) or len(steps) > 1, "the step counts should differ"
    assert_runs_bitwise(fused, expected)


# Changes to a group between steps that a step must see (the optimizer keeps what it derives from a group's
# values while they are the same objects: _group_args): a value replaced, a list of values changed in place, a
# switch that changes which states the kernel gets (SGD's momentum; torch's Adam and RMSprop have no state for
# amsgrad, centered or momentum switched on after their first step, so those are not changes torch takes).
GROUP_CHANGES = {
    "Adam": [lambda g: g.update(eps=1e-3), lambda g: g.update(betas=[0.8, 0.99]),
             lambda g: g["betas"].__setitem__(0, 0.5), lambda g: g.update(weight_decay=0.2)],
    "SGD": [lambda g: g.update(momentum=0.9), lambda g: g.update(nesterov=True),
            lambda g: g.update(dampening=0.0, nesterov=False, momentum=0.5)],
    "Rprop": [lambda g: g.update(etas=[0.4, 1.1]), lambda g: g["etas"].__setitem__(1, 1.5),
              lambda g: g.update(step_sizes=(1e-5, 5.0))],
    "RMSprop": [lambda g: g.update(alpha=0.5), lambda g: g.update(eps=1e-4), lambda g: g.update(weight_decay=0.1)],
}
GROUP_CHANGE_CONFIGS = select("Adam-optim_db:default", "SGD-optim_db:default", "Rprop-optim_db:default",
                              "RMSprop-optim_db:default")


@pytest.mark.parametrize("alg,config", GROUP_CHANGE_CONFIGS, ids=[config_id(a, c) for a, c in GROUP_CHANGE_CONFIGS])
def test_bitwise_when_the_group_changes_between_steps(alg, config):
    """A change to the first group every other step (GROUP_CHANGES): fusedopt's steps follow it as torch's do."""
    groups = make_params(torch.float32, specs=SPECS)
    grads = make_grads(torch.float32, STEPS, specs=SPECS)
    changes = GROUP_CHANGES[alg.name]
    runs_ = []
    for is_torch, params, opt in _fused_then_torch(alg, config, groups):
        for step, step_grads in enumerate(grads):
            if step % 2 == 0 and step // 2 < len(changes):
                changes[step // 2](opt.param_groups[0])
            set_grads(params, step_grads)
            with torch_sqrt_patch(alg) if is_torch else contextlib.nullcontext():
                opt.step()
        runs_.append(_Run(params, states(opt, params)))
    assert_runs_bitwise(*runs_)


class _Run:
    def __init__(self, params, state):
        self.params = [p.detach().clone() for p in params]
        self.states = state


GRAD_SCALER_CONFIGS = select("SGD-fusedopt:dampening", "SGD-optim_db:nesterov", "Adam-fusedopt:amsgrad",
                             "AdamW-optim_db:default")


@pytest.mark.parametrize("alg,config", GRAD_SCALER_CONFIGS, ids=[config_id(a, c) for a, c in GRAD_SCALER_CONFIGS])
def test_grad_scaler_bitwise(alg, config):
    """Under GradScaler (scales 2^10 up and down): fusedopt's unscale inside the step (a division) against
    torch's for-loop after the scaler's unscale_ (a multiplication by the reciprocal): the same bits for a
    power-of-two scale, params, states and the unscaled grads."""
    groups = make_params(torch.float32, specs=SPECS)
    grads = make_grads(torch.float32, STEPS, specs=SPECS)
    traces = []
    for is_torch, params, opt in _fused_then_torch(alg, config, groups):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=3)
        unscaled = []
        for step_grads in grads:
            scale = scaler.scale(torch.ones(())).item()  # the scale of this step (also initializes it)
            assert math.log2(scale).is_integer()
            set_grads(params, [g * scale for g in step_grads])
            with torch_sqrt_patch(alg) if is_torch else contextlib.nullcontext():
                scaler.step(opt)
            unscaled.append([p.grad.clone() for p in params])
            scaler.update()
        traces.append((_Run(params, states(opt, params)), unscaled, scaler.get_scale()))
    (ours, our_grads, our_scale), (expected, their_grads, their_scale) = traces
    assert our_scale == their_scale and our_scale != 2.0 ** 10, "the scale should have grown"
    assert_runs_bitwise(ours, expected)
    for step, (ga, ge) in enumerate(zip(our_grads, their_grads)):
        for name, a, e in zip(NAMES, ga, ge):
            assert_bitwise_equal(a, e, name=f"step {step}: unscaled grad of {name!r}")


def report(steps: int = STEPS) -> None:
    """Percent of bit-equal fp32 elements per config against plain torch.optim (no sqrt patch)."""
    torch.set_num_threads(1)
    for alg, config in ALL_CONFIGS:
        if alg.fused_cls._RULE.name not in ops.rules_of(ops.BACKENDS["cpu"]):
            print(f"{config_id(alg, config)}: no cpu kernel for its rule yet")
            continue
        groups = make_params(torch.float32, specs=SPECS)
        grads = make_grads(torch.float32, steps, specs=SPECS)
        fused = run_fused(alg, config, "cpu", clone_params(groups), grads)
        expected = run_torch(alg, config, clone_params(groups), grads)
        counts: dict[str, list[int]] = {}
        pairs = [("param", a, e) for a, e in zip(fused.params, expected.params)]
        pairs += [(key, sa[key], se[key]) for sa, se in zip(fused.states, expected.states) for key in se
                  if key != "step"]
        for key, a, e in pairs:
            equal = a.contiguous().view(torch.int32) == e.contiguous().view(torch.int32)
            count = counts.setdefault(key, [0, 0])
            count[0] += int(equal.sum())
            count[1] += equal.numel()
        cells = " ".join(f"{key}={100 * eq / n:.2f}%" for key, (eq, n) in counts.items())
        print(f"{config_id(alg, config):85s} {cells}", flush=True)


if __name__ == "__main__":
    report()
