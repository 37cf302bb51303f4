"""Step cost of two or more checkouts, interleaved: is a change free on the host and in the whole step?

    python bench/host_cost.py /work/main /work/wt/safe            # A/B/A/B... over --rounds rounds
    python bench/host_cost.py --quick /work/main .                 # tiny sizes: checks the script, means nothing

Each checkout must have its extension built in place (``make build``). Every (round, checkout) runs in its own
subprocess with that checkout first on ``sys.path`` (its ``fusedopt`` and its ``fusedopt/_C*.so``; the
subprocess refuses to run if another ``fusedopt`` gets imported), and the checkouts alternate within each round,
so a drift in the machine's speed hits them alike. Cases (the same shapes for every checkout, taken from this
script's own ``fusedopt.bench.cases``):

- ``host-148-adamw`` / ``host-148-sgd``: GPT-2 small's 148 tensors scaled down to a few thousand elements, so
  the step's time is its host cost (Python, validation, op calls), with ``max_grad_norm`` and
  ``nonfinite="skip"``;
- ``gpt2-small``: the whole AdamW step (clip + skip) on GPT-2 small's params (``--gpt2-scale`` divides widths);
- ``many-small``: the whole AdamW step (clip + skip) on 4096 tensors of 4096 params.

Printed: per case and checkout the median over rounds of each round's median step time, and the ratio to the
first checkout. Timing is only meaningful on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _cases(quick: bool, gpt2_scale: int) -> list[dict]:
    sys.path.insert(0, str(HERE.parent))
    from fusedopt.bench.cases import MANY_SMALL, QUICK_MANY_SMALL, gpt2_shapes, uniform_shapes

    clip_skip = {"max_grad_norm": 1.0, "nonfinite": "skip"}
    host = [list(s) for s in gpt2_shapes(scale=64)]
    n_tensors, numel = QUICK_MANY_SMALL if quick else MANY_SMALL
    steps = 5 if quick else None  # None: as many as fit the per-sample time
    return [
        dict(name="host-148-adamw", shapes=host, algorithm="AdamW", kwargs={"lr": 1e-3, **clip_skip}, steps=steps),
        dict(name="host-148-sgd", shapes=host, algorithm="SGD",
             kwargs={"lr": 1e-3, "momentum": 0.9, **clip_skip}, steps=steps),
        dict(name="gpt2-small", shapes=[list(s) for s in gpt2_shapes(scale=24 if quick else gpt2_scale)],
             algorithm="AdamW", kwargs={"lr": 1e-3, **clip_skip}, steps=steps),
        dict(name="many-small", shapes=[list(s) for s in uniform_shapes(n_tensors, numel)], algorithm="AdamW",
             kwargs={"lr": 1e-3, **clip_skip}, steps=steps),
    ]


def _worker(checkout: str, config: dict) -> None:
    """Runs in the subprocess: time every case on ``checkout``'s fusedopt; print one JSON line."""
    sys.path.insert(0, checkout)
    import time

    import torch

    import fusedopt

    where = Path(fusedopt.__file__).resolve()
    if not where.is_relative_to(Path(checkout).resolve()):
        raise SystemExit(f"imported fusedopt from {where}, not from the checkout {checkout}")
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    results = {}
    for case in config["cases"]:
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in case["shapes"]]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * 1e-3
        opt = getattr(fusedopt, case["algorithm"])(params, **case["kwargs"], backend="cpu")
        for _ in range(3):  # state created, caches warm
            opt.step()
        # Steps per sample: fixed (--quick), or enough for about 20 ms.
        steps = case["steps"]
        if steps is None:
            t0 = time.perf_counter()
            opt.step()
            steps = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-7)))
        samples = []
        for _ in range(config["samples"]):
            t0 = time.perf_counter_ns()
            for _ in range(steps):
                opt.step()
            samples.append((time.perf_counter_ns() - t0) / steps / 1e3)
        results[case["name"]] = statistics.median(samples)
    print(json.dumps({"checkout": checkout, "fusedopt": str(where), "us_per_step": results}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="+", help="repository checkouts with the extension built in place")
    parser.add_argument("--rounds", type=int, default=7, help="A/B/... rounds (default 7)")
    parser.add_argument("--samples", type=int, default=15, help="timed samples per case and round (default 15)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    parser.add_argument("--gpt2-scale", type=int, default=1, help="divide GPT-2 small's widths (default 1)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps: tests the script only")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the subprocesses")
    args = parser.parse_args(argv)
    if len(args.checkouts) < 2:
        parser.error("give two or more checkouts to compare")
    checkouts = [str(Path(c).resolve()) for c in args.checkouts]
    for checkout in checkouts:
        if not list(Path(checkout, "fusedopt").glob("_C*.so")):
            parser.error(f"{checkout}: no built extension (fusedopt/_C*.so); run `make build` there")
    config = {"cases": _cases(args.quick, args.gpt2_scale), "samples": 3 if args.quick else args.samples,
              "threads": args.threads}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    times: dict[str, dict[str, list[float]]] = {c: {} for c in checkouts}
    for r in range(args.rounds):
        for checkout in checkouts:  # alternate: A, B, ..., then again
            run = subprocess.run([args.python, str(Path(__file__).resolve()), "--worker", checkout],
                                 input=json.dumps(config), env=env, capture_output=True, text=True)
            if run.returncode != 0:
                raise SystemExit(f"the run on {checkout} failed:\n{run.stderr}")
            row = json.loads(run.stdout.strip().splitlines()[-1])
            for case, us in row["us_per_step"].items():
                times[checkout].setdefault(case, []).append(us)
            print(f"round {r + 1}/{args.rounds} {checkout}: " +
                  ", ".join(f"{case} {us:.1f} us" for case, us in row["us_per_step"].items()), file=sys.stderr)
    base = checkouts[0]
    width = max(len(c) for c in checkouts)
    print(f"median over {args.rounds} rounds of per-round median step time (us); ratio to {base}")
    for case in times[base]:
        print(f"{case}:")
        ref = statistics.median(times[base][case])
        for checkout in checkouts:
            median = statistics.median(times[checkout][case])
            print(f"  {checkout:<{width}}  {median:12.1f} us  x{median / ref:.3f}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:  # the subprocess: checkout as argument, the config on stdin
        _worker(sys.argv[2], json.load(sys.stdin))
        sys.exit(0)
    sys.exit(main())
