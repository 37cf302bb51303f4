"""The compiled CPU ops (torch.ops.fusedopt.*) against fusedopt.reference, the pure-torch oracle.

Every config runs 10 steps on one call's worth of tensors of mixed sizes and compares params, every state, the
grads (rewritten when unscaled) and the step counts after each step.
- fp32 runs free for 10 steps: within 1e-5 relative of the reference (in practice ~1e-7). The reference runs
  under helpers.ieee_sqrt, whose fp32 sqrt is correctly rounded as math.h's (torch's own, MKL VML's, is 1 ulp
  off in places).
- bf16/fp16 params, bf16 states: both sides compute in fp32 and round once per step, so a value may land one
  low-precision ulp away when the fp32 values straddle a rounding boundary. Such a param would then drift apart
  step by step, so the reference is re-synced to the kernel's outputs after each compared step: every step is
  checked from identical inputs, low-precision params and states to 1 ulp, fp32 states and masters to 1e-5.
- master_params (contract v2): the params are exactly their fp32 masters rounded to nearest even, on both sides.
"""
from __future__ import annotations

import glob
import importlib.util
import pathlib
import types

import pytest
import torch

from helpers import assert_bitwise_equal, assert_raises_unchanged, ieee_sqrt

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_reference():
    try:
        from fusedopt import reference
    except ImportError:  # the package's __init__ is being written alongside; the oracle stands alone
        spec = importlib.util.spec_from_file_location("_fusedopt_reference", ROOT / "fusedopt" / "reference.py")
        reference = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(reference)
    return reference


def _load_ops():
    """torch.ops.fusedopt's ops (the dispatcher path), with the v2 named entries on the generic update."""
    try:
        import fusedopt._C  # noqa: F401  (registers torch.ops.fusedopt.*)
    except ImportError:
        libs = glob.glob(str(ROOT / "fusedopt" / "_C*.so"))
        assert libs, "fusedopt._C is not built: pip install --no-build-isolation -e ."
        torch.ops.load_library(libs[0])
    from fusedopt import rules
    lib = torch.ops.fusedopt
    return types.SimpleNamespace(check=lib.check, kernel_ready=lib.kernel_ready, update=lib.update,
                                 sgd_update=rules.sgd_entry(lib.update), adam_update=rules.adam_entry(lib.update))


def _eager():
    """The direct (eager) binding of the same C++ functions, with the same v2 named entries."""
    from fusedopt import _C, rules
    return types.SimpleNamespace(update=_C.update, sgd_update=rules.sgd_entry(_C.update),
                                 adam_update=rules.adam_entry(_C.update))


reference = _load_reference()
ops = _load_ops()

SHAPES = [(0,), (1,), (4097,), (7, 11, 2), (2**17 + 3,)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
STEPS = 10
RTOL, ATOL = 1e-5, 1e-7


# ---------------------------------------------------------------------------------------------------------------
# Comparison helpers that say where and how much things differ.


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol=RTOL, atol=ATOL):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    a, e = actual.double().flatten(), expected.double().flatten()
    same = (a == e) | (a.isnan() & e.isnan())  # infinities and NaNs included
    bad = ~((a - e).abs() <= atol + rtol * e.abs()) & ~same
    if bad.any():
        idx = bad.nonzero().flatten()
        i = int(idx[0])
        rel = ((a - e).abs() / e.abs().clamp_min(1e-30))[bad]
        raise AssertionError(
            f"{what}: {len(idx)} of {a.numel()} elements differ (rtol={rtol}, atol={atol}); "
            f"max abs diff {float((a - e).abs()[bad].max()):.3g}, max rel diff {float(rel.max()):.3g}; "
            f"first at flat index {i}: {float(a[i])!r} vs expected {float(e[i])!r}"
        )


def ordered_bits(t: torch.Tensor) -> torch.Tensor:
    """Sign-magnitude bits mapped to integers whose difference counts representable values (ulps)."""
    bits = t.view(torch.int16).to(torch.int32) & 0xFFFF
    return torch.where(bits >= 0x8000, -(bits & 0x7FFF), bits)


def assert_within_ulp(actual: torch.Tensor, expected: torch.Tensor, what: str, ulps: int = 1):
    assert actual.dtype == expected.dtype and actual.dtype in (torch.bfloat16, torch.float16), what
    dist = (ordered_bits(actual) - ordered_bits(expected)).abs().flatten()
    bad = dist > ulps
    if bad.any():
        i = int(bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {dist.numel()} elements more than {ulps} ulp apart (max {int(dist.max())}); "
            f"first at flat index {i}: {float(actual.flatten()[i])!r} vs expected {float(expected.flatten()[i])!r}"
        )


def assert_param_close(actual, expected, what):
    if actual.dtype == torch.float32:
        assert_close(actual, expected, what)
    else:
        assert_within_ulp(actual, expected, what)


