"""bench/gpu_check.py (`make gpu-check`), without a GPU: its plan fits the device-time budget, every stage has its
own timeout, the dry run runs nothing, and pytest summaries parse into counts."""
from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up there
spec.loader.exec_module(gpu_check)


def test_dry_run_prints_the_plan_within_budget(tmp_path):
    before = set((ROOT / "bench" / "results").iterdir())
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    names = [s.name for s in gpu_check.stages(tmp_path, "90", "/cuda", "compute-sanitizer", gpu_check.wheels())]
    assert names[-12:] == ["build", "test_cuda", "test_triton_compile", "memcheck", "racecheck", "synccheck",
                           "bench_gpt2", "bench_many_small", "test_bf16_modes", "param_rounding", "cpu_isa", "bench_isa"]
    assert names[:-12] == (["deps"] if gpu_check.wheels() else [])
    for name in names:
        assert f"[{name}] timeout" in out
    assert f"(budget {gpu_check.BUDGET_S} s)" in out
    assert not list(tmp_path.iterdir()), "a dry run writes nothing"
    assert set((ROOT / "bench" / "results").iterdir()) == before


def test_budget():
    """Every stage, the deps stage included (wheels carried), within the budget; TIMEOUTS names every stage."""
    plan = gpu_check.stages(ROOT / "x", "90", "/cuda", "compute-sanitizer", [ROOT / ".whl" / "a.whl"], xdist=True)
    assert [s.name for s in plan] == list(gpu_check.TIMEOUTS)
    assert all(s.timeout_s > 0 for s in plan)
    assert gpu_check.check_budget(plan) <= 10 * 60  # with the machine's start, within a task's 15 minutes
    with pytest.raises(SystemExit, match="over the budget"):
        gpu_check.check_budget(plan, budget_s=100)


def test_stages_take_the_gpu_build_and_skip_the_emulation():
    plan = {s.name: s for s in gpu_check.stages(ROOT / "x", "90", "/cuda", "/cuda/bin/compute-sanitizer")}
    assert plan["build"].env["FUSEDOPT_CUDA"] == "1" and plan["build"].env["FUSEDOPT_CUDA_ARCHS"] == "90"
    assert "not cuda-emu" in plan["test_cuda"].argv
    for tool in ("memcheck", "racecheck", "synccheck"):
        argv = plan[tool].argv
        assert argv[:5] == ["/cuda/bin/compute-sanitizer", "--error-exitcode", "1", "--tool", tool]
        assert plan[tool].env["PYTORCH_NO_CUDA_MEMORY_CACHING"] == "1"
        assert "-n" not in argv  # one process under the sanitizer


def test_every_algorithm_is_covered():
    """The op test of every rule under the sanitizers, the benchmark over every algorithm on issue 12's two cases
    (GPT-2 small at full size, 4096 x 4096), torch's for-loop checked but not timed."""
    plan = {s.name: s for s in gpu_check.stages(ROOT / "x", "90", "/cuda", "compute-sanitizer")}
    assert "test_update_op_every_rule" in gpu_check.SANITIZE_K
    for name, suite in (("bench_gpt2", "model"), ("bench_many_small", "many-small")):
        argv = plan[name].argv
        for flag, value in (("--optim", "all"), ("--suite", suite), ("--untimed", "for-loop"), ("--device", "cuda")):
            assert argv[argv.index(flag) + 1] == value, (name, flag)
    gpt2 = plan["bench_gpt2"].argv
    assert gpt2[gpt2.index("--model") + 1] == "gpt2-small" and "--full" in gpt2


def test_issue_12_and_13_stages():
    """The bf16 modes' GPU tests and benchmark (issue 13: every mode side by side in one run), and the host CPU's ISA
    variants (issue 12: the x86-64-v4 loops are only tested where a CPU has AVX-512)."""
    plan = {s.name: s for s in gpu_check.stages(ROOT / "x", "90", "/cuda", "compute-sanitizer")}
    bf16 = plan["test_bf16_modes"].argv
    assert "tests/test_master_remainder.py" in bf16 and "tests/test_stochastic_rounding.py" in bf16
    assert bf16[bf16.index("-k") + 1] == "(cuda or gpu) and not cuda-emu"
    rounding = plan["param_rounding"].argv
    assert rounding[1:] == ["bench/param_rounding.py", "--device", "cuda"]
    assert plan["cpu_isa"].argv[-1] == "tests/test_cpu_isa.py" and plan["cpu_isa"].pytest
    assert plan["bench_isa"].argv[1:] == ["bench/isa.py"]


def test_carried_wheels_are_installed_first_and_on_every_later_path(tmp_path):
    wheel = tmp_path / "lion_pytorch-0.2.5-py3-none-any.whl"
    plan = gpu_check.stages(tmp_path / "results", "90", "/cuda", "compute-sanitizer", [wheel], xdist=True)
    deps = plan[0]
    site = str(tmp_path / "results" / "site")
    assert deps.name == "deps" and deps.argv[-3:] == ["--target", site, str(wheel)] and "--no-index" in deps.argv
    for s in plan[2:]:
        assert s.env["PYTHONPATH"].split(os.pathsep)[0] == site, s.name
    tests = {s.name: s for s in plan}
    assert tests["test_cuda"].argv[tests["test_cuda"].argv.index("-n") + 1] == str(gpu_check.XDIST_WORKERS)
    without = {s.name: s for s in gpu_check.stages(tmp_path, "90", "/cuda", "compute-sanitizer")}
    assert "deps" not in without and "-n" not in without["test_cuda"].argv and "PYTHONPATH" not in \
        without["test_cuda"].env


def test_missing_modules_counts_installed_wheels(tmp_path):
    site = tmp_path / "site"
    (site / "lion_pytorch").mkdir(parents=True)
    (site / "expecttest-0.3.0.dist-info").mkdir()
    assert gpu_check.missing_modules(site) == []
    assert set(gpu_check.missing_modules(tmp_path / "none")) <= {"lion_pytorch", "expecttest"}


def test_unknown_stage_is_refused():
    with pytest.raises(SystemExit, match="unknown stages"):
        gpu_check.main(["--dry-run", "--only", "build,nonsense"])


@pytest.mark.parametrize("output,counts", [
    ("....\n== 3 failed, 120 passed, 2 skipped, 4 deselected in 9.12s ==", dict(failed=3, passed=120, skipped=2,
                                                                              deselected=4)),
    ("x\n1 passed in 0.50s\n", dict(passed=1)),
    ("E   boom\n== 1 error in 2.00s ==\n", dict(errors=1)),
    ("Segmentation fault (core dumped)\n", {}),
])
def test_parse_pytest_summary(output, counts):
    assert gpu_check.parse_pytest_summary(output) == counts
