"""Train a small GPT twice, with torch.optim.AdamW and with fusedopt.AdamW, and plot both runs.

    python examples/train_gpt.py                          # CPU, or the GPU when there is one
    torchrun --nproc_per_node 2 examples/train_gpt.py     # DDP (gloo on CPU, nccl on GPUs)
    torchrun --nproc_per_node 2 examples/train_gpt.py --fsdp   # FSDP2 (fully_shard per block)

Both runs start from the same weights and see the same batches, in lockstep (step i of one run, then step i of
the other), so machine noise hits both alike. The torch run is what people write today: ``clip_grad_norm_``,
a non-finite check that skips the step, ``AdamW``. The fusedopt run is ``fusedopt.AdamW(max_grad_norm=...,
nonfinite="skip")``: the same math in one fused step with no host sync. Rank 0 writes the loss curves and the
optimizer step times to a PNG (``--plot``) and prints a summary.

The data is a synthetic character-level corpus generated here (sentences with counts and sums, so there is
structure to learn), sharded across ranks by seeding each rank's batches differently.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import random
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fusedopt  # noqa: E402


# --- data ---------------------------------------------------------------------------------------------------

_NOUNS = ["cat", "dog", "bird", "fox", "horse", "owl", "fish", "frog", "goat", "bee"]
_COLOURS = ["red", "blue", "green", "grey", "white", "black", "brown", "gold"]
_VERBS = ["sees", "finds", "counts", "follows", "feeds", "hears", "paints", "meets"]
_PLACES = ["in the barn", "by the river", "on the hill", "near the old mill", "under the bridge",
           "at the market", "in the garden", "behind the wall"]


def make_corpus(n_chars: int, seed: int = 0) -> str:
    """Sentences from a small grammar, with arithmetic that the model can learn only by attending back:
    ``the red fox sees 4 owls by the river. 4 plus 3 is 7.``"""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < n_chars:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        noun = rng.choice(_NOUNS)
        sentence = (f"the {rng.choice(_COLOURS)} {rng.choice(_NOUNS)} {rng.choice(_VERBS)} {a} {noun}s "
                    f"{rng.choice(_PLACES)}. {a} plus {b} is {a + b}. ")
        parts.append(sentence)
        size += len(sentence)
    return "".join(parts)


class CharData:
    def __init__(self, text: str, context: int, device: torch.device):
        self.chars = sorted(set(text))
        index = {c: i for i, c in enumerate(self.chars)}
        self.tokens = torch.tensor([index[c] for c in text], dtype=torch.long)
        self.context = context
        self.device = device

    def batch(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.tokens) - self.context - 1, (batch_size,), generator=generator)
        x = torch.stack([self.tokens[s:s + self.context] for s in starts.tolist()])
        y = torch.stack([self.tokens[s + 1:s + 1 + self.context] for s in starts.tolist()])
        return x.to(self.device), y.to(self.device)


# --- model --------------------------------------------------------------------------------------------------

@dataclass
class GPTConfig:
    vocab: int
    context: int = 64
    width: int = 96
    layers: int = 3
    heads: int = 4


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.ln1, self.ln2 = nn.LayerNorm(cfg.width), nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, 4 * cfg.width), nn.GELU(), nn.Linear(4 * cfg.width, cfg.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab, cfg.width)
        self.pos = nn.Embedding(cfg.context, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vocab, bias=False)
        for name, p in self.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


# --- training -----------------------------------------------------------------------------------------------

class TorchStep:
    """What people run today: clip_grad_norm_, skip the step on a non-finite norm (a host sync), AdamW."""

    def __init__(self, params, lr, weight_decay, max_grad_norm, fused):
        self.params = list(params)
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay, fused=fused)
        self.max_grad_norm = max_grad_norm

    def step(self):
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        if torch.isfinite(norm):
            self.opt.step()
        self.opt.zero_grad()


class FusedStep:
    def __init__(self, params, lr, weight_decay, max_grad_norm):
        self.opt = fusedopt.AdamW(params, lr=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                                  nonfinite="skip")

    def step(self):
        self.opt.step()
        self.opt.zero_grad()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16, help="per rank")
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--corpus-chars", type=int, default=200_000)
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--fsdp", action="store_true", help="FSDP2 (fully_shard) instead of DDP under torchrun")
    ap.add_argument("--plot", default="train_gpt.png", help="PNG path ('' for none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return ap.parse_args(argv)


def setup_distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), world


def wrap(model: nn.Module, world: int, fsdp: bool, device: torch.device) -> nn.Module:
    if world == 1:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def train(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    rank, world = setup_distributed(device)
    data = CharData(make_corpus(args.corpus_chars, args.seed), args.context, device)
    cfg = GPTConfig(vocab=len(data.chars), context=args.context, width=args.width, layers=args.layers,
                    heads=args.heads)
    torch.manual_seed(args.seed)
    base = GPT(cfg).to(device)
    models = {"torch.optim.AdamW": wrap(copy.deepcopy(base), world, args.fsdp, device),
              "fusedopt.AdamW": wrap(copy.deepcopy(base), world, args.fsdp, device)}
    # torch's fused CPU/GPU AdamW cannot take FSDP2's DTensors; its for-each path can.
    torch_fused = device.type in ("cpu", "cuda") and not args.fsdp
    steppers = {
        "torch.optim.AdamW": TorchStep(models["torch.optim.AdamW"].parameters(), args.lr, args.weight_decay,
                                       args.max_grad_norm, fused=torch_fused),
        "fusedopt.AdamW": FusedStep(models["fusedopt.AdamW"].parameters(), args.lr, args.weight_decay,
                                    args.max_grad_norm),
    }
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)
    history = {name: {"loss": [], "step_ms": []} for name in models}
    n_params = sum(p.numel() for p in base.parameters())
    if rank == 0:
        print(f"GPT with {n_params / 1e6:.2f}M params, vocab {cfg.vocab}, on {device} x {world} "
              f"({'FSDP2' if args.fsdp and world > 1 else 'DDP' if world > 1 else 'single process'})")
    for step in range(args.steps):
        x, y = data.batch(gen, args.batch_size)
        for name, model in models.items():
            with autocast:
                logits = model(x)
            loss = F.cross_entropy(logits.float().view(-1, cfg.vocab), y.view(-1))
            loss.backward()
            _sync(device)
            start = time.perf_counter()
            steppers[name].step()
            _sync(device)
            history[name]["step_ms"].append(1e3 * (time.perf_counter() - start))
            if world > 1:
                loss = loss.detach().clone()
                dist.all_reduce(loss)
                loss /= world
            history[name]["loss"].append(float(loss.detach()))
        if rank == 0 and (step % 50 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  " + "  ".join(f"{n}: loss {h['loss'][-1]:.4f}, step {h['step_ms'][-1]:.2f} ms"
                                                    for n, h in history.items()))
    if rank == 0:
        summary(history, args)
        if args.plot:
            plot(history, args, device, world, n_params)
    if world > 1:
        dist.destroy_process_group()
    return history


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _rolling_median(values: list[float], window: int) -> list[float]:
    return [_median(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]


def summary(history: dict, args: argparse.Namespace) -> None:
    skip = min(5, len(next(iter(history.values()))["step_ms"]) - 1)  # warm-up steps (allocation, first call)
    for name, h in history.items():
        print(f"{name:18s} final loss {h['loss'][-1]:.4f}   median optimizer step {_median(h['step_ms'][skip:]):.2f} ms")


def plot(history: dict, args: argparse.Namespace, device: torch.device, world: int, n_params: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
    top = 0.0
    for (name, h), colour in zip(history.items(), ("tab:blue", "tab:orange")):
        ax_loss.plot(h["loss"], label=name, color=colour, linewidth=1.2, alpha=0.8)
        times = h["step_ms"]
        ax_time.plot(times, ".", color=colour, markersize=2.5, alpha=0.35)
        ax_time.plot(_rolling_median(times, 15), color=colour, linewidth=1.5,
                     label=f"{name}: median {_median(times[5:] or times):.2f} ms")
        top = max(top, sorted(times)[int(0.97 * (len(times) - 1))])
    ax_loss.set(xlabel="step", ylabel="training loss (cross-entropy)", title="loss (same weights, same batches)")
    ax_time.set(xlabel="step", ylabel="ms (dots: each step, line: rolling median)", ylim=(0, 1.15 * top),
                title="optimizer step: clip + non-finite check + AdamW")
    for ax in (ax_loss, ax_time):
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
    where = f"{device.type} x {world}" + (" FSDP2" if args.fsdp and world > 1 else " DDP" if world > 1 else "")
    threads = f", {torch.get_num_threads()} CPU thread(s)" if device.type == "cpu" else ""
    fig.suptitle(f"small GPT ({n_params / 1e6:.2f}M params, {args.layers} layers, width {args.width}), "
                 f"{args.steps} steps, {where}{threads}, torch {torch.__version__}")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    plt.close(fig)
    print(f"wrote {args.plot}")


def main(argv=None) -> dict:
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A rank leaves without interpreter shutdown. gloo's worker threads outlive destroy_process_group (torch
        # keeps the default group referenced) and release a collective's tensors, which takes the GIL, only after
        # waking us; a release that meets shutdown aborts the rank: "terminate called without an active
        # exception" (pytorch#190489). A barrier does not help: it holds the earlier collectives' tensors itself.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
