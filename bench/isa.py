"""A bare AdamW step on each ISA variant of the CPU loops, against torch's AdamW(fused=True), interleaved.

    python bench/isa.py                      # 16M-element fp32 tensor and 4096 x 4096 elements, 9 rounds
    python bench/isa.py --large-numel 67108864 --rounds 15 --threads 16
    python bench/isa.py --quick              # tiny sizes, 2 rounds: checks the script, means nothing
    python bench/isa.py --deepspeed --large-numel 67108864   # with DeepSpeedCPUAdam, from a venv that has deepspeed

One process, one set of params and grads per case: fusedopt.AdamW (backend="cpu", no clipping, no check) steps
them on every variant this build has and this CPU runs (``_C.set_cpu_isa`` switches between steps; the
optimizer and its state stay the same), and torch.optim.AdamW(fused=True) on the same tensors with its own
state. Each round times every entry once, in an order rotated each round (fusedopt.bench.timing.round_robin),
each sample after a cache flush and long enough for the timer not to matter, so a drift in the machine's speed
hits all entries alike. Printed per case and entry: the median step time over rounds, the bytes moved per
second (28 bytes per element: p, g, exp_avg, exp_avg_sq read, p and both states written) and the paired
per-round speedup over torch's fused step (> 1: faster than torch). Timing is only meaningful on a quiet machine.

``--deepspeed`` adds DeepSpeed's ``DeepSpeedCPUAdam(adamw_mode=True)`` (JIT-built by DeepSpeed on first use for
this CPU: -march=native, its AVX256 or AVX512 path) on the same tensors with its own state. DeepSpeed is not a
dependency of fusedopt: install it in a separate venv that also sees this checkout (e.g. a copy of .venv, whose
fusedopt-repo.pth points here, plus ``pip install deepspeed``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fusedopt  # noqa: E402
from fusedopt import ops  # noqa: E402
from fusedopt.bench.cases import MANY_SMALL, QUICK_MANY_SMALL, uniform_shapes  # noqa: E402
from fusedopt.bench.timing import (  # noqa: E402
    CacheFlusher, median, paired_speedup, repeats_for, round_robin, time_once)

BYTES_PER_ELEMENT = 28  # fp32 AdamW without amsgrad: 4 arrays read, 3 written
TORCH = "torch fused"
DEEPSPEED = "deepspeed cpu_adam"
KWARGS = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)


def cases(quick: bool, large_numel: int) -> list[tuple[str, list[tuple[int, ...]]]]:
    n_tensors, numel = QUICK_MANY_SMALL if quick else MANY_SMALL
    large = 65536 if quick else large_numel
    return [(f"one-tensor-{large}", [(large,)]),
            (f"many-small-{n_tensors}x{numel}", list(uniform_shapes(n_tensors, numel)))]


def run_case(shapes, isas: list[str], rounds: int, min_sample_s: float, flush: CacheFlusher,
             deepspeed: bool = False) -> dict[str, list[float]]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    ours = fusedopt.AdamW(params, **KWARGS, backend="cpu")
    theirs = torch.optim.AdamW(params, **KWARGS, fused=True)

    steps = {TORCH: theirs.step, **{isa: ours.step for isa in isas}}
    if deepspeed:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        steps[DEEPSPEED] = DeepSpeedCPUAdam(params, **KWARGS, adamw_mode=True).step
    repeats = {}
    for name, step in steps.items():  # state created, code paged in; then calls per sample from one timed call
        if name in isas:
            ops._C.set_cpu_isa(name)
        for _ in range(2):
            step()
        repeats[name] = repeats_for(time_once(step), min_sample_s)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for order in round_robin(list(steps), rounds):
        for name in order:
            if name in isas:
                ops._C.set_cpu_isa(name)
            flush()
            times[name].append(time_once(steps[name], repeat=repeats[name]))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    parser.add_argument("--large-numel", type=int, default=16 * 2**20, help="elements of the one-tensor case")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    parser.add_argument("--min-sample-ms", type=float, default=20.0, help="shortest timed sample (default 20)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 rounds: tests the script only")
    parser.add_argument("--deepspeed", action="store_true", help="add DeepSpeedCPUAdam (needs deepspeed installed)")
    args = parser.parse_args(argv)
    if ops.EXTENSION_ERROR is not None:
        parser.error(f"fusedopt._C is not built: {ops.EXTENSION_ERROR}")
    if args.deepspeed:
        try:
            import deepspeed.ops.adam  # noqa: F401
        except ImportError as exc:
            parser.error(f"--deepspeed needs deepspeed in this Python (not a fusedopt dependency): {exc}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = 2 if args.quick else args.rounds
    min_sample_s = 1e-4 if args.quick else args.min_sample_ms / 1e3
    available = {name: why for name, why in ops._C.cpu_isas().items()}
    isas = [name for name, why in available.items() if why is None]
    active = ops._C.cpu_isa()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fusedopt CPU variants: {', '.join(isas)}"
          f" (default {active})")
    for name, why in available.items():
        if why is not None:
            print(f"  {name}: not timed: {why}")
    flush = CacheFlusher()
    try:
        for case, shapes in cases(args.quick, args.large_numel):
            numel = sum(torch.Size(s).numel() for s in shapes)
            times = run_case(shapes, isas, rounds, min_sample_s, flush, args.deepspeed)
            print(f"{case} ({len(shapes)} tensors, {numel} elements), median of {rounds} rounds:")
            for name, samples in times.items():
                t = median(samples)
                label = f"fusedopt {name}" if name in isas else name
                print(f"  {label:<22} {t * 1e3:10.3f} ms  {BYTES_PER_ELEMENT * numel / t / 1e9:7.1f} GB/s"
                      f"  x{paired_speedup(times[TORCH], samples):.3f} vs {TORCH}")
    finally:
        ops._C.set_cpu_isa(active)
    return 0


if __name__ == "__main__":
    sys.exit(main())
