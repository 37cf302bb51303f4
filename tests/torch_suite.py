"""Run PyTorch's own optimizer test suite against torch.optim or fusedopt, on the CPU.

PyTorch's ``test/test_optim.py`` (class ``TestOptimRenewed``, generated over
``torch.testing._internal.common_optimizers.optim_db``) is not in the torch wheel and is not part of this
repository: pass the path of a copy that matches the installed torch (e.g. from a pytorch checkout at the
installed version's tag). This adapter

- keeps the entries of ``optim_db`` for the torch.optim algorithms fusedopt implements (``ALGORITHMS``), and
  with ``--optim fusedopt`` swaps fusedopt's classes in as their ``optim_cls`` (the class names, and so the
  test names, stay the same); every other field of torch's OptimizerInfo (configs, error inputs, skips,
  supported impls) is torch's own;
- generates the CPU tests only (``PYTORCH_TESTING_DEVICE_ONLY_FOR=cpu``);
- runs ``TestOptimRenewed`` with pytest and prints the passed/failed/skipped counts, in all and per algorithm;
  ``--json`` writes the outcome of every test, and ``--optim both`` runs both in subprocesses and lists the tests
  torch.optim passes that fusedopt does not;
- with fusedopt, counts the update calls each backend ran, per rule (``cpu:adam``: the compiled CPU kernel;
  ``reference:...``: the pure-torch oracle, e.g. for float64 params, which the kernels do not take), so a run
  shows which code the suite exercised (steps with ``differentiable=True`` or sparse grads run torch's own
  for-loop and call no backend).

test_optim.py imports three sibling modules of pytorch's test folder (``optim.test_lrscheduler``,
``optim.test_optim``, ``optim.test_swa_utils``) for other test classes. When they are not next to the given
file, empty stand-ins are installed under those names (this adapter runs none of those classes).

    .venv/bin/python tests/torch_suite.py /path/to/test_optim.py --optim both
    .venv/bin/python tests/torch_suite.py --optim fusedopt /path/to/test_optim.py -- -x -k test_errors
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import types
from collections import Counter
from pathlib import Path

ALGORITHMS = ("SGD", "Adam", "AdamW", "NAdam", "RAdam", "Adadelta", "Rprop", "ASGD", "Adagrad", "RMSprop", "Adamax")
SIBLINGS = {"optim.test_lrscheduler": "TestLRScheduler", "optim.test_optim": "TestDifferentiableOptimizer",
            "optim.test_swa_utils": "TestSWAUtils"}


def patch_optim_db(optim: str) -> None:
    """Restrict optim_db (in place: test_optim.py imports the list object) to ``ALGORITHMS``, and for
    ``optim == "fusedopt"`` make fusedopt's classes their ``optim_cls``. Must run before test_optim.py is
    imported, as its ``@optims(optim_db)`` decorators read the list at class creation."""
    from torch.testing._internal import common_optimizers

    db = common_optimizers.optim_db
    db[:] = [info for info in db if info.optim_cls.__name__ in ALGORITHMS]
    if optim == "fusedopt":
        import fusedopt

        for info in db:
            info.optim_cls = getattr(fusedopt, info.optim_cls.__name__)


def count_backend_calls() -> Counter:
    """Wrap every fusedopt backend's ``update`` to count its calls by ``"backend:rule"`` (the classes look the
    function up on the backend at each call)."""
    from fusedopt import ops

    calls: Counter = Counter()
    for name, backend in ops.BACKENDS.items():
        if name == "triton":  # not used on CPU tensors under backend="auto"; its attributes are computed
            continue

        def counted(rule, *args, _update=backend.update, _name=name, **kwargs):
            calls[f"{_name}:{rule}"] += 1
            return _update(rule, *args, **kwargs)

        backend.update = counted
    return calls


def per_algorithm(tests: dict[str, str]) -> dict[str, Counter]:
    """Outcome counts per algorithm, from the test names (``..._Adam_cpu_float32``)."""
    out: dict[str, Counter] = {name: Counter() for name in (*ALGORITHMS, "other")}
    for test, outcome in tests.items():
        found = re.search(r"_(" + "|".join(ALGORITHMS) + r")_cpu", test)
        out[found.group(1) if found else "other"][outcome] += 1
    return out


def _counts(counts) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def install_sibling_stand_ins(test_file: Path) -> None:
    """Empty modules for the sibling imports of test_optim.py that the given copy lacks."""
    for module_name, class_name in SIBLINGS.items():
        if (test_file.parent / (module_name.replace(".", "/") + ".py")).exists():
            continue
        package, _, _ = module_name.partition(".")
        sys.modules.setdefault(package, types.ModuleType(package))
        module = types.ModuleType(module_name, f"stand-in: torch_suite.py does not run {class_name}")
        setattr(module, class_name, type(class_name, (), {"__doc__": "not run by tests/torch_suite.py"}))
        sys.modules[module_name] = module


class Outcomes:
    """pytest plugin: the outcome of every test (its call phase; setup for skips and errors)."""

    def __init__(self) -> None:
        self.by_test: dict[str, str] = {}

    def pytest_runtest_logreport(self, report) -> None:
        name = report.nodeid.split("::", 1)[-1]
        if report.when == "call" or report.outcome != "passed":
            if report.outcome == "failed" and report.when != "call":
                self.by_test[name] = "error"
            elif report.when == "call" and hasattr(report, "wasxfail"):
                self.by_test[name] = "xfailed" if report.skipped else "xpassed"
            else:
                self.by_test.setdefault(name, report.outcome)


def run(test_file: Path, optim: str, json_path: str | None, pytest_args: list[str]) -> int:
    os.environ["PYTORCH_TESTING_DEVICE_ONLY_FOR"] = "cpu"
    import pytest

    patch_optim_db(optim)
    calls = count_backend_calls() if optim == "fusedopt" else Counter()
    install_sibling_stand_ins(test_file)
    outcomes = Outcomes()
    rc = pytest.main([str(test_file), "-q", "-p", "no:cacheprovider", "-k", "TestOptimRenewed", *pytest_args],
                     plugins=[outcomes])
    counts = Counter(outcomes.by_test.values())
    for name, algorithm_counts in per_algorithm(outcomes.by_test).items():
        if algorithm_counts:
            print(f"  {name}: {_counts(algorithm_counts)}")
    if calls:
        print("fusedopt backend update calls: " + ", ".join(f"{k} {n}" for k, n in sorted(calls.items())))
    print(f"{optim}: " + ", ".join(f"{counts[k]} {k}" for k in sorted(counts)))
    if json_path:
        Path(json_path).write_text(json.dumps({"optim": optim, "counts": counts, "tests": outcomes.by_test,
                                               "backend_calls": calls}, indent=1, sort_keys=True))
    return int(rc)


def run_both(test_file: Path, json_dir: Path, pytest_args: list[str]) -> int:
    """Both runs in fresh interpreters (optim_db is patched in place), then the tests torch passes and fusedopt
    does not."""
    json_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for optim in ("torch", "fusedopt"):
        out = json_dir / f"{optim}.json"
        out.unlink(missing_ok=True)
        extra = ["--", *pytest_args] if pytest_args else []
        # The file right before "--": argparse matches the positionals in one go.
        subprocess.run([sys.executable, __file__, "--optim", optim, "--json", str(out), str(test_file), *extra],
                       check=False)
        if not out.exists():
            raise SystemExit(f"the {optim} run wrote no outcomes ({out}): see its output above")
        results[optim] = json.loads(out.read_text())
    for optim, result in results.items():
        print(f"{optim}: {_counts(result['counts'])}")
    torch_by, fused_by = (per_algorithm(results[o]["tests"]) for o in ("torch", "fusedopt"))
    for name in torch_by:
        if torch_by[name] or fused_by.get(name):
            print(f"  {name}: torch.optim {_counts(torch_by[name])}; fusedopt {_counts(fused_by.get(name, {}))}")
    torch_tests, fused_tests = results["torch"]["tests"], results["fusedopt"]["tests"]
    behind = sorted(t for t, outcome in torch_tests.items() if outcome == "passed"
                    and fused_tests.get(t) != "passed")
    print(f"passed by torch.optim, not by fusedopt: {len(behind)}")
    for name in behind:
        print(f"  {name}: {fused_tests.get(name, 'missing')}")
    return 1 if behind else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("test_file", type=Path, help="path of pytorch's test/test_optim.py")
    parser.add_argument("--optim", choices=("torch", "fusedopt", "both"), default="both")
    parser.add_argument("--json", help="write the outcome of every test here (a folder for --optim both)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    test_file = args.test_file.resolve()
    if not test_file.is_file():
        parser.error(f"no such file: {test_file}")
    if args.optim == "both":
        json_dir = Path(args.json or tempfile.mkdtemp(prefix="torch_suite_"))
        print(f"outcomes of every test: {json_dir}/torch.json, {json_dir}/fusedopt.json")
        return run_both(test_file, json_dir, args.pytest_args)
    return run(test_file, args.optim, args.json, args.pytest_args)


if __name__ == "__main__":
    sys.exit(main())
