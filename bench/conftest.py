"""pytest-benchmark entry points for the cases of `python -m fusedopt.bench` (see test_optim_steps.py).

`pytest bench/ --benchmark-only` times every (case, optimizer, implementation) at the sizes of the default run.
Plain `pytest bench/` runs each once, at the tiny --quick sizes, as a check of the implementations against torch:
pytest-benchmark's timing is switched off then (as --benchmark-disable would), so the plain run stays short.
`--bench-size quick|default|full` overrides the sizes. `pytest tests` (CI) never looks in here.
"""
import pytest


def pytest_addoption(parser):
    parser.addoption("--bench-size", choices=("quick", "default", "full"), default=None,
                     help="case sizes for bench/ (default: 'default' with --benchmark-only, else 'quick')")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's own configure reads the option
def pytest_configure(config):
    opt = config.option
    # The sizes, read by test_optim_steps.py (through the config: two conftest modules may be loaded at once).
    timed = getattr(opt, "benchmark_only", False)
    config.fusedopt_bench_size = opt.bench_size or ("default" if timed else "quick")
    if not (getattr(opt, "benchmark_only", False) or getattr(opt, "benchmark_enable", False)
            or getattr(opt, "benchmark_skip", False)):
        opt.benchmark_disable = True


def pytest_report_header(config):
    return f"fusedopt bench: {config.fusedopt_bench_size} sizes, " + (
        "timed" if config.getoption("benchmark_only", False) else "each run once as a check (timing off; "
        "--benchmark-only times them)")

