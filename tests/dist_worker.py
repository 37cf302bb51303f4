"""Distributed scenarios for tests/test_distributed.py, run on CPU with gloo in one launch of WORLD ranks.

``python tests/dist_worker.py OUT_DIR`` spawns the ranks; every rank runs every scenario in order and writes
``OUT_DIR/rank{r}.json``: ``{scenario: "ok" | error text}``. One launch for all scenarios keeps the test file
fast (process start and ``import torch`` dominate). A scenario that fails records its traceback and the next
one runs; a hung collective ends at the process group's timeout.

Every scenario compares fusedopt on sharded (FSDP2 ``fully_shard``, DTensor) or replicated (DDP) params with
single-process training of an unsharded copy with ``torch.optim`` (and ``clip_grad_norm_`` when clipping).
"""
from __future__ import annotations

import copy
import datetime
import json
import os
import sys
import tempfile
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor, init_device_mesh
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fusedopt  # noqa: E402

WORLD = 2
BATCH = 4  # per rank
STEPS = 4
RTOL = 1e-5
ATOL = 1e-7


def make_model() -> torch.nn.Module:
    # 13 and 9 output rows do not divide by 2: uneven shards, one rank's shard shorter; the last layer's one
    # output row leaves rank 1 an empty shard of its weight and bias.
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 9),
                               torch.nn.Tanh(), torch.nn.Linear(9, 1))


