"""The Triton backend (fusedopt/triton) against fusedopt.reference and the compiled CPU backend, op by op.

Without a GPU the kernels run on CPU tensors under the Triton interpreter: tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton when CUDA is unavailable (the other test files never run
Triton kernels, so they are unaffected). With a GPU the same tests run the compiled kernels on CUDA tensors.
The interpreter runs one program after another (tens of ms each on this machine), so the problems are small:
sizes 0, 1, 4097 and (7, 11, 2), a few steps each.

Tolerances (why):
- fp32 against the reference: the same formulas (math.h's order), but torch evaluates some ops its own way:
  1e-5 relative, 1e-7 absolute (in practice within an ulp). The reference runs under helpers.ieee_sqrt (on CPU
  tensors its fp32 sqrt is then correctly rounded, as the kernels' sqrt_rn; torch's own there, MKL VML's, is
  1 ulp off in places).
- bf16/fp16 params against the reference: both compute in fp32 and round once per step (the kernels round to
  nearest even with math.h's bit formula, not with the interpreter's cast, which truncates bf16), so a param
  may land one low-precision ulp away where the fp32 values straddle a rounding boundary; the reference is
  re-synced to the kernel's outputs after each compared step (as test_cpu_ops does). bf16 states: 1 bf16 ulp.
- against the compiled CPU backend: bit for bit (both evaluate math.h in the same order with the same
  roundings), params, states, grads and step counts.
"""
import collections
import dataclasses
import importlib
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import test_parity
from configs import ALL_CONFIGS, REPRESENTATIVE, config_id, covering, extras_of, missing_pairs, select
from fusedopt import ops, reference
from fusedopt import rules as fusedopt_rules
from helpers import (assert_bitwise_equal, assert_close, assert_raises_unchanged, assert_within_ulps, ieee_sqrt,
                     require_backend, require_rule)

ft = pytest.importorskip("fusedopt.triton", reason="triton is not installed (pip install triton==3.9.0)")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from fusedopt.triton import _multi_tensor as mt  # noqa: E402
from fusedopt.triton import rules as ftrules  # noqa: E402

# The backend as the optimizer classes see it: its generic update and the v2 entries on it (eager calls go
# straight to fusedopt.triton.update; torch.compile sees the custom op). `up` is the launcher's module.
TRITON = ops.BACKENDS["triton"]
up = importlib.import_module("fusedopt.triton.update")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(0,), (1,), (4097,), (7, 11, 2)]
STEPS = 3


def _name(x) -> str:
    return str(x).removeprefix("torch.")


def test_mode_matches_device():
    """CPU tensors run interpreted, CUDA tensors compiled (conftest.py chooses)."""
    assert ft.INTERPRETED == (DEVICE.type == "cpu")


# ---------------------------------------------------------------------------------------------------------------
# Problems: the Triton side and the other side start from identical copies.


def _randn(shape, dtype, gen, scale=1.0):
    return (torch.randn(shape, generator=gen) * scale).to(dtype).to(DEVICE)


def _zeros(shapes, dtype):
    return [torch.zeros(s, dtype=dtype, device=DEVICE) for s in shapes]


def make_state(algo, dtype, cfg, gen, shapes=SHAPES):
    sdt = cfg.get("state_dtype", torch.float32)
    state = {"params": [_randn(s, dtype, gen) for s in shapes]}
    if cfg.get("master"):
        state["master_params"] = [p.float().reshape(-1).clone() for p in state["params"]]
    if algo == "sgd":
        if cfg.get("momentum", 0.0) != 0:
            state["momentum_buffers"] = _zeros(shapes, sdt)
    else:
        state["exp_avgs"] = _zeros(shapes, sdt)
        state["exp_avg_sqs"] = _zeros(shapes, sdt)
        if cfg.get("amsgrad"):
            state["max_exp_avg_sqs"] = _zeros(shapes, sdt)
        state["steps"] = [torch.zeros((), device=DEVICE) for _ in shapes]
    return state


def clone_state(state):
    return {k: [t.clone() for t in v] for k, v in state.items()}


def _scalar(cfg, key):
    return torch.tensor(float(cfg[key]), device=DEVICE) if key in cfg else None


def call(backend, algo, state, grads, cfg, is_first):
    """One update through ``backend`` (a module with the v2 op signatures)."""
    tensors = [_scalar(cfg, k) for k in ("lr_tensor", "grad_scale", "clip_coef", "found_inf")]
    master = state.get("master_params", [])
    if algo == "sgd":
        momentum = cfg.get("momentum", 0.0)
        backend.sgd_update(state["params"], grads, state.get("momentum_buffers", []), master,
                           is_first if momentum != 0 else [], cfg["lr"], cfg.get("weight_decay", 0.0), momentum,
                           cfg.get("dampening", 0.0), cfg.get("nesterov", False), cfg.get("maximize", False),
                           *tensors)
    else:
        backend.adam_update(state["params"], grads, state["exp_avgs"], state["exp_avg_sqs"],
                            state.get("max_exp_avg_sqs", []), master, state["steps"], cfg["lr"],
                            cfg.get("beta1", 0.9), cfg.get("beta2", 0.999), cfg.get("eps", 1e-8),
                            cfg.get("weight_decay", 0.0), cfg.get("amsgrad", False), cfg.get("maximize", False),
                            cfg.get("decoupled", False), *tensors)


def is_first_for(step, n):
    # Fresh buffers on the first step; later a mix of fresh and continuing ones within one call.
    return [True] * n if step == 0 else [step == 2 and i % 2 == 0 for i in range(n)]


def compare_to_reference(ours, theirs, where):
    for key in ours:
        for i, (a, e) in enumerate(zip(ours[key], theirs[key])):
            what = f"{where}: {key}[{i}]"
            assert a.dtype == e.dtype, what
            if a.dtype == torch.float32:
                assert_close(a, e, rtol=1e-5, atol=1e-7, name=what)
            else:
                assert_within_ulps(a, e, ulps=1, name=what)


def cpu_backend():
    """The compiled CPU backend, for bit-for-bit parity on CPU tensors (None on a GPU run: the comparison there is
    with the reference only)."""
    if DEVICE.type != "cpu":
        return None
    require_backend("cpu")
    return ops.BACKENDS["cpu"]


