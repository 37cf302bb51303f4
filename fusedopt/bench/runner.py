"""Runs one group (a case and an optimizer) over all implementations:

1. builds every implementation, each with its own optimizer state, over one shared copy of the params and grads;
2. the check step: one step each from identical params and grads, compared with torch's for-loop doing the same
   job; a row that disagrees is marked wrong and not timed; rows of an ``untimed`` way (e.g. torch's for-loop on a
   GPU, host-bound on many small tensors) stop here: they served as the reference and were checked;
3. warm-up steps, which also decide how many back-to-back steps one sample takes (tiny steps are repeated);
4. interleaved rounds: every round times every implementation and the bandwidth probes once, in an order rotated
   each round, so drifts and bursts of noise hit all alike;
5. one more step each, measured for peak extra memory (and on a GPU, kernel launches and host syncs).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from .cases import Case
from .impls import Impl, NoKernel, reference_of, untimed_by
from .machine import OthersCpuShare
from .memory import peak_extra_bytes as cpu_peak_extra_bytes
from .roofline import Probes
from .timing import CacheFlusher, repeats_for, round_robin, time_once

Log = Callable[[str], None]
Tick = Callable[[str], None]

# The check step compares each param's change against the reference's change: within CHECK_RTOL of it per
# element, plus CHECK_ATOL of the largest reference change (a different but legitimate rounding of the global
# norm moves every update of a clipped step by up to ~1e-3 relative on 100M params), plus a few ulps of the
# param itself (rounding p + dp).
CHECK_RTOL = 1e-2
CHECK_ATOL = 1e-3
CHECK_ULPS = 8
# Clip to half the initial global norm: the clip is active (a row that ignores it is caught by the check), and the
# rows whose clip_grad_norm_ rescales .grad in place see it settle at the clip norm after one step instead of
# shrinking towards denormals (slow on CPUs) step after step.
CLIP_FRACTION = 0.5
# Progress ticks per group besides one per timed round: the check step, the warm-up, the profiled step.
EXTRA_TICKS = 3


@dataclass
class RowResult:
    impl: Impl
    times: list[float] = field(default_factory=list)  # seconds per step, one sample per round, in round order
    repeat: int = 1  # back-to-back steps per sample
    peak_extra_bytes: int | None = None
    launches: int | None = None  # per step, GPU only
    syncs: int | None = None  # per step, GPU only
    check_error: float | None = None  # worst |change - reference change| / allowed, from the check step
    steps: int = 0  # all steps taken, untimed ones included
    skipped: str | None = None
    wrong: str | None = None
    untimed: str | None = None  # checked, then left out of the timing on purpose (run_group's `untimed`)


@dataclass
class ProbeResult:
    name: str
    nbytes: int  # counted per call
    times: list[float]


@dataclass
class GroupResult:
    case: Case
    optim: str
    device: str
    rows: list[RowResult]
    probes: dict[str, ProbeResult]
    roofline: str  # name of the probe whose best rate is the roofline
    max_norm: float
    wall_s: float
    others_cpu_share: float | None = None  # of all CPUs, by other processes during the timed rounds


@dataclass
class _Live:
    """One implementation's step (its optimizer, holding its states), kept alive for the whole group."""
    row: RowResult
    step: Callable[[], None]


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
        if not isinstance(exc, NoKernel):  # expected until the kernel lands: said in the table and the verdict
            log(f"  skipping {row.impl.name}: {row.skipped}")


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def compare_updates(init: Sequence[Tensor], reference: Sequence[Tensor], got: Sequence[Tensor]) -> float:
    """Worst ratio, over all elements, of |got's change - reference's change| to what is allowed (see CHECK_*);
    above 1 is wrong, inf when got is not finite where the reference is. On one flat copy each: a handful of large
    ops, not a dozen per tensor (each op can stall on a busy machine)."""
    with torch.no_grad():
        i, r, g = _flat(init), _flat(reference), _flat(got)
        if not r.numel():
            return 0.0
        change = (r - i).abs_()  # exact where |change| << |p| (Sterbenz), else within the ulp term below
        allowed = torch.maximum(r.abs(), g.abs()).mul_(CHECK_ULPS * torch.finfo(r.dtype).eps)
        allowed.add_(change, alpha=CHECK_RTOL).add_(CHECK_ATOL * float(change.max()))
        worst = float((g - r).abs_().div_(allowed.clamp_min_(torch.finfo(r.dtype).tiny)).max())
        return worst if math.isfinite(worst) else math.inf


def _copy_all(dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
    with torch.no_grad():
        for d, s in zip(dst, src):
            d.copy_(s)


# The last case's tensors: every optimizer of a case starts from the same params and grads, and drawing them on
# the host is the slowest part of a group's setup on a GPU (GPT-2 small: 249M normal samples, about 1.6 s).
_CASE_TENSORS: dict[tuple, tuple[list[Tensor], list[Tensor], float]] = {}


def case_tensors(case: Case, seed: int, device: torch.device) -> tuple[list[Tensor], list[Tensor], float]:
    """The initial params, the grads and the clip norm of ``case`` (the same for every optimizer); nobody writes
    them: a group's rows step clones of them (run_group)."""
    key = (case.name, case.shapes, case.dtype, seed, str(device))
    if key not in _CASE_TENSORS:
        _CASE_TENSORS.clear()  # one case at a time in memory
        gen = torch.Generator().manual_seed(seed)
        init = [torch.randn(s, generator=gen, dtype=case.dtype).mul_(0.02).to(device) for s in case.shapes]
        # Finite grads, so every guarded step runs; shared by all rows that only read them.
        grads = [torch.randn(s, generator=gen, dtype=case.dtype).to(device) for s in case.shapes]
        max_norm = CLIP_FRACTION * float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g, dtype=torch.float64) for g in grads])))
        _CASE_TENSORS[key] = (init, grads, max_norm)
    return _CASE_TENSORS[key]


