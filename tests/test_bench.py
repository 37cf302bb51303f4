"""The benchmark harness's own logic, on tiny sizes: shape tables, byte accounting, roofline math, timing helpers,
the check step and wrong rows, launch/sync counting on recorded profiler events, the report, the verdict, JSON,
plots, compare, the progress bar, the CLI, and the pytest-benchmark entry points' collection."""
from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fusedopt.bench import (cases, cli, gpu, impls, machine, memory, optims, plot, progress, report, roofline, runner,
                            timing)
from fusedopt.bench.impls import Impl

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- cases -----------------------------------------------------------------------------------------------------

def test_model_cases_at_full_size():
    gpt2, llama, resnet = (cases.model_case(m, 1) for m in cases.MODELS.values())
    assert (gpt2.n_tensors, gpt2.n_params) == (148, 124_439_808)
    assert gpt2.shapes[:2] == ((50257, 768), (1024, 768))
    assert gpt2.shapes[2:14] == ((768,), (768,), (768, 2304), (2304,), (768, 768), (768,), (768,), (768,),
                                 (768, 3072), (3072,), (3072, 768), (768,))
    assert (llama.n_tensors, llama.n_params) == (201, 1_100_048_384)  # TinyLlama-1.1B
    assert llama.shapes[1:10] == ((2048, 2048), (256, 2048), (256, 2048), (2048, 2048), (5632, 2048),
                                  (5632, 2048), (2048, 5632), (2048,), (2048,))
    assert (resnet.n_tensors, resnet.n_params) == (161, 25_557_032)  # torchvision's resnet50
    assert resnet.shapes[0] == (64, 3, 7, 7) and resnet.shapes[-2:] == ((1000, 2048), (1000,))
    assert all(150 <= c.n_tensors <= 300 or c is gpt2 for c in (gpt2, llama, resnet))
    assert all(c.scale == 1 and c.full_params is None for c in (gpt2, llama, resnet))


def test_scaling_keeps_every_tensor_and_says_so():
    for m in cases.MODELS.values():
        full, half = cases.model_case(m, 1), cases.model_case(m, 2)
        assert half.n_tensors == full.n_tensors and half.full_params == full.n_params
        assert 0.2 < half.n_params / full.n_params < 0.3  # widths halved: about a quarter of the params
        assert "scaled to 1/2" in half.description and f"{full.n_params / 1e6:.1f}M" in half.description


def test_select_suites_and_memory_fit():
    model = cases.select("model")
    assert [c.name for c in model] == list(cases.MODELS)
    assert [c.name for c in cases.select("model", models=["resnet50", "gpt2-small"])] == ["gpt2-small", "resnet50"]
    assert [c.scale for c in model] == [m.default_scale for m in cases.MODELS.values()]
    assert all(c.scale == 1 for c in cases.select("model", full=True))
    # A case that does not fit is halved in width until it does.
    small = cases.select("model", full=True, fits=lambda c: c.n_params < 50e6)
    assert [c.scale for c in small] == [2, 8, 1]
    assert cases.select("many-small")[0].shapes == ((4096,),) * 4096
    assert cases.select("many-small", quick=True)[0].n_params == 64 * 256
    sweep = cases.select("sweep")
    assert [c.n_params for c in sweep] == [4**k * 1024 for k in range(8)]  # 1K .. 16M
    assert all(c.n_tensors == 1 and c.suite == "sweep" for c in sweep)
    assert [c.n_params for c in cases.select("sweep", full=True, fits=lambda c: c.n_params <= 2**20)][-1] == 2**20
    assert [c.n_params for c in cases.select("sweep", sweep_max=5000)] == [1024, 4096]
    assert all(c.n_params < 10**6 for s in cases.SUITES for c in cases.select(s, quick=True))
    with pytest.raises(KeyError, match="unknown suite"):
        cases.select("bogus")


# --- byte accounting and roofline math -------------------------------------------------------------------------

def test_bytes_per_param_from_algorithm_and_dtypes():
    assert roofline.update_bytes("sgd") == 20  # read p, g, buf; write p, buf
    assert roofline.update_bytes("adam") == roofline.update_bytes("adamw") == 28  # read p, g, m, v; write p, m, v
    assert roofline.job_bytes("adamw", clipped=True) == 32  # DESIGN.md's floor
    assert roofline.job_bytes("sgd", clipped=True) == 24
    # bf16 params and grads, fp32 states: 2*2 + 2 + 2*2*4 (+ one more grad read when clipped)
    assert roofline.job_bytes("adam", clipped=False, param_size=2, state_size=4) == 22
    assert roofline.job_bytes("adam", clipped=True, param_size=2, state_size=4) == 24
    by = {i.name: i for i in impls.impls_for("adamw", ["cpu"])}
    assert by["torch fused"].bytes_per_param(torch.float32) == 28
    assert by["fusedopt cpu + clip/check"].bytes_per_param(torch.float32) == 32
    assert by["torch fused"].bytes_per_param(torch.bfloat16) == 14  # torch keeps states in the param dtype
    assert by["fusedopt cpu"].bytes_per_param(torch.bfloat16) == 22


# The README's table (master remainders): AdamW on bf16 params and grads, per master mode and state dtype, the
# bytes one update moves and those kept between steps.
MASTER_TABLE = {("none", 4): (22, 10), ("none", 2): (14, 6), ("master", 4): (28, 14), ("master", 2): (20, 10),
                ("remainder", 4): (26, 12), ("remainder", 2): (18, 8)}


def test_bytes_per_param_by_master_mode():
    for (master, state), (moved, kept) in MASTER_TABLE.items():
        assert roofline.update_bytes("adamw", param_size=2, state_size=state, master=master) == moved
        assert roofline.job_bytes("adamw", True, param_size=2, state_size=state, master=master) == moved + 2
        assert roofline.kept_bytes("adamw", param_size=2, state_size=state, master=master) == kept
    for master in roofline.MASTER_MODES:  # fp32 params keep no master: every mode is the plain one
        assert roofline.update_bytes("adamw", master=master) == 28
        assert roofline.kept_bytes("adamw", master=master) == 12
    with pytest.raises(ValueError, match="unknown master mode 'fp32'"):
        roofline.update_bytes("adamw", param_size=2, master="fp32")
    by = {i.name: i for i in impls.impls_for("adamw", ["cpu"], masters=roofline.MASTER_MODES)}
    assert by["fusedopt cpu master"].bytes_per_param(torch.bfloat16) == 28
    assert by["fusedopt cpu remainder + clip/check"].bytes_per_param(torch.bfloat16) == 28
    assert by["fusedopt cpu remainder"].master == "remainder" and by["fusedopt cpu"].master == "none"