def run_against(algo, dtype, cfg, shapes=SHAPES, steps=STEPS, seed=0, with_reference=True):
    """``steps`` updates on the Triton backend, the reference and the CPU backend from the same inputs,
    compared after each step: with the CPU backend bit for bit (grads, params, states, step counts), with the
    reference within the module's tolerances."""
    gen = torch.Generator().manual_seed(seed)
    ours = make_state(algo, dtype, cfg, gen, shapes)
    others = {"cpu": cpu_backend(), "reference": reference if with_reference else None}
    others = {name: (backend, clone_state(ours)) for name, backend in others.items() if backend is not None}
    for step in range(steps):
        grads = [_randn(s, dtype, gen, scale=cfg.get("grad_scale", 1.0)) for s in shapes]
        first = is_first_for(step, len(shapes))
        our_grads = [g.clone() for g in grads]
        call(ops.BACKENDS["triton"], algo, ours, our_grads, cfg, first)
        ours_all = {**ours, "grads": our_grads}
        where = f"{_name(dtype)} {cfg} step {step}"
        for name, (backend, theirs) in others.items():
            their_grads = [g.clone() for g in grads]
            with ieee_sqrt():  # the reference's fp32 sqrt as the kernels take it (module doc); the CPU op's is its own
                call(backend, algo, theirs, their_grads, cfg, first)
            theirs_all = {**theirs, "grads": their_grads}
            if name == "cpu":
                for key in ours_all:
                    for i, (a, e) in enumerate(zip(ours_all[key], theirs_all[key])):
                        assert_bitwise_equal(a, e, name=f"{where} vs cpu: {key}[{i}]")
                continue
            compare_to_reference(ours_all, theirs_all, f"{where} vs reference")
            for key in theirs:  # re-sync: every step is compared from identical inputs
                for a, e in zip(ours[key], theirs[key]):
                    e.copy_(a)


SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, weight_decay=0.1, maximize=True),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True),
    dict(lr=0.05, momentum=0.9, nesterov=True, grad_scale=1024.0, found_inf=0.0),
    dict(lr=0.05, momentum=0.8, dampening=0.1, clip_coef=0.37, maximize=True),
    dict(lr=0.05, momentum=0.9, weight_decay=0.05, grad_scale=512.0, clip_coef=0.5),
    # contract v2
    dict(lr=99.0, lr_tensor=0.05, momentum=0.9, weight_decay=0.1),  # the float lr is ignored
    dict(lr=0.05, momentum=0.9, nesterov=True, master=True, state_dtype=torch.bfloat16),
    dict(lr=0.05, momentum=0.9, dampening=0.2, master=True, lr_tensor=0.03, grad_scale=64.0, clip_coef=0.7),
]

ADAM_CONFIGS = [
    dict(lr=1e-3),
    dict(lr=1e-2, weight_decay=0.1),
    dict(lr=1e-2, weight_decay=0.1, decoupled=True),
    dict(lr=1e-3, amsgrad=True),
    dict(lr=1e-3, amsgrad=True, maximize=True, weight_decay=0.05, decoupled=True),
    dict(lr=1e-2, beta1=0.3, beta2=0.9, eps=1e-6),  # 1 - beta1 >= 0.5: lerp's other branch
    dict(lr=1e-3, grad_scale=1024.0, found_inf=0.0),
    dict(lr=1e-3, clip_coef=0.25, weight_decay=0.01, maximize=True),
    dict(lr=1e-3, weight_decay=0.01, decoupled=True, amsgrad=True, grad_scale=256.0, clip_coef=0.5),
    # contract v2
    dict(lr=99.0, lr_tensor=1e-2, weight_decay=0.1, decoupled=True),  # the float lr is ignored
    dict(lr=1e-2, amsgrad=True, master=True),
    dict(lr=1e-2, amsgrad=True, state_dtype=torch.bfloat16, weight_decay=0.01),
    dict(lr=1e-2, lr_tensor=3e-3, master=True, state_dtype=torch.bfloat16, grad_scale=8.0, clip_coef=0.5,
         decoupled=True, weight_decay=0.1),
]


def _cfg_id(cfg) -> str:
    return ",".join(f"{k}={_name(v)}" for k, v in cfg.items())


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=_cfg_id)
def test_sgd_matches_reference_and_cpu(dtype, cfg):
    run_against("sgd", dtype, cfg)


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("cfg", ADAM_CONFIGS, ids=_cfg_id)
def test_adam_matches_reference_and_cpu(dtype, cfg):
    run_against("adam", dtype, cfg)


def test_many_tensors_one_call():
    # 100 tensors of sizes 0..39 and one of 4097 in one call of each kind (one launch whatever the count: see
    # test_launch_count_does_not_grow_with_tensors).
    gen = torch.Generator().manual_seed(1)
    shapes = [(int(n),) for n in torch.randint(0, 40, (100,), generator=gen)] + [(4097,)]
    run_against("adam", torch.float32, dict(lr=1e-3, weight_decay=0.01, decoupled=True, clip_coef=0.7),
                shapes=shapes, steps=1)
    run_against("sgd", torch.bfloat16, dict(lr=0.1, momentum=0.9, master=True), shapes=shapes, steps=1)


def test_bf16_param_rounds_to_nearest_even():
    """The interpreter's fp32->bf16 cast truncates; the kernels must round to nearest even, as torch does."""
    # 1 + k * 2^-23: the low 16 bits decide the rounding (below, at and above half an ulp, ties to even).
    values = 1.0 + torch.tensor([0x7FFF, 0x8000, 0x8001, 0x18000, 0xFFFF, 0x10000], dtype=torch.float64) * 2.0**-23
    values = values.float().to(DEVICE)
    params = [torch.zeros(6, dtype=torch.bfloat16, device=DEVICE)]
    master = [values.clone()]
    # p = master - lr * 0: the new fp32 value is the master's exactly; the bf16 param is its rounding.
    TRITON.sgd_update(params, [torch.zeros(6, dtype=torch.bfloat16, device=DEVICE)], [], master, [], 1.0, 0.0,
                      0.0, 0.0, False, False)
    assert_bitwise_equal(params[0], values.to(torch.bfloat16), name="bf16 param from its fp32 master")
    assert not torch.equal(params[0], _truncate_bf16(values)), "the values must tell rounding from truncation"