def shard(model: torch.nn.Module) -> torch.nn.Module:
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def batch(step: int, rank: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's global batch (rank None) or this rank's slice of it; a mean loss over equal slices averaged
    over ranks (what FSDP2 and DDP do to grads) equals the mean over the global batch."""
    gen = torch.Generator().manual_seed(1000 + step)
    x, y = torch.randn(WORLD * BATCH, 7, generator=gen), torch.randn(WORLD * BATCH, 1, generator=gen)
    if rank is None:
        return x, y
    return x[rank * BATCH:(rank + 1) * BATCH], y[rank * BATCH:(rank + 1) * BATCH]


def backward(model, step: int, rank: int | None) -> None:
    x, y = batch(step, rank)
    torch.nn.functional.mse_loss(model(x), y).backward()


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def assert_close(actual, expected, what: str, rtol: float = RTOL, atol: float = ATOL) -> None:
    actual, expected = full(actual).detach(), full(expected).detach()
    if not torch.allclose(actual, expected, rtol=rtol, atol=atol):
        diff = (actual - expected).abs().max().item()
        raise AssertionError(f"{what}: max abs diff {diff:.3g} beyond rtol={rtol} atol={atol}")


def compare(model, opt, ref_model, ref_opt, keys=("exp_avg", "exp_avg_sq")) -> None:
    for (name, p), ref_p in zip(model.named_parameters(), ref_model.parameters()):
        assert_close(p, ref_p, f"param {name}")
        for key in keys:
            if key in ref_opt.state[ref_p]:
                assert_close(opt.state[p][key], ref_opt.state[ref_p][key], f"state {key} of {name}")


def train_and_compare(rank: int, wrap, fused_cls, torch_cls, kwargs: dict, max_grad_norm: float | None,
                      keys=("exp_avg", "exp_avg_sq")) -> None:
    ref_model = make_model()
    model = wrap(copy.deepcopy(ref_model))
    opt = fused_cls(model.parameters(), **kwargs, max_grad_norm=max_grad_norm, nonfinite="skip", backend="cpu")
    ref_opt = torch_cls(ref_model.parameters(), **kwargs, foreach=False)
    for step in range(STEPS):
        backward(model, step, rank)
        backward(ref_model, step, None)
        ref_norm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), max_grad_norm or float("inf"))
        opt.step()
        ref_opt.step()
        assert_close(opt.grad_norm, ref_norm, f"grad_norm at step {step}")
        assert not bool(opt.found_nonfinite)
        opt.zero_grad()
        ref_opt.zero_grad()
        compare(model, opt, ref_model, ref_opt, keys)
    for p in model.parameters():  # states keep the param's layout, as torch.optim's zeros_like makes them
        for key in keys:
            state = opt.state[p].get(key)
            if state is not None and isinstance(p, DTensor):
                assert isinstance(state, DTensor) and state.placements == p.placements, (key, state)


ADAMW = dict(lr=0.05, weight_decay=0.1)
SGD = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)


def fsdp_adamw_unclipped(rank):
    train_and_compare(rank, shard, fusedopt.AdamW, torch.optim.AdamW, ADAMW, None)


def fsdp_adamw_clipped(rank):
    train_and_compare(rank, shard, fusedopt.AdamW, torch.optim.AdamW, ADAMW, 0.05)


def fsdp_sgd_clipped(rank):
    train_and_compare(rank, shard, fusedopt.SGD, torch.optim.SGD, SGD, 0.05, keys=("momentum_buffer",))


def hsdp_adamw_clipped(rank):
    """HSDP: a 2-D mesh (replicate 2, shard 1), params placed (Replicate(), Shard(0)). The replicated copies
    must not be counted twice in the norm."""
    mesh = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("replicate", "shard"))

    def hsdp(model):
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        return fully_shard(model, mesh=mesh)

    train_and_compare(rank, hsdp, fusedopt.AdamW, torch.optim.AdamW, ADAMW, 0.05)


def ddp_adamw_clipped(rank):
    train_and_compare(rank, DistributedDataParallel, fusedopt.AdamW, torch.optim.AdamW, ADAMW, 0.05)


def ddp_adamw_unclipped(rank):
    train_and_compare(rank, DistributedDataParallel, fusedopt.AdamW, torch.optim.AdamW, ADAMW, None)


def nonfinite_on_one_rank(rank):
    """Rank 1's shard gets a NaN at step 1: every rank skips that step identically (params, states, steps
    unchanged, grads kept), and later steps match a reference that never saw that step."""
    ref_model = make_model()
    model = shard(copy.deepcopy(ref_model))
    opt = fusedopt.AdamW(model.parameters(), **ADAMW, max_grad_norm=0.05, nonfinite="skip", backend="cpu")
    ref_opt = torch.optim.AdamW(ref_model.parameters(), **ADAMW, foreach=False)
    for step in range(STEPS):
        backward(model, step, rank)
        if step == 1:
            if rank == 1:
                next(model.parameters()).grad.to_local()[0, 0] = float("nan")
            before = [(p.to_local().clone(), p.grad.to_local().clone(),
                       {k: (v.to_local() if isinstance(v, DTensor) else v).clone() for k, v in opt.state[p].items()})
                      for p in model.parameters()]
            opt.step()
            assert bool(opt.found_nonfinite), "the NaN on rank 1 must be seen on every rank"
            assert not bool(torch.isfinite(opt.grad_norm)), opt.grad_norm
            for p, (value, grad, state) in zip(model.parameters(), before):
                assert torch.equal(p.to_local(), value), "param changed on a skipped step"
                assert torch.equal(p.grad.to_local(), grad) or rank == 1, "grad changed on a skipped step"
                for key, saved in state.items():
                    now = opt.state[p][key]
                    assert torch.equal(now.to_local() if isinstance(now, DTensor) else now, saved), key
            opt.zero_grad()
            continue
        backward(ref_model, step, None)
        torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.05)
        opt.step()
        ref_opt.step()
        assert not bool(opt.found_nonfinite)
        opt.zero_grad()
        ref_opt.zero_grad()
    compare(model, opt, ref_model, ref_opt)
    assert all(float(opt.state[p]["step"]) == STEPS - 1 for p in model.parameters())


def grad_scaler_inf_on_one_rank(rank):
    """GradScaler with an inf on rank 1 only, under nonfinite="ignore": every rank skips the step. (The found_inf
    the scaler hands over is already global: DTensor's dispatch all-reduces it, see found_inf_reduce_handler in
    torch/distributed/tensor/_dispatch.py; fusedopt needs no collective of its own here.)"""
    model = shard(make_model())
    opt = fusedopt.AdamW(model.parameters(), **ADAMW, backend="cpu")
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    for step in range(2):
        x, y = batch(step, rank)
        scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
        if step == 1 and rank == 1:
            next(model.parameters()).grad.to_local()[0, 0] = float("inf")
        before = [p.to_local().clone() for p in model.parameters()]
        scaler.step(opt)
        changed = [not torch.equal(p.to_local(), b) for p, b in zip(model.parameters(), before)]
        if step == 1:
            assert bool(opt.found_nonfinite), "rank 1's inf must be seen on every rank"
            assert not any(changed), "a param changed on a step that rank 1 skipped"
        else:
            assert any(changed) and not bool(opt.found_nonfinite)
        scaler.update()
        opt.zero_grad()


def replicate_counts_once(rank):
    """A Replicate param holds the same grad on both ranks: the global norm counts it once, Shard(0) params
    once per shard; fusedopt's grad_norm equals clip_grad_norm_ over the full tensors."""
    mesh = init_device_mesh("cpu", (WORLD,))
    gen = torch.Generator().manual_seed(5)
    fulls = [torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen), torch.randn(3, 2, generator=gen)]
    grads = [torch.randn_like(t) for t in fulls]
    placements = [(Shard(0),), (Replicate(),), (Shard(1),)]
    params = []
    for value, grad, place in zip(fulls, grads, placements):
        p = torch.nn.Parameter(distribute_tensor(value, mesh, place))
        p.grad = distribute_tensor(grad, mesh, place)
        params.append(p)
    ref = [torch.nn.Parameter(t.clone()) for t in fulls]
    for p, g in zip(ref, grads):
        p.grad = g.clone()
    opt = fusedopt.SGD(params, lr=0.5, max_grad_norm=1.0, backend="cpu")
    opt.step()
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    torch.optim.SGD(ref, lr=0.5, foreach=False).step()
    assert_close(opt.grad_norm, ref_norm, "grad_norm")
    for i, (p, r) in enumerate(zip(params, ref)):
        assert_close(p, r, f"param {i}")


