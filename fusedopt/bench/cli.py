"""`python -m fusedopt.bench`: time optimizer steps of torch and fusedopt side by side against a roofline.

    python -m fusedopt.bench [--suite model,sweep,many-small] [--optim sgd,adam,adamw | all] [--full] ...
    python -m fusedopt.bench --master-weights none,master,remainder ...  fusedopt rows per master mode
    python -m fusedopt.bench plot FILE.json [--markdown]  re-plot a saved run (and print its tables as markdown)
    python -m fusedopt.bench --compare A.json B.json   the change from run A to run B
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from . import cases, report
from .impls import (BASELINE_VARIANTS, DEFAULT_OPTIMS, OPTIMS, Impl, absent_variants, fusedopt_backends, impls_for,
                    untimed_by)
from .progress import Progress
from .optims import traffic
from .roofline import MASTER_MODES, Probes, n_states, value_bytes
from .runner import EXTRA_TICKS, run_group
from .timing import CACHE_FLUSH_BYTES, CacheFlusher

REPO = Path(__file__).resolve().parents[2]
# Share of the available memory one group's tensors may take (the machine is shared; the OS needs the rest).
MEMORY_SHARE = {"cpu": 0.5, "cuda": 0.8}
# --quick shrinks everything so the whole path runs in seconds (tests); its numbers mean nothing.
QUICK_PROBE_BYTES = 4 * 2**20
QUICK_FLUSH_BYTES = 2**20


def _csv(choices: Sequence[str], all_word: str | None = None):
    def parse(text: str) -> list[str]:
        if all_word is not None and text.strip() == all_word:
            return list(choices)
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}; got {text!r}")
        return items
    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fusedopt.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", type=_csv(cases.SUITES), default=list(cases.SUITES),
                   help="comma-separated suites (default: all: model,sweep,many-small)")
    p.add_argument("--optim", type=_csv(list(OPTIMS), "all"), default=list(DEFAULT_OPTIMS),
                   help=f"comma-separated optimizers of {','.join(OPTIMS)}, or all (default: "
                        f"{','.join(DEFAULT_OPTIMS)}: the default run's time budget)")
    p.add_argument("--model", type=_csv(list(cases.MODELS)), default=None,
                   help=f"comma-separated models of the model suite, of {','.join(cases.MODELS)} (default: all)")
    ways = list(dict.fromkeys(v for variants in BASELINE_VARIANTS.values() for v in variants))
    p.add_argument("--untimed", type=_csv(ways), default=[],
                   help=f"comma-separated baseline ways of {','.join(ways)} that run the check step (as the reference "
                        f"the other rows are checked against) but are not timed: e.g. torch's for-loop on a GPU, "
                        f"host-bound and never the fastest there, in a time-boxed run")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="the params' and grads' dtype in every case (default float32; bfloat16 with "
                        "--master-weights compares the mixed-precision modes)")
    p.add_argument("--master-weights", type=_csv(list(MASTER_MODES)), default=["none"], dest="masters",
                   help="comma-separated master_weights modes of the fusedopt rows on bf16/fp16 params, of "
                        f"{','.join(MASTER_MODES)} (none: False, master: True, remainder: 'remainder'; default: none)")
    p.add_argument("--full", action="store_true",
                   help="model cases at full size and the sweep up to the largest size memory allows (the default "
                        "run scales what its time budget cannot afford, and says so)")
    p.add_argument("--sweep-max", type=int, default=None, help="largest sweep size in params")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds; each round runs every implementation once (default 7, 3 with --quick)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per implementation after the check step")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for testing the harness; writes no JSON unless "
                                                        "--json is given")
    p.add_argument("--json", metavar="PATH", help="where to write the JSON (default: bench/results/MACHINE-DATE.json)")
    p.add_argument("--no-json", action="store_true", help="write no JSON (and so no plots)")
    p.add_argument("--no-plot", action="store_true", help="write no PNG plots next to the JSON")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="show the change between two saved runs")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.sweep_max is not None and args.sweep_max < cases.SWEEP_MIN:
        p.error(f"--sweep-max must be at least {cases.SWEEP_MIN}")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30  # unknown: assume a small machine


def row_state_bytes(impl: Impl, optim: str, dtype: torch.dtype) -> int:
    """Bytes per param a row's optimizer keeps: its states (fusedopt's in fp32 for low-precision params, torch's in
    the param dtype) and, with a master mode, the fp32 master or the remainder beyond the param."""
    size = dtype.itemsize
    state = max(4, size) if impl.fp32_states else size
    return n_states(optim) * state + value_bytes(impl.master, size)[1] - size


def group_bytes(case: cases.Case, optim: str, timed: Sequence[Impl], untimed: Sequence[Impl] = ()) -> int:
    """Memory one group holds at its peak (runner.run_group): the states of every timed row, and of the largest row
    not to be timed while it is checked; five param-sized sets: the drawn params and grads, the shared params and
    grads every row steps, and the reference's params after the check step."""
    rows = sum(row_state_bytes(x, optim, case.dtype) for x in timed)
    rows += max((row_state_bytes(x, optim, case.dtype) for x in untimed), default=0)
    return case.n_params * (rows + 5 * case.dtype.itemsize)