def _truncate_bf16(x):
    return ((x.cpu().view(torch.int32) >> 16) << 16).view(torch.float32).to(torch.bfloat16).to(x.device)


# ---------------------------------------------------------------------------------------------------------------
# Through the optimizer classes: every config of the shared tables (configs.py, fusedopt's and torch's optim_db)
# against torch.optim, with test_parity's grads and tolerances, on fewer params and steps (the interpreter is
# slow).

OPTIMIZER_STEPS = 2  # the second step has history: momentum, moments, bias corrections at step 2
# test_parity's params, fewer: two groups, a 3-d and a 4097-element param, a transposed one, sizes 0 and 1.
OPTIMIZER_PARAMS = (
    (("w3d", (7, 11, 2), "contiguous"), ("big", (4097,), "contiguous"), ("weight_t", (5, 3), "transposed")),
    (("empty", (0,), "contiguous"), ("one", (1,), "contiguous")),
)


# The configs that take every distinct path (configs.REPRESENTATIVE) in fp32, bf16 and fp16; every other config in
# one of them (configs.covering), so that every algorithm and every extra of configs.extras_of (clipping modes,
# nonfinite modes, tensor lr and hyperparameters, maximize, capturable, torch's implementation flags) still runs in
# every dtype. The kernel's dtype is only its loads and stores around the same fp32 element rule (and bf16 and fp16
# differ only in the final cast), so a config's switches meet the dtype nowhere else; the interpreter is slow.
def _config_tags(case) -> set:
    alg, config = case
    return {("algorithm", alg.name), *(("extra", e) for e in extras_of(config))}


_REPRESENTATIVE_IDS = {config_id(alg, config) for alg, config in REPRESENTATIVE}
OPTIMIZER_CASES = [(alg, config, dtype) for alg, config in REPRESENTATIVE for dtype in DTYPES] + covering(
    [(alg, config) for alg, config in ALL_CONFIGS if config_id(alg, config) not in _REPRESENTATIVE_IDS],
    _config_tags, [(dtype,) for dtype in DTYPES])


def test_optimizer_table_meets_every_dtype():
    """OPTIMIZER_CASES has every config, and every algorithm and extra of the full table in every dtype."""
    full = [(alg, config, dtype) for alg, config in ALL_CONFIGS for dtype in DTYPES]
    assert not missing_pairs(full, OPTIMIZER_CASES, _config_tags, 1)
    assert {config_id(a, c) for a, c, _ in OPTIMIZER_CASES} == {config_id(a, c) for a, c in ALL_CONFIGS}


@pytest.mark.parametrize("alg,config,dtype", [
    pytest.param(alg, config, dtype, id=f"{config_id(alg, config)}-{_name(dtype)}")
    for alg, config, dtype in OPTIMIZER_CASES])
def test_optimizer_matches_torch(alg, config, dtype):
    if DEVICE.type != "cpu":
        pytest.skip("test_parity's params are CPU tensors; on a GPU, test_optimizer_on_gpu_matches_cpu_backend runs "
                    "every rule's kernels on CUDA params")
    require_rule("triton", alg.fused_cls)
    test_parity.assert_matches_torch(alg, config, "triton", dtype, steps=OPTIMIZER_STEPS, specs=OPTIMIZER_PARAMS)


# On a GPU (the op-level tests above take only SGD and Adam): every rule's compiled kernels through its class, for
# the configs that take every distinct path, fp32 and bf16 (each config compiles its own specializations, which is
# the GPU check's time; fp16 differs from bf16 only in the final cast, which the op-level tests take).
@pytest.mark.parametrize("alg,config,dtype", [
    pytest.param(alg, config, dtype, id=f"{config_id(alg, config)}-{_name(dtype)}")
    for dtype in (torch.float32, torch.bfloat16) for alg, config in REPRESENTATIVE])
def test_optimizer_on_gpu_matches_cpu_backend(alg, config, dtype):
    """The optimizer class with backend="triton" on CUDA params against the CPU backend on CPU copies (same grads),
    params and every state, within test_cuda's backend tolerances (the check pass sums in another order on the
    device, so a clipped step's coefficient differs in the last bits)."""
    if DEVICE.type == "cpu":
        pytest.skip("needs a GPU (compiled Triton kernels on CUDA tensors); under the interpreter "
                    "test_optimizer_matches_torch runs every config on CPU tensors")
    import test_cuda

    require_rule("triton", alg.fused_cls)
    require_backend("cpu")
    groups = test_parity.make_params(dtype)  # test_parity's params (test_cuda's comparison names them)
    grads = test_parity.make_grads(dtype, steps=test_cuda.STEPS)
    on_gpu = test_cuda.run_fused_on(alg, config, "triton", test_cuda._cuda_params(groups), grads, test_cuda.CUDA)
    on_cpu = test_cuda.run_fused_on(alg, config, "cpu", test_parity.clone_params(groups), grads, "cpu")
    test_cuda.assert_backends_close(test_cuda._cpu(on_gpu), on_cpu)


MIXED_PRECISION = {"master": dict(master_weights=True), "bf16-states": dict(state_dtype=torch.bfloat16),
                   "master-bf16-states": dict(master_weights=True, state_dtype=torch.bfloat16)}


@pytest.mark.parametrize("dtype,mode", [(torch.bfloat16, m) for m in MIXED_PRECISION] + [(torch.float16, "master")],
                         ids=lambda x: _name(x) if isinstance(x, torch.dtype) else x)
@pytest.mark.parametrize("alg,config", select("SGD-fusedopt:dampening", "Adam-fusedopt:everything",
                                              "AdamW-fusedopt:clip_active"), ids=lambda x: getattr(x, "id", None))
