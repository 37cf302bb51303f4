"""The one-command GPU check (`make gpu-check`): on a fresh GPU machine with torch, Triton, nvcc and
compute-sanitizer installed (no network, no .venv-cuda), build the CUDA extension against the installed torch, run
the CUDA, Triton and compile tests on the GPU (every update rule: every config on the CUDA backend, the configs
that take every distinct path on Triton, each rule's kernel at op level), the op tests of every rule under
compute-sanitizer, the GPU benchmark of every algorithm on GPT-2 small (124M params, full size) and 4096 tensors
of 4096 params (issue 12's targets), the bf16 modes' GPU tests and their benchmark (issue 13: master remainders
and stochastic rounding, bench/param_rounding.py), and the host CPU's ISA variants (issue 12: the x86-64-v4 loops
bit for bit, where the host has AVX-512, and bench/isa.py), and write everything under
bench/results/gpu-check-DATE/: env.json
(device, driver, CUDA, torch, Triton, nvcc, date, git sha), one log per stage, summary.json (each stage's status,
time and test counts), the benchmarks' JSON and PNGs. With --out DIR (the device tool's $OUT) it also leaves there
summary.json, the combined log and one gpu-check.tar.gz of the folder (the tool brings back at most 8 files).

The tests need two pure-Python packages of requirements.txt that the device image lacks (lion-pytorch, expecttest,
which torch's optim_db imports): `make gpu-wheels` downloads their wheels into .whl/ here; carried along (the
device tool's carry: [".whl"]), the "deps" stage installs them into the results folder, on every later stage's
PYTHONPATH. Where pytest-xdist is installed (the device image has it) the test stages run on several workers.

Every stage has its own timeout, so a hang in one still leaves the others' results; the timeouts add up to
BUDGET_S (10 minutes of device time, the machine's start not counted: with a start of 2-3 minutes, one run fits
a task's 15 minutes). How each timeout was sized is written next
to the stage (TIMEOUTS). `--dry-run` prints the plan, checks the budget and runs nothing on a GPU
(tests/test_gpu_check.py runs it in CI).

    python3 bench/gpu_check.py [--out DIR] [--dry-run] [--only STAGE,...]
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUDGET_S = 600
PY = sys.executable
WHEELS = ROOT / ".whl"
# Modules the test stages import that the device image may lack (see the module doc).
TEST_MODULES = ("pytest", "expecttest", "lion_pytorch")
XDIST_WORKERS = 8

# compute-sanitizer is slow (memcheck ~10-50x): a share of the op tests that still takes every kernel, the
# vector and scalar paths, several tables and the check pass; every rule's kernel once (bf16 params with fp32
# master copies, lr tensor, unscale and clip: the most code of each).
SANITIZE_K = ("not cuda-emu and (test_op_check or test_adam_without_amsgrad or (test_op_matches and "
              "(sgd-bfloat16-states_float32-master or adam-float32-states_bfloat16) and lr_tensor) or "
              "(test_update_op_every_rule and bfloat16-states_float32-master-lr_tensor))")

# Seconds per stage, estimated for an H100/H200 machine (16 cores) from the timings of this 2-core CPU machine and
# the bytes each benchmark step moves; README "A GPU run in one command" gives the arithmetic.
TIMEOUTS = {
    "deps": 10,  # pip installs two small pure-Python wheels from files: a few seconds
    # MAX_JOBS files at once: the longest are python.cpp (64 s on one core here, quiet) and update.cu, whose 27 s
    # for two rules and two archs here (README) scale to about 75 s for 11 rules and one arch: ~90 s wall.
    "build": 120,
    # 1,387 tests, 8 workers: ~1,200 optimizer-level ones at ~0.08 s of host work each (test_parity's: 0.05 s of CPU
    # per test here) is ~15 s a worker, plus each worker's start (~10 s) and torch.compile of one test (~30 s).
    "test_cuda": 55,
    # ~260 tests run on a GPU (the interpreter-only ones skip), ~170 compiling their own Triton specializations
    # (~1 s each, /8 workers: ~25 s), the torch.compile cases (Inductor) and the PTX check (a subprocess): ~50 s.
    "test_triton_compile": 60,
    # 19 op tests in one process; the sanitizer's start with torch and CUDA ~15-20 s, then ~1 s a test (memcheck).
    "memcheck": 45,
    "racecheck": 25,
    "synccheck": 25,
    # 12 algorithms x ~10 rows on 124M params: a step moves 2.5-5 GB (16-40 B/param), ~1-4 ms at ~3 TB/s, so the
    # ~10 steps of a row are cheap; each row's profiled step (~0.2 s), the Triton compiles (~2 per rule, ~1 s
    # each) and the process start (~8 s) dominate: ~70 s.
    "bench_gpt2": 75,
    # 12 x ~8 timed rows on 4096 tensors (steps of 1-20 ms, ~0.3 s a row with its profile), torch's for-loop
    # checked in one step each (~0.4 s, host-bound), Triton kernels from the cache: ~55 s.
    "bench_many_small": 65,
    # The GPU cases of the bf16 modes' tests (remainder == master and the checkpoints on the CUDA backend, stochastic
    # rounding's GPU test): ~60 optimizer-level cases of 5-20 steps, host-bound, on 8 workers, plus their start.
    "test_bf16_modes": 35,
    # 8 AdamW runs (4 modes x 2 state dtypes) on GPT-2 small in bf16: each draws its 124M params on the host (~1 s),
    # then 7 rounds x 20 steps of ~1-2 ms: ~15 s, plus the process start.
    "param_rounding": 40,
    # tests/test_cpu_isa.py on the host CPU (25 s of test time on 2 cores here; most cases are small).
    "cpu_isa": 25,
    # bench/isa.py's default cases (16M elements, 4096 x 4096), 9 rounds of every variant and torch's fused step,
    # 20 ms samples: ~10 s of timing on 16 cores, plus drawing the tensors.
    "bench_isa": 20,
}


@dataclass
class Stage:
    name: str
    argv: list[str]
    timeout_s: int
    env: dict[str, str] = field(default_factory=dict)
    pytest: bool = False  # parse pytest's summary line into counts


def cuda_archs() -> str:
    """The GPU's own architecture (this script runs on the machine it checks; setup.py never sniffs)."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"{major}{minor}"


