"""Runs one case: builds every implementation's tensors once, warms up, times interleaved rounds, then measures
peak step memory and checks that all implementations of the full job ended at the same params."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from .cases import Case
from .impls import BASELINE, IMPLS, Impl
from .machine import OthersCpuShare
from .memory import peak_extra_bytes
from .roofline import PROBE_ARRAY_BYTES, Probes
from .timing import CACHE_FLUSH_BYTES, CacheFlusher, round_robin, time_once

Log = Callable[[str], None]


@dataclass
class RowResult:
    impl: Impl
    times: list[float] = field(default_factory=list)  # one step per round, in round order
    peak_extra_bytes: int | None = None
    max_abs_diff: float | None = None  # params after the run vs the baseline's (clipped rows only)
    steps: int = 0  # all steps taken, untimed ones included
    skipped: str | None = None


@dataclass
class ProbeResult:
    name: str
    nbytes: int  # counted per call
    times: list[float]


@dataclass
class CaseResult:
    case: Case
    rows: list[RowResult]
    probes: dict[str, ProbeResult]
    wall_s: float
    others_cpu_share: float | None = None  # of all CPUs, by other processes during the timed rounds


@dataclass
class _Live:
    """One implementation's tensors and step, kept alive for the whole case."""
    row: RowResult
    params: list[Tensor]
    step: Callable[[], None]
    restore: Callable[[], None] | None

    def run(self, measure: Callable[[Callable[[], None]], object] = lambda step: step()) -> object:
        """One step through `measure`, which calls it (and may time or profile it); grads restored after."""
        result = measure(self.step)
        self.row.steps += 1
        if self.restore is not None:
            self.restore()
        return result


def _copy_all(dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
    for d, s in zip(dst, src):
        d.copy_(s)


@contextlib.contextmanager
def _skip_if_optional(row: RowResult, log: Log) -> Iterator[None]:
    """An optional row that raises is marked skipped, with the reason printed; any other row's error propagates."""
    try:
        yield
    except Exception as exc:
        if not row.impl.optional:
            raise
        row.skipped = f"{type(exc).__name__}: {exc}"
        row.times.clear()
        log(f"  skipping {row.impl.name}: {row.skipped}")


def run_case(case: Case, impls: Sequence[Impl] = IMPLS, *, rounds: int, warmup: int,
             probe_bytes: int = PROBE_ARRAY_BYTES, probe_calls: int = 3, flush_bytes: int = CACHE_FLUSH_BYTES,
             seed: int = 0, log: Log = print) -> CaseResult:
    start = time.perf_counter()
    log(f"{case.name}: building {len(impls)} implementations over {case.n_tensors} tensors, "
        f"{case.n_params:,} params")
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen, dtype=case.dtype).mul_(0.02) for s in case.shapes]
    # Finite grads, so every guarded step runs; never written by the rows that only read them.
    grads = [torch.randn(s, generator=gen, dtype=case.dtype) for s in case.shapes]
    # Memory: the interleaved rounds need every implementation alive at once, so each owns its params and optimizer
    # state (p, m, v: 12 B/param; 1.5 GB for GPT-2 small). Grads are shared, since no step here reads what another
    # wrote: rows that only read grads use `grads` itself; the rows whose clip_grad_norm_ rescales grads in place
    # share one `scratch` copy, restored from `grads` after each of their steps and outside the timed region.
    # Without the restore, grads would shrink by the clip coefficient (~1e-4 here) every step and soon be
    # denormals, which are slow on CPU. The cache flush before each sample hides the restore from the next step.
    scratch = [g.clone() for g in grads] if any(i.rewrites_grads for i in impls) else None
    rows = [RowResult(impl) for impl in impls]
    live: dict[str, _Live] = {}
    for row in rows:
        impl = row.impl
        with _skip_if_optional(row, log):
            params = [p.clone().requires_grad_() for p in init]
            for p, g in zip(params, scratch if impl.rewrites_grads else grads):
                p.grad = g
            restore = (lambda: _copy_all(scratch, grads)) if impl.rewrites_grads else None
            live[impl.name] = _Live(row, params, impl.setup(params), restore)
    del init
    probes = Probes(probe_bytes)
    probe_results = {name: ProbeResult(name, probes.nbytes, []) for name in Probes.NAMES}
    flush = CacheFlusher(flush_bytes)

    def drop(name: str) -> None:
        if live[name].row.skipped is not None:
            del live[name]

    log(f"{case.name}: warm-up, {warmup} step(s) each")
    for name in Probes.NAMES:
        probes.fn(name)()
    for name in list(live):
        with _skip_if_optional(live[name].row, log):
            for _ in range(warmup):
                live[name].run()
        drop(name)

    others = OthersCpuShare()
    schedule = round_robin([row.impl.name for row in rows] + list(Probes.NAMES), rounds)
    for r, order in enumerate(schedule):
        log(f"{case.name}: round {r + 1}/{rounds}")
        for name in order:
            if name in probe_results:
                for _ in range(probe_calls):
                    flush()
                    probe_results[name].times.append(time_once(probes.fn(name)))
            elif name in live:
                with _skip_if_optional(live[name].row, log):
                    flush()
                    live[name].row.times.append(live[name].run(time_once))
                drop(name)
    others_cpu_share = others.stop()
    del probes, flush

    log(f"{case.name}: peak memory of one more step each (profiler)")
    for name in list(live):
        with _skip_if_optional(live[name].row, log):
            live[name].row.peak_extra_bytes = live[name].run(peak_extra_bytes)
        drop(name)

    # Every live row took the same number of steps from the same params and grads, so the full-job rows must agree.
    if BASELINE in live:
        reference = live[BASELINE].params
        with torch.no_grad():
            for entry in live.values():
                if entry.row.impl.clipped:
                    entry.row.max_abs_diff = max(float((p - q).abs().max()) for p, q in zip(entry.params, reference))
    return CaseResult(case, rows, probe_results, time.perf_counter() - start, others_cpu_share)