# ---------------------------------------------------------------------------------------------------------------
# Problems: one list entry per tensor, the kernel side and the reference side start from identical copies.


def randn(shape, dtype, gen, scale=1.0):
    return (torch.randn(shape, generator=gen) * scale).to(dtype)


def masters_of(params, master):
    """fp32 master copies of ``params`` (copies even for fp32 params), or none."""
    return [p.to(torch.float32, copy=True) for p in params] if master else []


def make_sgd_state(dtype, momentum, gen, shapes=SHAPES, master=False, state_dtype=torch.float32):
    params = [randn(s, dtype, gen) for s in shapes]
    bufs = [torch.zeros(s, dtype=state_dtype) for s in shapes] if momentum != 0 else []
    return {"params": params, "momentum_buffers": bufs, "master_params": masters_of(params, master)}


def make_adam_state(dtype, amsgrad, gen, shapes=SHAPES, master=False, state_dtype=torch.float32):
    params = [randn(s, dtype, gen) for s in shapes]
    return {
        "params": params,
        "exp_avgs": [torch.zeros(s, dtype=state_dtype) for s in shapes],
        "exp_avg_sqs": [torch.zeros(s, dtype=state_dtype) for s in shapes],
        "max_exp_avg_sqs": [torch.zeros(s, dtype=state_dtype) for s in shapes] if amsgrad else [],
        "master_params": masters_of(params, master),
        "steps": [torch.tensor(0.0) for _ in shapes],
    }


def clone_state(state):
    return {k: [t.clone() for t in v] for k, v in state.items()}


def copy_state(dst, src):
    for k in src:
        for d, s in zip(dst[k], src[k]):
            d.copy_(s)


def compare_state(actual, expected, where):
    for key in actual:
        for i, (a, e) in enumerate(zip(actual[key], expected[key])):
            assert_param_close(a, e, f"{where}: {key}[{i}]")
    for i, (p, m) in enumerate(zip(actual["params"], actual["master_params"])):
        assert_bitwise_equal(p, m.to(p.dtype), name=f"{where}: params[{i}] vs its rounded master")


def optional_tensors(cfg):
    grad_scale = torch.tensor(cfg["grad_scale"]) if "grad_scale" in cfg else None
    clip_coef = torch.tensor(cfg["clip_coef"]) if "clip_coef" in cfg else None
    found_inf = torch.tensor(cfg["found_inf"]) if "found_inf" in cfg else None
    return grad_scale, clip_coef, found_inf


def lr_args(cfg):
    """(lr, lr_tensor): with ``lr_tensor`` in cfg the rate comes from a tensor and the float is a decoy that
    must be ignored."""
    if cfg.get("lr_tensor"):
        return 123.0, torch.tensor([cfg["lr"]], dtype=torch.float32)
    return cfg["lr"], None


SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, weight_decay=0.1, maximize=True),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True),
    dict(lr=0.05, momentum=0.9, nesterov=True, grad_scale=1024.0, found_inf=0.0),
    dict(lr=0.05, momentum=0.8, dampening=0.1, clip_coef=0.37, maximize=True),
    dict(lr=0.05, momentum=0.9, weight_decay=0.05, grad_scale=512.0, clip_coef=0.5),
    dict(lr=0.05, momentum=0.9, weight_decay=0.01, lr_tensor=True),
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
    dict(lr=1e-2, weight_decay=0.1, decoupled=True, lr_tensor=True),
]


def sgd_args(state, grads, is_first, cfg):
    momentum = cfg.get("momentum", 0.0)
    lr, lr_tensor = lr_args(cfg)
    return (state["params"], grads, state["momentum_buffers"], state["master_params"],
            is_first if momentum != 0 else [], lr, cfg.get("weight_decay", 0.0), momentum,
            cfg.get("dampening", 0.0), cfg.get("nesterov", False), cfg.get("maximize", False), lr_tensor,
            *optional_tensors(cfg))


def adam_args(state, grads, cfg):
    lr, lr_tensor = lr_args(cfg)
    return (state["params"], grads, state["exp_avgs"], state["exp_avg_sqs"], state["max_exp_avg_sqs"],
            state["master_params"], state["steps"], lr, cfg.get("beta1", 0.9), cfg.get("beta2", 0.999),
            cfg.get("eps", 1e-8), cfg.get("weight_decay", 0.0), cfg.get("amsgrad", False),
            cfg.get("maximize", False), cfg.get("decoupled", False), lr_tensor, *optional_tensors(cfg))


