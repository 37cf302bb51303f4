"""Peak extra memory allocated during one call, on the CPU (the GPU's is in gpu.py: the allocator keeps a peak).

The CPU allocator keeps no high-water mark, but the profiler records every allocation and free made through
c10's allocator (all tensors, including those a C++ extension creates with at::empty) as "[memory]" events with
signed byte counts. The running sum of those, in time order, is the memory the call holds beyond what it was
handed; its maximum is the peak. Plain malloc inside a kernel is not seen (our kernels only use small stack or
per-thread buffers). A free of a block allocated before profiling started is not recorded (c10 warns once, as for
fusedopt replacing last step's grad_norm), so the peak can only be overstated, by at most that block.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Callable, Iterator

from torch.profiler import ProfilerActivity, profile

# Kineto prints these stage lines to stderr on every profile, whatever KINETO_LOG_LEVEL says; c10 warns when a block
# allocated before profiling is freed during it (accounted for in the docstring above).
_KINETO_CHATTER = re.compile(r"(STAGE|USDT):\S+ \S+ \d+:\d+ \S+\.cpp:\d+\] |\[W\d+ [\d:.]+ CPUAllocator\.cpp:\d+\] "
                             r"Memory block of unknown size was allocated before the profiling started")


@contextlib.contextmanager
def without_kineto_chatter() -> Iterator[None]:
    """Capture file descriptor 2 (C++ writes there directly) and pass on every line but kineto's."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not _KINETO_CHATTER.match(line):
                    sys.stderr.write(line)


def peak_of_running_sum(deltas: list[int]) -> int:
    peak = running = 0
    for d in deltas:
        running += d
        peak = max(peak, running)
    return peak


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    with without_kineto_chatter(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    return peak_of_running_sum([e.nbytes() for e in events])
