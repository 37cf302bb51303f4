"""bench/host_cost.py runs (at tiny sizes: the numbers mean nothing here) and compares checkouts as it says."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_host_cost_compares_two_checkouts_interleaved():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "host_cost.py"), "--quick", "--rounds", "2",
                          str(ROOT), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rounds = [line for line in run.stderr.splitlines() if line.startswith("round ")]
    assert [line.split()[1] for line in rounds] == ["1/2", "1/2", "2/2", "2/2"], run.stderr  # A, B, A, B
    for case in ("host-148-adamw", "host-148-sgd", "gpt2-small", "many-small"):
        assert f"{case}:" in run.stdout
    assert run.stdout.count("x1.000") >= 4, run.stdout


def test_host_cost_refuses_a_checkout_without_a_built_extension(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "host_cost.py"), str(ROOT), str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "no built extension" in run.stderr
