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


def time_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def paired_speedup(baseline: Sequence[float], other: Sequence[float]) -> float:
    """Median over rounds of baseline_time / other_time, both from the same round."""
    if len(baseline) != len(other) or not baseline:
        raise ValueError("paired speedup needs one sample per round from each side")
    return statistics.median(b / o for b, o in zip(baseline, other))