def test_master_mode_rows_run_with_their_master_weights():
    """A master row's optimizer keeps fp32 copies of bf16 params, a remainder row's remainders."""
    for master, key in (("none", None), ("master", "master_param"), ("remainder", "master_remainder")):
        params = [torch.zeros(5, dtype=torch.bfloat16, requires_grad=True)]
        params[0].grad = torch.ones(5, dtype=torch.bfloat16)
        step = impls.fusedopt_setup(impls.OPTIMS["adamw"], "cpu", clipped=False, master=master)(params, 1.0)
        step()
        state = step.__self__.state[params[0]]  # the row's step is its optimizer's bound step
        assert {"master_param", "master_remainder"} & set(state) == ({key} if key else set()), (master, sorted(state))


# Per algorithm at its benchmark row's hyperparameters: the tensor states its update reads, those it writes, and
# the fp32 byte floor of the bare update (read p, g, the read states; write p, the written states).
FLOORS = {
    "sgd": (("momentum_buffer",), ("momentum_buffer",), 20),
    "adam": (("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq"), 28),
    "adamw": (("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq"), 28),
    "adagrad": (("sum",), ("sum",), 20),
    "rmsprop": (("square_avg", "momentum_buffer"), ("square_avg", "momentum_buffer"), 28),  # momentum, not centered
    "adamax": (("exp_avg", "exp_inf"), ("exp_avg", "exp_inf"), 28),
    "nadam": (("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq"), 28),
    "radam": (("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq"), 28),
    "adadelta": (("square_avg", "acc_delta"), ("square_avg", "acc_delta"), 28),
    "rprop": (("prev", "step_size"), ("prev", "step_size"), 28),
    "asgd": ((), ("ax",), 16),  # ax = p while mu == 1 (t0 = 1e6): written, not read
    "lion": (("exp_avg",), ("exp_avg",), 20),
}


def test_every_algorithm_has_a_row_and_a_byte_floor_from_its_rule():
    from fusedopt import rules

    assert set(impls.OPTIMS) == set(FLOORS) and impls.DEFAULT_OPTIMS == ("sgd", "adam", "adamw")
    for optim, (reads, writes, floor) in FLOORS.items():
        t = optims.traffic(optim)
        assert (t.reads, t.writes) == (reads, writes), optim
        assert set(writes) <= set(rules.RULES[t.rule].states)  # the rule's own state names
        assert roofline.update_bytes(optim) == floor, optim
        assert roofline.job_bytes(optim, clipped=True) == floor + 4  # the check pass's extra grad read
        assert roofline.n_states(optim) == len(writes)
    assert optims.traffic("adamw").rule == optims.traffic("adam").rule == "adam"


def test_byte_floor_follows_the_hyperparameters(monkeypatch):
    """The used states come from the class's mapping of the row's hyperparameters: centered RMSprop keeps grad_avg
    too, RMSprop without momentum no buffer, ASGD past t0 reads its average."""
    spec = impls.OPTIMS["rmsprop"]
    optims.traffic.cache_clear()
    try:
        monkeypatch.setitem(impls.OPTIMS, "rmsprop", replace(spec, hyper=dict(spec.hyper, centered=True)))
        assert optims.traffic("rmsprop").reads == ("square_avg", "grad_avg", "momentum_buffer")
        assert roofline.update_bytes("rmsprop") == 36
        optims.traffic.cache_clear()
        monkeypatch.setitem(impls.OPTIMS, "rmsprop", replace(spec, hyper=dict(spec.hyper, momentum=0.0)))
        assert optims.traffic("rmsprop").writes == ("square_avg",) and roofline.update_bytes("rmsprop") == 20
        monkeypatch.setitem(impls.OPTIMS, "asgd", replace(impls.OPTIMS["asgd"], hyper=dict(lr=1e-2, t0=0.0)))
        assert optims.traffic("asgd").reads == ("ax",) and roofline.update_bytes("asgd") == 20
    finally:
        monkeypatch.undo()
        optims.traffic.cache_clear()
    assert roofline.update_bytes("rmsprop") == 28


def test_gbps_and_roofline_fraction():
    assert roofline.gbps(32e9, 2.0) == pytest.approx(16.0)
    # 10 GB at a 50 GB/s roofline takes 0.2 s; taking 0.4 s is half the roofline.
    assert roofline.roofline_fraction(10e9, 0.4, 50.0) == pytest.approx(0.5)
    assert roofline.roofline_seconds(10e9, 50.0) == pytest.approx(0.2)


def test_cpu_probes():
    p = roofline.Probes("cpu", array_bytes=4096)
    assert p.roofline == "triad" and p.names == ("triad", "axpy")
    assert p.nbytes("triad") == 12 * 1024 and p.nbytes("axpy") == 12 * 1024
    p.triad()
    torch.testing.assert_close(p.a, p.b + 0.5 * p.c)
    before = p.a.clone()
    p.fn("axpy")()
    torch.testing.assert_close(p.a, before + 0.5 * p.b)
    with pytest.raises(KeyError):
        p.fn("copy")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the device-to-device copy probe needs a CUDA device")
def test_gpu_probe_is_a_copy():
    p = roofline.Probes("cuda", array_bytes=4096)
    assert p.roofline == "copy" and p.names == ("copy",) and p.nbytes("copy") == 8 * 1024
    p.copy()
    torch.testing.assert_close(p.a, p.b)


# --- timing ----------------------------------------------------------------------------------------------------

def test_round_robin_rotates_through_every_position():
    items = ["a", "b", "c", "d"]
    sched = timing.round_robin(items, 8)
    assert sched[0] == items and sched[1] == ["b", "c", "d", "a"]
    for pos in range(len(items)):
        assert sorted(r[pos] for r in sched) == sorted(items * 2)
    assert timing.round_robin([], 2) == [[], []]


