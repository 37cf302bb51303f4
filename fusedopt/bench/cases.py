"""Benchmark cases as data: a named list of parameter shapes.

A case says only *what* is optimized (shapes, dtype); how tensors are filled and who owns them is the runner's job.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Case:
    name: str
    shapes: tuple[tuple[int, ...], ...]
    description: str
    dtype: torch.dtype = torch.float32

    @property
    def n_tensors(self) -> int:
        return len(self.shapes)

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


def gpt2_shapes(vocab: int = 50257, n_ctx: int = 1024, d: int = 768, n_layer: int = 12) -> tuple[tuple[int, ...], ...]:
    """The parameter shapes of GPT-2 (HF layout: Conv1D weights are [in, out]); 4 + 12 * n_layer tensors."""
    layer = (
        (d,), (d,),                    # ln_1 weight, bias
        (d, 3 * d), (3 * d,),          # attn.c_attn
        (d, d), (d,),                  # attn.c_proj
        (d,), (d,),                    # ln_2 weight, bias
        (d, 4 * d), (4 * d,),          # mlp.c_fc
        (4 * d, d), (d,),              # mlp.c_proj
    )
    return ((vocab, d), (n_ctx, d)) + layer * n_layer + ((d,), (d,))


def uniform_shapes(n_tensors: int, numel: int) -> tuple[tuple[int, ...], ...]:
    return ((numel,),) * n_tensors


# Full sizes, and the tiny stand-ins `--quick` uses (same structure, so the same code paths run).
CASES: dict[str, Case] = {
    "gpt2-small": Case("gpt2-small", gpt2_shapes(), "GPT-2 small: 148 tensors, 124.4M fp32 params"),
    "many-small": Case("many-small", uniform_shapes(4096, 4096), "4096 tensors of 4096 fp32 params"),
}
QUICK_CASES: dict[str, Case] = {
    "gpt2-small": Case("gpt2-small", gpt2_shapes(vocab=512, n_ctx=64, d=32, n_layer=12), "GPT-2 structure, d=32"),
    "many-small": Case("many-small", uniform_shapes(64, 256), "64 tensors of 256 fp32 params"),
}


def select(name: str, quick: bool) -> list[Case]:
    """Cases for a `--case` value: one name, or "all"."""
    table = QUICK_CASES if quick else CASES
    return list(table.values()) if name == "all" else [table[name]]
