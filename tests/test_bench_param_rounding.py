"""bench/param_rounding.py runs (at tiny sizes on the CPU: the numbers mean nothing here) and prints one row per
mode and state dtype, each with its ratio to plain bf16 rounding of the same state dtype."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fusedopt import ops

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(ops.EXTENSION_ERROR is not None, reason="fusedopt._C is not built")
def test_param_rounding_bench_prints_every_mode_against_nearest():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "param_rounding.py"), "--quick", "--device", "cpu"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines() if "ms/step" in line]
    assert [(r[0], r[2]) for r in rows] == [(mode, states) for states in ("fp32", "bf16")
                                            for mode in ("nearest", "stochastic", "master", "remainder")], run.stdout
    for r in rows:
        assert re.fullmatch(r"x[0-9.]+", r[5]), r
        if r[0] == "nearest":
            assert r[5] == "x1.000", r
    for states in ("fp32", "bf16"):
        assert re.search(rf"remainder / master, states {states}: x[0-9.]+ ", run.stdout), run.stdout