def test_paired_speedup_percentile_and_repeats():
    assert timing.paired_speedup([2.0, 2.0, 2.0], [1.0, 1.0, 4.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        timing.paired_speedup([1.0], [1.0, 2.0])
    xs = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert timing.percentile(xs, 50) == 3.0 and timing.percentile(xs, 20) == pytest.approx(1.8)
    assert timing.percentile(xs, 80) == pytest.approx(4.2) and timing.percentile([7.0], 20) == 7.0
    with pytest.raises(ValueError):
        timing.percentile([], 50)
    assert timing.repeats_for(1.0) == 1 and timing.repeats_for(1e-4) == 20 and timing.repeats_for(1e-9) == 200
    calls = []
    assert timing.time_once(lambda: calls.append(1), lambda: calls.append("sync"), repeat=3) >= 0
    assert calls == ["sync", 1, 1, 1, "sync"]


# --- memory ----------------------------------------------------------------------------------------------------

def test_peak_of_running_sum():
    assert memory.peak_of_running_sum([10, -10, 5, 7, -12]) == 12
    assert memory.peak_of_running_sum([-4, 3]) == 0


def test_peak_extra_bytes_sees_temporaries_and_not_in_place_work():
    x = torch.zeros(1 << 16)
    nbytes = 1 << 22
    peak = memory.peak_extra_bytes(lambda: torch.empty(nbytes // 4))
    assert nbytes <= peak < nbytes + 4096
    assert memory.peak_extra_bytes(lambda: x.add_(1.0)) < 64  # a wrapped scalar at most
    assert memory.peak_extra_bytes(lambda: (x + 1) * 2) >= 2 * x.nbytes  # two temporaries alive at once


def test_others_cpu_share_counts_another_process():
    share = machine.OthersCpuShare()
    subprocess.run([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 0.6: pass"],
                   check=True)
    assert share.stop() > 0.3  # one busy core of two, less the interpreter's start-up


# --- GPU launch and sync counting, on recorded profiler events --------------------------------------------------

R = gpu.Record
# What kineto records for torch's clip_grad_norm_ + isfinite + bool() + a fused update (names as CUPTI gives them).
TORCH_CLIPPED_STEP = [
    R("aten::_foreach_norm", "cpu_op"), R("cudaLaunchKernel", "cuda_runtime"),
    R("void at::native::multi_tensor_apply_kernel<...>", "kernel"),
    R("cudaLaunchKernel", "cuda_runtime"), R("void at::native::lpnorm_cleanup<...>", "kernel"),
    R("aten::stack", "cpu_op"), R("cudaLaunchKernel", "cuda_runtime"), R("CatArrayBatchedCopy", "kernel"),
    R("cudaLaunchKernel", "cuda_runtime"), R("reduce_kernel<...>", "kernel"),
    R("aten::_foreach_mul_", "cpu_op"), R("cudaLaunchKernel", "cuda_runtime"), R("multi_tensor_apply_kernel", "kernel"),
    R("aten::isfinite", "cpu_op"), R("cudaLaunchKernel", "cuda_runtime"), R("isfinite_kernel", "kernel"),
    R("aten::is_nonzero", "cpu_op"), R("cudaMemcpyAsync", "cuda_runtime"),
    R("Memcpy DtoH (Device -> Pageable)", "gpu_memcpy"), R("cudaStreamSynchronize", "cuda_runtime"),
    R("Stream Sync", "cuda_sync"),  # the same wait, seen from the device: not counted again
    R("aten::_fused_adamw_", "cpu_op"), R("cudaLaunchKernel", "cuda_runtime"), R("FusedAdamMathFunctor", "kernel"),
    R("[memory]", "cpu_instant_event"),
]


def test_count_launches_and_syncs_from_device_kernels():
    c = gpu.count(TORCH_CLIPPED_STEP)
    assert (c.launches, c.syncs, c.launches_from) == (7, 1, "device kernels")


def test_count_falls_back_to_host_launch_calls_without_device_activities():
    host_only = [r for r in TORCH_CLIPPED_STEP if r.activity not in ("kernel", "gpu_memcpy", "cuda_sync")]
    host_only += [R("cuLaunchKernel", "cuda_driver"), R("cudaDeviceSynchronize", "cuda_runtime")]  # e.g. Triton
    c = gpu.count(host_only)
    assert (c.launches, c.syncs, c.launches_from) == (8, 2, "host launch calls")
    assert gpu.count([]) == gpu.Counts(0, 0, "device kernels")
    # A synchronize made by an op on the CPU side is not a host API call, and a blocking memcpy is a sync.
    assert gpu.count([R("cudaStreamSynchronize", "cpu_op"), R("cudaMemcpy", "cuda_runtime")]).syncs == 1


def test_records_of_reads_kineto_events():
    class Event:
        def __init__(self, name, activity):
            self._n, self._a = name, activity

        def name(self):
            return self._n

        def activity_type(self):
            return self._a

    assert gpu.records_of([Event("k", "kernel")]) == [R("k", "kernel")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counting launches on a real trace needs a CUDA device")
def test_count_step_on_a_real_gpu():
    x = torch.zeros(1 << 20, device="cuda")
    assert gpu.count_step(lambda: x.add_(1.0)) == gpu.Counts(1, 0, "device kernels")
    c = gpu.count_step(lambda: bool(x.sum() > 0))
    assert c.launches >= 2 and c.syncs == 1
    assert gpu.peak_extra_bytes(lambda: x + 1) >= x.nbytes


# --- runner: the check step, wrong rows, interleaving ----------------------------------------------------------

TINY = cases.Case("tiny", ((4, 3), (5,)), "two small tensors")
SMALL_RUN = dict(probes=roofline.Probes("cpu", 1 << 16), flush=timing.CacheFlusher(1 << 16), log=lambda msg: None)


def _sgd_like(calls: list[str], name: str, lr: float = 1e-2):
    """A plain gradient step, recording its calls; the same lr gives the same result as another of its kind."""
    def setup(params, max_norm):
        def step():
            calls.append(name)
            with torch.no_grad():
                for p in params:
                    p.sub_(lr * p.grad)
        return step
    return setup


def _fake(name: str, setup, clipped=False, **kw) -> Impl:
    family = "torch" if name.startswith("torch") else "fusedopt"
    return Impl(name, "sgd", family, name.split()[1], clipped, setup, **kw)


def test_run_group_checks_interleaves_and_profiles():
    calls: list[str] = []
    fakes = [_fake("torch for-loop", _sgd_like(calls, "A")), _fake("fusedopt x", _sgd_like(calls, "B"))]
    ticks: list[str] = []
    result = runner.run_group(TINY, "sgd", fakes, rounds=4, warmup=1, tick=ticks.append, **SMALL_RUN)
    # check step, warm-up, then [A, B, triad, axpy] rotated each round (tiny steps repeat), then one profiled step.
    a, b = result.rows
    assert calls[:4] == ["A", "B", "A", "B"]
    assert a.repeat > 1 and a.steps == 1 + 1 + 4 * a.repeat + 1 and len(a.times) == 4
    order = [c for c in calls[4:-2]]
    assert order[0] == "A" and order[a.repeat] == "B"  # round 1 starts with A, round 2 with B
    assert calls[-2:] == ["A", "B"]
    assert a.check_error == 0.0 and b.check_error == 0.0 and b.wrong is None
    assert b.peak_extra_bytes is not None and b.launches is None  # no launches counted on a CPU
    assert set(result.probes) == {"triad", "axpy"} and all(len(p.times) == 4 for p in result.probes.values())
    assert result.roofline == "triad" and result.max_norm > 0
    assert len(ticks) == 4 + runner.EXTRA_TICKS


def test_a_row_that_disagrees_is_wrong_and_not_timed():
    calls: list[str] = []
    fakes = [_fake("torch for-loop", _sgd_like(calls, "ref")),
             _fake("fusedopt double-lr", _sgd_like(calls, "bad", 2e-2)),
             _fake("fusedopt close", _sgd_like(calls, "ok", 1e-2 * (1 + 1e-3)))]
    result = runner.run_group(TINY, "sgd", fakes, rounds=2, warmup=0, **SMALL_RUN)
    ref, bad, close = result.rows
    assert bad.wrong is not None and "torch for-loop" in bad.wrong and bad.check_error > 1
    assert bad.times == [] and bad.peak_extra_bytes is None and calls.count("bad") == 1
    assert close.wrong is None and close.check_error < 1 and len(close.times) == 2
    rows = report.summarize(result)
    assert rows[1]["status"] == "wrong" and rows[1]["median_s"] is None and "differ" in rows[1]["reason"]


def test_compare_updates():
    init = [torch.ones(3), torch.zeros(0)]
    ref = [torch.tensor([0.9, 1.1, 1.0]), torch.zeros(0)]
    assert runner.compare_updates(init, ref, ref) == 0.0
    assert runner.compare_updates(init, ref, [ref[0] * (1 + 1e-7), ref[1]]) < 1  # rounding of p
    assert runner.compare_updates(init, ref, [torch.tensor([0.95, 1.1, 1.0]), ref[1]]) > 1  # half the update
    assert runner.compare_updates(init, ref, [torch.tensor([0.9, 1.1, 1.0 + 1e-6]), ref[1]]) < 1  # within atol
    assert runner.compare_updates(init, ref, [torch.tensor([0.9, math.nan, 1.0]), ref[1]]) == math.inf


def test_rows_share_params_and_every_check_step_starts_from_the_drawn_ones():
    """All rows step one set of params and grads (only their states are their own: memory); each row's check step
    starts from the drawn params and grads, even after a clipping row rewrote the grads in place."""
    seen: list[tuple[float, float]] = []
    shared: list[int] = []

    def stepping(rewrites: bool):
        def setup(params, max_norm):
            shared.append(id(params[0]))

            def step():
                seen.append((float(sum(p.detach().abs().sum() for p in params)),
                             float(sum(p.grad.abs().sum() for p in params))))
                with torch.no_grad():
                    for p in params:
                        p.sub_(1e-2 * p.grad)
                        if rewrites:
                            p.grad.mul_(0.5)  # as clip_grad_norm_ does
            return step
        return setup

    fakes = [_fake("torch for-loop", stepping(True)), _fake("fusedopt reads", stepping(False))]
    result = runner.run_group(TINY, "sgd", fakes, rounds=1, warmup=0, **SMALL_RUN)
    assert len(set(shared)) == 1
    init, grads, _ = runner.case_tensors(TINY, 0, torch.device("cpu"))
    drawn = (float(sum(p.abs().sum() for p in init)), float(sum(g.abs().sum() for g in grads)))
    assert seen[0] == pytest.approx(drawn) and seen[1] == pytest.approx(drawn)
    assert all(r.check_error == 0.0 and r.wrong is None for r in result.rows)


def test_a_case_draws_its_tensors_once_and_no_row_writes_them():
    """Every optimizer of a case starts from the same params and grads, drawn once; the rows (torch's clipping
    ones rewrite their grads) leave the shared tensors as drawn, so the next optimizer starts from them too."""
    cpu = torch.device("cpu")
    init, grads, max_norm = runner.case_tensors(TINY, 0, cpu)
    before = [t.clone() for t in init + grads]
    result = runner.run_group(TINY, "adamw", impls.impls_for("adamw", ["cpu"]), rounds=1, warmup=0, **SMALL_RUN)
    assert all(r.wrong is None and r.skipped is None for r in result.rows)
    again = runner.case_tensors(TINY, 0, cpu)
    assert again[0] is init and again[1] is grads and result.max_norm == max_norm
    assert all(torch.equal(a, b) for a, b in zip(init + grads, before))
    other = cases.Case("other", ((3,),), "one tensor")
    assert runner.case_tensors(other, 0, cpu)[0][0].shape == (3,)  # another case replaces the cached one
    assert runner.case_tensors(TINY, 0, cpu)[0] is not init


def test_untimed_ways_serve_as_the_reference_and_are_not_timed():
    """--untimed for-loop (the GPU check's many small tensors): the for-loop row takes the check step, the other
    rows are checked against it, and it is then left out of the timing, saying so in its row and the verdict."""
    calls: list[str] = []
    fakes = [_fake("torch for-loop", _sgd_like(calls, "ref")), _fake("torch foreach", _sgd_like(calls, "each")),
             _fake("fusedopt bad", _sgd_like(calls, "bad", 2e-2)), _fake("fusedopt x", _sgd_like(calls, "x"))]
    result = runner.run_group(TINY, "sgd", fakes, rounds=2, warmup=0, untimed=frozenset({"for-loop"}), **SMALL_RUN)
    ref, each, bad, x = result.rows
    assert calls.count("ref") == 1 and ref.times == [] and ref.untimed == "checked, not timed (--untimed for-loop)"
    assert bad.wrong is not None and "torch for-loop" in bad.wrong
    assert len(each.times) == 2 and len(x.times) == 2 and x.check_error == 0.0
    rows = report.summarize(result)
    assert rows[0]["status"] == "untimed" and rows[0]["reason"] == ref.untimed and rows[0]["median_s"] is None
    assert rows[3]["torch_best"] == "torch foreach"
    assert "Checked but not timed (--untimed), so not among torch's fastest: torch for-loop." in report.verdict(rows)


def test_optional_rows_are_skipped_with_the_reason_and_torch_errors_propagate():
    def failing(params, max_norm):
        raise RuntimeError("kernel not built")

    fakes = [_fake("torch for-loop", _sgd_like([], "A")), _fake("fusedopt wip", failing, optional=True)]
    result = runner.run_group(TINY, "sgd", fakes, rounds=1, warmup=0, **SMALL_RUN)
    assert result.rows[1].skipped == "RuntimeError: kernel not built" and result.rows[1].times == []
    assert report.summarize(result)[1]["status"] == "skipped"
    with pytest.raises(RuntimeError, match="kernel not built"):
        runner.run_group(TINY, "sgd", [_fake("torch for-loop", failing)], rounds=1, warmup=0, **SMALL_RUN)
    with pytest.raises(RuntimeError, match="reference row"):
        runner.run_group(TINY, "sgd", [_fake("fusedopt alone", _sgd_like([], "B"))], rounds=1, warmup=0, **SMALL_RUN)


# The baseline's ways per algorithm with torch 2.13 (fused only for SGD, Adam, AdamW, Adagrad; torch.optim has no
# Lion: lion-pytorch is its baseline).
WAYS = {o: ("lion-pytorch",) if o == "lion" else ("for-loop", "foreach", "fused")
        if o in ("sgd", "adam", "adamw", "adagrad") else ("for-loop", "foreach") for o in FLOORS}
ODD = cases.Case("odd", ((4097,), (3, 5), (1,)), "odd sizes")


def test_baseline_ways_per_algorithm_and_the_absent_ones():
    for optim, ways in WAYS.items():
        rows = impls.impls_for(optim, ["cpu"])
        for clipped in (False, True):
            base = [i for i in rows if i.family == "torch" and i.clipped == clipped]
            assert tuple(i.variant for i in base) == ways, optim
            assert not any(i.optional for i in base)
        absent = impls.absent_variants(optim)
        if optim == "lion":
            assert absent == {}
        else:
            assert set(absent) == {"fused"} - set(ways), optim
            assert all("unexpected keyword argument 'fused'" in why for why in absent.values())
    args = cli.parse_args(["--device", "cpu", "--optim", "all"])
    absent, dropped = cli.baseline_absences(args.optim, torch.device("cpu"))
    assert dropped == {} and set(absent) == {o for o, w in WAYS.items() if "fused" not in w and o != "lion"}
    text = cli.describe_absences(absent, dropped)
    assert "fused: RMSprop (momentum), Adamax, NAdam, RAdam, Adadelta, Rprop, ASGD" in text


def test_lion_runs_against_lion_pytorch():
    import lion_pytorch

    rows = impls.impls_for("lion", ["cpu"])
    assert [i.name for i in rows] == ["lion-pytorch", "fusedopt cpu", "lion-pytorch + clip/check",
                                      "fusedopt cpu + clip/check"]
    assert [impls.reference_of(i) for i in rows] == ["lion-pytorch", "lion-pytorch", "lion-pytorch + clip/check",
                                                     "lion-pytorch + clip/check"]
    assert rows[0].family == "torch" and rows[0].variant == "lion-pytorch"
    p = torch.zeros(3, requires_grad=True)
    opt = impls.baseline_optimizer(impls.OPTIMS["lion"], "lion-pytorch", [p])
    assert isinstance(opt, lion_pytorch.Lion) and opt.update_fn is lion_pytorch.lion_pytorch.update_fn  # no Triton
    assert opt.defaults == dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=1e-2)


def test_an_algorithm_whose_reference_cannot_run_is_left_out(monkeypatch):
    impls._probe.cache_clear()
    try:
        monkeypatch.setitem(sys.modules, "lion_pytorch", None)  # import raises ImportError
        absent, dropped = cli.baseline_absences(["adamw", "lion"], torch.device("cpu"))
        assert absent == {} and list(dropped) == ["lion"]
        assert "its reference lion-pytorch cannot run here (ModuleNotFoundError" in dropped["lion"]
        assert "Left out: Lion (its reference lion-pytorch" in report.verdict([], None, absent, dropped)
    finally:
        monkeypatch.undo()
        impls._probe.cache_clear()


@pytest.fixture
def kernels_for_every_rule(monkeypatch):
    """A stand-in cpu backend with every rule (the reference's bodies behind the backend's name), so every fusedopt
    row runs here before its compiled kernel lands."""
    from fusedopt import ops, reference

    monkeypatch.setitem(ops.BACKENDS, "cpu", types.SimpleNamespace(
        check=reference.check, update=reference.update, RULES=frozenset(reference.RULE_BODIES)))


def test_every_row_takes_a_step_that_agrees_with_its_baseline(kernels_for_every_rule):
    for optim in impls.OPTIMS:
        result = runner.run_group(ODD, optim, impls.impls_for(optim, ["cpu"]), rounds=1, warmup=0, **SMALL_RUN)
        assert all(r.wrong is None and r.skipped is None and len(r.times) == 1 for r in result.rows), [
            (optim, r.impl.name, r.wrong, r.skipped) for r in result.rows]
        assert len(result.rows) == 2 * (len(WAYS[optim]) + 1)
        for d in report.summarize(result):
            assert d["bytes_per_param"] == FLOORS[optim][2] + (4 if d["job"] != "update" else 0), (optim, d["impl"])


def test_rows_without_a_compiled_kernel_are_skipped_saying_so():
    from fusedopt import ops

    backends, excluded = impls.fusedopt_backends(torch.device("cpu"))
    assert backends == ["cpu"] and "reference" in excluded and "triton" not in backends
    has = ops.rules_of(ops.BACKENDS["cpu"])
    rows = []
    for optim in impls.OPTIMS:
        result = runner.run_group(ODD, optim, impls.impls_for(optim, backends), rounds=1, warmup=0, **SMALL_RUN)
        rule = optims.traffic(optim).rule
        for r in result.rows:
            assert r.wrong is None, (optim, r.impl.name, r.wrong)
            if r.impl.family == "torch" or rule in has:
                assert r.skipped is None and r.times, (optim, r.impl.name, r.skipped)
            else:
                assert r.skipped == (f"NoKernel: fusedopt's cpu backend has no compiled kernel for the update rule "
                                     f"{rule!r} yet (backend='auto' would run the pure-torch reference): not timed")
                assert r.times == [] and r.steps == 0  # never stepped: nothing ran under the kernel's name
        rows += report.summarize(result)
    missing = [o for o in impls.OPTIMS if optims.traffic(o).rule not in has]
    text = report.verdict(rows)
    if missing:
        labels = ", ".join(impls.OPTIMS[o].label for o in missing)
        assert f"No compiled kernel yet, so fusedopt's rows were skipped (the pure-torch reference that " \
               f"backend='auto' falls back to is not timed): cpu: {labels}." in text
        assert "Skipped after an error" not in text
        summary = report.format_summary(rows)
        assert all(line.rstrip().endswith("-") for line in summary.splitlines() if "no kernel yet" in line)
        assert summary.count("no kernel yet") == len(missing)
    # A dtype the kernels do not take would run on the reference too: skipped, naming what would have run.
    odd64 = replace(ODD, dtype=torch.float64)
    result = runner.run_group(odd64, "sgd", impls.impls_for("sgd", backends), rounds=1, warmup=0, **SMALL_RUN)
    ours = [r for r in result.rows if r.impl.family == "fusedopt"]
    assert all(r.skipped == "NoKernel: fusedopt's cpu backend would run 'sgd' on cpu torch.float64 on the reference "
                            "backend: not timed" for r in ours)


def test_backends_come_from_ops_and_leave_out_the_reference_and_triton_on_cpu(monkeypatch):
    from fusedopt import ops

    monkeypatch.setitem(ops.BACKENDS, "triton", object())
    monkeypatch.setitem(ops.BACKENDS, "cuda", object())
    real_resolve = ops.resolve

    def resolve(name, device, dtype, rule=None):
        if name == "cuda" and device.type != "cuda":
            raise RuntimeError("cannot run tensors on device cpu")
        return real_resolve(name, device, dtype, rule)

    monkeypatch.setattr(ops, "resolve", resolve)
    names, excluded = impls.fusedopt_backends(torch.device("cpu"))
    assert "reference" not in names and "triton" not in names and "cuda" not in names
    assert "interpreter" in excluded["triton"] and "cannot run" in excluded["cuda"]
    rows = impls.impls_for("adam", names)
    assert [i.name for i in rows[:3]] == ["torch for-loop", "torch foreach", "torch fused"]
    assert sum(i.clipped for i in rows) == len(rows) // 2


# --- report ----------------------------------------------------------------------------------------------------

def _fake_group(suite="model", name="fake", n=10**6, optim="adamw", ours=(0.002, 0.002, 0.001),
                probe_times=(1e-6, 2e-6, 2e-6), torch_scale=1.0) -> runner.GroupResult:
    """Rows of one group with made-up times: the probe moves 12 KB (6 GB/s median by default); torch's times are
    multiplied by `torch_scale`; ours are fusedopt's bare update."""
    case = cases.Case(name, ((n,),), f"{n} params", suite=suite)
    noop = lambda params, max_norm: None  # noqa: E731

    def mk(name, clipped=False, **kw):
        return Impl(name, optim, "torch" if name.startswith("torch") else "fusedopt", name.split()[1], clipped, noop,
                    **kw)

    ts = lambda *xs: [x * torch_scale for x in xs]  # noqa: E731
    rows = [
        runner.RowResult(mk("torch for-loop"), times=ts(0.008, 0.008, 0.008), peak_extra_bytes=0),
        runner.RowResult(mk("torch fused"), times=ts(0.004, 0.002, 0.004), peak_extra_bytes=0),
        runner.RowResult(mk("fusedopt cpu", fp32_states=True), times=list(ours), peak_extra_bytes=400_000),
        runner.RowResult(mk("torch fused + clip/check", True), times=ts(0.006, 0.006, 0.006), peak_extra_bytes=4000),
        runner.RowResult(mk("fusedopt cpu + clip/check", True, fp32_states=True),
                         times=[1.5 * t for t in ours]),
        runner.RowResult(mk("fusedopt broken + clip/check", True), wrong="after one step, params differ"),
        runner.RowResult(mk("fusedopt gone"), skipped="ImportError: no"),
    ]
    probes = {"triad": runner.ProbeResult("triad", 12_000, list(probe_times)),
              "axpy": runner.ProbeResult("axpy", 12_000, [1e-6])}
    return runner.GroupResult(case, optim, "cpu", rows, probes, "triad", 1.0, 1.0, others_cpu_share=0.01)


def test_summarize_numbers():
    rows = report.summarize(_fake_group())
    assert all(set(d) == set(report.ROW_KEYS) for d in rows)
    loop, fused, ours, fused_c, ours_c, broken, gone = rows
    assert fused["roofline_gbps"] == pytest.approx(6.0) and fused["roofline_best_gbps"] == pytest.approx(12.0)
    assert fused["median_s"] == 0.004 and fused["p20_s"] == pytest.approx(0.0028) and fused["best_s"] == 0.002
    assert fused["bytes_per_param"] == 28 and fused["bytes_per_step"] == 28_000_000
    assert fused["gbps"] == pytest.approx(28e6 / 0.004 / 1e9)
    assert fused["roofline_fraction"] == pytest.approx((28e6 / 6e9) / 0.004)
    assert fused["torch_best"] == "torch fused" and fused["speedup_vs_torch_best"] == 1.0
    assert loop["speedup_vs_torch_best"] == pytest.approx(0.5)  # ratios 0.5, 0.25, 0.5
    assert ours["speedup_vs_torch_best"] == pytest.approx(2.0)  # ratios 2, 1, 4
    assert ours["peak_extra_fraction"] == pytest.approx(0.1)
    assert ours_c["bytes_per_param"] == 32 and ours_c["torch_best"] == "torch fused + clip/check"
    assert ours_c["speedup_vs_torch_best"] == pytest.approx(2.0)
    assert broken["status"] == "wrong" and broken["median_s"] is None and broken["speedup_vs_torch_best"] is None
    assert gone["status"] == "skipped" and gone["reason"] == "ImportError: no"


def test_format_group():
    text = report.format_group(report.summarize(_fake_group()))
    assert text.splitlines()[0].startswith("1000000 params | AdamW | roofline: triad 6.0 GB/s median, 12.0 best")
    assert "launches" not in text  # CPU rows: no launch/sync columns
    assert "fusedopt cpu + clip/check" in text and "2.00x" in text and "391 KiB (10%)" in text
    assert "WRONG: fusedopt broken + clip/check: after one step" in text
    assert "SKIPPED: fusedopt gone: ImportError: no" in text
    group = _fake_group()
    group.rows[2].launches, group.rows[2].syncs = 3, 0
    gpu_text = report.format_group(report.summarize(group))
    assert "launches" in gpu_text and "syncs" in gpu_text


def _sweep_rows() -> list[dict]:
    rows = []
    # Roofline 8 GB/s. fusedopt's clipped step (1.5x its bare update) is overhead-bound at 1K (0.41 of the roofline
    # at 10 us), bandwidth-bound from 64K; torch's fastest only reaches half the roofline at 4M.
    for n, ours, torch_scale in ((1024, 10e-6 / 1.5, 100e-6 / 6e-3), (65536, 300e-6 / 1.5, 1e-3 / 6e-3),
                                 (2**22, 20e-3 / 1.5, 30e-3 / 6e-3)):
        rows += report.summarize(_fake_group("sweep", f"sweep-{n}", n, ours=(ours,) * 3, probe_times=(1.5e-6,) * 3,
                                             torch_scale=torch_scale))
    return rows


def test_format_sweep_and_verdict_sentences():
    rows = _sweep_rows()
    table = report.format_sweep(rows)
    assert "sweep | AdamW | update" in table and "sweep | AdamW | clip+check+update" in table
    assert "1.02K" in table and "4.19M" in table and "wrong" in table
    model = report.summarize(_fake_group())
    text = report.verdict(model + rows, excluded={"reference": "the pure-torch oracle"})
    assert "\n" not in text  # one paragraph
    assert "On the model suite (1000000 params; AdamW), fusedopt's clipped, checked step (cpu) ran 2.00x" in text
    assert "at 1.78 of the roofline (torch's fastest: 0.89)" in text
    assert "its bare update ran 2.00x torch's fastest bare update" in text
    assert "torch's fastest reaches half the roofline from 4.19M params on and fusedopt from 65.5K params on" in text
    assert "at 1.02K params a step is per-step overhead: fusedopt 10 us, torch 100 us" in text
    assert "row(s) disagreed with torch" in text and "fusedopt broken + clip/check" in text
    assert "Skipped after an error: fusedopt gone" in text
    assert "Backends left out: reference (the pure-torch oracle)" in text
    assert "noisy" in text and "Other processes" not in text


def test_verdict_flags_busy_machines_and_missing_fusedopt():
    group = _fake_group()
    group.others_cpu_share = 0.5
    group.rows = group.rows[:2] + group.rows[3:4]
    text = report.verdict(report.summarize(group))
    assert "no fusedopt row ran" in text and "Other processes used up to 50% of the CPUs" in text
    assert report.verdict([]) == "No rows ran."


def test_summary_table_per_case_and_optimizer():
    rows = report.summarize(_fake_group()) + report.summarize(_fake_group(optim="adagrad"))
    no_kernel = _fake_group(optim="lion")
    for r in no_kernel.rows:
        if r.impl.family == "fusedopt":
            r.times, r.wrong, r.skipped = [], None, "NoKernel: fusedopt's cpu backend has no compiled kernel"
    rows += report.summarize(no_kernel)
    text = report.format_summary(rows)
    lines = text.splitlines()
    assert lines[0].startswith("summary | clipped, checked step") and len(lines) == 2 + 3
    assert "fake (1 tensors, 1M)" in lines[2] and "AdamW" in lines[2] and "torch fused: 6 ms" in lines[2]
    assert "cpu: 3 ms" in lines[2] and "2.00x" in lines[2] and "0.89 / 1.78" in lines[2]
    assert "Adagrad" in lines[3] and "Lion" in lines[4] and "no kernel yet" in lines[4]
    md = report.format_summary(rows, markdown=True)
    assert "| case | optimizer | torch's fastest whole step |" in md
    assert report.format_summary(_sweep_rows()) == ""


def test_plots_of_many_algorithms(tmp_path):
    rows = []
    for optim in impls.OPTIMS:
        rows += report.summarize(_fake_group(optim=optim))
        rows += report.summarize(_fake_group("sweep", "sweep-1024", 1024, optim=optim))
        rows += report.summarize(_fake_group("sweep", "sweep-4096", 4096, optim=optim))
    data = report.load_json(_saved(tmp_path, rows=rows))
    paths = plot.plot_all(data, tmp_path / "many")
    assert [p.name for p in paths] == ["many-sweep.png", "many-speedup.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 10_000


# --- JSON, compare, plots --------------------------------------------------------------------------------------

def _saved(tmp_path, name="a.json", rows=None) -> Path:
    env = report.environment(torch.device("cpu"), ["cpu"], {"reference": "oracle"})
    rows = rows if rows is not None else report.summarize(_fake_group()) + _sweep_rows()
    path = tmp_path / name
    report.write_json(path, env, dict(repeats=3), rows, report.verdict(rows))
    return path


def test_json_schema_round_trip_and_validation(tmp_path):
    data = report.load_json(_saved(tmp_path))
    assert data["schema"] == report.SCHEMA and set(report.ENV_KEYS) <= data["env"].keys()
    assert data["env"]["device_type"] == "cpu" and data["env"]["cpu_count"] >= 1
    assert data["env"]["fusedopt_backends"] == ["cpu"] and data["verdict"]
    assert report.machine_slug(data["env"]) == f"cpu-{data['env']['cpu_count']}core"
    assert report.machine_slug(dict(device_type="cuda", device_name="NVIDIA H100 80GB HBM3")) == "nvidia-h100-80gb-hbm3"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(schema=2, env={}, config={}, rows=[{"case": "x"}], verdict="")))
    with pytest.raises(ValueError, match="env lacks 'date'.*rows\\[0\\] lacks"):
        report.load_json(bad)
    bad.write_text(json.dumps(dict(schema=1)))
    with pytest.raises(ValueError, match="schema is 1"):
        report.load_json(bad)


def test_compare_two_runs(tmp_path):
    a = report.load_json(_saved(tmp_path, "a.json"))
    faster = report.summarize(_fake_group(ours=(0.001, 0.001, 0.001)))
    b = report.load_json(_saved(tmp_path, "b.json", faster))
    text = report.compare(a, b)
    assert "fake adamw fusedopt cpu " in text and "-50.0% *" in text  # 2 ms -> 1 ms, ranges apart
    assert "fake adamw torch fused " in text and "+0.0%" in text
    assert "rows in common" in text
    assert "No rows in common" in report.compare(a, dict(b, rows=[]))


def test_plots_are_written_from_json(tmp_path):
    data = report.load_json(_saved(tmp_path))
    paths = plot.plot_all(data, tmp_path / "run")
    assert [p.name for p in paths] == ["run-sweep.png", "run-speedup.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 10_000
    only_model = dict(data, rows=[d for d in data["rows"] if d["suite"] != "sweep"])
    assert [p.name for p in plot.plot_all(only_model, tmp_path / "m")] == ["m-speedup.png"]


# --- progress bar ----------------------------------------------------------------------------------------------

def test_progress_bar():
    assert progress.render(5, 10, "x", 10.0, width=10) == "[#####.....]  50% 10 s, ~10 s left  x"
    assert progress.render(10, 10, "done", 3.0, width=4).startswith("[####] 100% 3 s  done")
    out = io.StringIO()
    bar = progress.Progress(20, out)
    for i in range(20):
        bar(f"step {i}")
    bar.message("hello")
    lines = out.getvalue().splitlines()
    assert len(lines) == 12 and lines[-1] == "hello"  # not a terminal: the first tick, then a line per tenth


def test_progress_bar_redraws_in_place_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    bar = progress.Progress(3, out)
    bar("a")
    bar("b")
    bar.message("table follows")
    bar("c")
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 5 and "\rtable follows\n\r" in text  # 3 redraws; the message clears the line
    assert "100% 0 s  c" in text and text.endswith("\n")


# --- CLI -------------------------------------------------------------------------------------------------------

def test_arguments():
    args = cli.parse_args(["--device", "cpu"])
    assert args.suite == list(cases.SUITES) and args.optim == ["sgd", "adam", "adamw"] and args.repeats == 7
    assert cli.parse_args(["--optim", "all"]).optim == list(impls.OPTIMS)
    assert cli.parse_args(["--optim", "lion,rprop"]).optim == ["lion", "rprop"]
    assert cli.parse_args(["--suite", "sweep,model", "--optim", "adamw", "--quick"]).suite == ["sweep", "model"]
    assert cli.parse_args(["--model", "gpt2-small"]).model == ["gpt2-small"]
    assert cli.parse_args([]).model is None
    for bad in (["--repeats", "0"], ["--suite", "bogus"], ["--optim", "lamb"], ["--optim", "all,sgd"],
                ["--sweep-max", "10"]):
        with pytest.raises(SystemExit):
            cli.parse_args(bad)


def test_plan_scales_to_memory_and_says_so(monkeypatch):
    case = cases.model_case(cases.MODELS["gpt2-small"], 1)
    # AdamW, 8 rows: 8 * (m, v) + drawn params and grads, shared params and grads, the reference's result = 21
    # fp32 tensors; with 2 rows not timed, only one of them holds its states at a time: 7 * 2 + 5
    rows = impls.impls_for("adamw", ["cpu"])
    assert len(rows) == 8 and cli.group_bytes(case, "adamw", rows) == 21 * 4 * case.n_params
    assert cli.group_bytes(case, "adamw", rows[2:], rows[:2]) == 19 * 4 * case.n_params
    # bf16 params: torch's 6 rows keep bf16 (m, v), fusedopt's fp32 ones, its master row 4 bytes more, its
    # remainder row 2; five bf16 sets
    bf16 = replace(case, dtype=torch.bfloat16)
    mixed = impls.impls_for("adamw", ["cpu"], masters=("none", "master", "remainder"))
    assert cli.group_bytes(bf16, "adamw", mixed) == (6 * 4 + 2 * (8 + 12 + 10) + 5 * 2) * case.n_params
    monkeypatch.setattr(cli, "available_bytes", lambda device: 2 * 21 * 4 * 40_000_000)
    args = cli.parse_args(["--device", "cpu", "--full", "--optim", "adamw"])
    groups = cli.plan(args, torch.device("cpu"), ["cpu"])
    model = [c for c, _ in groups if c.suite == "model"]
    assert [c.scale for c in model] == [2, 8, 1]
    assert max(c.n_params for c, _ in groups if c.suite == "sweep") == 4**7 * 1024
    text = cli.describe_plan(args, groups)
    assert "scaled to 1/2" in text and "what memory allows" not in text and "memory allows" in text


def test_quick_run_writes_json_and_plots_and_replots(tmp_path, capsys):
    path = tmp_path / "out" / "run.json"
    assert cli.main(["--quick", "--device", "cpu", "--suite", "many-small,sweep", "--optim", "adamw",
                     "--sweep-max", "4096", "--repeats", "2", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Plan: AdamW on" in out and "64 tensors of 256 params" in out and "Verdict: " in out
    assert "sweep | AdamW | update" in out and f"wrote {path}" in out
    data = report.load_json(path)
    assert data["config"]["repeats"] == 2 and data["config"]["quick"] is True
    assert {d["case"] for d in data["rows"]} == {"many-small", "sweep-1024", "sweep-4096"}
    for d in data["rows"]:
        assert d["status"] == "ok", d
        assert len(d["times_s"]) == 2 and math.isfinite(d["gbps"]) and d["p20_s"] <= d["median_s"] <= d["p80_s"]
    assert (tmp_path / "out" / "run-sweep.png").exists() and (tmp_path / "out" / "run-speedup.png").exists()
    assert cli.main(["plot", str(path), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again-speedup.png").read_bytes()[:8] == PNG_MAGIC
    capsys.readouterr()
    assert cli.main(["plot", str(path), "--out", str(tmp_path / "md"), "--markdown"]) == 0
    md = capsys.readouterr().out
    assert "| implementation | B/param |" in md and "| --- | ---: |" in md and "| params | roofline |" in md
    assert data["verdict"] in md
    assert cli.main(["--compare", str(path), str(path)]) == 0
    assert "B's median time is 1.00x A's" in capsys.readouterr().out


def test_quick_run_of_every_algorithm(tmp_path, capsys):
    from fusedopt import ops

    path = tmp_path / "all.json"
    assert cli.main(["--quick", "--device", "cpu", "--suite", "sweep", "--sweep-max", "1024", "--optim", "all",
                     "--repeats", "1", "--warmup", "0", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "absent (raises here; the errors are in the JSON): fused: RMSprop (momentum), Adamax" in out
    assert "sweep | Lion | clip+check+update" in out and "sweep | Rprop | update" in out
    data = report.load_json(path)
    assert data["config"]["optims"] == list(impls.OPTIMS) and data["config"]["left_out"] == {}
    assert set(data["config"]["absent_variants"]) == {"rmsprop", "adamax", "nadam", "radam", "adadelta", "rprop",
                                                      "asgd"}
    has = ops.rules_of(ops.BACKENDS["cpu"])
    for d in data["rows"]:
        assert d["bytes_per_param"] == FLOORS[d["optim"]][2] + (4 if d["job"] != "update" else 0)
        kernel = d["family"] == "torch" or optims.traffic(d["optim"]).rule in has
        assert d["status"] == ("ok" if kernel else "skipped"), d
        assert kernel or report.is_no_kernel(d)
    assert {(d["optim"], d["impl"]) for d in data["rows"]} >= {("lion", "lion-pytorch"), ("adagrad", "torch fused")}
    assert ("rmsprop", "torch fused") not in {(d["optim"], d["impl"]) for d in data["rows"]}
    png = tmp_path / "all-sweep.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000


def test_quick_run_as_module():
    proc = subprocess.run([sys.executable, "-m", "fusedopt.bench", "--quick", "--device", "cpu", "--suite", "sweep",
                           "--sweep-max", "1024", "--optim", "sgd", "--repeats", "1", "--warmup", "0"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "sweep | SGD (Nesterov) | clip+check+update" in proc.stdout
    assert "STAGE:" not in proc.stderr and "100%" in proc.stderr  # kineto chatter filtered; the bar on stderr
    assert "wrote" not in proc.stdout  # --quick writes no JSON unless asked


def test_pytest_benchmark_entry_points_are_collected_only_from_bench():
    def collect(*args):
        proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout

    rc, out = collect("bench")
    assert rc == 0, out
    assert "test_optim_steps.py::test_step[many-small-adamw-fusedopt_cpu_clip_check]" in out
    # Without --benchmark-only a bench test runs once, as a check against torch, and prints no timing table.
    proc = subprocess.run([sys.executable, "-m", "pytest", "bench", "-p", "no:cacheprovider",
                           "-k", "many-small-adamw-fusedopt_cpu_clip"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout
    assert "fusedopt bench: quick sizes, each run once as a check" in proc.stdout and "Mean" not in proc.stdout
    n = len(cases.select("model", quick=True)) + 1 + len(cases.select("sweep", quick=True))
    backends = impls.fusedopt_backends(torch.device("cpu"))[0]
    assert f"{n * sum(len(impls.impls_for(o, backends)) for o in impls.OPTIMS)} tests" in out
    assert "test_optim_steps.py::test_step[many-small-lion-lion-pytorch_clip_check]" in out
