"""bench/gpu_check.py (`make gpu-check`), without a GPU: its plan fits the device-time budget, every stage has its
own timeout, the dry run runs nothing, and pytest summaries parse into counts."""
from __future__ import annotations

import importlib.util
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
    names = [s.name for s in gpu_check.stages(tmp_path, "90", "/cuda", "compute-sanitizer")]
    assert names == ["build", "test_cuda", "test_triton_compile", "memcheck", "racecheck", "synccheck", "bench"]
    for name in names:
        assert f"[{name}] timeout" in out
    assert f"(budget {gpu_check.BUDGET_S} s)" in out
    assert not list(tmp_path.iterdir()), "a dry run writes nothing"
    assert set((ROOT / "bench" / "results").iterdir()) == before


def test_budget():
    plan = gpu_check.stages(ROOT / "x", "90", "/cuda", "compute-sanitizer")
    assert all(s.timeout_s > 0 for s in plan)
    assert gpu_check.check_budget(plan) <= 8 * 60
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