def mismatched_params(rank):
    """Rank 1 leaves one param out of its optimizer: every rank raises a clear error at the first step."""
    model = shard(make_model())
    params = list(model.parameters())
    opt = fusedopt.AdamW(params if rank == 0 else params[:-1], max_grad_norm=1.0, backend="cpu")
    backward(model, 0, rank)
    before = [p.to_local().clone() for p in params]
    try:
        opt.step()
    except RuntimeError as exc:
        assert "differ across the ranks" in str(exc), exc
        assert all(torch.equal(p.to_local(), b) for p, b in zip(params, before)), "params changed"
    else:
        raise AssertionError("no error for param sets that differ across ranks")


def wrong_layout_state_dict(rank):
    """A sharded state_dict loaded into an unsharded model's optimizer, the reverse, and DTensor state with
    other placements: each a clear ValueError, nothing loaded."""
    sharded = shard(make_model())
    opt = fusedopt.AdamW(sharded.parameters(), backend="cpu")
    backward(sharded, 0, rank)
    opt.step()
    sharded_sd = opt.state_dict()

    plain = make_model()
    plain_opt = fusedopt.AdamW(plain.parameters(), backend="cpu")
    backward(plain, 0, None)
    plain_opt.step()
    plain_sd = plain_opt.state_dict()

    fresh = fusedopt.AdamW(shard(make_model()).parameters(), backend="cpu")
    replicated = copy.deepcopy(sharded_sd)
    for state in replicated["state"].values():
        state["exp_avg"] = state["exp_avg"].redistribute(placements=[Replicate()])
    for target, sd, what in ((fusedopt.AdamW(make_model().parameters()), sharded_sd, "sharded into plain"),
                             (fresh, plain_sd, "plain into sharded"), (fresh, replicated, "Replicate into Shard")):
        try:
            target.load_state_dict(sd)
        except ValueError as exc:
            assert "does not match the sharding" in str(exc), exc
            assert not target.state, f"{what}: state loaded despite the error"
        else:
            raise AssertionError(f"no error loading {what}")