def run_steps(dtype, cfg, make_state, call_op, call_ref, shapes=SHAPES, steps=STEPS):
    gen = torch.Generator().manual_seed(0)
    ours = make_state(gen)
    theirs = clone_state(ours)
    grad_scale = cfg.get("grad_scale", 1.0)
    for step in range(steps):
        grads = [randn(s, dtype, gen, scale=grad_scale) for s in shapes]
        our_grads = [g.clone() for g in grads]
        their_grads = [g.clone() for g in grads]
        call_op(ours, our_grads, step)
        with ieee_sqrt():  # the reference's fp32 sqrt correctly rounded, as the kernels' (module doc)
            call_ref(theirs, their_grads, step)
        where = f"{dtype} {cfg} step {step}"
        compare_state(ours, theirs, where)
        for i, (a, e) in enumerate(zip(our_grads, their_grads)):
            # Unscaled grads are g / grad_scale in fp32, rounded once to the grad dtype on both sides.
            if dtype == torch.float32:
                assert_close(a, e, f"{where}: grads[{i}]")
            else:
                assert_bitwise_equal(a, e, name=f"{where}: grads[{i}]")
        if any(t.dtype != torch.float32 for ts in ours.values() for t in ts):
            copy_state(theirs, ours)


def is_first_for(step, n):
    # Fresh buffers on the first step; later a mix of fresh and continuing ones within one call.
    if step == 0:
        return [True] * n
    return [step == 4 and i % 2 == 0 for i in range(n)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=str)
