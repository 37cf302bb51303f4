"""Byte accounting and the measured bandwidth ceiling.

An optimizer step is memory-bound, so its honest score is the bytes that *must* move divided by time, compared
with what this machine can move at all. See DESIGN.md, "The one idea".
"""
from __future__ import annotations

from typing import Callable

import torch

FP32 = 4
# AdamW update: read p, g, m, v; write p, m, v.
ADAMW_UPDATE_BYTES = 7 * FP32
# Global-norm clipping plus the non-finite check need every grad read once before the update may start.
CHECK_PASS_BYTES = 1 * FP32
CLIPPED_CHECKED_ADAMW_BYTES = ADAMW_UPDATE_BYTES + CHECK_PASS_BYTES
PROBE_ARRAY_BYTES = 256 * 2**20
# Both probes count 12 B/element (two reads, one write), as STREAM does.
PROBE_BYTES_PER_ELEMENT = 3 * FP32
ROOFLINE = "triad"


def gbps(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / 1e9


def roofline_fraction(nbytes: float, seconds: float, roof_gbps: float) -> float:
    """The time the bytes would take at the roofline, over the time they took."""
    return nbytes / (roof_gbps * 1e9) / seconds


class Probes:
    """Streaming kernels on fp32 arrays of `array_bytes` each; one call is one timed sample.

    `triad` (a = b + s*c) is the roofline, by the STREAM convention. But writing `a` without reading it costs a
    write-allocate read on most CPUs, so 16 B/element really move while 12 are counted. `axpy` (a += s*b) reads
    what it writes, as an optimizer step does with p, m and v; it shows the ceiling for in-place kernels, which
    is why a step can score above 1.0 of the triad roofline.
    """

    NAMES = (ROOFLINE, "axpy")

    def __init__(self, array_bytes: int = PROBE_ARRAY_BYTES):
        numel = array_bytes // FP32
        self.a = torch.zeros(numel)
        self.b = torch.rand(numel)
        self.c = torch.rand(numel)
        self.nbytes = PROBE_BYTES_PER_ELEMENT * numel

    def triad(self) -> None:
        torch.add(self.b, self.c, alpha=0.5, out=self.a)

    def axpy(self) -> None:
        self.a.add_(self.b, alpha=0.5)

    def fn(self, name: str) -> Callable[[], None]:
        if name not in self.NAMES:
            raise KeyError(name)
        return getattr(self, name)
