"""Step cost of two or more checkouts, in alternating blocks: is a change free on the host and in the step?

    python bench/host_cost.py /work/wt/base /work/main    # 6 rounds x 2 launches x 11 blocks A B, B A, ...
    python bench/host_cost.py --quick /work/main .          # tiny sizes: checks the script, means nothing

Each checkout must have its extension built in place (``make build``). A launch starts one worker process per
checkout, which imports that checkout's ``fusedopt`` (first on ``sys.path``; it refuses to run if another
``fusedopt`` gets imported) and builds every case once; this script then asks the workers in turn to time one
block of steps each (one untimed step first, then the same number of timed steps for every checkout: about 20 ms),
alternating the order from block to block (A B, B A, ...), so the workers never run at the same time and the drift
of a shared VM's speed, tens of percent within seconds, hits both sides of a pair alike. A process has a speed of
its own too (where its memory landed: on the 2-core VM two workers of one checkout differ by up to ~5% for their
whole life, and the one started first is ~3% faster), so workers are launched again and again: ``--rounds``
rounds of one launch per checkout, each launch of a round starting another checkout's worker first. Cases (the
same shapes for every checkout, taken from this script's own ``fusedopt.bench.cases``):

- ``host-148-adamw`` / ``host-148-sgd``: GPT-2 small's 148 tensors scaled down to a few thousand elements, so
  the step's time is its host cost (Python, validation, op calls), with ``max_grad_norm`` and
  ``nonfinite="skip"``;
- ``gpt2-small``: the whole AdamW step (clip + skip) on GPT-2 small's params (``--gpt2-scale`` divides widths);
- ``many-small``: the whole AdamW step (clip + skip) on 4096 tensors of 4096 params.

Printed per case and checkout: the median block's step time, and against the first checkout the median over the
rounds of each round's ratio (the geometric mean of its launches' median per-block ratios, in which the launch
order cancels), with a distribution-free 95% confidence interval of that median over the rounds (order statistics:
no assumption on the noise's shape; 6 or more rounds give one) and each round's ratio. ``--json PATH`` saves every
block's time. Timing is only meaningful on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BLOCK_S = 0.02  # timed seconds per block (per checkout), from the first checkout's calibration


def _cases(quick: bool, gpt2_scale: int) -> list[dict]:
    sys.path.insert(0, str(HERE.parent))
    from fusedopt.bench.cases import MANY_SMALL, QUICK_MANY_SMALL, gpt2_shapes, uniform_shapes

    clip_skip = {"max_grad_norm": 1.0, "nonfinite": "skip"}
    host = [list(s) for s in gpt2_shapes(scale=64)]
    n_tensors, numel = QUICK_MANY_SMALL if quick else MANY_SMALL
    return [
        dict(name="host-148-adamw", shapes=host, algorithm="AdamW", kwargs={"lr": 1e-3, **clip_skip}),
        dict(name="host-148-sgd", shapes=host, algorithm="SGD",
             kwargs={"lr": 1e-3, "momentum": 0.9, **clip_skip}),
        dict(name="gpt2-small", shapes=[list(s) for s in gpt2_shapes(scale=24 if quick else gpt2_scale)],
             algorithm="AdamW", kwargs={"lr": 1e-3, **clip_skip}),
        dict(name="many-small", shapes=[list(s) for s in uniform_shapes(n_tensors, numel)], algorithm="AdamW",
             kwargs={"lr": 1e-3, **clip_skip}),
    ]


def _worker(checkout: str) -> None:
    """The long-lived subprocess: the config on stdin's first line, then one request per line, one reply each."""
    sys.path.insert(0, checkout)
    import torch

    import fusedopt

    where = Path(fusedopt.__file__).resolve()
    if not where.is_relative_to(Path(checkout).resolve()):
        raise SystemExit(f"imported fusedopt from {where}, not from the checkout {checkout}")
    config = json.loads(sys.stdin.readline())
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    optimizers = {}
    for case in config["cases"]:
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(shape, generator=gen)) for shape in case["shapes"]]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen) * 1e-3
        opt = getattr(fusedopt, case["algorithm"])(params, **case["kwargs"], backend="cpu")
        for _ in range(3):  # state created, caches warm
            opt.step()
        optimizers[case["name"]] = opt
    print(json.dumps({"ready": str(where), "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        opt = optimizers[request["case"]]
        opt.step()  # untimed: this process's caches warm again after the other worker's block
        t0 = time.perf_counter_ns()
        for _ in range(request["steps"]):
            opt.step()
        print(json.dumps({"ns": time.perf_counter_ns() - t0}), flush=True)


class _Worker:
    def __init__(self, script: Path, python: str, checkout: str, config: dict, env: dict):
        self.checkout = checkout
        self.proc = subprocess.Popen([python, str(script), "--worker", checkout], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.proc.stdin.write(json.dumps(config) + "\n")
        self.proc.stdin.flush()

    def reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the worker on {self.checkout} stopped (exit status {self.proc.wait()}); "
                             "its error is above")
        return json.loads(line)

    def time_block(self, case: str, steps: int) -> float:
        """Microseconds per step over one block."""
        self.proc.stdin.write(json.dumps({"case": case, "steps": steps}) + "\n")
        self.proc.stdin.flush()
        return self.reply()["ns"] / steps / 1e3

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median: the order statistics ``[x_(k), x_(n-1-k)]``
    (0-based) with the largest k whose coverage, ``1 - 2 P(Binomial(n, 1/2) <= k)``, is at least ``level``
    (for n = 100: the 40th and 61st values, the textbook interval); the whole range when n is too small for
    any interval to reach it."""
    xs = sorted(values)
    n = len(xs)
    k, cdf = 0, 1 / 2 ** n  # cdf: P(Binomial(n, 1/2) <= k)
    while k + 1 <= (n - 1) // 2:
        wider = cdf + math.comb(n, k + 1) / 2 ** n
        if 2 * wider > 1 - level:
            break
        k, cdf = k + 1, wider
    return xs[k], xs[n - 1 - k]


def compare(checkouts: list[str], cases: list[dict], rounds: int, blocks: int, threads: int, python: str,
            progress=None) -> dict:
    """Times every case on every checkout in alternating blocks, with fresh workers at each launch: ``rounds``
    rounds of one launch per checkout, each launch starting another checkout's worker first. Returns {case:
    {"steps": n, "launches": [per launch: {"us": [per checkout: [us per step of each
    block]], "order": [per block: the checkout indices in the order they ran]}]}} (the checkouts in the given
    order; the same path twice is two workers). The steps per block are calibrated once, on the first
    checkout at the first launch."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = Path(__file__).resolve()
    config = {"cases": cases, "threads": threads}
    results = {case["name"]: {"steps": None, "launches": []} for case in cases}
    launches = rounds * len(checkouts)
    for launch in range(launches):
        # One worker after the other (two building their cases at once would compete for the cores and for
        # memory), the first one another checkout's at every launch of a round: on the 2-core VM the worker
        # started first ran ~3% faster for its whole life, two workers of one checkout included (report() takes
        # each round's geometric mean, in which that cancels).
        workers: list[_Worker | None] = [None] * len(checkouts)
        try:
            for k in range(len(checkouts)):
                i = (launch + k) % len(checkouts)
                workers[i] = _Worker(script, python, checkouts[i], config, env)
                workers[i].reply()  # ready: every case built
            for case in cases:
                name, r = case["name"], results[case["name"]]
                if r["steps"] is None:
                    first = min(workers[0].time_block(name, 1) for _ in range(3))
                    r["steps"] = max(1, int(BLOCK_S / max(first * 1e-6, 1e-7)))
                us, orders = [[] for _ in workers], []
                for b in range(blocks):
                    order = list(range(len(workers)))
                    order = order if b % 2 == 0 else order[::-1]
                    for i in order:
                        us[i].append(workers[i].time_block(name, r["steps"]))
                    orders.append(order)
                r["launches"].append({"us": us, "order": orders})
                if progress:
                    progress(name, launch + 1, launches)
        finally:
            for w in workers:
                if w is not None:
                    w.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="+", help="repository checkouts with the extension built in place")
    parser.add_argument("--rounds", type=int, default=6,
                        help="rounds of one launch of fresh workers per checkout (default 6; 6 or more give a 95%% "
                             "interval)")
    parser.add_argument("--blocks", type=int, default=11, help="alternating blocks per case and launch (default 11)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    parser.add_argument("--gpt2-scale", type=int, default=1, help="divide GPT-2 small's widths (default 1)")
    parser.add_argument("--cases", help="comma-separated case names (default: all four)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 round, 2 blocks: tests the script")
    parser.add_argument("--json", type=Path, help="also save every block's time here")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the workers")
    args = parser.parse_args(argv)
    if len(args.checkouts) < 2:
        parser.error("give two or more checkouts to compare")
    checkouts = [str(Path(c).resolve()) for c in args.checkouts]
    for checkout in checkouts:
        if not list(Path(checkout, "fusedopt").glob("_C*.so")):
            parser.error(f"{checkout}: no built extension (fusedopt/_C*.so); run `make build` there")
    rounds, blocks = (1, 2) if args.quick else (args.rounds, args.blocks)

    def progress(case, launch, n):
        print(f"{case}: launch {launch}/{n} done", file=sys.stderr)

    cases = _cases(args.quick, args.gpt2_scale)
    if args.cases:
        wanted = args.cases.split(",")
        unknown = sorted(set(wanted) - {c["name"] for c in cases})
        if unknown:
            parser.error(f"unknown case(s) {', '.join(unknown)}; the cases are {', '.join(c['name'] for c in cases)}")
        cases = [c for c in cases if c["name"] in wanted]
    started = time.time()
    results = compare(checkouts, cases, rounds, blocks, args.threads, args.python, progress)
    for line in report(checkouts, results):
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"checkouts": checkouts, "rounds": rounds, "blocks": blocks,
                                         "threads": args.threads,
                                         "machine": platform.processor() or platform.machine(),
                                         "cpus": os.cpu_count(), "started": started, "results": results}) + "\n")
    return 0