def test_optimizer_mixed_precision_equals_cpu(alg, config, dtype, mode):
    """master_weights / state_dtype through the optimizer classes: params and every state entry (the fp32
    masters, bf16 states, step counts) bit for bit equal to the CPU backend's."""
    if DEVICE.type != "cpu":
        pytest.skip("compares with the CPU backend on CPU tensors")
    require_backend("cpu")
    config = dataclasses.replace(config, extras={**config.extras, **MIXED_PRECISION[mode]})
    groups = test_parity.make_params(dtype, specs=OPTIMIZER_PARAMS)
    grads = test_parity.make_grads(dtype, OPTIMIZER_STEPS, specs=OPTIMIZER_PARAMS)
    runs = [test_parity.run_fused(alg, config, backend, test_parity.clone_params(groups), grads)
            for backend in ("triton", "cpu")]
    for i, (a, b) in enumerate(zip(runs[0].params, runs[1].params, strict=True)):
        assert_bitwise_equal(a, b, name=f"param {i}")
    for i, (sa, sb) in enumerate(zip(runs[0].states, runs[1].states, strict=True)):
        assert sorted(sa) == sorted(sb), f"state keys of param {i}"
        if mode.startswith("master") and sb:
            assert "master_param" in sb, f"param {i} has no master copy"
        for key in sb:
            assert_bitwise_equal(sa[key], sb[key], name=f"state[{i}][{key!r}]")


# ---------------------------------------------------------------------------------------------------------------
# found_inf: a skipped step writes nothing, step counts included.


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
def test_found_inf_changes_nothing(dtype):
    gen = torch.Generator().manual_seed(4)
    cfg = dict(lr=1e-3, weight_decay=0.1, amsgrad=True, master=True, grad_scale=100.0, clip_coef=0.5,
               found_inf=1.0, momentum=0.9, lr_tensor=0.1)
    adam, sgd = make_state("adam", dtype, cfg, gen), make_state("sgd", dtype, cfg, gen)
    adam["exp_avgs"] = [_randn(s, torch.float32, gen) for s in SHAPES]
    grads = [_randn(s, dtype, gen, scale=100.0) for s in SHAPES]
    grads[2][5] = float("inf")
    before = [t.clone() for t in [*grads, *(t for st in (adam, sgd) for v in st.values() for t in v)]]
    call(TRITON, "adam", adam, grads, cfg, [])
    call(TRITON, "sgd", sgd, grads, cfg, [True] * len(SHAPES))
    after = [*grads, *(t for st in (adam, sgd) for v in st.values() for t in v)]
    for i, (a, b) in enumerate(zip(after, before)):
        assert_bitwise_equal(a, b, name=f"tensor {i}")


# ---------------------------------------------------------------------------------------------------------------
# check: sum of squares and the non-finite flag.


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
def test_check_matches_reference(dtype):
    gen = torch.Generator().manual_seed(5)
    grads = [_randn(s, dtype, gen) for s in SHAPES]
    got, want = ft.check(grads), reference.check(grads)
    assert got.dtype == torch.float32 and got.shape == (2,) and got.device == DEVICE
    # Exact squares added in float64 on every backend, in other orders: the same fp32 sum (csrc/cpu/norm.cpp).
    assert_bitwise_equal(got.cpu(), want.cpu(), name=f"check {dtype} vs the reference")
    if "cpu" in ops.BACKENDS:
        assert_bitwise_equal(got.cpu(), ops.BACKENDS["cpu"].check([g.cpu() for g in grads]), name="vs the CPU op")
    assert got[1] == 0
    assert_bitwise_equal(ft.check(grads), got, name="check run twice")  # deterministic


@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan], ids=str)
def test_check_flags_nonfinite(dtype, bad):
    gen = torch.Generator().manual_seed(6)
    grads = [_randn(s, dtype, gen) for s in SHAPES]
    grads[2][4096] = bad  # the last element of a block
    got = ft.check(grads)
    assert got[1] == 1
    assert_close(got[:1], reference.check(grads)[:1], rtol=1e-6, equal_nan=True, name=f"check with {bad}")


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's numpy squares
@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
def test_check_huge_finite_is_not_nonfinite(dtype):
    # A finite grad whose square overflows fp32 (or, for fp16, the largest finite value) must not set the flag.
    huge = 65504.0 if dtype == torch.float16 else 1e30
    grads = [torch.ones(4097, dtype=dtype, device=DEVICE), torch.full((100,), huge, dtype=dtype, device=DEVICE)]
    got, want = ft.check(grads), reference.check(grads)
    assert got[1] == 0 and want[1] == 0
    assert_close(got, want, rtol=1e-6, name=f"check {dtype} huge")


def test_check_mixed_dtypes_and_empty():
    gen = torch.Generator().manual_seed(7)
    grads = [_randn(s, dt, gen) for s, dt in zip(SHAPES, [torch.bfloat16, torch.float32, torch.float16] * 2)]
    assert_bitwise_equal(ft.check(grads), reference.check(grads), name="check mixed")
    assert_bitwise_equal(ft.check([torch.zeros(0, device=DEVICE)]), torch.zeros(2, device=DEVICE), name="empty")


# ---------------------------------------------------------------------------------------------------------------
# Validation: a bad argument raises an error naming the problem and changes nothing.


def _adam_problem():
    gen = torch.Generator().manual_seed(8)
    shapes = [(10,), (20,), (30,)]
    state = make_state("adam", torch.float32, {}, gen, shapes)
    return state, [_randn(s, torch.float32, gen) for s in shapes]


def _adam_call(state, grads, over):
    args = dict(params=state["params"], grads=grads, exp_avgs=state["exp_avgs"], exp_avg_sqs=state["exp_avg_sqs"],
                max_exp_avg_sqs=[], master_params=[], steps=state["steps"], amsgrad=False, lr_tensor=None,
                grad_scale=None)
    args.update(over)
    TRITON.adam_update(args["params"], args["grads"], args["exp_avgs"], args["exp_avg_sqs"],
                       args["max_exp_avg_sqs"], args["master_params"], args["steps"], 1e-3, 0.9, 0.999, 1e-8, 0.0,
                       args["amsgrad"], False, False, args["lr_tensor"], args["grad_scale"], None, None)