def plan(args: argparse.Namespace, device: torch.device, backends: list[str]) -> list[tuple[cases.Case, str]]:
    budget = MEMORY_SHARE[device.type] * available_bytes(device)
    impl_sets = {o: impls_for(o, backends, device, tuple(args.masters)) for o in args.optim}
    dtype = getattr(torch, args.dtype)

    def fits(case: cases.Case) -> bool:
        case = dataclasses.replace(case, dtype=dtype)
        return all(group_bytes(case, o, [x for x in rows if not untimed_by(x, args.untimed)],
                               [x for x in rows if untimed_by(x, args.untimed)]) <= budget
                   for o, rows in impl_sets.items())

    groups = []
    for suite in args.suite:
        for case in cases.select(suite, quick=args.quick, full=args.full, sweep_max=args.sweep_max, fits=fits,
                                 models=args.model):
            case = dataclasses.replace(case, dtype=dtype)
            groups += [(case, optim) for optim in args.optim]
    return groups


def baseline_absences(optims: Sequence[str], device: torch.device) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Per optimizer, its baseline's ways that cannot run on `device` (left out of the run, with the error); and the
    optimizers left out entirely, with the reason: fusedopt lacks the class its byte floor comes from, or the way
    every row is checked against is absent (e.g. lion-pytorch not installed)."""
    absent = {o: a for o in optims if (a := absent_variants(o, device))}
    dropped = {}
    for o in optims:
        try:
            traffic(o)  # the byte floor comes from fusedopt's class and rule
        except Exception as exc:
            dropped[o] = f"no byte floor: {type(exc).__name__}: {exc}"
    for o, a in absent.items():
        ref = next(iter(BASELINE_VARIANTS[OPTIMS[o].baseline]))
        if ref in a and o not in dropped:
            dropped[o] = f"its reference {ref} cannot run here ({a[ref]})"
    return {o: a for o, a in absent.items() if o not in dropped}, dropped


def describe_absences(absent: dict[str, dict[str, str]], dropped: dict[str, str]) -> str:
    """One line per absent way ("fused: RMSprop (momentum), Adamax, ..."), then one per optimizer left out."""
    lines = [f"  absent (raises here; the errors are in the JSON): {v}: {', '.join(labels)}"
             for v, labels in report.absent_by_variant(absent).items()]
    lines += [f"  left out: {OPTIMS[o].label}: {why}" for o, why in dropped.items()]
    return "\n".join(lines)


def describe_plan(args: argparse.Namespace, groups: list[tuple[cases.Case, str]]) -> str:
    lines = []
    for suite in args.suite:
        sel = list(dict.fromkeys(c for c, _ in groups if c.suite == suite))
        if not sel:
            lines.append(f"  {suite}: nothing fits in memory")
        elif suite == "sweep":
            why = "--sweep-max" if args.sweep_max else "memory allows" if args.full else "the default time budget; " \
                  "--full goes up to what memory allows"
            lines.append(f"  sweep: one tensor of {report.fmt_params(sel[0].n_params)} to "
                         f"{report.fmt_params(sel[-1].n_params)} params, x{cases.SWEEP_STEP} per size ({why})")
        else:
            lines += [f"  {suite}: {c.description}" for c in sel]
    scaled = any(c.scale > 1 for c, _ in groups)
    note = " Scaled cases keep every tensor and shrink the widths; --full runs full sizes where memory allows." \
        if scaled else ""
    return (f"Plan: {', '.join(OPTIMS[o].label for o in args.optim)} on\n" + "\n".join(lines) +
            f"\n{args.repeats} interleaved rounds after a check step and {args.warmup} warm-up step(s).{note}"
            + (f"\nChecked, not timed: {', '.join(args.untimed)}." if args.untimed else ""))


def default_json_path(env: dict[str, Any]) -> Path:
    root = REPO if (REPO / "bench").is_dir() else Path.cwd()
    return root / "bench" / "results" / f"{report.machine_slug(env)}-{env['date'][:10]}.json"


def plot_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m fusedopt.bench plot", description="re-plot a saved run")
    p.add_argument("json", metavar="FILE.json")
    p.add_argument("--out", metavar="STEM", help="PNG path stem (default: the JSON path without .json)")
    p.add_argument("--markdown", action="store_true", help="also print the run's tables and verdict as markdown")
    args = p.parse_args(argv)
    from .plot import plot_all

    data = report.load_json(args.json)
    if args.markdown:
        summary = report.format_summary(data["rows"], markdown=True)
        print(report.format_run(data["rows"], markdown=True) + "\n\n" + (summary + "\n\n" if summary else "")
              + data["verdict"] + "\n")
    stem = args.out or str(Path(args.json).with_suffix(""))
    for path in plot_all(data, stem):
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["plot"]:
        return plot_main(argv[1:])
    args = parse_args(argv)
    if args.compare:
        print(report.compare(report.load_json(args.compare[0]), report.load_json(args.compare[1])))
        return 0
    start = time.perf_counter()
    device = torch.device(args.device)
    backends, excluded = fusedopt_backends(device)
    env = report.environment(device, backends, excluded)
    absent, dropped = baseline_absences(args.optim, device)
    args.optim = [o for o in args.optim if o not in dropped]
    groups = plan(args, device, backends)
    print(f"{env['device_name']}, {env['cpu_count']} cores, torch {env['torch']}; fusedopt backends: "
          f"{', '.join(backends) or 'none'}" + (f" (left out: {', '.join(excluded)})" if excluded else ""))
    print(describe_plan(args, groups) + "\n", flush=True)
    if absent or dropped:
        print("Baselines:\n" + describe_absences(absent, dropped) + "\n", flush=True)

    progress = Progress(len(groups) * (args.repeats + EXTRA_TICKS))
    probes = Probes(device, QUICK_PROBE_BYTES if args.quick else None)
    flush = CacheFlusher(QUICK_FLUSH_BYTES if args.quick else CACHE_FLUSH_BYTES) if device.type == "cpu" else None
    rows: list[dict[str, Any]] = []
    for case, optim in groups:
        impls = impls_for(optim, backends, device, tuple(args.masters))
        result = run_group(case, optim, impls, rounds=args.repeats, warmup=args.warmup, device=device,
                           probes=probes, flush=flush, log=progress.message, tick=progress,
                           untimed=frozenset(args.untimed))
        group_rows = report.summarize(result)
        rows += group_rows
        if case.suite != "sweep":
            progress.message("")
            print(report.format_group(group_rows) + "\n", flush=True)
        del result
        gc.collect()
    progress.close()
    del probes, flush
    sweep = [d for d in rows if d["suite"] == "sweep"]
    if sweep:
        print(report.format_sweep(sweep) + "\n")
    summary = report.format_summary(rows)
    if summary:
        print(summary + "\n")
    text = report.verdict(rows, excluded, absent, dropped)
    elapsed = time.perf_counter() - start
    print("Verdict: " + text)
    print(f"\n({args.repeats} interleaved rounds per group; {elapsed:.0f} s in all)")
    if not args.no_json and (args.json or not args.quick):
        path = Path(args.json) if args.json else default_json_path(env)
        config = dict(suites=args.suite, optims=args.optim, full=args.full, sweep_max=args.sweep_max,
                      repeats=args.repeats, warmup=args.warmup, untimed=args.untimed, quick=args.quick, wall_s=elapsed,
                      argv=list(argv), absent_variants=absent, left_out=dropped)
        report.write_json(path, env, config, rows, text)
        print(f"wrote {path}")
        if not args.no_plot:
            from .plot import plot_all

            for png in plot_all(report.load_json(path), path.with_suffix("")):
                print(f"wrote {png}")
    return 0