def cuda_home() -> str:
    nvcc = shutil.which("nvcc")
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    return str(pathlib.Path(nvcc).resolve().parents[1]) if nvcc else "/usr/local/cuda"


def compute_sanitizer() -> str:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    return str(pathlib.Path(cuda_home()) / "bin" / "compute-sanitizer")


def wheels(folder: pathlib.Path = WHEELS) -> list[pathlib.Path]:
    return sorted(folder.glob("*.whl")) if folder.is_dir() else []


def missing_modules(site: pathlib.Path | None = None) -> list[str]:
    """TEST_MODULES that neither this Python nor the installed wheels (``site``) provide."""
    provided = {p.name.split("-")[0].lower() for p in site.iterdir()} if site is not None and site.is_dir() else set()
    return [m for m in TEST_MODULES if importlib.util.find_spec(m) is None and m not in provided]


def stages(results: pathlib.Path, archs: str, home: str, sanitizer: str, carried: list[pathlib.Path] = (),
           xdist: bool = False) -> list[Stage]:
    pytest = [PY, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider"]
    workers = ["-n", str(XDIST_WORKERS)] if xdist else []
    site = results / "site"
    common = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))} \
        if carried else {}
    build_env = {"FUSEDOPT_CUDA": "1", "FUSEDOPT_CUDA_ARCHS": archs, "CUDA_HOME": home,
                 "MAX_JOBS": str(min(16, os.cpu_count() or 1))}
    san = [sanitizer, "--error-exitcode", "1", "--tool"]
    san_env = {**common, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}  # an access past a tensor then hits unallocated memory
    san_tests = ["tests/test_cuda.py", "-x", "-k", SANITIZE_K]
    # Every algorithm; torch's for-loop is the reference each row's first step is checked against, but it is not
    # timed: on a GPU it is host-bound (about 10 launches per tensor), never torch's fastest way, and on 4096
    # tensors its steps alone would take minutes of the budget.
    bench = [PY, "-m", "fusedopt.bench", "--device", "cuda", "--optim", "all", "--repeats", "5", "--untimed",
             "for-loop"]
    t = TIMEOUTS
    plan = [Stage("deps", [PY, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                           "--target", str(site), *map(str, carried)], t["deps"])] if carried else []
    return plan + [
        Stage("build", [PY, "setup.py", "--quiet", "build_ext", "--inplace"], t["build"], build_env),
        Stage("test_cuda", pytest + workers + ["tests/test_cuda.py", "-k", "not cuda-emu"], t["test_cuda"], common,
              pytest=True),
        Stage("test_triton_compile", pytest + workers + ["tests/test_triton.py", "tests/test_compile.py"],
              t["test_triton_compile"], common, pytest=True),
        Stage("memcheck", san + ["memcheck"] + pytest + san_tests, t["memcheck"], san_env, pytest=True),
        Stage("racecheck", san + ["racecheck"] + pytest + san_tests, t["racecheck"], san_env, pytest=True),
        Stage("synccheck", san + ["synccheck"] + pytest + san_tests, t["synccheck"], san_env, pytest=True),
        Stage("bench_gpt2", bench + ["--suite", "model", "--model", "gpt2-small", "--full", "--json",
                                     str(results / "bench-gpt2-small.json")], t["bench_gpt2"], common),
        Stage("bench_many_small", bench + ["--suite", "many-small", "--json", str(results / "bench-many-small.json")],
              t["bench_many_small"], common),
        Stage("test_bf16_modes", pytest + workers + ["tests/test_master_remainder.py",
                                                     "tests/test_stochastic_rounding.py", "-k",
                                                     "(cuda or gpu) and not cuda-emu"],
              t["test_bf16_modes"], common, pytest=True),
        Stage("param_rounding", [PY, "bench/param_rounding.py", "--device", "cuda"], t["param_rounding"], common),
        Stage("cpu_isa", pytest + workers + ["tests/test_cpu_isa.py"], t["cpu_isa"], common, pytest=True),
        Stage("bench_isa", [PY, "bench/isa.py"], t["bench_isa"], common),
    ]


