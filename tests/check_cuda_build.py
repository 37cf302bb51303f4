"""Checks a CUDA build of fusedopt._C without a GPU (run by `make test-cuda-build` from the build's lib folder):
the extension imports against the CUDA torch, registers a CUDA kernel for every op, has every update rule of
fusedopt/rules.py, and the Python layer offers backend="cuda". Prints each source file's compile time from ninja's log.

    cd BUILD_BASE/lib.* && PYTHONPATH=$PWD python tests/check_cuda_build.py BUILD_BASE   (imports its fusedopt)
"""
import os
import sys
from pathlib import Path

import torch

import fusedopt
from fusedopt import ops, rules

OPS = ("check", "update")


def main(build_base: Path) -> int:
    problems = []
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); fusedopt._C: {fusedopt.ops._C.__file__}")
    if ops.EXTENSION_ERROR is not None:
        problems.append(f"fusedopt._C failed to import: {ops.EXTENSION_ERROR}")
    elif not Path(ops._C.__file__).resolve().is_relative_to(build_base.resolve()):
        problems.append(f"imported fusedopt._C from {ops._C.__file__}, not from the CUDA build in {build_base}")
    for op in OPS:
        for key in ("CPU", "CUDA"):
            if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedopt::{op}", key):
                problems.append(f"fusedopt::{op} has no {key} kernel registered")
    if "cuda" not in ops.BACKENDS:
        problems.append("fusedopt.ops.BACKENDS has no 'cuda' backend (fusedopt._C.has_cuda is false)")
    elif ops.BACKENDS["cuda"].RULES != frozenset(rules.RULES):
        missing = sorted(frozenset(rules.RULES) - ops.BACKENDS["cuda"].RULES)
        problems.append(f"the CUDA backend lacks the update rules {', '.join(missing)} of fusedopt/rules.py")
    for log in sorted(build_base.glob("temp.*/.ninja_log")):
        latest = {}  # the log appends a line per build of an output: keep each output's last
        for line in log.read_text().splitlines()[1:]:
            start_ms, end_ms, _, output, _ = line.split("\t")
            latest[output] = (int(end_ms) - int(start_ms)) / 1000
        print(f"compile times of the last build of each file ({log}):")
        for output, seconds in latest.items():
            print(f"  {seconds:7.1f} s  {os.path.relpath(output, log.parent)}")
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print(f"CUDA build OK: {', '.join(OPS)} have CUDA kernels, for the update rules "
              f"{', '.join(sorted(ops.BACKENDS['cuda'].RULES))}; backend='cuda' available "
              f"(GPU present: {torch.cuda.is_available()})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
