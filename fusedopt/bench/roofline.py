"""Byte accounting and the measured bandwidth ceiling.

An optimizer step is memory-bound, so its honest score is the bytes that *must* move divided by time, compared
with what this machine can move at all. See DESIGN.md, "The one idea".
"""
from __future__ import annotations

from typing import Callable

import torch

from .optims import traffic

# fusedopt's master_weights modes for low-precision params: "none" (the param is the value), "master" (True: an
# fp32 copy), "remainder" (bf16 params: a 16-bit remainder of the fp32 master). For fp32/fp64 params every mode
# is "none" (no copy is made).
MASTER_MODES = ("none", "master", "remainder")


def value_bytes(master: str, param_size: int) -> tuple[int, int]:
    """(bytes per param one update moves for the value, bytes kept for it between steps), by master mode: the
    param read and written; the master read and written and the param only written; the param and its remainder
    each read and written."""
    if master == "none" or param_size >= 4:
        return 2 * param_size, param_size
    if master == "master":
        return param_size + 8, param_size + 4
    if master == "remainder":
        return 2 * param_size + 4, param_size + 2
    raise ValueError(f"unknown master mode {master!r}; expected one of {', '.join(MASTER_MODES)}")


def update_bytes(optim: str, param_size: int = 4, grad_size: int | None = None, state_size: int | None = None,
                 master: str = "none") -> int:
    """Bytes per param one update pass must move: read p and g, write p (or, with a master, value_bytes's
    traffic), and read and write the tensor states the algorithm's update reads and writes (optims.traffic: from
    its rule in fusedopt/rules.py). Sizes are the dtypes' itemsizes; grads default to the param dtype, states too."""
    grad_size = param_size if grad_size is None else grad_size
    state_size = param_size if state_size is None else state_size
    t = traffic(optim)
    return value_bytes(master, param_size)[0] + grad_size + (len(t.reads) + len(t.writes)) * state_size


def job_bytes(optim: str, clipped: bool, param_size: int = 4, grad_size: int | None = None,
              state_size: int | None = None, master: str = "none") -> int:
    """The floor of a whole step: the update, plus one read of every grad before it when the step clips to a global
    norm and checks for non-finite grads (both need all grads seen before any param may change)."""
    grad_size = param_size if grad_size is None else grad_size
    return update_bytes(optim, param_size, grad_size, state_size, master) + (grad_size if clipped else 0)


def kept_bytes(optim: str, param_size: int = 4, state_size: int | None = None, master: str = "none") -> int:
    """Bytes per param the optimizer's params and state occupy between steps (grads are the model's)."""
    state_size = param_size if state_size is None else state_size
    return value_bytes(master, param_size)[1] + n_states(optim) * state_size


def n_states(optim: str) -> int:
    """Tensor states of the param's size the algorithm keeps per param (memory, not traffic)."""
    return len(traffic(optim).writes)


def gbps(nbytes: float, seconds: float) -> float:
    return nbytes / seconds / 1e9


def roofline_fraction(nbytes: float, seconds: float, roof_gbps: float) -> float:
    """The time the bytes would take at the roofline, over the time they took."""
    return nbytes / (roof_gbps * 1e9) / seconds


def roofline_seconds(nbytes: float, roof_gbps: float) -> float:
    return nbytes / (roof_gbps * 1e9)


PROBE_ARRAY_BYTES = {"cpu": 256 * 2**20, "cuda": 1024 * 2**20}
# The probe whose best rate is the roofline, per device type.
ROOFLINE = {"cpu": "triad", "cuda": "copy"}


class Probes:
    """Streaming kernels on fp32 arrays of `array_bytes` each; one call is one timed sample.

    CPU: `triad` (a = b + s*c, 12 B/element counted, by the STREAM convention) is the roofline. Writing `a`
    without reading it costs a write-allocate read on most CPUs, so 16 B/element really move while 12 are counted.
    `axpy` (a += s*b, 12 B/element) reads what it writes, as an optimizer step does with p and its states; it
    shows the ceiling for in-place kernels, which is why a step can score above 1.0 of the triad roofline.
    GPU: `copy` (device-to-device, 8 B/element: one read, one write), the usual bandwidth ceiling there.
    """

    BYTES_PER_ELEMENT = {"triad": 12, "axpy": 12, "copy": 8}

    def __init__(self, device: torch.device | str = "cpu", array_bytes: int | None = None):
        device = torch.device(device)
        kind = "cuda" if device.type == "cuda" else "cpu"
        self.roofline = ROOFLINE[kind]
        self.names = ("triad", "axpy") if kind == "cpu" else ("copy",)
        numel = (array_bytes or PROBE_ARRAY_BYTES[kind]) // 4
        self.numel = numel
        self.a = torch.zeros(numel, device=device)
        self.b = torch.rand(numel, device=device)
        self.c = torch.rand(numel, device=device) if kind == "cpu" else None

    def nbytes(self, name: str) -> int:
        return self.BYTES_PER_ELEMENT[name] * self.numel

    def triad(self) -> None:
        torch.add(self.b, self.c, alpha=0.5, out=self.a)

    def axpy(self) -> None:
        self.a.add_(self.b, alpha=0.5)

    def copy(self) -> None:
        self.a.copy_(self.b)

    def fn(self, name: str) -> Callable[[], None]:
        if name not in self.names:
            raise KeyError(name)
        return getattr(self, name)