_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def parse_pytest_summary(output: str) -> dict[str, int]:
    """Counts from pytest's last summary line ("3 failed, 120 passed, 2 skipped in 9.1s"); {} when absent."""
    for line in reversed(output.strip().splitlines()):
        if re.search(r"\bin [\d.]+s\b", line) and _COUNT.search(line):
            counts = {}
            for number, what in _COUNT.findall(line):
                counts["errors" if what.startswith("error") else what] = int(number)
            return counts
    return {}


def check_budget(plan: list[Stage], budget_s: int = BUDGET_S) -> int:
    total = sum(s.timeout_s for s in plan)
    if total > budget_s:
        raise SystemExit(f"gpu_check: the stages' timeouts add up to {total} s, over the budget of {budget_s} s")
    return total


def _run(cmd: list[str], timeout: float = 20) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc.__class__.__name__})"


def environment() -> dict:
    import torch

    env = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "git_sha": _run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
           "python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "nvcc": _run(["nvcc", "--version"]).splitlines()[-1:],
           "driver": _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
           "nvidia_smi": _run(["nvidia-smi", "-L"])}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
    return env


def run_stage(stage: Stage, log: pathlib.Path) -> dict:
    start = time.monotonic()
    env = {**os.environ, **stage.env, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        f.write(f"$ {' '.join(f'{k}={v}' for k, v in stage.env.items())} {shlex.join(stage.argv)}\n")
        f.flush()
        try:
            rc = subprocess.run(stage.argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                timeout=stage.timeout_s).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {stage.timeout_s} s"
    result = {"status": status, "seconds": round(time.monotonic() - start, 1), "timeout_s": stage.timeout_s}
    if stage.pytest:
        result["tests"] = parse_pytest_summary(log.read_text(errors="replace"))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, help="also leave the summary, the log and a tarball here")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and check the budget; run nothing")
    parser.add_argument("--only", help="comma-separated stage names")
    args = parser.parse_args(argv)

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    results = ROOT / "bench" / "results" / f"gpu-check-{stamp}"
    carried = wheels()
    xdist = importlib.util.find_spec("xdist") is not None
    if args.dry_run:
        plan = stages(results, "90", "/usr/local/cuda", "compute-sanitizer", carried, xdist)
    else:
        plan = stages(results, os.environ.get("FUSEDOPT_CUDA_ARCHS") or cuda_archs(), cuda_home(),
                      compute_sanitizer(), carried, xdist)
    total = check_budget(plan)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in plan}
        if unknown:
            raise SystemExit(f"gpu_check: unknown stages {sorted(unknown)}")
        plan = [s for s in plan if s.name in wanted]
    for s in plan:
        print(f"[{s.name}] timeout {s.timeout_s:3d} s: {shlex.join(s.argv)}")
    print(f"total of the timeouts: {total} s (budget {BUDGET_S} s); results in {results.relative_to(ROOT)}")
    if not carried:
        print(f"no wheels in {WHEELS.relative_to(ROOT)}/ (make gpu-wheels): no deps stage")
    if args.dry_run:
        return 0

    results.mkdir(parents=True, exist_ok=True)
    summary = {"environment": environment(), "stages": {}}
    (results / "env.json").write_text(json.dumps(summary["environment"], indent=2) + "\n")
    for s in plan:
        if s.name == "build":  # after the deps stage: what the tests will import
            summary["missing_modules"] = missing_modules(results / "site")
            if summary["missing_modules"]:
                print(f"gpu_check: the tests need {', '.join(summary['missing_modules'])}, which this Python lacks: "
                      f"run `make gpu-wheels` where pip works and carry .whl/ along", flush=True)
        print(f"[{s.name}] ...", flush=True)
        summary["stages"][s.name] = run_stage(s, results / f"{s.name}.log")
        print(f"[{s.name}] {summary['stages'][s.name]}", flush=True)
        (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copy(results / "summary.json", args.out / "summary.json")
        with open(args.out / "gpu-check.log", "w") as f:
            for s in plan:
                f.write(f"===== {s.name}\n{(results / f'{s.name}.log').read_text(errors='replace')}\n")
        with tarfile.open(args.out / "gpu-check.tar.gz", "w:gz") as tar:
            tar.add(results, arcname=results.name)
    failed = [name for name, r in summary["stages"].items() if r["status"] != "ok"]
    print("gpu_check: " + ("all stages ok" if not failed else f"not ok: {', '.join(failed)}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
