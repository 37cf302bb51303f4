"""GPU-only measurements of one step: kernel launches and host syncs (from a torch.profiler trace), and peak extra
memory (from the caching allocator's statistics).

The counting is a pure function of (name, activity) records, so it is tested on recorded event lists where no GPU
is present. What is counted:
- launches: kernels that ran on the device (kineto's "kernel" activities; memcpy/memset activities are not
  kernels). Where the trace has no device activities (CUPTI unavailable), the host-side launch calls instead.
- host syncs: host calls that block until the device catches up: stream/event/device/context synchronize, and the
  blocking `cudaMemcpy` (a `.item()` or `bool(tensor)` shows up as cudaMemcpyAsync + cudaStreamSynchronize, so
  it counts once, through the synchronize). Kineto's "cuda_sync" activities describe the same waits from the
  device side and are not counted again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

KERNEL_ACTIVITY = "kernel"
HOST_API_ACTIVITIES = ("cuda_runtime", "cuda_driver")
LAUNCH_APIS = frozenset({
    "cudaLaunchKernel", "cudaLaunchKernelExC", "cudaLaunchCooperativeKernel", "cuLaunchKernel", "cuLaunchKernelEx",
    "cuLaunchCooperativeKernel", "cudaGraphLaunch", "cuGraphLaunch",
})
SYNC_APIS = frozenset({
    "cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy",
    "cuCtxSynchronize", "cuStreamSynchronize", "cuEventSynchronize", "cuMemcpyDtoH", "cuMemcpyDtoH_v2",
})


@dataclass(frozen=True)
class Record:
    name: str
    activity: str  # kineto's activity type: "kernel", "cuda_runtime", "cuda_driver", "gpu_memcpy", "cpu_op", ...


@dataclass(frozen=True)
class Counts:
    launches: int
    syncs: int
    launches_from: str  # "device kernels" or "host launch calls"


def count(records: Iterable[Record]) -> Counts:
    records = list(records)
    kernels = sum(r.activity == KERNEL_ACTIVITY for r in records)
    host_launches = sum(r.activity in HOST_API_ACTIVITIES and r.name in LAUNCH_APIS for r in records)
    syncs = sum(r.activity in HOST_API_ACTIVITIES and r.name in SYNC_APIS for r in records)
    if kernels or not host_launches:
        return Counts(kernels, syncs, "device kernels")
    return Counts(host_launches, syncs, "host launch calls")


def records_of(events: Iterable) -> list[Record]:
    """Records from kineto events (`prof.profiler.kineto_results.events()`)."""
    return [Record(e.name(), e.activity_type()) for e in events]


def count_step(fn: Callable[[], object]) -> Counts:
    """Launches and host syncs of one call of `fn` on the current CUDA device. The device is idle before and the
    trace's own flush happens after the profiled region, so neither is counted."""
    from torch.profiler import ProfilerActivity, profile

    from .memory import without_kineto_chatter

    torch.cuda.synchronize()
    with without_kineto_chatter(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
    return count(records_of(prof.profiler.kineto_results.events()))


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak memory allocated during one call beyond what was allocated before it, on the current CUDA device."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return max(0, torch.cuda.max_memory_allocated() - before)
