"""How much of the CPUs other processes took while we timed: on this shared 2-core machine, their threads stall
the barriers of torch's per-tensor parallel loops far more than a few large passes, which distorts ratios, not
just absolute times. Linux only (/proc/stat); None elsewhere."""
from __future__ import annotations

import os
import time


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent not idle since boot."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class OthersCpuShare:
    """Share of all CPUs' time used by other processes between construction and `stop()`."""

    def __init__(self) -> None:
        self._start = (_busy_cpu_seconds(), _own_cpu_seconds(), time.monotonic())

    def stop(self) -> float | None:
        busy0, own0, wall0 = self._start
        busy1 = _busy_cpu_seconds()
        if busy0 is None or busy1 is None:
            return None
        capacity = (time.monotonic() - wall0) * (os.cpu_count() or 1)
        others = (busy1 - busy0) - (_own_cpu_seconds() - own0)
        return max(0.0, others) / capacity if capacity > 0 else None
