"""bench/host_cost.py runs (at tiny sizes: the numbers mean nothing here) and compares checkouts as it says."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = ("host-148-adamw", "host-148-sgd", "gpt2-small", "many-small")


def _host_cost():
    spec = importlib.util.spec_from_file_location("host_cost", ROOT / "bench" / "host_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_host_cost_compares_two_checkouts_in_alternating_blocks_over_rounds_of_launches(tmp_path):
    out = tmp_path / "blocks.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "host_cost.py"), "--quick", "--json", str(out),
                          str(ROOT), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    for case in CASES:
        assert f"{case} (" in run.stdout, run.stdout
    # The first checkout is the baseline of every case: ratio 1 with a zero-width interval.
    assert run.stdout.count("x1.000  [1.000, 1.000]  (1.000)") >= len(CASES), run.stdout
    saved = json.loads(out.read_text())
    assert saved["checkouts"] == [str(ROOT), str(ROOT)] and (saved["rounds"], saved["blocks"]) == (1, 2)
    for case in CASES:
        r = saved["results"][case]
        assert r["steps"] >= 1 and len(r["launches"]) == 2  # one round: a launch per checkout
        for launch in r["launches"]:
            assert [len(us) for us in launch["us"]] == [2, 2] and all(t > 0 for us in launch["us"] for t in us)
            assert launch["order"] == [[0, 1], [1, 0]]  # A B, then B A


def test_host_cost_selects_cases_and_refuses_unknown_ones(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "host_cost.py"), "--quick", "--cases", "nope",
                          str(ROOT), str(ROOT)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "unknown case(s) nope" in run.stderr


def test_host_cost_refuses_a_checkout_without_a_built_extension(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "host_cost.py"), str(ROOT), str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "no built extension" in run.stderr


@pytest.mark.parametrize("n", [1, 2, 5, 6, 11, 50, 100, 101, 400])
def test_median_ci_is_the_narrowest_interval_of_order_statistics_with_95_percent(n):
    """[x_(k), x_(n-1-k)] (0-based) holds the median with probability 1 - 2 P(Binomial(n, 1/2) <= k): at least
    95% for the k chosen and below it for k + 1; the whole range where no interval reaches 95% (n < 6); for n =
    100 the textbook interval, the 40th and 61st values."""
    median_ci = _host_cost().median_ci
    values = [float(v) for v in range(n)][::-1]  # sorted inside
    lo, hi = median_ci(values)
    k = int(lo)
    assert hi == n - 1 - k

    def coverage(k):
        return 1 - 2 * sum(math.comb(n, j) for j in range(k + 1)) / 2 ** n

    if n < 6:
        assert k == 0 and coverage(0) < 0.95
    else:
        assert coverage(k) >= 0.95 > coverage(k + 1)
    if n == 100:
        assert (lo, hi) == (39.0, 60.0)


def test_report_takes_each_rounds_geometric_mean_so_the_launch_order_cancels():
    """Two launches per round, the worker started first 3% faster: A first gives B/A = 1.03, B first 1/1.03 (the
    same code both times); the round's ratio is 1."""
    host_cost = _host_cost()
    launch = [{"us": [[100.0] * 3, [103.0] * 3]}, {"us": [[103.0] * 3, [100.0] * 3]}]
    results = {"case": {"steps": 1, "launches": launch * 6}}
    lines = host_cost.report(["A", "B"], results)
    assert lines[0].startswith("6 rounds of 2 launches")
    assert lines[-1].split()[3:5] == ["x1.000", "[1.000,"], lines
