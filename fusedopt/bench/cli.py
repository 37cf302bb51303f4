"""`python -m fusedopt.bench`: time one full clipped, checked AdamW step per implementation and case."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from . import cases, report
from .impls import IMPLS
from .runner import run_case

# --quick shrinks everything so the whole path runs in seconds (tests); its numbers mean nothing.
QUICK = dict(probe_bytes=4 * 2**20, flush_bytes=2**20)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fusedopt.bench", description=__doc__)
    p.add_argument("--case", choices=[*cases.CASES, "all"], default="all")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds; each round runs every implementation once (default 15, 3 with --quick)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per implementation first")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for testing the harness")
    p.add_argument("--json", metavar="PATH", help="also write the rows and the environment as JSON")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 15
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    env = report.environment()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 -- progress apart from the results
    sizes = QUICK if args.quick else {}
    rows = []
    for case in cases.select(args.case, args.quick):
        result = run_case(case, IMPLS, rounds=args.repeats, warmup=args.warmup, log=log, **sizes)
        case_rows = report.summarize(result)
        rows += case_rows
        print(report.format_table(case_rows) + "\n", flush=True)
    print(report.verdict(rows))
    elapsed = time.perf_counter() - start
    print(f"\n({args.repeats} interleaved rounds after {args.warmup} warm-up steps; {elapsed:.0f} s in all)")
    if args.json:
        config = dict(case=args.case, repeats=args.repeats, warmup=args.warmup, quick=args.quick, wall_s=elapsed)
        report.write_json(args.json, env, config, rows)
    return 0
