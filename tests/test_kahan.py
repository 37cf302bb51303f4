"""bench/kahan.py (issue 13: Kahan compensation evaluated against master remainders): its Kahan wrapper on exact
numbers, and the evaluation's claims at its small sizes (``--quick``), so that they cannot rot.

The evaluation's conclusion (its module docstring) rests on: Kahan keeps far more of the small updates than plain
rounding (physics, tiny updates, the sweep down to ~1e-5 relative), the fp32 master (= remainder, the same bits)
is no worse than Kahan anywhere and exact where Kahan's bf16 compensation stalls (relative updates ~1e-6), and
the bytes kept per param: Kahan and remainder both 2 more than plain bf16, the fp32 master 4.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import fusedopt
from helpers import assert_bitwise_equal, assert_within_ulps
from test_parity import _threads

ROOT = Path(__file__).resolve().parent.parent


def _load_bench():
    saved = list(sys.path)  # the script puts tests/ and the checkout first on sys.path for its own imports
    try:
        spec = importlib.util.spec_from_file_location("bench_kahan", ROOT / "bench" / "kahan.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path[:] = saved


kahan = _load_bench()
LOW = [torch.bfloat16, torch.float16]
# One xdist worker takes every test here (make test: --dist loadgroup), so that _quick's evaluation (about 10 s)
# runs once, not once per worker.
pytestmark = pytest.mark.xdist_group("kahan")


@functools.lru_cache(maxsize=None)
def _quick() -> dict:
    with _threads(1):  # the numbers depend on the bf16 matmuls' sums: one thread, as the script runs
        return kahan.evaluate(kahan.QUICK)


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_kahan_carries_sub_ulp_updates_exactly(dtype):
    """64 SGD steps of +ulp(1)/8 on weights 1.0: each is below half an ulp, so plain rounding never moves; with the
    compensation every partial sum is exact (multiples of ulp/8 near 1), so the param is each step the nearest
    value to the exact sum, and ends at 1 + 8 ulps with no compensation left. The fp32 master does the same."""
    ulp = 2.0 ** -(7 if dtype == torch.bfloat16 else 10)
    runs = {}
    for mode in kahan.MODES:
        p = torch.ones(5, dtype=dtype, requires_grad=True)
        opt = kahan.make_optimizer(fusedopt.SGD, dict(lr=ulp / 8), mode)([p])
        for step in range(64):
            p.grad = torch.full_like(p, -1.0)
            opt.step()
            if mode == "kahan":
                exact = 1 + (step + 1) * ulp / 8
                assert_bitwise_equal(opt.held(0), torch.full((5,), exact, dtype=torch.float64), name=f"step {step}")
                assert_bitwise_equal(p.detach(), torch.full((5,), exact).to(dtype), name=f"param at step {step}")
        runs[mode] = (p.detach(), opt)
    assert_bitwise_equal(runs["none"][0], torch.ones(5, dtype=dtype), name="plain rounding")
    assert_bitwise_equal(runs["kahan"][0], torch.full((5,), 1 + 8 * ulp, dtype=dtype), name="kahan")
    assert_bitwise_equal(runs["kahan"][1].comp[0], torch.zeros(5, dtype=dtype), name="compensation")
    assert_bitwise_equal(runs["master"][0], torch.full((5,), 1 + 8 * ulp, dtype=dtype), name="master")


@pytest.mark.parametrize("name", list(kahan.OPTIMIZERS))
def test_kahan_first_step_is_plain_rounding_plus_its_error(name):
    """From a zero compensation the first step rounds the fp32 value as plain rounding and the master do (the
    wrapper hands the inner optimizer the params' values and grads), and keeps the rounding error: comp is the
    master less the param, to one ulp of comp's dtype."""
    cls, hyper = kahan.OPTIMIZERS[name]
    with _threads(1):
        runs = {mode: kahan.mlp_run(cls, hyper, torch.bfloat16, mode, 1) for mode in kahan.MODES}
    master_opt = runs["master"][1]
    masters = [master_opt.state[p]["master_param"] for p in master_opt.param_groups[0]["params"]]
    for i, (k, n, m, master) in enumerate(zip(runs["kahan"][0], runs["none"][0], runs["master"][0], masters)):
        assert_bitwise_equal(k, n, name=f"param {i}: kahan vs none")
        assert_bitwise_equal(k, m, name=f"param {i}: kahan vs master")
        assert_within_ulps(runs["kahan"][1].comp[i], (master - m).to(torch.bfloat16), ulps=1, name=f"comp {i}")


def test_kahan_refuses_full_precision_params():
    with pytest.raises(ValueError, match="KahanCompensated takes bf16/fp16 params, got torch.float32"):
        kahan.KahanCompensated([torch.zeros(3, requires_grad=True)], lambda work: fusedopt.SGD(work, lr=0.1))


def test_memory_kept_per_param():
    """Bytes per param between steps, measured on the optimizers: param + extra + states; Kahan and remainder 2
    extra, the fp32 master 4 (AdamW: 2 states; the others 1)."""
    memory = _quick()["memory"]
    for name, rows in memory.items():
        n = 2 if name == "AdamW" else 1
        for states, size in (("fp32 states", 4), ("bf16 states", 2)):
            want = {"fp32": 4, "bf16 none": 2, "bf16 kahan": 4, "bf16 remainder": 4, "bf16 master": 6,
                    "fp16 none": 2, "fp16 kahan": 4, "fp16 master": 6}
            got = {mode: rows[mode][states] for mode in want}
            assert got == {mode: b + n * size for mode, b in want.items()}, (name, states, got)


def test_physics_kahan_far_better_than_none_and_master_no_worse():
    """The physics MLP (bf16, fp32 states): Kahan's weight error at most half of plain rounding's (measured at the
    quick sizes: about a tenth), the fp32 master's (= remainder's) no more than Kahan's but for the noise of two
    runs whose bf16 forwards differ (measured: equal to 3 digits)."""
    for name, case in _quick()["physics"].items():
        rows = case["rows"]
        none, k, master = (rows[f"bf16 {m}"]["error"] for m in kahan.MODES)
        assert k <= 0.5 * none, (name, rows)
        assert master <= 1.1 * k, (name, rows)
        assert rows["bf16 master"]["loss"] <= 1.1 * rows["bf16 kahan"]["loss"], (name, rows)


def test_tiny_updates_plain_bf16_stalls():
    """lr / 100: plain bf16 keeps nothing of AdamW's updates (its error is the fp32 run's whole movement), Kahan and
    the master keep them (their error is the bf16 forward's, equal for both)."""
    rows = _quick()["tiny"]["AdamW"]["rows"]
    assert rows["bf16 none"]["error_over_movement"] >= 0.9, rows
    assert rows["bf16 kahan"]["error_over_movement"] <= 0.6 * rows["bf16 none"]["error_over_movement"], rows
    assert rows["bf16 master"]["error"] <= 1.1 * rows["bf16 kahan"]["error"], rows
    for name, case in _quick()["tiny"].items():
        assert case["rows"]["bf16 kahan"]["error"] <= case["rows"]["bf16 none"]["error"], (name, case["rows"])


def test_sweep_kahan_stalls_where_the_master_does_not():
    """+r per step on weights in [1, 2): at r = 1e-4 plain rounding keeps nothing, Kahan's bf16 compensation a few
    percent off, the master exact to fp32; at r = 1e-6 (below bf16 Kahan's ~2^-17) Kahan's error is several times
    the master's, whose error is fp32's own rounding of 1e-6 at the weight (the same for every fp32 path).
    fp16's compensation has 3 more bits: close to the master at both sizes."""
    sweep = _quick()["sweep"]
    bf16, fp16 = sweep["bf16"], sweep["fp16"]
    for r in ("0.0001", "1e-06"):
        assert bf16[r]["none"] == 1.0 and fp16[r]["none"] == 1.0, sweep
    assert bf16["0.0001"]["kahan"] <= 0.05 and bf16["0.0001"]["master"] <= 1e-3, sweep
    assert bf16["1e-06"]["kahan"] >= 3 * bf16["1e-06"]["master"], sweep
    assert bf16["1e-06"]["master"] <= 0.06, sweep  # fp32 adds 8 ulps of 2^-23 for 1e-6 at [1, 2): 4.6% short
    assert fp16["0.0001"]["kahan"] <= 1e-3 and fp16["1e-06"]["kahan"] <= 1.1 * fp16["1e-06"]["master"], sweep