def report(checkouts: list[str], results: dict) -> list[str]:
    """Per case and checkout: the median block's step time, and against the first checkout the median over the
    rounds of each round's ratio (the geometric mean of its launches' median per-block ratios, in which the
    launch order cancels), its 95% interval over the rounds (median_ci) and every round's."""
    base = checkouts[0]
    width = max(len(c) for c in checkouts)
    per_round = len(checkouts)
    rounds = len(next(iter(results.values()))["launches"]) // per_round
    lines = [f"{rounds} rounds of {per_round} launches; us per step: median block; ratio to {base}: median over the "
             "rounds of each round's ratio [95% CI over rounds] (each round's)"]
    for name, r in results.items():
        lines.append(f"{name} ({r['steps']} steps per block):")
        for c, checkout in enumerate(checkouts):
            times = [t for launch in r["launches"] for t in launch["us"][c]]
            per_launch = [statistics.median(m / b for m, b in zip(launch["us"][c], launch["us"][0]))
                          for launch in r["launches"]]
            ratios = [math.prod(per_launch[k:k + per_round]) ** (1 / per_round)
                      for k in range(0, rounds * per_round, per_round)]
            lo, hi = median_ci(ratios)
            lines.append(f"  {checkout:<{width}}  {statistics.median(times):12.1f} us  "
                         f"x{statistics.median(ratios):.3f}  [{lo:.3f}, {hi:.3f}]  ("
                         + " ".join(f"{x:.3f}" for x in ratios) + ")")
    return lines


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:  # a worker: the checkout as argument, the config and requests on stdin
        _worker(sys.argv[2])
        sys.exit(0)
    sys.exit(main())