def test_sgd_matches_reference(dtype, cfg):
    momentum = cfg.get("momentum", 0.0)
    n = len(SHAPES)
    run_steps(
        dtype, cfg,
        lambda gen: make_sgd_state(dtype, momentum, gen),
        lambda st, g, step: ops.sgd_update(*sgd_args(st, g, is_first_for(step, n), cfg)),
        lambda st, g, step: reference.sgd_update(*sgd_args(st, g, is_first_for(step, n), cfg)),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", ADAM_CONFIGS, ids=str)
def test_adam_matches_reference(dtype, cfg):
    run_steps(
        dtype, cfg,
        lambda gen: make_adam_state(dtype, cfg.get("amsgrad", False), gen),
        lambda st, g, step: ops.adam_update(*adam_args(st, g, cfg)),
        lambda st, g, step: reference.adam_update(*adam_args(st, g, cfg)),
    )


# Contract v2: fp32 master copies and bf16 states, alone and together, on every param dtype. A subset of the
# configs above covers every structural switch of the kernels (momentum, nesterov, dampening, unscaling, weight
# decay, decoupled, amsgrad, lr_tensor).
MIXED = [(True, torch.float32), (False, torch.bfloat16), (True, torch.bfloat16)]
MIXED_IDS = ["master", "bf16-states", "master-bf16-states"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("master, state_dtype", MIXED, ids=MIXED_IDS)
@pytest.mark.parametrize("cfg", [SGD_CONFIGS[i] for i in (1, 3, 5, 8)], ids=str)
def test_sgd_mixed_precision_matches_reference(dtype, master, state_dtype, cfg):
    momentum = cfg.get("momentum", 0.0)
    n = len(SHAPES)
    run_steps(
        dtype, cfg,
        lambda gen: make_sgd_state(dtype, momentum, gen, master=master, state_dtype=state_dtype),
        lambda st, g, step: ops.sgd_update(*sgd_args(st, g, is_first_for(step, n), cfg)),
        lambda st, g, step: reference.sgd_update(*sgd_args(st, g, is_first_for(step, n), cfg)),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("master, state_dtype", MIXED, ids=MIXED_IDS)
@pytest.mark.parametrize("cfg", [ADAM_CONFIGS[i] for i in (2, 8, 9)], ids=str)
def test_adam_mixed_precision_matches_reference(dtype, master, state_dtype, cfg):
    run_steps(
        dtype, cfg,
        lambda gen: make_adam_state(dtype, cfg.get("amsgrad", False), gen, master=master, state_dtype=state_dtype),
        lambda st, g, step: ops.adam_update(*adam_args(st, g, cfg)),
        lambda st, g, step: reference.adam_update(*adam_args(st, g, cfg)),
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_master_params_hold_what_the_param_cannot(dtype):
    """An update far below the param's ulp: without a master the param never moves; with one the master
    accumulates it and the param follows once it crosses a rounding boundary, as the reference says."""
    cfg = dict(lr=1e-4)
    shapes = [(4097,)]
    for master in (False, True):
        state = make_sgd_state(dtype, 0.0, torch.Generator().manual_seed(0), shapes, master=master)
        state["params"][0].fill_(1.0)
        for m in state["master_params"]:
            m.fill_(1.0)
        ref = clone_state(state)
        for _ in range(100):
            ops.sgd_update(*sgd_args(state, [torch.ones(4097, dtype=dtype)], [], cfg))
            reference.sgd_update(*sgd_args(ref, [torch.ones(4097, dtype=dtype)], [], cfg))
        compare_state(state, ref, f"master={master}")
        if master:
            assert_close(state["master_params"][0], torch.full((4097,), 1.0 - 100 * 1e-4), "master", rtol=1e-5)
            assert float(state["params"][0][0]) < 1.0
        else:
            assert float(state["params"][0][0]) == 1.0


def test_adam_many_small_tensors_one_call():
    # Hundreds of tensors share chunks; a few large ones are split across chunks.
    gen = torch.Generator().manual_seed(1)
    shapes = [(int(n),) for n in torch.randint(1, 3000, (300,), generator=gen)] + [(70_000,), (200_001,)]
    cfg = dict(lr=1e-3, weight_decay=0.01, decoupled=True, clip_coef=0.7)
    run_steps(
        torch.float32, cfg,
        lambda g: make_adam_state(torch.float32, False, g, shapes),
        lambda st, g, step: ops.adam_update(*adam_args(st, g, cfg)),
        lambda st, g, step: reference.adam_update(*adam_args(st, g, cfg)),
        shapes=shapes, steps=3,
    )


def test_results_do_not_depend_on_thread_count():
    gen = torch.Generator().manual_seed(2)
    shapes = [(2**17 + 3,), (5000,), (3 * 2**16,)]
    cfg = dict(lr=1e-3, amsgrad=True)
    grads = [randn(s, torch.float32, gen) for s in shapes]
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, threads):
            torch.set_num_threads(n)
            state = make_adam_state(torch.float32, True, torch.Generator().manual_seed(3), shapes)
            ops.adam_update(*adam_args(state, [g.clone() for g in grads], cfg))
            results.append((state, ops.check(grads)))
    finally:
        torch.set_num_threads(threads)
    (s1, c1), (s2, c2) = results
    for key in s1:
        for a, b in zip(s1[key], s2[key]):
            assert_bitwise_equal(a, b, name=key)
    assert_bitwise_equal(c1, c2, name="check")


# ---------------------------------------------------------------------------------------------------------------
# found_inf: a skipped step writes nothing at all.


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_found_inf_changes_nothing(dtype, state_dtype):
    gen = torch.Generator().manual_seed(4)
    adam = make_adam_state(dtype, True, gen, master=True, state_dtype=state_dtype)
    adam["exp_avgs"] = [randn(s, state_dtype, gen) for s in SHAPES]
    sgd = make_sgd_state(dtype, 0.9, gen, master=True, state_dtype=state_dtype)
    grads = [randn(s, dtype, gen, scale=100.0) for s in SHAPES]
    grads[2][5] = float("inf")
    before = (clone_state(adam), clone_state(sgd), [g.clone() for g in grads])
    cfg = dict(lr=1e-3, weight_decay=0.1, amsgrad=True, grad_scale=100.0, clip_coef=0.5, found_inf=1.0)
    ops.adam_update(*adam_args(adam, grads, cfg))
    cfg = dict(lr=0.1, momentum=0.9, weight_decay=0.1, grad_scale=100.0, clip_coef=0.5, found_inf=1.0,
               lr_tensor=True)
    ops.sgd_update(*sgd_args(sgd, grads, [True] * len(SHAPES), cfg))
    for now, then in zip((adam, sgd), before[:2]):
        for key in now:
            for i, (a, b) in enumerate(zip(now[key], then[key])):
                assert_bitwise_equal(a, b, name=f"{key}[{i}]")
    for i, (a, b) in enumerate(zip(grads, before[2])):
        assert_bitwise_equal(a, b, name=f"grads[{i}]")


# ---------------------------------------------------------------------------------------------------------------
# check: sum of squares and the non-finite flag.


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_check_matches_reference(dtype):
    gen = torch.Generator().manual_seed(5)
    grads = [randn(s, dtype, gen) for s in SHAPES]
    got, want = ops.check(grads), reference.check(grads)
    assert got.dtype == torch.float32 and got.shape == (2,)
    assert_close(got, want, f"check {dtype}")
    assert got[1] == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")], ids=str)
def test_check_flags_nonfinite(dtype, bad):
    gen = torch.Generator().manual_seed(6)
    grads = [randn(s, dtype, gen) for s in SHAPES]
    grads[-1][2**17 + 1] = bad  # in the scalar tail of the last chunk
    got, want = ops.check(grads), reference.check(grads)
    assert got[1] == 1 and want[1] == 1
    assert_close(got[:1], want[:1], f"check {dtype} with {bad}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_check_huge_finite_is_not_nonfinite(dtype):
    # A finite grad whose square overflows fp32 (or, for fp16, the largest finite value) must not set the flag.
    huge = 65504.0 if dtype == torch.float16 else 1e30
    grads = [torch.ones(4097, dtype=dtype), torch.full((100,), huge, dtype=dtype)]
    got, want = ops.check(grads), reference.check(grads)
    assert got[1] == 0 and want[1] == 0
    assert_close(got, want, f"check {dtype} huge")


def test_check_mixed_dtypes_in_one_call():
    gen = torch.Generator().manual_seed(7)
    grads = [randn(s, dt, gen) for s, dt in zip(SHAPES, [torch.float32, torch.bfloat16, torch.float16] * 2)]
    assert_close(ops.check(grads), reference.check(grads), "check mixed")


# ---------------------------------------------------------------------------------------------------------------
# Validation: a bad argument raises an error naming the problem and changes nothing.


def _adam_problem():
    gen = torch.Generator().manual_seed(8)
    shapes = [(10,), (20,), (30,)]
    state = make_adam_state(torch.float32, False, gen, shapes)
    grads = [randn(s, torch.float32, gen) for s in shapes]
    return state, grads


def _adam_call(state, grad_list, over):
    args = dict(params=state["params"], grads=grad_list, exp_avgs=state["exp_avgs"], exp_avg_sqs=state["exp_avg_sqs"],
                max_exp_avg_sqs=state["max_exp_avg_sqs"], master_params=state["master_params"], steps=state["steps"],
                amsgrad=False, lr_tensor=None)
    args.update(over)
    ops.adam_update(args["params"], args["grads"], args["exp_avgs"], args["exp_avg_sqs"], args["max_exp_avg_sqs"],
                    args["master_params"], args["steps"], 1e-3, 0.9, 0.999, 1e-8, 0.0, args["amsgrad"], False, False,
                    args["lr_tensor"], None, None, None)


def _masters(s, i=None, value=None):
    """Valid fp32 master copies of the problem's params, entry ``i`` replaced by ``value``."""
    masters = [p.clone() for p in s["params"]]
    if i is not None:
        masters[i] = value
    return masters


BAD_ADAM_ARGS = {
    "grads length": (lambda s, g: dict(grads=g[:2]), r"grads has 2 entries, expected 3"),
    "state dtype": (lambda s, g: dict(exp_avgs=[s["exp_avgs"][0], s["exp_avgs"][1].double(), s["exp_avgs"][2]]),
                    r"exp_avgs\[1\] has dtype Double"),
    "state numel": (lambda s, g: dict(exp_avg_sqs=[*s["exp_avg_sqs"][:2], torch.zeros(31)]),
                    r"exp_avg_sqs\[2\] has 31 elements"),
    "grad dtype": (lambda s, g: dict(grads=[g[0], g[1].half(), g[2]]), r"grads\[1\] has dtype Half"),
    "non-contiguous": (lambda s, g: dict(grads=[g[0], g[1], torch.zeros(30, 2)[:, 0]]),
                       r"grads\[2\] is not contiguous"),
    "param dtype": (lambda s, g: dict(params=[s["params"][0], s["params"][1].double(), s["params"][2]]),
                    r"params\[1\] has dtype Double"),
    "complex": (lambda s, g: dict(params=[s["params"][0].to(torch.complex64), *s["params"][1:]]),
                r"params\[0\] is complex"),
    "mixed param dtypes": (lambda s, g: dict(params=[s["params"][0], s["params"][1].bfloat16(), s["params"][2]],
                                             grads=[g[0], g[1].bfloat16(), g[2]]),
                           r"params\[1\] has dtype BFloat16 but params\[0\] has Float"),
    "amsgrad without max": (lambda s, g: dict(amsgrad=True),
                            r"states has 6 entries, expected 9 \(3 state lists \(exp_avgs, exp_avg_sqs, "
                            r"max_exp_avg_sqs\) of 3 params\)"),
    "step dtype": (lambda s, g: dict(steps=[*s["steps"][:2], torch.tensor(0.0, dtype=torch.float64)]),
                   r"steps\[2\] must be a one-element float32 CPU tensor"),
    "aliasing": (lambda s, g: dict(exp_avg_sqs=[s["exp_avg_sqs"][0], s["exp_avgs"][1], s["exp_avg_sqs"][2]]),
                 r"tensors of param 1 .* must not share memory"),
    # contract v2
    "master length": (lambda s, g: dict(master_params=_masters(s)[:1]), r"master_params has 1 entries, expected 3"),
    "master dtype": (lambda s, g: dict(master_params=_masters(s, 0, torch.zeros(10, dtype=torch.bfloat16))),
                     r"master_params\[0\] has dtype BFloat16, expected Float"),
    "master numel": (lambda s, g: dict(master_params=_masters(s, 2, torch.zeros(31))),
                     r"master_params\[2\] has 31 elements but params\[2\] has 30"),
    "master non-contiguous": (lambda s, g: dict(master_params=_masters(s, 1, torch.zeros(20, 2)[:, 0])),
                              r"master_params\[1\] is not contiguous"),
    "master is the param": (lambda s, g: dict(master_params=_masters(s, 1, s["params"][1])),
                            r"tensors of param 1 \(param, grad, master copy and states\) must not share memory"),
    "master is a state": (lambda s, g: dict(master_params=_masters(s, 2, s["exp_avgs"][2])),
                          r"tensors of param 2 .* must not share memory"),
    "fp16 states": (lambda s, g: dict(exp_avgs=[t.half() for t in s["exp_avgs"]],
                                      exp_avg_sqs=[t.half() for t in s["exp_avg_sqs"]]),
                    r"exp_avgs\[0\] has dtype Half; optimizer states are float32 or bfloat16"),
    "mixed state dtypes": (lambda s, g: dict(exp_avg_sqs=[*s["exp_avg_sqs"][:2], s["exp_avg_sqs"][2].bfloat16()]),
                           r"exp_avg_sqs\[2\] has dtype BFloat16 but the other states of this call have Float"),
    "mixed state dtypes, bf16 first": (
        lambda s, g: dict(exp_avgs=[t.bfloat16() for t in s["exp_avgs"]]),
        r"exp_avg_sqs\[0\] has dtype Float but the other states of this call have BFloat16"),
    "lr_tensor numel": (lambda s, g: dict(lr_tensor=torch.tensor([1e-3, 1e-3])),
                        r"lr_tensor must have one element, got 2"),
    "lr_tensor dtype": (lambda s, g: dict(lr_tensor=torch.tensor(1e-3, dtype=torch.float64)),
                        r"lr_tensor must be float32, got Double"),
}


@pytest.mark.parametrize("case", list(BAD_ADAM_ARGS), ids=str)
def test_adam_validation_errors_change_nothing(case):
    state, grads = _adam_problem()
    make_override, message = BAD_ADAM_ARGS[case]
    over = make_override(state, grads)
    everything = [*state["params"], *state["exp_avgs"], *state["exp_avg_sqs"], *state["steps"], *grads,
                  *[t for v in over.values() if isinstance(v, list) for t in v]]
    assert_raises_unchanged(lambda: _adam_call(state, grads, over), everything, match=message)


def test_lr_tensor_on_another_device_is_rejected():
    """Through torch.ops a tensor on another device would dispatch elsewhere; the eager binding calls the CPU
    function directly, which must name the problem."""
    eager = _eager()
    state, grads = _adam_problem()
    before = [t.clone() for t in [*state["params"], *state["steps"]]]
    lr = torch.tensor(1e-3, device="meta")
    with pytest.raises(RuntimeError, match=r"lr_tensor is on meta, expected cpu"):
        eager.adam_update(state["params"], grads, state["exp_avgs"], state["exp_avg_sqs"], [], [], state["steps"],
                          1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, False, lr, None, None, None)
    with pytest.raises(RuntimeError, match=r"lr_tensor is on meta, expected cpu"):
        eager.sgd_update(state["params"], grads, [], [], [], 0.1, 0.0, 0.0, 0.0, False, False, lr, None, None, None)
    for a, b in zip([*state["params"], *state["steps"]], before):
        assert_bitwise_equal(a, b, name="state")


def _generic_adam_args(state, grads):
    """The generic op's flat arguments (op contract v3) for the Adam problem, as a dict to override."""
    return dict(rule="adam", params=state["params"], grads=grads, states=[*state["exp_avgs"], *state["exp_avg_sqs"]],
                master_params=[], scalars=state["steps"], is_first=[], hyper=[1e-3, 0.9, 0.999, 1e-8, 0.0], flags=0)


def _with_step(state, i, value):
    steps = [t.clone() for t in state["steps"]]
    steps[i].fill_(value)
    return steps


# What the generic op checks on its flat arguments, for any rule: (override, message).
BAD_UPDATE_ARGS = {
    "hyper length": (lambda s: dict(hyper=[1e-3, 0.9, 0.999, 1e-8]),
                     r"rule 'adam' takes 5 hyperparameters \(lr, beta1, beta2, eps, weight_decay\), got 4"),
    "flags out of range": (lambda s: dict(flags=4), r"flags is 4; rule 'adam' has 2 flag bits \(amsgrad, decoupled\)"),
    "negative flags": (lambda s: dict(flags=-1), r"flags is -1; rule 'adam' has 2 flag bits"),
    "scalars length": (lambda s: dict(scalars=s["steps"][:2]),
                       r"scalars has 2 entries, expected 3 \(1 scalar lists \(step\) of 3 params\)"),
    "scalars for a rule without": (lambda s: dict(rule="sgd", states=[], scalars=s["steps"][:1], is_first=[],
                                                  hyper=[0.1, 0.0, 0.0, 0.0]),
                                   r"scalars has 1 entries, expected 0 \(0 scalar lists \(none\) of 3 params\)"),
    "states length": (lambda s: dict(states=s["exp_avgs"]),
                      r"states has 3 entries, expected 6 \(2 state lists \(exp_avgs, exp_avg_sqs\) of 3 params\)"),
    "sgd momentum without buffers": (lambda s: dict(rule="sgd", states=[], scalars=[], hyper=[0.1, 0.0, 0.9, 0.0]),
                                     r"states has 0 entries, expected 3 \(1 state lists \(momentum_buffers\)"),
    "is_first length": (lambda s: dict(is_first=[True]), r"is_first has 1 entries, expected 3 \(one per param\)"),
    "negative step": (lambda s: dict(scalars=_with_step(s, 1, -1.0)),
                      r"steps\[1\] is -1; step counts must be non-negative"),
    "NaN step": (lambda s: dict(scalars=_with_step(s, 2, float("nan"))),
                 r"steps\[2\] is nan; step counts must be non-negative"),
}


@pytest.mark.parametrize("entry", ["torch.ops", "eager"])
@pytest.mark.parametrize("case", list(BAD_UPDATE_ARGS), ids=str)
def test_update_validation_errors_change_nothing(case, entry):
    state, grads = _adam_problem()
    make_override, message = BAD_UPDATE_ARGS[case]
    args = _generic_adam_args(state, grads)
    args.update(make_override(state))
    update = ops.update if entry == "torch.ops" else _eager().update
    everything = [*state["params"], *state["exp_avgs"], *state["exp_avg_sqs"], *state["steps"], *grads,
                  *args["scalars"]]
    assert_raises_unchanged(lambda: update(*args.values(), False, None, None, None, None), everything,
                            match=message)


def test_sgd_validation_errors():
    gen = torch.Generator().manual_seed(9)
    state = make_sgd_state(torch.bfloat16, 0.9, gen, [(10,), (20,)], master=True)
    grads = [randn(s, torch.bfloat16, gen) for s in [(10,), (20,)]]
    everything = [*state["params"], *state["momentum_buffers"], *state["master_params"], *grads]
    before = [t.clone() for t in everything]

    def call(buffers=state["momentum_buffers"], masters=state["master_params"], is_first=(True, True), momentum=0.9,
             lr_tensor=None, clip_coef=None, grad_list=grads):
        ops.sgd_update(state["params"], grad_list, buffers, masters, list(is_first), 0.1, 0.0, momentum, 0.0, False,
                       False, lr_tensor, None, clip_coef, None)

    with pytest.raises(RuntimeError, match=r"is_first has 1 entries, expected 2"):
        call(is_first=[True])
    with pytest.raises(RuntimeError, match=r"momentum_buffers\[1\] has dtype BFloat16 but the other states"):
        call(buffers=[state["momentum_buffers"][0], torch.zeros(20, dtype=torch.bfloat16)])
    with pytest.raises(RuntimeError, match=r"momentum_buffers\[0\] has dtype Half; optimizer states are float32"):
        call(buffers=[torch.zeros(10, dtype=torch.float16), torch.zeros(20, dtype=torch.float16)])
    with pytest.raises(RuntimeError, match=r"clip_coef must have one element"):
        call(clip_coef=torch.ones(2))
    with pytest.raises(RuntimeError, match=r"master_params\[1\] has dtype BFloat16, expected Float"):
        call(masters=[state["master_params"][0], torch.zeros(20, dtype=torch.bfloat16)])
    with pytest.raises(RuntimeError, match=r"master_params has 3 entries, expected 2"):
        call(masters=[*state["master_params"], torch.zeros(1)])
    # Without momentum the buffers are unused, but master copies are still checked, overlap included.
    shared = torch.zeros(10)  # a master whose memory starts with the bf16 grad's
    with pytest.raises(RuntimeError, match=r"tensors of param 0 .* must not share memory"):
        call(buffers=[], is_first=[], momentum=0.0, masters=[shared, state["master_params"][1]],
             grad_list=[shared.view(torch.bfloat16)[:10], grads[1]])
    with pytest.raises(RuntimeError, match=r"master_params\[0\] has 1 elements but params\[0\] has 10"):
        call(momentum=0.0, masters=[torch.zeros(1), state["master_params"][1]])
    with pytest.raises(RuntimeError, match=r"lr_tensor must be float32, got BFloat16"):
        call(lr_tensor=torch.tensor([0.1], dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match=r"lr_tensor must have one element, got 0"):
        call(lr_tensor=torch.zeros(0))
    for i, (a, b) in enumerate(zip(everything, before)):
        assert_bitwise_equal(a, b, name=f"sgd tensor {i}")


def test_check_rejects_unsupported_dtype():
    with pytest.raises(RuntimeError, match=r"grads\[1\] has dtype Double"):
        ops.check([torch.ones(3), torch.ones(3, dtype=torch.float64)])


def test_params_that_require_grad_under_no_grad():
    # How optimizers call the ops: leaf params that require grad, inside torch.no_grad().
    p = torch.randn(100, requires_grad=True)
    ref = p.detach().clone()
    g = torch.randn(100)
    with torch.no_grad():
        ops.sgd_update([p], [g], [], [], [], 0.1, 0.0, 0.0, 0.0, False, False, None, None, None, None)
    assert_close(p.detach(), ref - 0.1 * g, "sgd on a leaf")


def _ready_case(change=None):
    params = [torch.zeros(3, 4), torch.zeros(5, dtype=torch.bfloat16), torch.zeros((), dtype=torch.float64)]
    grads = [torch.ones_like(p) for p in params]
    if change is not None:
        change(params, grads)
    return params, grads


def _set(lst, i, value):
    lst[i] = value


@pytest.mark.parametrize("why, change", [
    ("non-contiguous grad", lambda ps, gs: _set(gs, 0, torch.ones(4, 3).t())),
    ("non-contiguous param", lambda ps, gs: (_set(ps, 0, torch.zeros(4, 3).t()), _set(gs, 0, torch.ones(3, 4)))),
    ("grad dtype differs", lambda ps, gs: _set(gs, 1, torch.ones(5))),
    ("grad shape differs", lambda ps, gs: _set(gs, 0, torch.ones(12))),
    ("sparse grad", lambda ps, gs: _set(gs, 0, torch.ones(3, 4).to_sparse())),
    ("complex param", lambda ps, gs: (_set(ps, 0, torch.zeros(2, dtype=torch.complex64)),
                                      _set(gs, 0, torch.ones(2, dtype=torch.complex64)))),
    ("integer param", lambda ps, gs: (_set(ps, 0, torch.zeros(2, dtype=torch.int32)),
                                      _set(gs, 0, torch.ones(2, dtype=torch.int32)))),
    ("second device", lambda ps, gs: (_set(ps, 2, torch.zeros((), device="meta")),
                                      _set(gs, 2, torch.ones((), device="meta")))),
    ("lengths differ", lambda ps, gs: gs.pop()),
])
def test_kernel_ready_rejects(why, change):
    """kernel_ready gates the optimizer's fast path: every reason to take the general path must say False."""
    assert ops.kernel_ready(*_ready_case())
    assert not ops.kernel_ready(*_ready_case(change)), why


def test_kernel_ready_rejects_empty():
    assert not ops.kernel_ready([], [])


def test_eager_binding_rejects_non_tensor_lists():
    """The direct (eager) binding borrows tensors from the caller's lists; anything else is a TypeError."""
    from fusedopt import _C
    with pytest.raises(TypeError, match="params must be a list of tensors"):
        _C.kernel_ready(torch.zeros(2), [torch.zeros(2)])
    with pytest.raises(TypeError, match=r"params\[1\] is not a tensor"):
        _C.kernel_ready([torch.zeros(2), 3.0], [torch.zeros(2), torch.zeros(2)])


def test_eager_binding_equals_torch_ops():
    """Both entry points run the same C++ function: identical results, bit for bit."""
    torch.manual_seed(0)
    base = [torch.randn(s) for s in SHAPES]
    runs = []
    for entry in (_eager().adam_update, ops.adam_update):
        p = [t.clone() for t in base]
        g = [t.sin() for t in base]
        m, v = [torch.zeros_like(t) for t in base], [torch.zeros_like(t) for t in base]
        steps = [torch.zeros(()) for _ in base]
        for _ in range(3):
            entry(p, g, m, v, [], [], steps, 1e-2, 0.9, 0.999, 1e-8, 0.1, False, False, True, None, None,
                  torch.tensor(0.5), torch.tensor(0.0))
        runs.append(p + m + v + steps)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_fake_impl_takes_every_rule():
    """What torch.compile traces through: the fake (meta) impl of the generic update accepts each rule's flat
    arguments and writes nothing (returns None), as do the v2 named entries on top of it."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        p = [torch.empty(5, dtype=torch.bfloat16)]
        g = [torch.empty(5, dtype=torch.bfloat16)]
        master = [torch.empty(5)]
        state = [torch.empty(5, dtype=torch.bfloat16)]
        lr = torch.empty(())
        assert ops.update("sgd", p, g, state, master, [], [True], [0.1, 0.0, 0.9, 0.0], 1, False, lr, None, None,
                          None) is None
        assert ops.update("adam", p, g, state * 2, master, [torch.empty(())], [], [0.1, 0.9, 0.999, 1e-8, 0.0], 2,
                          False, lr, None, None, None) is None
        ops.sgd_update(p, g, state, master, [True], 0.1, 0.0, 0.9, 0.0, False, False, lr, None, None, None)
        ops.adam_update(p, g, state, state, [], master, [torch.empty(())], 0.1, 0.9, 0.999, 1e-8, 0.0, False, False,
                        True, lr, None, None, None)
        assert ops.check(g).shape == (2,)