BAD_ADAM_ARGS = {
    "grads length": (lambda s, g: dict(grads=g[:2]), r"grads has 2 entries, expected 3"),
    "state dtype": (lambda s, g: dict(exp_avgs=[s["exp_avgs"][0], s["exp_avgs"][1].double(), s["exp_avgs"][2]]),
                    r"exp_avgs\[1\] has dtype torch.float64, expected torch.float32 or torch.bfloat16"),
    "mixed state dtypes": (lambda s, g: dict(exp_avg_sqs=[s["exp_avg_sqs"][0].bfloat16(), *s["exp_avg_sqs"][1:]]),
                           r"exp_avg_sqs\[0\] has dtype torch.bfloat16, expected torch.float32"),
    "state numel": (lambda s, g: dict(exp_avg_sqs=[*s["exp_avg_sqs"][:2], torch.zeros(31, device=DEVICE)]),
                    r"exp_avg_sqs\[2\] has 31 elements"),
    "grad dtype": (lambda s, g: dict(grads=[g[0], g[1].half(), g[2]]), r"grads\[1\] has dtype torch.float16"),
    "non-contiguous": (lambda s, g: dict(grads=[g[0], g[1], torch.zeros(30, 2, device=DEVICE)[:, 0]]),
                       r"grads\[2\] is not contiguous"),
    "param dtype": (lambda s, g: dict(params=[s["params"][0], s["params"][1].double(), s["params"][2]]),
                    r"params\[1\] has dtype torch.float64"),
    "complex": (lambda s, g: dict(params=[s["params"][0].to(torch.complex64), *s["params"][1:]]),
                r"params\[0\] is complex"),
    "mixed param dtypes": (lambda s, g: dict(params=[s["params"][0], s["params"][1].bfloat16(), s["params"][2]],
                                             grads=[g[0], g[1].bfloat16(), g[2]]),
                           r"params\[1\] has dtype torch.bfloat16 but params\[0\] has torch.float32"),
    "amsgrad without max": (lambda s, g: dict(amsgrad=True),
                            r"states has 6 entries, expected 9 \(3 state lists \(exp_avgs, exp_avg_sqs, "
                            r"max_exp_avg_sqs\) of 3 params\)"),
    "step dtype": (lambda s, g: dict(steps=[*s["steps"][:2], torch.tensor(0.0, dtype=torch.float64, device=DEVICE)]),
                   r"steps\[2\] has dtype torch.float64, expected torch.float32"),
    "step numel": (lambda s, g: dict(steps=[*s["steps"][:2], torch.zeros(2, device=DEVICE)]),
                   r"steps\[2\] has 2 elements but must have 1"),
    "master dtype": (lambda s, g: dict(master_params=[p.clone().bfloat16() for p in s["params"]]),
                     r"master_params\[0\] has dtype torch.bfloat16, expected torch.float32"),
    "master length": (lambda s, g: dict(master_params=[s["params"][0].clone()]),
                      r"master_params has 1 entries, expected 3"),
    "master aliases param": (lambda s, g: dict(master_params=[s["params"][0].clone(), s["params"][1],
                                                              s["params"][2].clone()]),
                             r"tensors of param 1 .* must not share memory"),
    "aliasing": (lambda s, g: dict(exp_avg_sqs=[s["exp_avg_sqs"][0], s["exp_avgs"][1], s["exp_avg_sqs"][2]]),
                 r"tensors of param 1 .* must not share memory"),
    "lr_tensor dtype": (lambda s, g: dict(lr_tensor=torch.ones(1, dtype=torch.float64, device=DEVICE)),
                        r"lr_tensor must be a float32 tensor"),
    "grad_scale shape": (lambda s, g: dict(grad_scale=torch.ones(2, device=DEVICE)),
                         r"grad_scale must have one element, got 2"),
    "grad_scale device": (lambda s, g: dict(grad_scale=torch.ones((), device="meta")),
                          r"grad_scale is on meta"),
}


@pytest.mark.parametrize("case", list(BAD_ADAM_ARGS), ids=str)
def test_adam_validation_errors_change_nothing(case):
    state, grads = _adam_problem()
    make_override, message = BAD_ADAM_ARGS[case]
    over = make_override(state, grads)
    everything = [*state["params"], *state["exp_avgs"], *state["exp_avg_sqs"], *state["steps"], *grads,
                  *[t for v in over.values() if isinstance(v, list) for t in v]]
    assert_raises_unchanged(lambda: _adam_call(state, grads, over), everything, match=message)


def test_sgd_validation_errors():
    gen = torch.Generator().manual_seed(9)
    state = make_state("sgd", torch.float32, dict(momentum=0.9), gen, [(10,), (20,)])
    grads = [_randn(s, torch.float32, gen) for s in [(10,), (20,)]]
    p, bufs = state["params"], state["momentum_buffers"]
    before = [t.clone() for t in [*p, *bufs]]
    with pytest.raises(RuntimeError, match=r"is_first has 1 entries, expected 2"):
        TRITON.sgd_update(p, grads, bufs, [], [True], 0.1, 0.0, 0.9, 0.0, False, False)
    with pytest.raises(RuntimeError, match=r"momentum_buffers\[1\] has dtype torch.float16"):
        TRITON.sgd_update(p, grads, [bufs[0], torch.zeros(20, dtype=torch.float16, device=DEVICE)], [],
                          [True, True], 0.1, 0.0, 0.9, 0.0, False, False)
    with pytest.raises(RuntimeError, match=r"clip_coef must have one element"):
        TRITON.sgd_update(p, grads, bufs, [], [True, True], 0.1, 0.0, 0.9, 0.0, False, False, None, None,
                          torch.ones(2, device=DEVICE))
    for a, b in zip([*p, *bufs], before):
        assert_bitwise_equal(a, b, name="sgd state")


def _generic_problem():
    """Adam's flat arguments for three params (op contract v3)."""
    state, grads = _adam_problem()
    return dict(params=state["params"], grads=grads, states=[*state["exp_avgs"], *state["exp_avg_sqs"]],
                master_params=[], scalars=state["steps"], is_first=[], hyper=[1e-3, 0.9, 0.999, 1e-8, 0.0],
                flags=0)


