"""Interleaved timing: every round runs every entry once, in an order rotated each round, so slow drifts and
bursts of noise on this shared machine hit all implementations alike and paired per-round ratios stay fair."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence, TypeVar

import torch

T = TypeVar("T")

# Twice the 32 MiB L3 seen here: written before each sample so no entry starts with another's data in cache.
CACHE_FLUSH_BYTES = 64 * 2**20


def round_robin(items: Sequence[T], rounds: int) -> list[list[T]]:
    """Round r runs all items, starting at item r mod n, so each item holds every position equally often."""
    n = len(items)
    return [[items[(r + i) % n] for i in range(n)] for r in range(rounds)] if n else [[] for _ in range(rounds)]


class CacheFlusher:
    def __init__(self, nbytes: int = CACHE_FLUSH_BYTES):
        self.buf = torch.zeros(max(nbytes // 4, 1))

    def __call__(self) -> None:
        self.buf.add_(1.0)


def time_once(fn: Callable[[], object], sync: Callable[[], None] = lambda: None, repeat: int = 1) -> float:
    """Seconds per call of `repeat` back-to-back calls, as the host sees them: `sync` waits for a device before the
    clock starts and before it stops, so queued work is neither carried in nor left out."""
    sync()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - start) / repeat


# Samples shorter than this are repeated back to back (small steps; the timer and the sync would dominate them).
MIN_SAMPLE_S = 2e-3
MAX_REPEAT = 200


def repeats_for(step_s: float, min_sample_s: float = MIN_SAMPLE_S, max_repeat: int = MAX_REPEAT) -> int:
    """Calls per sample, so that one sample lasts about `min_sample_s`."""
    if step_s <= 0:
        return max_repeat
    return max(1, min(max_repeat, round(min_sample_s / step_s + 0.5)))


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear interpolation between the order statistics (numpy's default), q in [0, 100]."""
    if not xs:
        raise ValueError("percentile of no samples")
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def paired_speedup(baseline: Sequence[float], other: Sequence[float]) -> float:
    """Median over rounds of baseline_time / other_time, both from the same round."""
    if len(baseline) != len(other) or not baseline:
        raise ValueError("paired speedup needs one sample per round from each side")
    return statistics.median(b / o for b, o in zip(baseline, other))
