"""Benchmark cases as data: named lists of parameter shapes, grouped in suites.

A case says only *what* is optimized (shapes, dtype); how tensors are filled and who owns them is the runner's job.

Suites:
- ``model``: the parameter lists of GPT-2 small (148 tensors), a Llama-style 1.1B model (201 tensors, the
  TinyLlama-1.1B layout) and ResNet-50 (161 tensors). A model case can be *scaled*: every width is divided by
  the scale and the layer count kept, so the tensor count and the mix of shapes stay and the params shrink by
  about scale**2. The default run scales what does not fit its time and memory budget and says so.
- ``sweep``: one tensor, from 1K params up to a limit (by default the time budget's; ``--full``: the largest size
  memory allows), to show where per-step overhead ends and bandwidth begins.
- ``many-small``: thousands of small tensors, where per-tensor host overhead dominates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

Shapes = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Case:
    name: str
    shapes: Shapes
    description: str
    suite: str = "model"
    dtype: torch.dtype = torch.float32
    scale: int = 1  # widths divided by this; 1 is the real model
    full_params: int | None = None  # params at scale 1, when scaled

    @property
    def n_tensors(self) -> int:
        return len(self.shapes)

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


def _w(x: int, scale: int) -> int:
    return max(1, x // scale)


def gpt2_shapes(scale: int = 1, vocab: int = 50257, n_ctx: int = 1024, d: int = 768, n_layer: int = 12) -> Shapes:
    """GPT-2 (HF layout: Conv1D weights are [in, out]; lm_head tied to wte): 4 + 12 * n_layer tensors."""
    vocab, n_ctx, d = _w(vocab, scale), _w(n_ctx, scale), _w(d, scale)
    layer = (
        (d,), (d,),                    # ln_1 weight, bias
        (d, 3 * d), (3 * d,),          # attn.c_attn
        (d, d), (d,),                  # attn.c_proj
        (d,), (d,),                    # ln_2 weight, bias
        (d, 4 * d), (4 * d,),          # mlp.c_fc
        (4 * d, d), (d,),              # mlp.c_proj
    )
    return ((vocab, d), (n_ctx, d)) + layer * n_layer + ((d,), (d,))


def llama_shapes(scale: int = 1, vocab: int = 32000, d: int = 2048, ffn: int = 5632, n_layer: int = 22,
                 kv_dim: int = 256) -> Shapes:
    """A Llama-style decoder (TinyLlama-1.1B: grouped-query attention with 4 KV heads of 64, SwiGLU MLP, RMSNorm,
    untied lm_head): 3 + 9 * n_layer tensors, 1.10B params at scale 1."""
    vocab, d, ffn, kv_dim = _w(vocab, scale), _w(d, scale), _w(ffn, scale), _w(kv_dim, scale)
    layer = (
        (d, d), (kv_dim, d), (kv_dim, d), (d, d),  # q, k, v, o projections
        (ffn, d), (ffn, d), (d, ffn),              # gate, up, down
        (d,), (d,),                                # input and post-attention RMSNorm
    )
    return ((vocab, d),) + layer * n_layer + ((d,), (vocab, d))


def resnet50_shapes(scale: int = 1, classes: int = 1000) -> Shapes:
    """torchvision's ResNet-50 (bottleneck blocks [3, 4, 6, 3], convs without bias, BatchNorm weight and bias):
    161 tensors, 25.6M params at scale 1."""
    c = lambda x: _w(x, scale)  # noqa: E731
    shapes: list[tuple[int, ...]] = [(c(64), 3, 7, 7), (c(64),), (c(64),)]
    inplanes = c(64)
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        w, out = c(width), c(width * 4)
        for b in range(blocks):
            shapes += [(w, inplanes, 1, 1), (w,), (w,), (w, w, 3, 3), (w,), (w,), (out, w, 1, 1), (out,), (out,)]
            if b == 0:  # downsample branch
                shapes += [(out, inplanes, 1, 1), (out,), (out,)]
            inplanes = out
    return tuple(shapes) + ((c(classes), inplanes), (c(classes),))


def uniform_shapes(n_tensors: int, numel: int) -> Shapes:
    return ((numel,),) * n_tensors


@dataclass(frozen=True)
class Model:
    name: str
    label: str
    shapes: Callable[[int], Shapes]
    default_scale: int  # what the default run uses on a CPU (time budget: about a minute for the model suite)


MODELS: dict[str, Model] = {
    "gpt2-small": Model("gpt2-small", "GPT-2 small", gpt2_shapes, 2),
    "llama-1b": Model("llama-1b", "Llama-style 1.1B", llama_shapes, 6),
    "resnet50": Model("resnet50", "ResNet-50", resnet50_shapes, 1),
}
# The tiny stand-ins of --quick (tests): same structure, so the same code paths run; numbers mean nothing.
QUICK_SCALE = {"gpt2-small": 24, "llama-1b": 64, "resnet50": 16}

MANY_SMALL = (4096, 4096)
QUICK_MANY_SMALL = (64, 256)
SWEEP_MIN = 2**10
SWEEP_STEP = 4  # params grow by this factor per size
SWEEP_DEFAULT_MAX = 2**24  # the default run's time budget; --full goes on while memory allows
QUICK_SWEEP_MAX = 2**14
SUITES = ("model", "sweep", "many-small")


def model_case(model: Model, scale: int) -> Case:
    shapes = model.shapes(scale)
    n = sum(math.prod(s) for s in shapes)
    if scale == 1:
        return Case(model.name, shapes, f"{model.label}: {len(shapes)} tensors, {n / 1e6:.1f}M params")
    full = sum(math.prod(s) for s in model.shapes(1))
    return Case(model.name, shapes,
                f"{model.label} scaled to 1/{scale} of every width: {len(shapes)} tensors, {n / 1e6:.1f}M of its "
                f"{full / 1e6:.1f}M params", scale=scale, full_params=full)


def many_small_case(n_tensors: int, numel: int) -> Case:
    return Case("many-small", uniform_shapes(n_tensors, numel), f"{n_tensors} tensors of {numel} params",
                suite="many-small")


def sweep_sizes(max_numel: int, min_numel: int = SWEEP_MIN, step: int = SWEEP_STEP) -> list[int]:
    sizes = []
    n = min_numel
    while n <= max_numel:
        sizes.append(n)
        n *= step
    return sizes


def sweep_case(numel: int) -> Case:
    return Case(f"sweep-{numel}", ((numel,),), f"one tensor of {numel:,} params", suite="sweep")


def select(suite: str, *, quick: bool = False, full: bool = False, sweep_max: int | None = None,
           fits: Callable[[Case], bool] = lambda case: True, models: Sequence[str] | None = None) -> list[Case]:
    """The cases of one suite. `fits` says whether a case's tensors fit in memory: a model case that does not is
    scaled further (by 2 at a time) and the sweep stops before the first size that does not. `models` keeps only
    those MODELS of the model suite (default: all)."""
    if suite == "model":
        out = []
        for m in MODELS.values():
            if models is not None and m.name not in models:
                continue
            scale = QUICK_SCALE[m.name] if quick else 1 if full else m.default_scale
            case = model_case(m, scale)
            while not fits(case):
                scale *= 2
                case = model_case(m, scale)
            out.append(case)
        return out
    if suite == "many-small":
        return [many_small_case(*(QUICK_MANY_SMALL if quick else MANY_SMALL))]
    if suite == "sweep":
        if sweep_max is None:
            sweep_max = QUICK_SWEEP_MAX if quick else 2**40 if full else SWEEP_DEFAULT_MAX
        out = []
        for n in sweep_sizes(sweep_max):
            case = sweep_case(n)
            if not fits(case):
                break
            out.append(case)
        return out
    raise KeyError(f"unknown suite {suite!r}; expected one of {', '.join(SUITES)}")
