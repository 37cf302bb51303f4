"""The benchmark harness's own logic: shape tables, byte accounting, roofline math, interleaving, memory
accounting, the report, and a --quick end-to-end run."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusedopt.bench import cases, cli, impls, machine, memory, report, roofline, runner, timing
from fusedopt.bench.impls import BASELINE, Impl

REPO = Path(__file__).resolve().parents[1]


# --- cases -----------------------------------------------------------------------------------------------------

def test_gpt2_small_is_148_tensors_and_124_4m_params():
    case = cases.CASES["gpt2-small"]
    assert case.n_tensors == 148
    assert case.n_params == 124_439_808
    assert case.shapes[:2] == ((50257, 768), (1024, 768))
    assert case.shapes[2:14] == ((768,), (768,), (768, 2304), (2304,), (768, 768), (768,), (768,), (768,),
                                 (768, 3072), (3072,), (3072, 768), (768,))
    assert case.shapes[-2:] == ((768,), (768,))


def test_many_small_is_4096_tensors_of_4096():
    case = cases.CASES["many-small"]
    assert case.shapes == ((4096,),) * 4096
    assert case.n_params == 4096 * 4096


def test_quick_cases_mirror_full_ones():
    assert cases.QUICK_CASES.keys() == cases.CASES.keys()
    assert cases.QUICK_CASES["gpt2-small"].n_tensors == 148
    assert all(q.n_params < 10**6 for q in cases.QUICK_CASES.values())
    assert [c.name for c in cases.select("all", quick=True)] == list(cases.CASES)
    assert cases.select("many-small", quick=False) == [cases.CASES["many-small"]]


# --- byte accounting and roofline math -------------------------------------------------------------------------

def test_bytes_per_param():
    assert roofline.ADAMW_UPDATE_BYTES == 28
    assert roofline.CLIPPED_CHECKED_ADAMW_BYTES == 32
    by_name = {i.name: i for i in impls.IMPLS}
    assert by_name[BASELINE].bytes_per_param == 32
    assert by_name["fusedopt.AdamW(cpu)"].bytes_per_param == 32
    assert by_name["AdamW(fused), no clip/check"].bytes_per_param == 28


def test_probe_bytes_and_kernels():
    p = roofline.Probes(array_bytes=4096)
    assert p.nbytes == 12 * 1024
    p.triad()
    torch.testing.assert_close(p.a, p.b + 0.5 * p.c)
    before = p.a.clone()
    p.fn("axpy")()
    torch.testing.assert_close(p.a, before + 0.5 * p.b)
    with pytest.raises(KeyError):
        p.fn("copy")


def test_gbps_and_roofline_fraction():
    assert roofline.gbps(32e9, 2.0) == pytest.approx(16.0)
    # 10 GB at a 50 GB/s roofline takes 0.2 s; taking 0.4 s is half the roofline.
    assert roofline.roofline_fraction(10e9, 0.4, 50.0) == pytest.approx(0.5)
    n = 124_439_808
    assert roofline.roofline_fraction(32 * n, 0.1, 40.0) == pytest.approx((32 * n / 40e9) / 0.1)


# --- timing ----------------------------------------------------------------------------------------------------

def test_round_robin_rotates_through_every_position():
    items = ["a", "b", "c", "d"]
    sched = timing.round_robin(items, 8)
    assert sched[0] == items and sched[1] == ["b", "c", "d", "a"]
    assert all(sorted(r) == items for r in sched)
    for pos in range(len(items)):
        assert sorted(r[pos] for r in sched) == sorted(items * 2)
    assert timing.round_robin([], 2) == [[], []]


def test_paired_speedup_is_median_of_per_round_ratios():
    assert timing.paired_speedup([2.0, 2.0, 2.0], [1.0, 1.0, 4.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        timing.paired_speedup([1.0], [1.0, 2.0])


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
    # Two temporaries alive at once count together; one freed before the next does not.
    assert memory.peak_extra_bytes(lambda: (x + 1) * 2) >= 2 * x.nbytes


# --- runner, with fake implementations -------------------------------------------------------------------------

TINY = cases.Case("tiny", ((4, 3), (5,)), "two small tensors")
SMALL_RUN = dict(probe_bytes=1 << 16, flush_bytes=1 << 16, log=lambda msg: None)


def _recording(name: str, calls: list[str], scale: float = 0.5, rewrite: bool = False):
    def setup(params):
        def step():
            calls.append(name)
            with torch.no_grad():
                for p in params:
                    p.sub_(p.grad * 1e-3)
                    if rewrite:
                        p.grad.mul_(scale)
        return step
    return setup


def _failing(params):
    raise RuntimeError("kernel not built")


def test_run_case_interleaves_and_rotates():
    calls: list[str] = []
    fakes = [Impl(BASELINE, _recording("A", calls)), Impl("B", _recording("B", calls))]
    runner.run_case(TINY, fakes, rounds=4, warmup=0, **SMALL_RUN)
    # items [A, B, triad, axpy] rotated each round, then one profiled step each
    assert calls == ["A", "B", "B", "A", "A", "B", "A", "B", "A", "B"]


def test_run_case_restores_rewritten_grads_and_compares_params():
    seen: list[float] = []

    def setup(params):
        def step():
            seen.append(float(sum(p.grad.abs().sum() for p in params)))
            for p in params:
                p.grad.mul_(1e-4)  # as clip_grad_norm_ does
            with torch.no_grad():
                for p in params:
                    p.sub_(p.grad)
        return step

    fakes = [Impl(BASELINE, setup, rewrites_grads=True), Impl("drifts", _recording("d", []))]
    result = runner.run_case(TINY, fakes, rounds=3, warmup=2, **SMALL_RUN)
    assert len(seen) == 2 + 3 + 1 and max(seen) == pytest.approx(min(seen))
    base, drifts = result.rows
    assert len(base.times) == 3 and base.max_abs_diff == 0.0 and base.steps == 6
    assert drifts.max_abs_diff > 0  # a different update, caught
    assert set(result.probes) == {"triad", "axpy"} and all(len(p.times) == 9 for p in result.probes.values())


def test_run_case_skips_only_optional_failures():
    fakes = [Impl(BASELINE, _recording("A", [])), Impl("wip", _failing, optional=True)]
    result = runner.run_case(TINY, fakes, rounds=2, warmup=1, **SMALL_RUN)
    assert result.rows[1].skipped == "RuntimeError: kernel not built" and result.rows[1].times == []
    with pytest.raises(RuntimeError, match="kernel not built"):
        runner.run_case(TINY, [Impl("required", _failing)], rounds=1, warmup=0, **SMALL_RUN)


# --- report ----------------------------------------------------------------------------------------------------

def _fake_result() -> runner.CaseResult:
    case = cases.Case("fake", ((1000,),), "1000 params")
    rows = [
        runner.RowResult(Impl(BASELINE, _failing), times=[0.004, 0.002, 0.004], peak_extra_bytes=0, max_abs_diff=0.0),
        runner.RowResult(Impl(report.FUSEDOPT, _failing), times=[0.002, 0.002, 0.001], peak_extra_bytes=400,
                         max_abs_diff=1e-3),
        runner.RowResult(Impl(report.FOREACH, _failing), times=[], skipped="ImportError: no"),
        runner.RowResult(Impl(report.UNCLIPPED, _failing, clipped=False), times=[0.0005, 0.001, 0.001]),
    ]
    probes = {"triad": runner.ProbeResult("triad", 12_000, [1e-6, 2e-6]),
              "axpy": runner.ProbeResult("axpy", 12_000, [0.5e-6, 0.5e-6])}
    return runner.CaseResult(case, rows, probes, wall_s=1.0)


def test_summarize_numbers():
    base, ours, skipped, unclipped = report.summarize(_fake_result())
    assert base["triad_best_gbps"] == pytest.approx(12.0) and base["triad_median_gbps"] == pytest.approx(8.0)
    assert base["median_s"] == 0.004 and base["best_s"] == 0.002
    assert base["gbps_best"] == pytest.approx(32_000 / 0.002 / 1e9)
    assert base["roofline_fraction"] == pytest.approx((32_000 / 12e9) / 0.002)
    assert base["axpy_fraction"] == pytest.approx((32_000 / 24e9) / 0.002)
    assert ours["speedup_vs_baseline"] == pytest.approx(2.0)  # ratios 2, 1, 4
    assert ours["peak_extra_fraction"] == pytest.approx(0.1)
    assert skipped["median_s"] is None and skipped["speedup_vs_baseline"] is None
    assert skipped["skipped"] == "ImportError: no"
    assert unclipped["bytes_per_param"] == 28 and unclipped["gbps_best"] == pytest.approx(28_000 / 0.0005 / 1e9)


def test_table_and_verdict():
    rows = report.summarize(_fake_result())
    table = report.format_table(rows)
    assert "fake: 1 tensors, 1,000 params" in table
    assert "2.00x" in table and f"skipped {report.FOREACH}: ImportError: no" in table
    text = report.verdict(rows)
    assert "2.00x as fast as" in text
    assert "2.00x the median time of torch's fused update alone" in text
    assert "Warning" in text and report.FUSEDOPT in text  # max|dp| 1e-3 is above the tolerance
    assert "noisy" in text  # triad median is 67% of its best
    assert "Other processes" not in text


def test_verdict_tolerance_grows_with_steps_and_busy_runs_are_flagged():
    assert report.param_tolerance(10) == pytest.approx(1e-5)  # lr 1e-3
    result = _fake_result()
    result.rows[1].max_abs_diff, result.rows[1].steps = 5e-6, 10
    result.others_cpu_share = 0.5
    text = report.verdict(report.summarize(result))
    assert "Warning" not in text
    assert "Other processes used up to 50% of the CPUs" in text
    assert "Other processes took 50% of the CPUs" in report.format_table(report.summarize(result))


def test_others_cpu_share_counts_another_process():
    share = machine.OthersCpuShare()
    subprocess.run([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 0.6: pass"],
                   check=True)
    assert share.stop() > 0.3  # one busy core of two, less the interpreter's start-up


# --- end to end ------------------------------------------------------------------------------------------------

def test_quick_run_in_process_writes_json(tmp_path, capsys):
    path = tmp_path / "out" / "bench.json"
    assert cli.main(["--quick", "--case", "many-small", "--repeats", "2", "--warmup", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "many-small: 64 tensors" in out and BASELINE in out
    data = json.loads(path.read_text())
    assert {"date", "torch", "cpu_count", "platform", "git_sha", "fusedopt", "loadavg"} <= data["env"].keys()
    assert data["config"]["repeats"] == 2 and data["config"]["quick"] is True
    assert [r["impl"] for r in data["rows"]] == [i.name for i in impls.IMPLS]
    for r in data["rows"]:
        assert r["case"] == "many-small" and r["n_params"] == 64 * 256
        assert r["skipped"] is not None or (len(r["times_s"]) == 2 and math.isfinite(r["gbps_best"]))


def test_quick_run_as_module():
    proc = subprocess.run([sys.executable, "-m", "fusedopt.bench", "--quick", "--case", "gpt2-small",
                           "--repeats", "1", "--warmup", "0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "gpt2-small: 148 tensors" in proc.stdout
    assert "STAGE:" not in proc.stderr  # kineto chatter filtered
    assert "Other processes took" in proc.stdout


def test_bad_arguments_are_rejected():
    with pytest.raises(SystemExit):
        cli.parse_args(["--repeats", "0"])
    assert cli.parse_args(["--quick"]).repeats == 3 and cli.parse_args([]).repeats == 15