def dcp_round_trip(rank):
    """torch.distributed.checkpoint saves and loads fusedopt's DTensor states; training continues exactly."""
    from torch.distributed import checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    model = shard(make_model())
    opt = fusedopt.AdamW(model.parameters(), **ADAMW, max_grad_norm=0.05, backend="cpu")
    for step in range(2):
        backward(model, step, rank)
        opt.step()
        opt.zero_grad()
    path = [tempfile.mkdtemp() if rank == 0 else None]
    dist.broadcast_object_list(path)
    dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=path[0])

    model2 = shard(make_model())
    with torch.no_grad():
        for p2, p in zip(model2.parameters(), model.parameters()):
            p2.copy_(p)
    opt2 = fusedopt.AdamW(model2.parameters(), **ADAMW, max_grad_norm=0.05, backend="cpu")
    loaded = {"optim": get_optimizer_state_dict(model2, opt2)}
    dcp.load(loaded, checkpoint_id=path[0])
    set_optimizer_state_dict(model2, opt2, loaded["optim"])
    for m, o in ((model, opt), (model2, opt2)):
        backward(m, 2, rank)
        o.step()
    for p2, p in zip(model2.parameters(), model.parameters()):
        assert_close(p2, p, "param after resuming", rtol=0, atol=0)
        for key in ("exp_avg", "exp_avg_sq"):
            assert isinstance(opt2.state[p2][key], DTensor)
            assert_close(opt2.state[p2][key], opt.state[p][key], key, rtol=0, atol=0)


def full_state_dict_round_trip(rank):
    """DCP's full (unsharded) optimizer state dict, gathered and loaded back into sharded params."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_optimizer_state_dict)

    model = shard(make_model())
    opt = fusedopt.AdamW(model.parameters(), **ADAMW, backend="cpu")
    backward(model, 0, rank)
    opt.step()
    options = StateDictOptions(full_state_dict=True)
    full_sd = get_optimizer_state_dict(model, opt, options=options)
    assert not any(isinstance(v, DTensor) for s in full_sd["state"].values() for v in s.values())
    model2 = shard(make_model())
    opt2 = fusedopt.AdamW(model2.parameters(), **ADAMW, backend="cpu")
    set_optimizer_state_dict(model2, opt2, full_sd, options=options)
    for p2, p in zip(model2.parameters(), model.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert isinstance(opt2.state[p2][key], DTensor)
            assert_close(opt2.state[p2][key], opt.state[p][key], key, rtol=0, atol=0)


def nonfinite_raise_on_one_rank(rank):
    """nonfinite="raise" with a NaN on rank 1 only: every rank raises, nothing changes."""
    model = shard(make_model())
    opt = fusedopt.AdamW(model.parameters(), nonfinite="raise", backend="cpu")
    backward(model, 0, rank)
    if rank == 1:
        next(model.parameters()).grad.to_local()[0, 0] = float("inf")
    before = [p.to_local().clone() for p in model.parameters()]
    try:
        opt.step()
    except RuntimeError as exc:
        expected = "parameter 0 of param group 0" if rank == 1 else "another rank's shard"
        assert expected in str(exc), exc
    else:
        raise AssertionError("no error for a non-finite gradient on rank 1")
    assert all(torch.equal(p.to_local(), b) for p, b in zip(model.parameters(), before))
    assert not opt.state, "state created by a step that raised"


SCENARIOS = [fsdp_adamw_unclipped, fsdp_adamw_clipped, fsdp_sgd_clipped, hsdp_adamw_clipped, ddp_adamw_unclipped,
             ddp_adamw_clipped, nonfinite_on_one_rank, nonfinite_raise_on_one_rank, grad_scaler_inf_on_one_rank,
             replicate_counts_once, mismatched_params, wrong_layout_state_dict, dcp_round_trip,
             full_state_dict_round_trip]


def run(rank: int, port: int, out_dir: str, names: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    results = {}
    try:
        for scenario in SCENARIOS:
            if names and scenario.__name__ not in names:
                continue
            try:
                scenario(rank)
                results[scenario.__name__] = "ok"
            except Exception:  # recorded for the test to report; the next scenario still runs
                results[scenario.__name__] = traceback.format_exc()
            dist.barrier()
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
        dist.destroy_process_group()
    # Leave without interpreter shutdown, as examples/train_gpt.py does (see there): a gloo worker thread releasing
    # a collective's tensors during shutdown would abort this rank ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    mp.spawn(run, args=(free_port(), sys.argv[1], sys.argv[2:]), nprocs=WORLD)