BAD_GENERIC_ARGS = {
    "unknown rule": (dict(rule="nope"), r"unknown update rule 'nope'; known: .*adam.*sgd"),
    "hyper count": (dict(hyper=[1e-3, 0.9, 0.999, 1e-8]),
                    r"rule 'adam' takes 5 hyperparameters \(lr, beta1, beta2, eps, weight_decay\), got 4"),
    "flag bits": (dict(flags=4), r"flags is 4; rule 'adam' has 2 flag bits \(amsgrad, decoupled\)"),
    "states count": (dict(flags=1), r"states has 6 entries, expected 9 \(3 state lists \(exp_avgs, exp_avg_sqs, "
                                    r"max_exp_avg_sqs\) of 3 params\)"),
    "scalars count": (lambda a: dict(scalars=a["scalars"][:2]),
                      r"scalars has 2 entries, expected 3 \(1 scalar lists \(step\) of 3 params\)"),
    "is_first count": (dict(is_first=[True]), r"is_first has 1 entries, expected 3"),
    "state list named by its key": (lambda a: dict(states=[*a["states"][:4], a["states"][4].double(),
                                                           a["states"][5]]),
                                    r"exp_avg_sqs\[1\] has dtype torch.float64"),
}


@pytest.mark.parametrize("case", list(BAD_GENERIC_ARGS), ids=str)
def test_generic_update_validation_errors_change_nothing(case):
    """The generic op's own arguments (the flat lists, the rule, hyper and flags), in the compiled ops' words."""
    args = dict(rule="adam", **_generic_problem())
    over, message = BAD_GENERIC_ARGS[case]
    args.update(over(args) if callable(over) else over)
    everything = [*args["params"], *args["grads"], *args["states"], *args["scalars"]]
    assert_raises_unchanged(lambda: TRITON.update(
        args["rule"], args["params"], args["grads"], args["states"], args["master_params"], args["scalars"],
        args["is_first"], args["hyper"], args["flags"], False, None, None, None, None), everything, match=message)


def test_rule_without_triton_kernel_is_refused(monkeypatch):
    monkeypatch.setitem(fusedopt_rules.RULES, "other", dataclasses.replace(fusedopt_rules.SGD, name="other"))
    a = _generic_problem()
    with pytest.raises(RuntimeError, match=r"Triton backend has no kernel for the update rule 'other' \(it has "
                                           r"[a-z, ]*adam[a-z, ]*sgd"):
        TRITON.update("other", a["params"], a["grads"], [], [], [], [], [0.1, 0.0, 0.0, 0.0], 0, False, None, None,
                      None, None)


# A rule added from outside, as a new algorithm would be (fusedopt/triton/update.py's docstring): nothing in the
# launcher, the kernels, the validation or the custom op changes. It takes every generic path SGD and Adam leave
# out: an optional state before a state always in use (USED = 0b10), two scalar states, per-tensor coefficients
# that depend on is_first, a flag.
TOY = fusedopt_rules.Rule(
    "toy", hyper=("lr", "decay"), flags=("negate",), states=("trace", "acc"), scalars=("step", "total"),
    optional={"trace": lambda h, f: h["decay"] != 0}, takes_is_first=True)
ToyHyper = collections.namedtuple("ToyHyper", "decay")
_TOY_NEGATE = tl.constexpr(1)
_TOY_TRACE = tl.constexpr(1)


@triton.jit
def _toy_hyper(h):
    return ToyHyper(h[1].to(tl.float32))


@triton.jit
def _toy_per_tensor(h, scalars, first):
    step = scalars[0] + 1.0
    total = scalars[1] + h[0].to(tl.float32)
    scale = (total.to(tl.float64) / step.to(tl.float64)).to(tl.float32)
    return (step, total), (scale, tl.where(first, 2.0, 1.0))


@triton.jit
def _toy_element(p, g, s, h, t, first, FLAGS: tl.constexpr, USED: tl.constexpr):
    trace = s[0]
    acc = s[1]
    if _TOY_NEGATE & FLAGS:
        g = -g
    acc = tl.where(first, g, acc + g)
    if _TOY_TRACE & USED:
        trace = trace * h.decay + acc
    else:
        trace = acc
    p = p - (t[0] * t[1]) * trace
    return p, (trace, acc)


def _toy_reference(params, grads, trace, acc, steps, totals, first, lr, decay, negate, skipped):
    """The toy rule in torch (fp32, the kernel's order of operations), one param at a time."""
    if skipped:
        return
    for i, (p, g) in enumerate(zip(params, grads)):
        steps[i] += 1
        totals[i] += torch.tensor(lr, dtype=torch.float32)
        scale = torch.tensor(float(totals[i]) / float(steps[i]), dtype=torch.float32)
        bonus = 2.0 if first[i] else 1.0
        g = -g if negate else g
        acc[i].copy_(g if first[i] else acc[i] + g)
        old = torch.zeros_like(p) if first[i] or not trace else trace[i]  # is_first: the states read as 0
        t = old * torch.tensor(decay, dtype=torch.float32) + acc[i] if trace else acc[i]
        if trace:
            trace[i].copy_(t)
        p.sub_((scale * bonus) * t)


@pytest.mark.parametrize("decay,negate,lr_tensor,found_inf", [(0.5, False, None, None), (0.0, True, 0.25, 0.0),
                                                              (0.9, True, None, 1.0)],
                         ids=["trace", "no-trace-negate-lr_tensor", "skipped"])
