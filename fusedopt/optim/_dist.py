"""DTensor / FSDP2 support: kernels run on local shards; the check pass reduces over the ranks that shard them.

A param that is a ``torch.distributed.tensor.DTensor`` (``fully_shard``, tensor parallelism) is updated through
``to_local()`` views, which alias the DTensor's storage, so the in-place kernels write the shard itself. Its
optimizer states are DTensors with the param's mesh and placements (``zeros_like`` of the param, as torch.optim
makes them), so ``state_dict()`` works with ``torch.distributed.checkpoint``.

The global norm and the non-finite flag come from ONE all-reduce (SUM) of ``[sum of squares, flag]`` over the
process group of the params' mesh. A Replicate (or unsharded) mesh dim holds the same values on several ranks,
so each local contribution is weighted by ``shards / group size`` (``shards``: how many distinct pieces the
param is cut into): summed over the group, every element then counts exactly once, whatever mix of Shard and
Replicate placements the params have. The reduction stays on the device; nothing waits on the host.

Plain-tensor params (DDP, single process) never reach this module's collectives: their local norm is the global
norm.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

if torch.distributed.is_available():
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
else:  # a build without torch.distributed cannot hold DTensors
    dist = None
    DTensor = ()  # isinstance(x, ()) is always False


_PLAIN = frozenset((Tensor, torch.nn.Parameter))


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (a view of its storage), or ``t`` itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def local_states(states: list[dict | None]) -> list[dict | None]:
    """Per-param state dicts whose DTensor values are replaced by their local shards (same tensor objects for
    plain values such as ``step``, so in-place updates of either land in the optimizer's state)."""
    return [None if state is None else {key: local(value) for key, value in state.items()} for state in states]


def _placements(t: Tensor) -> str:
    return ", ".join(map(str, t.placements)) if isinstance(t, DTensor) else "not a DTensor"


def _layout(t: Tensor) -> str:
    if not isinstance(t, DTensor):
        return f"plain tensor {t.dtype}{list(t.shape)}"
    return (f"DTensor {t.dtype}{list(t.shape)} (local {list(t.to_local().shape)}) on mesh "
            f"{tuple(t.device_mesh.shape)} with placements ({_placements(t)})")


@dataclass
class Reduction:
    """How the check pass of one step reduces over ranks: the group, and the grads per weight."""

    group: object  # a ProcessGroup
    classes: list[tuple[float, list[int]]]  # (weight, grad indices): summed as weight * check(those grads)

    def all_reduce(self, total: Tensor) -> Tensor:
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group)
        return total


def _shards(t: Tensor) -> int:
    mesh = t.device_mesh
    count = 1
    for dim, placement in enumerate(t.placements):
        if placement.is_partial():
            raise RuntimeError(f"fusedopt: gradients with Partial placements are not supported ({_layout(t)}); "
                               f"reduce them first (FSDP2 and DDP do)")
        if placement.is_shard():
            count *= mesh.size(dim)
    return count


def _group_of(mesh) -> object:
    """The process group spanning every rank of ``mesh`` (the root mesh of a sub-mesh)."""
    if mesh.ndim == 1:
        return mesh.get_group()
    if mesh.size() == dist.get_world_size():
        return dist.group.WORLD
    return mesh._flatten().get_group()


def plan(params: Sequence[Tensor], grads: Sequence[Tensor]) -> Reduction | None:
    """The reduction for a step over ``params`` (those with grads) and their ``grads``, or None when no param
    is a DTensor."""
    # An exact type test in one C-level loop first: isinstance on each Parameter would cost a visible share of
    # a step over thousands of params.
    if _PLAIN.issuperset(map(type, params)):
        return None
    # Meshes compare by their ranks and dim names: each fully_shard call makes its own, equal, mesh object.
    meshes = {p.device_mesh for p in params if isinstance(p, DTensor)}
    if not meshes:
        return None
    roots = {mesh._get_root_mesh() for mesh in meshes}
    if len(roots) != 1:
        raise RuntimeError(f"fusedopt: all DTensor parameters of one optimizer must live on one device mesh (or "
                           f"sub-meshes of one mesh), since the global norm is reduced over its process group; "
                           f"got {len(roots)} meshes: {', '.join(map(str, roots))}")
    root = roots.pop()
    size = root.size()
    weights: dict[float, list[int]] = {}
    for i, (p, g) in enumerate(zip(params, grads)):
        if isinstance(p, DTensor) != isinstance(g, DTensor):
            raise RuntimeError(f"fusedopt: a parameter and its gradient must both be DTensors or both plain "
                               f"tensors; got a {_layout(p)} with a {_layout(g)} gradient")
        # A plain tensor among DTensors is taken as replicated over the mesh (an unsharded module).
        weights.setdefault((_shards(g) if isinstance(g, DTensor) else 1) / size, []).append(i)
    return Reduction(_group_of(root), sorted(weights.items()))


def check_same_params(optimizer, reduction: Reduction) -> None:
    """Raise a clear error when the optimizer's params differ across the ranks of the reduction group (a
    mismatch would silently mis-sum the norm or hang a later collective). One all-reduce; once per optimizer."""
    lines = [f"{optimizer._describe(gi, pi)}: {_signature(p)}"
             for gi, group in enumerate(optimizer.param_groups) for pi, p in enumerate(group["params"])]
    digest = int.from_bytes(hashlib.sha256("\n".join(lines).encode()).digest()[:7], "little")
    device = next(p for group in optimizer.param_groups for p in group["params"]).device
    extremes = torch.tensor([digest, -digest], dtype=torch.int64, device=device)
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX, group=reduction.group)
    if int(extremes[0]) == -int(extremes[1]):
        return
    everyone: list = [None] * dist.get_world_size(reduction.group)
    dist.all_gather_object(everyone, lines, group=reduction.group)
    rank = dist.get_rank(reduction.group)
    other = next(r for r, theirs in enumerate(everyone) if theirs != lines)
    theirs = everyone[other]
    diff = next((f"here {mine!r}, on rank {other} {their!r}" for mine, their in zip(lines, theirs) if mine != their),
                f"here {len(lines)} parameters, on rank {other} {len(theirs)}")
    raise RuntimeError(f"{type(optimizer).__name__}: the optimizer's parameters differ across the ranks of the "
                       f"process group (rank {rank}): {diff}. Every rank must build the same model and optimizer")


def _signature(p: Tensor) -> str:
    if not isinstance(p, DTensor):
        return f"{p.dtype}{list(p.shape)}"
    return f"{p.dtype}{list(p.shape)} mesh {tuple(p.device_mesh.shape)} ({_placements(p)})"


def check_state_layout(value: Tensor, param: Tensor, where: str, key: str) -> None:
    """A loaded state tensor must be laid out like its param: a DTensor with the param's mesh and placements (and
    so the same local shard) for a DTensor param, a plain tensor for a plain param."""
    if not (isinstance(value, DTensor) or isinstance(param, DTensor)):
        return
    if (isinstance(value, DTensor) and isinstance(param, DTensor) and value.device_mesh == param.device_mesh
            and tuple(value.placements) == tuple(param.placements)
            and value.to_local().shape == param.to_local().shape):
        return
    raise ValueError(f"loaded state dict does not match the sharding of {where}: state {key!r} is a "
                     f"{_layout(value)}, the parameter is a {_layout(param)}. Load sharded optimizer state with "
                     f"torch.distributed.checkpoint (get_/set_optimizer_state_dict) into the same layout")