def run_group(case: Case, optim: str, impls: Sequence[Impl], *, rounds: int, warmup: int,
              device: torch.device | str = "cpu", probes: Probes | None = None, flush: CacheFlusher | None = None,
              seed: int = 0, log: Log = print, tick: Tick = lambda label: None,
              untimed: frozenset[str] = frozenset()) -> GroupResult:
    start = time.perf_counter()
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    label = f"{case.name} {optim}"
    init, grads, max_norm = case_tensors(case, seed, device)
    # Memory: the interleaved rounds need every implementation alive at once, but only their optimizer states
    # differ: all rows step one shared set of params, with one shared set of grads (torch's clipping rows rewrite
    # it in place; every row reads and writes the same bytes whatever the values, and they stay finite). So a
    # group holds each row's states plus five param-sized sets (see cli.group_bytes), and GPT-2 small fits a
    # 24 GiB machine at full width.
    params = [p.clone().requires_grad_() for p in init]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    rows = [RowResult(impl) for impl in impls]
    live: dict[str, _Live] = {}
    for row in rows:
        with _skip_if_optional(row, log):
            live[row.impl.name] = _Live(row, row.impl.setup(params, max_norm))

    def drop(name: str) -> None:
        if live[name].row.skipped is not None:
            del live[name]

    # 2. The check step: each row's first step from the drawn params and grads, one reference (job) at a time,
    # the reference row first; its result is the one copy kept. A row that is wrong or not to be timed goes at
    # once, its states with it.
    checked = {reference_of(e.row.impl): [] for e in live.values()}
    for name, entry in live.items():
        checked[reference_of(entry.row.impl)].append(name)
    for ref_name, names in checked.items():
        if ref_name not in names:
            raise RuntimeError(f"{label}: the reference row {ref_name!r} is missing, so nothing can be checked")
        reference: list[Tensor] = []
        for name in sorted(names, key=lambda n: n != ref_name):
            entry = live[name]
            _copy_all(params, init)
            _copy_all([p.grad for p in params], grads)
            with _skip_if_optional(entry.row, log):
                entry.step()
                entry.row.steps += 1
            if entry.row.skipped is not None:  # only optional rows get here: the reference's error propagates
                del live[name]
                continue
            if name == ref_name:
                reference = [p.detach().clone() for p in params]
            entry.row.check_error = compare_updates(init, reference, params)
            if not entry.row.check_error <= 1.0:
                entry.row.wrong = (f"after one step, params differ from {ref_name}'s by "
                                   f"{entry.row.check_error:.3g}x the tolerance")
                log(f"  WRONG {entry.row.impl.name} on {label}: {entry.row.wrong}; not timed")
                del live[name]
            elif untimed_by(entry.row.impl, untimed):
                entry.row.untimed = f"checked, not timed (--untimed {entry.row.impl.variant})"
                del live[name]
        del reference
    tick(f"{label}: checked")

    # 3. Warm-up, then as many back-to-back steps per sample as make it last MIN_SAMPLE_S.
    for name in list(live):
        entry = live[name]
        with _skip_if_optional(entry.row, log):
            last = None
            for _ in range(warmup):
                last = time_once(entry.step, sync)
                entry.row.steps += 1
            entry.row.repeat = repeats_for(last) if last is not None else 1
        drop(name)
    probe_results: dict[str, ProbeResult] = {}
    if probes is not None:
        probe_results = {n: ProbeResult(n, probes.nbytes(n), []) for n in probes.names}
        for n in probes.names:
            probes.fn(n)()
    tick(f"{label}: warmed up")

    # 4. Interleaved rounds.
    others = OthersCpuShare()
    for r, order in enumerate(round_robin([row.impl.name for row in rows] + list(probe_results), rounds)):
        for name in order:
            if name in probe_results:
                if flush is not None:
                    flush()
                probe_results[name].times.append(time_once(probes.fn(name), sync))
            elif name in live:
                entry = live[name]
                with _skip_if_optional(entry.row, log):
                    if flush is not None:
                        flush()
                    entry.row.times.append(time_once(entry.step, sync, entry.row.repeat))
                    entry.row.steps += entry.row.repeat
                drop(name)
        tick(f"{label}: round {r + 1}/{rounds}")
    others_cpu_share = others.stop() if device.type == "cpu" else None

    # 5. Peak memory (and launches, syncs) of one more step each.
    for name in list(live):
        entry = live[name]
        with _skip_if_optional(entry.row, log):
            if device.type == "cuda":
                from . import gpu

                entry.row.peak_extra_bytes = gpu.peak_extra_bytes(entry.step)
                counts = gpu.count_step(entry.step)
                entry.row.launches, entry.row.syncs = counts.launches, counts.syncs
                entry.row.steps += 2
            else:
                entry.row.peak_extra_bytes = cpu_peak_extra_bytes(entry.step)
                entry.row.steps += 1
        drop(name)
    tick(f"{label}: profiled")
    roofline = probes.roofline if probes is not None else ""
    return GroupResult(case, optim, device.type, rows, probe_results, roofline, max_norm,
                       time.perf_counter() - start, others_cpu_share)