def test_a_rule_added_from_outside_runs_on_the_generic_kernel(monkeypatch, launches, decay, negate, lr_tensor,
                                                              found_inf):
    monkeypatch.setitem(fusedopt_rules.RULES, "toy", TOY)
    monkeypatch.setitem(ft.RULES, "toy", ftrules.TritonRule(TOY, hyper=_toy_hyper, element=_toy_element,
                                                            per_tensor=_toy_per_tensor,
                                                            coefficients=("scale", "bonus")))
    assert "toy" in ops.rules_of(TRITON)
    gen = torch.Generator().manual_seed(12)
    shapes = [(0,), (1,), (4097,), (7, 11, 2)]
    n = len(shapes)
    ours = dict(params=[_randn(s, torch.float32, gen) for s in shapes],
                acc=[_randn(s, torch.float32, gen) for s in shapes],
                trace=[_randn(s, torch.float32, gen) for s in shapes] if decay != 0 else [],
                steps=[torch.full((), 3.0, device=DEVICE) for _ in shapes],
                totals=[torch.full((), 0.5, device=DEVICE) for _ in shapes])
    theirs = clone_state(ours)
    lr_t = None if lr_tensor is None else torch.tensor([lr_tensor], device=DEVICE)
    found = None if found_inf is None else torch.tensor(found_inf, device=DEVICE)
    lr = 0.1 if lr_tensor is None else lr_tensor
    for step in range(2):
        grads = [_randn(s, torch.float32, gen) for s in shapes]
        first = [step == 0 and i % 2 == 1 for i in range(n)]
        launches.clear()
        op = TRITON.update if step == 0 else torch.ops.fusedopt.triton_update  # eager: the launcher, then the op
        op("toy", ours["params"], grads, [*ours["trace"], *ours["acc"]], [], [*ours["steps"], *ours["totals"]],
           first, [99.0 if lr_t is not None else lr, decay], TOY.flag_bits(["negate"] if negate else []), False,
           lr_t, None, None, found)
        if step == 0:
            assert [k.fn.__name__ for k, *_ in launches] == ["_per_tensor_kernel", "_update_kernel"]
        _toy_reference(theirs["params"], grads, theirs["trace"], theirs["acc"], theirs["steps"], theirs["totals"],
                       first, lr, decay, negate, skipped=bool(found_inf))
        for key in ours:
            for i, (a, e) in enumerate(zip(ours[key], theirs[key], strict=True)):
                assert_bitwise_equal(a, e, name=f"step {step}: {key}[{i}]")
    if found_inf:
        assert all(float(t) == 3.0 for t in ours["steps"]), "a skipped step advanced a scalar state"


def test_check_rejects_unsupported_dtype():
    with pytest.raises(RuntimeError, match=r"grads\[1\] has dtype torch.float64"):
        ft.check([torch.ones(3, device=DEVICE), torch.ones(3, dtype=torch.float64, device=DEVICE)])


