"""The ISA variants of the CPU loops (csrc/cpu/kernels.h: baseline, x86-64-v3, x86-64-v4) agree bit for bit.

Every variant this build has and this CPU runs is compared with the baseline on the same inputs: the optimizer
classes (SGD, Adam, AdamW; fp32, bf16 and fp16 params; fp32 and bf16 states; master weights; stochastic rounding;
clipping with nonfinite="skip", an inf grad included) over a few steps, the ops over test_cpu_ops.py's configs
(GradScaler's unscale, found_inf, clip, maximize, tensor lr: every switch of the loops), and the check pass (sum of
squares and the non-finite flag). A variant the CPU lacks is skipped with the extension's own reason. The variant is
switched with ``_C.set_cpu_isa`` (a test and benchmark knob; ``FUSEDOPT_CPU_ISA`` picks one per process).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

import fusedopt
from fusedopt import ops
from helpers import assert_bitwise_equal, assert_raises_unchanged

if ops.EXTENSION_ERROR is not None:
    pytest.skip(f"fusedopt._C is not built: {ops.EXTENSION_ERROR}", allow_module_level=True)

import test_cpu_ops as cpu_ops  # noqa: E402  (its configs and argument builders: every switch of the loops)

_C = ops._C
ISAS = _C.cpu_isas()  # name -> None where it runs, else why not
VARIANTS = [name for name in ISAS if name != "baseline"]
SIZES = [0, 1, 4097, 3 * 65536 + 5]
STEPS = 3


@pytest.fixture
def isa_restored():
    """Puts back the variant that was active before the test (FUSEDOPT_CPU_ISA's or the best one)."""
    before = _C.cpu_isa()
    yield
    _C.set_cpu_isa(before)


def _require(variant: str) -> None:
    if ISAS[variant] is not None:
        pytest.skip(ISAS[variant])


def _on(isa: str, fn):
    _C.set_cpu_isa(isa)
    assert _C.cpu_isa() == isa
    return fn()


def _assert_all_equal(actual, expected, where: str) -> None:
    assert len(actual) == len(expected), where
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_bitwise_equal(a, e, name=f"{where}[{i}]")


# ---------------------------------------------------------------------------------------------------------------
# The variants themselves.


def test_baseline_always_runs_and_the_best_runs_by_default():
    assert list(ISAS) == ["baseline", "x86-64-v3", "x86-64-v4"]
    assert ISAS["baseline"] is None
    # In a fresh process without FUSEDOPT_CPU_ISA the best variant that runs here is active.
    env = {k: v for k, v in os.environ.items() if k != "FUSEDOPT_CPU_ISA"}
    code = "from fusedopt import ops; print(ops._C.cpu_isa())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == [name for name, why in ISAS.items() if why is None][-1]


def test_set_cpu_isa_refuses_unknown_and_unavailable_variants(isa_restored):
    before = _C.cpu_isa()
    with pytest.raises(ValueError, match=r"unknown CPU ISA variant 'avx9' \(known: 'baseline', 'x86-64-v3'"):
        _C.set_cpu_isa("avx9")
    for name, why in ISAS.items():
        if why is not None:
            with pytest.raises(ValueError, match="set_cpu_isa: " + re.escape(why)):
                _C.set_cpu_isa(name)
    assert _C.cpu_isa() == before


@pytest.mark.parametrize("value", ["baseline", "avx9"])
def test_environment_variable_picks_the_variant_or_fails_before_any_change(value):
    code = f"""
import torch
from fusedopt import ops
from helpers import assert_raises_unchanged
p, g, step = torch.ones(5), torch.ones(5), torch.tensor(0.0)
m, v = torch.zeros(5), torch.zeros(5)
call = lambda: ops._C.update("adam", [p], [g], [m, v], [], [step], [], [0.1, 0.9, 0.999, 1e-8, 0.0], 0, False,
                             None, None, None, None)
if {value!r} == "baseline":
    call()
    assert ops._C.cpu_isa() == "baseline" and float(step) == 1.0
else:
    assert_raises_unchanged(call, [p, g, m, v, step], error=ValueError,
                            match="FUSEDOPT_CPU_ISA: unknown CPU ISA variant 'avx9'")
print("ok")
"""
    env = {**os.environ, "FUSEDOPT_CPU_ISA": value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(__file__))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ---------------------------------------------------------------------------------------------------------------
# The optimizer classes: the whole step (check pass, clip, skip, update) on each variant.

ALGORITHMS = {
    "SGD": (fusedopt.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "Adam": (fusedopt.Adam, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    "AdamW": (fusedopt.AdamW, dict(lr=1e-2, weight_decay=0.1)),
}
OPTIONS = {
    "plain": {},
    "bf16-states": dict(state_dtype=torch.bfloat16),
    "master": dict(master_weights=True),
    "master-bf16-states": dict(master_weights=True, state_dtype=torch.bfloat16),
    # bf16 params rounded stochastically (the Philox calls vectorized across quads in each variant).
    "stochastic": dict(param_rounding="stochastic", seed=0x0123456789ABCDEF),
    "stochastic-bf16-states": dict(param_rounding="stochastic", seed=5, state_dtype=torch.bfloat16),
    # Grads have a global norm of about 340 (below): 1.0 clips; step 1's inf grad skips that step.
    "clip-skip": dict(max_grad_norm=1.0, nonfinite="skip"),
}


def _optimizer_run(algorithm: str, dtype: torch.dtype, options: dict) -> list[torch.Tensor]:
    cls, kwargs = ALGORITHMS[algorithm]
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(n, generator=gen).to(dtype) for n in SIZES]
    opt = cls(params, **kwargs, **options, backend="cpu")
    out = []
    for step in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
        if step == 1 and params[2].numel():
            params[2].grad[7] = float("inf")
        opt.step()
        if opt.grad_norm is not None:
            out.append(opt.grad_norm.clone())
    out += [t.clone() for p in params for t in [p, *(v for v in opt.state[p].values() if torch.is_tensor(v))]]
    return out


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("dtype", cpu_ops.DTYPES, ids=str)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_optimizer_step_is_bitwise_equal_on_every_variant(variant, algorithm, dtype, options, isa_restored):
    _require(variant)
    if options.startswith("stochastic") and dtype != torch.bfloat16:
        pytest.skip("param_rounding='stochastic' is for bf16 params (fp16 ones are refused)")
    run = lambda: _optimizer_run(algorithm, dtype, OPTIONS[options])  # noqa: E731
    _assert_all_equal(_on(variant, run), _on("baseline", run), f"{variant} vs baseline: {algorithm} {options}")


# ---------------------------------------------------------------------------------------------------------------
# The ops over test_cpu_ops.py's configs.


def _op_run(rule: str, cfg: dict, dtype: torch.dtype, master: bool, state_dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    if rule == "sgd":
        state = cpu_ops.make_sgd_state(dtype, cfg.get("momentum", 0.0), gen, master=master, state_dtype=state_dtype)
    else:
        state = cpu_ops.make_adam_state(dtype, cfg.get("amsgrad", False), gen, master=master,
                                        state_dtype=state_dtype)
    out = []
    for step in range(STEPS):
        grads = [cpu_ops.randn(s, dtype, gen, scale=cfg.get("grad_scale", 1.0)) for s in cpu_ops.SHAPES]
        if rule == "sgd":
            is_first = cpu_ops.is_first_for(step, len(grads))
            ops.BACKENDS["cpu"].sgd_update(*cpu_ops.sgd_args(state, grads, is_first, cfg))
        else:
            ops.BACKENDS["cpu"].adam_update(*cpu_ops.adam_args(state, grads, cfg))
        out += grads  # rewritten when unscaled
    return out + [t.clone() for ts in state.values() for t in ts]


OP_CASES = ([("sgd", cfg) for cfg in cpu_ops.SGD_CONFIGS] + [("adam", cfg) for cfg in cpu_ops.ADAM_CONFIGS])
MIXED = {"plain": (False, torch.float32), "master-bf16-states": (True, torch.bfloat16)}


@pytest.mark.parametrize("mixed", MIXED)
@pytest.mark.parametrize("dtype", cpu_ops.DTYPES, ids=str)
@pytest.mark.parametrize("rule, cfg", OP_CASES, ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_update_op_is_bitwise_equal_on_every_variant(variant, rule, cfg, dtype, mixed, isa_restored):
    _require(variant)
    run = lambda: _op_run(rule, cfg, dtype, *MIXED[mixed])  # noqa: E731
    _assert_all_equal(_on(variant, run), _on("baseline", run), f"{variant} vs baseline: {rule} {cfg} {mixed}")


# ---------------------------------------------------------------------------------------------------------------
# The check pass: the same 16-lane summation order on every variant, so the same sum, not merely a close one.


SPECIALS = {"none": None, "inf": float("inf"), "nan": float("nan"), "huge": "huge"}


def _grads(dtype: torch.dtype, special: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    grads = [(torch.randn(n, generator=gen) * 10.0 ** (i - 2)).to(dtype) for i, n in enumerate(SIZES + [17, 33])]
    value = SPECIALS[special]
    if value == "huge":  # finite (in fp32 and bf16 its square overflows the fp32 lanes): no non-finite flag
        value = 6e4 if dtype == torch.float16 else 1e30
    if value is not None:
        grads[3][65536 + 9] = value
    return grads


@pytest.mark.parametrize("special", SPECIALS)
@pytest.mark.parametrize("dtype", cpu_ops.DTYPES, ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_check_is_bitwise_equal_on_every_variant(variant, dtype, special, isa_restored):
    _require(variant)
    grads = _grads(dtype, special)
    run = lambda: [ops.BACKENDS["cpu"].check(grads)]  # noqa: E731
    actual, expected = _on(variant, run), _on("baseline", run)
    _assert_all_equal(actual, expected, f"{variant} vs baseline: check {dtype} {special}")
    assert bool(actual[0][1]) == (special in ("inf", "nan"))