def test_resolve_routes_triton_by_device():
    assert ops.resolve("triton", DEVICE, torch.float32) is ops.BACKENDS["triton"]
    assert ops.resolve("triton", DEVICE, torch.float64) is reference  # fp64 runs the reference math
    with pytest.raises(RuntimeError, match="cannot run tensors on meta"):
        ops.resolve("triton", torch.device("meta"), torch.float32)
    other = torch.device("cuda") if DEVICE.type == "cpu" else torch.device("cpu")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ops.resolve("triton", other, torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# Launches: O(1) per call whatever the number of tensors, and no recompilation when hyperparameters change.


def _record_launches(monkeypatch, run: bool) -> list:
    seen = []
    launch = mt.launch

    def record(kernel, grid, *args, **meta):
        seen.append((kernel, grid, args, meta))
        if run:
            launch(kernel, grid, *args, **meta)

    monkeypatch.setattr(mt, "launch", record)
    return seen


@pytest.fixture
def launches(monkeypatch):
    """Every (kernel, grid, args, meta) launched while the test runs."""
    return _record_launches(monkeypatch, run=True)


@pytest.fixture
def launches_not_run(monkeypatch):
    """Every launch while the test runs, recorded but not run (counting needs no results)."""
    return _record_launches(monkeypatch, run=False)


def _tiny_problem(n, algo, cfg):
    gen = torch.Generator().manual_seed(10)
    shapes = [(3,)] * n
    return make_state(algo, torch.float32, cfg, gen, shapes), [_randn(s, torch.float32, gen) for s in shapes]


@pytest.mark.parametrize("algo,cfg,expected", [
    ("adam", dict(lr=1e-3, amsgrad=True, clip_coef=0.5, found_inf=0.0), 2),  # step counts, then the update
    ("sgd", dict(lr=0.1, momentum=0.9, grad_scale=2.0), 1),
])
def test_launch_count_does_not_grow_with_tensors(algo, cfg, expected, launches_not_run):
    launches = launches_not_run
    for n in (1, 300):
        launches.clear()
        state, grads = _tiny_problem(n, algo, cfg)
        call(TRITON, algo, state, grads, cfg, [True] * n)
        assert len(launches) == expected, f"{n} tensors: {len(launches)} launches"
        launches.clear()
        ft.check(grads)
        assert len(launches) == 2, f"check of {n} tensors: {len(launches)} launches"  # partials, then the sum


def test_tables_are_cached_for_the_same_tensors(launches):
    mt.clear_cache()
    state, grads = _tiny_problem(5, "adam", dict(lr=1e-3))
    call(TRITON, "adam", state, grads, dict(lr=1e-3), [])
    tables = {id(args[0]) for _, _, args, _ in launches}
    call(TRITON, "adam", state, grads, dict(lr=2e-3), [])
    assert {id(args[0]) for _, _, args, _ in launches} == tables, "a steady-state step rebuilt its tables"
    other_grads = [g.clone() for g in grads]
    call(TRITON, "adam", state, other_grads, dict(lr=2e-3), [])
    assert len({id(args[0]) for _, _, args, _ in launches}) > len(tables), "new grads must get a new table"


def _compile_keys(launched):
    """The key under which Triton caches a compiled kernel, for each launch: computed with Triton's own binder
    for a CUDA target, so it also works where the launches ran interpreted (nothing is compiled then)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, compute_cache_key, create_function_from_signature

    backend = make_backend(GPUTarget("cuda", 90, 32))
    keys = []
    for kernel, _, args, meta in launched:
        # A rule's functions (constexpr arguments), by name where they ran interpreted (not JITFunctions then).
        meta = {k: f"{v.fn.__module__}.{v.fn.__qualname__}" if mt.interpreted(v) else v for k, v in meta.items()}
        jit = kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn, **kernel.kwargs)
        binder = create_function_from_signature(jit.signature, jit.params, backend)
        _, specialization, options = binder(*args, **meta, num_warps=mt.NUM_WARPS, enable_fp_fusion=False)
        keys.append((jit.fn.__name__, compute_cache_key({}, specialization, options), tuple(specialization)))
    return keys


SCHEDULES = {
    "adam": [dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0),
             dict(lr=3e-4, beta1=0.85, beta2=0.99, eps=1e-6, weight_decay=0.1),
             dict(lr=1.0, beta1=0.0, beta2=0.5, eps=1e-30, weight_decay=1.0)],
    "sgd": [dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0),
            dict(lr=0.013, momentum=0.5, dampening=0.3, weight_decay=0.1),
            dict(lr=1.0, momentum=0.99, dampening=1.0, weight_decay=1e-5)],
}


@pytest.mark.parametrize("algo", ["adam", "sgd"])
def test_hyperparameter_changes_never_recompile(algo, launches):
    """A scheduler changes lr, betas, eps, weight decay, momentum, dampening between steps: every launch of a
    kernel has the same compile key (hyperparameters are runtime float64 arguments, never constexpr). A
    structural switch (amsgrad, nesterov) must change the key: the test can tell."""
    state, grads = _tiny_problem(4, algo, dict(momentum=0.9))
    for cfg in SCHEDULES[algo]:
        call(TRITON, algo, state, grads, cfg, [False] * 4)
    for n in (1, 17, 32):  # the number of tensors is a runtime value too
        state_n, grads_n = _tiny_problem(n, algo, dict(momentum=0.9))
        call(TRITON, algo, state_n, grads_n, SCHEDULES[algo][0], [True] * n)
    keys = _compile_keys(launches)
    by_kernel = {}
    for name, key, specialization in keys:
        by_kernel.setdefault(name, set()).add(key)
        for kind, _ in specialization:
            assert kind not in ("fp32", "fp16"), f"{name}: a hyperparameter is passed as {kind}, not fp64"
    assert all(len(k) == 1 for k in by_kernel.values()), {n: len(k) for n, k in by_kernel.items()}
    launches.clear()
    structural = dict(amsgrad=True) if algo == "adam" else dict(nesterov=True, momentum=0.9)
    state, grads = _tiny_problem(4, algo, {**structural, "momentum": 0.9})
    call(TRITON, algo, state, grads, {**SCHEDULES[algo][0], **structural}, [False] * 4)
    update = [key for name, key, _ in _compile_keys(launches) if name == "_update_kernel"]
    assert update and update[0] not in set().union(*by_kernel.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts compiled kernels in Triton's cache: needs a GPU")
def test_hyperparameter_changes_never_recompile_on_gpu():
    state, grads = _tiny_problem(4, "adam", {})
    call(TRITON, "adam", state, grads, SCHEDULES["adam"][0], [])
    device = torch.cuda.current_device()
    kernels = (up._update_kernel, up._per_tensor_kernel)
    before = [len(k.device_caches[device][0]) for k in kernels]
    for cfg in SCHEDULES["adam"][1:]:
        call(TRITON, "adam", state, grads, cfg, [])
    assert [len(k.device_caches[device][0]) for k in kernels] == before


# ---------------------------------------------------------------------------------------------------------------
# Compiled for a GPU (no GPU needed): the kernels go through Triton's whole compiler and ptxas for sm_90, and the
# PTX evaluates math.h's roundings: no contraction (the only fp32 fma are math.h's explicit ones, where torch's CPU
# kernels fuse), correctly rounded fp32 division and square root, float64 bias corrections.


def test_kernels_compile_for_gpu_with_mathh_roundings():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = pathlib.Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(root / "tests" / "triton_ptx.py")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    for name, f in facts.items():
        assert f["div_approx"] == f["sqrt_approx"] == f["rcp_approx"] == 0, (name, f)
        assert f["spills"] == 0, (name, f)  # a spill costs memory traffic in these memory-bound kernels
    per_thread = facts["adam_bf16_master_amsgrad"]["elements_per_thread"]
    adam = facts["adam_bf16_master_amsgrad"]
    assert adam["fma_f32"] == 3 * per_thread, adam  # lerp's two (selected between), addcmul's; decay is a mul
    assert adam["div_rn_f32"] == 3 * per_thread and adam["sqrt_rn_f32"] == per_thread, adam  # unscale, 2 in denom
    assert facts["adamw_fp32"]["fma_f32"] == 3 * per_thread, facts["adamw_fp32"]
    assert facts["adam_fp32_master_amsgrad"]["fma_f32"] == 4 * per_thread  # and the coupled weight decay's
    sgd = facts["sgd_fp32_nesterov"]
    assert sgd["fma_f32"] == 4 * per_thread and sgd["div_rn_f32"] == per_thread, sgd  # wd, buf, nesterov, param
    assert facts["adam_steps"]["fp64_sqrt"] >= 1


# ---------------------------------------------------------------------------------------------------------------
# torch.compile traces a step through the custom ops.


@pytest.mark.parametrize("algo", ["adam", "sgd"])
def test_torch_compile_traces_the_ops(algo):
    """A step through the generic op (``fusedopt::triton_update``, via the v2 entries), compiled with
    fullgraph=True, equals the eager step bit for bit."""
    backend = ops.BACKENDS["triton"]
    gen = torch.Generator().manual_seed(11)
    cfg = dict(lr=1e-2, weight_decay=0.1, decoupled=True, momentum=0.9, nesterov=True)
    eager = make_state(algo, torch.float32, cfg, gen)
    compiled = clone_state(eager)
    grads = [_randn(s, torch.float32, gen) for s in SHAPES]

    def step(state, grads, lr, first):
        norm = backend.check(grads)
        if algo == "adam":
            backend.adam_update(state["params"], grads, state["exp_avgs"], state["exp_avg_sqs"], [], [],
                                state["steps"], 1e-2, 0.9, 0.999, 1e-8, 0.1, False, False, True, lr,
                                None, None, None)
        else:
            backend.sgd_update(state["params"], grads, state["momentum_buffers"], [], first, 1e-2, 0.1, 0.9, 0.0,
                               True, False, lr, None, None, None)
        return norm

    lr = torch.tensor(1e-2, device=DEVICE)
    torch._dynamo.reset()
    fn = torch.compile(step, backend="aot_eager", fullgraph=True)
    for k in range(2):
        first = [k == 0] * len(SHAPES)
        want = step(eager, [g.clone() for g in grads], lr, first)
        got = fn(compiled, [g.clone() for g in grads], lr, first)
        assert_bitwise_equal(got, want, name="check")
    for key in eager:
        for i, (a, b) in enumerate(zip(compiled[key], eager[key])):
            assert_bitwise_equal(a, b, name=f"compiled {key}[{i}]")
