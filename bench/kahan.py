"""Kahan-compensated low-precision params against exact master remainders (issue 13's third item): memory and
accuracy, on the CPU in pure torch (fusedopt's reference backend; no kernel of fusedopt has Kahan).

    python bench/kahan.py                         # the tables (~4 min of CPU, one thread; 13 min under load here)
    python bench/kahan.py --json kahan.json       # and the numbers as JSON (with the environment)
    python bench/kahan.py --quick                 # the small version tests/test_kahan.py asserts on

The modes, for bf16 (and fp16) params:

- ``none``: the param is the value; each step's new fp32 value is rounded to nearest, so an update below half an
  ulp of the weight is lost (0 extra bytes).
- ``kahan``: optimi's Kahan summation (after Zamirai et al., "Revisiting BFloat16 Training"): a compensation
  buffer ``comp`` of the param's dtype carries what each step's rounding dropped into the next step (2 extra
  bytes). ``KahanCompensated`` below wraps a fusedopt optimizer (``backend="reference"``, fp32 math on fp32
  copies of the params) and does, per element, with ``delta`` the inner optimizer's update of the param's value
  ``p`` (weight decay included)::

      u    = comp + delta                  (fp32)
      p    = round_to_nearest(p + u)       (the param's dtype)
      comp = u - (p_new - p_old)           (fp32, stored in the param's dtype: the part that did not reach p)

  As in optimi, the optimizer reads the param as it is (``p``, not ``p + comp``). Unlike optimi's eager code
  (which keeps ``u`` in bf16 and applies decoupled weight decay to the bf16 param directly), ``u`` is fp32 and the
  decay goes through ``delta``, as a fused kernel would do it: the better of the two. The wrapper reads ``delta``
  off the fp32 value ``p + delta``, so it knows it to fp32's precision at the weight (2^-24 relative), as the fp32
  master does; a kernel would have ``delta`` itself, which could matter only below that (fp16's sweep at 1e-7).
- ``master``: ``master_weights=True``, an fp32 master (4 extra bytes). ``master_weights="remainder"`` (branch
  remainder: an int16 remainder that with the bf16 param is the fp32 master exactly, 2 extra bytes) gives the same
  results bit for bit (tests/test_master_remainder.py), so its accuracy is this row's; its memory is 2 bytes
  less. Float16 params refuse "remainder" (fp16 is not the top half of an fp32), so for them the choice is none
  (0), Kahan (2) or the fp32 master (4).
- ``fp32``: the model and the optimizer in fp32: the truth the others are measured against.

Cases (fp32 states; AdamW lr 1e-3 wd 0.01, SGD lr 0.02 momentum 0.9 (tests/test_mixed_precision.py's PHYSICS
settings), Lion lr 3e-4 wd 0.1, Adagrad lr 1e-2):

1. ``physics``: tests/test_mixed_precision.py's MLP (``mlp_problem``, ``_train_mlp``: 16-64-64-1, tanh, 512
   samples, full batch; forward and backward in the param dtype), 300 steps. Final weight error: the relative L2
   distance of all weights to the fp32 run's, and that distance over the fp32 run's own movement (1 = as far off
   as not moving at all); final loss: the weights evaluated in fp32 on the fp32 data.
2. ``tiny``: the same with every lr divided by 100 (AdamW 1e-5, Lion 3e-6) and 600 steps (bf16 only): updates
   far below half a bf16 ulp of the weights, where plain bf16 stalls.
3. ``sweep``: 1024 weights in [1, 2), SGD with lr r and a gradient of -1, so that every step adds r (as fp32
   rounds it) to every weight, 1000 steps, per relative update size r: the error of the movement of the value
   the optimizer holds (``p``; ``p + comp``; the master), relative to the exact movement 1000 r.
4. ``memory``: bytes per param kept between steps (params, per-element states, compensation, master; not the
   grads, which are the model's), measured on the optimizers of a one-step run, fp32 and bf16 states.

Results (2026-12-01, this project's 2-core CPU VM, torch 2.13 CPU, one thread; bench/results/
cpu-2core-2026-12-01-kahan.json). Physics, weight error (relative L2) and loss:

    mode                       AdamW           SGD              Lion           Adagrad
                               error   loss    error    loss    error   loss   error    loss
    fp32                       0       0.0590  0        0.0357  0       0.355  0        0.0352
    bf16 none                  0.243   0.119   0.163    0.0841  0.276   0.474  0.152    0.0842
    bf16 kahan                 0.0088  0.0590  0.0038   0.0358  0.0072  0.355  0.0100   0.0357
    bf16 master (= remainder)  0.0088  0.0590  0.0038   0.0358  0.0070  0.355  0.0099   0.0356
    fp16 none                  0.0173  0.0592  0.0157   0.0361  0.063   0.366  0.0063   0.0352
    fp16 kahan                 0.0010  0.0590  0.00053  0.0357  0.0019  0.355  0.00095  0.0350
    fp16 master                0.0010  0.0590  0.00052  0.0357  0.0019  0.355  0.0011   0.0357

Tiny updates (lr / 100, 600 steps), error over the fp32 run's movement: bf16 none 0.99 / 0.75 / 1.01 / 0.98
(AdamW / SGD / Lion / Adagrad: nothing kept), Kahan 0.071 / 0.033 / 0.19 / 0.088, master 0.071 / 0.032 / 0.19 /
0.087 (what is left is the bf16 forward's, the same for both). Sweep, error of the movement after 1000 steps:

    r        bf16 none  bf16 kahan  bf16 master   fp16 none  fp16 kahan  fp16 master
    1e-3     1          0.0041      3.2e-5        0.455      3.9e-5      3.2e-5
    1e-4     1          0.027       2.0e-4        1          4.1e-4      2.0e-4
    1e-5     1          0.105       0.0014        1          0.0014      0.0014
    1e-6     1          0.756       0.046         1          0.046       0.046
    1e-7     1          0.698       0.200         1          0.194       0.194

(the master's errors are fp32's own rounding of r at the weight, e.g. 8 ulps of 2^-23 for 1e-6). Memory, bytes
per param with fp32 / bf16 states, AdamW (SGD with momentum, Lion, Adagrad: 4 / 2 less): fp32 12 / 8; bf16 none
10 / 6; bf16 Kahan 12 / 8; bf16 remainder 12 / 8; bf16 master 14 / 10; fp16 the same as bf16 (no remainder).

Conclusion: no bf16 case needs Kahan. At the same 2 bytes, remainder is exact and Kahan is not: on the MLP runs
the two are equal (within 4%: the bf16 forward's noise dominates both), but where the updates are small against
the weights Kahan's bf16 compensation (8 bits) loses them: 10% of the movement at 1e-5 relative, 76% at 1e-6,
where remainder (= the fp32 master) keeps them to fp32's rounding. Both are 15-40x better than plain bf16 on the
MLP. The exception is fp16 params, where remainder is refused: there Kahan with an fp16 compensation (11 bits)
matches the fp32 master on every run here (physics within 10%; the sweep within 2x at errors below 5e-4, equal
from 1e-5 down) for 2 bytes per param instead of 4, and is 7-33x better than plain fp16. So Kahan would earn a
place only as an fp16-only mode, for fp16 training (GPUs without bf16) that cannot afford the fp32 master's 2
extra bytes; fusedopt does not add it now (master_weights=True serves fp16 at 4 bytes; bf16 params take
remainder).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# tests/ first: the physics set-up is tests/test_mixed_precision.py's, and its imports (conftest among them) must
# resolve there, not to bench/'s own conftest.py (this script's folder is on sys.path when run as a script).
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import fusedopt  # noqa: E402
from fusedopt.bench.report import environment  # noqa: E402
from test_mixed_precision import _train_mlp, mlp_problem  # noqa: E402

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
MODES = ("none", "kahan", "master")
# Optimizer -> (class, hyperparameters of the physics case). AdamW and SGD: tests/test_mixed_precision.py PHYSICS.
OPTIMIZERS = {
    "AdamW": (fusedopt.AdamW, dict(lr=1e-3, weight_decay=0.01)),
    "SGD": (fusedopt.SGD, dict(lr=0.02, momentum=0.9)),
    "Lion": (fusedopt.Lion, dict(lr=3e-4, weight_decay=0.1)),
    "Adagrad": (fusedopt.Adagrad, dict(lr=1e-2)),
}
BF16, FP16 = torch.bfloat16, torch.float16
# The MLP cases cost a bf16 forward and backward per step (tens of ms on a loaded 2-core CPU): the full run takes
# fp16 in the physics case only, the quick one two optimizers at few steps. The sweep and the memory count are cheap.
FULL = dict(optimizers=tuple(OPTIMIZERS), physics_steps=300, physics_dtypes=(BF16, FP16), tiny_steps=600,
            tiny_lr_factor=1e-2, tiny_dtypes=(BF16,), sweep_steps=1000, sweep_numel=1024,
            sweep_sizes=(1e-3, 1e-4, 1e-5, 1e-6, 1e-7), sweep_dtypes=(BF16, FP16))
QUICK = dict(optimizers=("AdamW", "Lion"), physics_steps=50, physics_dtypes=(BF16,), tiny_steps=100,
             tiny_lr_factor=1e-2, tiny_dtypes=(BF16,), sweep_steps=300, sweep_numel=256, sweep_sizes=(1e-4, 1e-6),
             sweep_dtypes=(BF16, FP16))


class KahanCompensated:
    """Kahan-compensated bf16/fp16 params over an fp32 optimizer (see the module docstring for the algorithm).

    ``make_inner(work)`` builds the inner optimizer on fp32 tensors shaped as the params. Each step copies the
    params' values (and their grads, to fp32) into them, steps the inner optimizer (which keeps the states), and
    folds its update into the params with the compensation ``comp`` (one tensor per param, of its dtype). The
    fp32 copies are scratch (a fused kernel holds them in registers): not state kept between steps."""

    def __init__(self, params, make_inner):
        self.params = list(params)
        for p in self.params:
            if p.dtype not in (torch.bfloat16, torch.float16):
                raise ValueError(f"KahanCompensated takes bf16/fp16 params, got {p.dtype}")
        self.work = [torch.zeros(p.shape, dtype=torch.float32, requires_grad=True) for p in self.params]
        self.comp = [torch.zeros_like(p) for p in self.params]
        self.inner = make_inner(self.work)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p, w in zip(self.params, self.work):
            w.copy_(p)
            w.grad = None if p.grad is None else p.grad.float()
        self.inner.step()
        for p, w, c in zip(self.params, self.work, self.comp):
            if p.grad is None:
                continue
            old = p.float()
            u = c.float() + (w - old)
            new = (old + u).to(p.dtype)
            c.copy_(u - (new.float() - old))
            p.copy_(new)

    def held(self, i: int) -> torch.Tensor:
        """The value the optimizer holds for param ``i`` (fp64): the param plus its compensation."""
        return self.params[i].detach().double() + self.comp[i].double()


def make_optimizer(cls, hyper: dict, mode: str, state_dtype: torch.dtype | None = None):
    """A factory ``params -> optimizer`` for ``mode`` (none / kahan / master; fp32 params take none)."""
    kwargs = dict(hyper, backend="reference", state_dtype=state_dtype)
    if mode == "kahan":
        return lambda params: KahanCompensated(params, lambda work: cls(work, **kwargs))
    if mode not in ("none", "master"):
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    return lambda params: cls(params, master_weights=mode == "master", **kwargs)


def mlp_run(cls, hyper: dict, dtype: torch.dtype, mode: str, steps: int, state_dtype: torch.dtype | None = None):
    """The physics MLP trained ``steps`` steps: (final params in fp32, the optimizer)."""
    box = []

    def make(params):
        box.append(make_optimizer(cls, hyper, mode, state_dtype)(params))
        return box[0]

    return _train_mlp(dtype, make, steps), box[0]


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in params])


def mlp_loss(params) -> float:
    """The MSE of the MLP with these weights, evaluated in fp32 on the fp32 data."""
    model, x, y = mlp_problem(torch.float32)
    with torch.no_grad():
        for p, value in zip(model.parameters(), params):
            p.copy_(value)
        return float(torch.nn.functional.mse_loss(model(x), y))


def mlp_case(optimizers, steps: int, lr_factor: float, dtypes) -> dict:
    """Per optimizer: fp32 and each (dtype, mode): relative L2 weight error against the fp32 run, that error over
    the fp32 run's movement, and the final loss."""
    start = _flat(mlp_problem(torch.float32)[0].parameters())
    out = {}
    for name in optimizers:
        cls, hyper = OPTIMIZERS[name]
        hyper = dict(hyper, lr=hyper["lr"] * lr_factor)
        truth, _ = mlp_run(cls, hyper, torch.float32, "none", steps)
        t = _flat(truth)
        rows = {"fp32": dict(error=0.0, error_over_movement=0.0, loss=mlp_loss(truth))}
        for dtype in dtypes:
            for mode in MODES:
                final, _ = mlp_run(cls, hyper, dtype, mode, steps)
                off = float((_flat(final) - t).norm())
                rows[f"{DTYPE_NAMES[dtype]} {mode}"] = dict(error=off / float(t.norm()),
                                                            error_over_movement=off / float((t - start).norm()),
                                                            loss=mlp_loss(final))
        out[name] = dict(hyper=hyper, steps=steps, rows=rows)
    return out


def _held(opt, i: int) -> torch.Tensor:
    if isinstance(opt, KahanCompensated):
        return opt.held(i)
    p = opt.param_groups[0]["params"][i]
    master = opt.state[p].get("master_param")
    return (p if master is None else master).detach().double()


def sweep_case(sizes, steps: int, numel: int, dtypes) -> dict:
    """Per dtype, relative update size r and mode: the mean error of the held value's movement over ``steps``
    steps of +r (SGD, lr r, gradient -1), relative to the exact movement."""
    gen = torch.Generator().manual_seed(0)
    start = 1 + torch.rand(numel, generator=gen)
    out = {}
    for dtype in dtypes:
        p0 = start.to(dtype)
        rows = {}
        for r in sizes:
            lr = float(torch.tensor(r, dtype=torch.float32))  # the update the fp32 math adds
            exact = steps * lr
            rows[f"{r:g}"] = row = {}
            for mode in MODES:
                p = p0.clone().requires_grad_()
                opt = make_optimizer(fusedopt.SGD, dict(lr=r), mode)([p])
                for _ in range(steps):
                    p.grad = torch.full_like(p, -1.0)
                    opt.step()
                moved = _held(opt, 0) - p0.double()
                row[mode] = float((moved - exact).abs().mean() / exact)
        out[DTYPE_NAMES[dtype]] = rows
    return out


def kept_bytes(opt) -> float:
    """Bytes per param that the params and the optimizer keep between steps: the params, every state tensor of a
    param's shape (master and compensation included; the 0-dim step counters are per tensor, not per param)."""
    if isinstance(opt, KahanCompensated):
        per = [(p, [c, *opt.inner.state[w].values()]) for p, w, c in zip(opt.params, opt.work, opt.comp)]
    else:
        per = [(p, list(opt.state[p].values())) for g in opt.param_groups for p in g["params"]]
    total = sum(p.numel() * p.element_size() + sum(t.numel() * t.element_size() for t in tensors
                                                   if torch.is_tensor(t) and t.shape == p.shape)
                for p, tensors in per)
    return total / sum(p.numel() for p, _ in per)


def memory_case(optimizers, dtypes) -> dict:
    """Per optimizer and mode: bytes kept per param with fp32 and with bf16 states. "bf16 remainder" is the
    master's count less 2: its int16 remainder takes the place of the fp32 master."""
    out = {}
    for name in optimizers:
        cls, hyper = OPTIMIZERS[name]
        rows = {}
        for label, dtype, mode in [("fp32", torch.float32, "none")] + [
                (f"{DTYPE_NAMES[d]} {m}", d, m) for d in dtypes for m in MODES]:
            rows[label] = {f"{DTYPE_NAMES[s]} states": kept_bytes(mlp_run(cls, hyper, dtype, mode, 1, s)[1])
                           for s in (torch.float32, torch.bfloat16)}
            if label == "bf16 master":
                rows["bf16 remainder"] = {k: v - 2 for k, v in rows[label].items()}
        out[name] = rows
    return out


def evaluate(sizes: dict) -> dict:
    """Every case at ``sizes`` (FULL or QUICK); the memory count for every optimizer and dtype."""
    optimizers = sizes["optimizers"]
    config = {k: [DTYPE_NAMES[d] for d in v] if k.endswith("_dtypes") else v for k, v in sizes.items()}
    return dict(
        config=dict(config, hyper={n: OPTIMIZERS[n][1] for n in optimizers}),
        physics=mlp_case(optimizers, sizes["physics_steps"], 1.0, sizes["physics_dtypes"]),
        tiny=mlp_case(optimizers, sizes["tiny_steps"], sizes["tiny_lr_factor"], sizes["tiny_dtypes"]),
        sweep=sweep_case(sizes["sweep_sizes"], sizes["sweep_steps"], sizes["sweep_numel"], sizes["sweep_dtypes"]),
        memory=memory_case(tuple(OPTIMIZERS), (BF16, FP16)))


def _mlp_table(title: str, case: dict) -> list[str]:
    names = list(case)
    lines = [f"{title}", "", "| mode | " + " | ".join(
        f"{n} (lr {case[n]['hyper']['lr']:g}): error, /movement, loss" for n in names) + " |",
        "| --- |" + " --- |" * len(names)]
    for mode in case[names[0]]["rows"]:
        cells = []
        for n in names:
            r = case[n]["rows"][mode]
            cells.append(f"{r['error']:.3g}, {r['error_over_movement']:.3g}, {r['loss']:.3g}")
        label = "bf16 master (= remainder)" if mode == "bf16 master" else mode
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def format_tables(results: dict) -> str:
    cfg = results["config"]
    lines = _mlp_table(f"Physics: the MLP, {cfg['physics_steps']} steps (weight error: relative L2 against fp32; "
                       "/movement: that distance over the fp32 run's own movement; loss in fp32)",
                       results["physics"])
    lines += _mlp_table(f"Tiny updates: lr x {cfg['tiny_lr_factor']:g}, {cfg['tiny_steps']} steps",
                        results["tiny"])
    lines += [f"Sweep: error of the held value's movement after {cfg['sweep_steps']} steps of +r on weights in "
              "[1, 2) (0 = exact, 1 = nothing kept)", "",
              "| r | " + " | ".join(f"{d} {m}" for d in results["sweep"] for m in MODES) + " |",
              "| --- |" + " --- |" * (len(results["sweep"]) * len(MODES))]
    for r in next(iter(results["sweep"].values())):
        lines.append(f"| {r} | " + " | ".join(f"{results['sweep'][d][r][m]:.3g}" for d in results["sweep"]
                                              for m in MODES) + " |")
    lines += ["", "Memory: bytes per param kept between steps (fp32 states / bf16 states)", "",
              "| mode | " + " | ".join(results["memory"]) + " |", "| --- |" + " --- |" * len(results["memory"])]
    for mode in next(iter(results["memory"].values())):
        lines.append(f"| {mode} | " + " | ".join(
            "{:g} / {:g}".format(*results["memory"][n][mode].values()) for n in results["memory"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small sizes tests/test_kahan.py runs")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers here")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the bf16 matmuls' sums, and so the numbers, do not depend "
                             "on the machine's core count)")
    parser.add_argument("--optimizers", help="comma-separated, of: " + ", ".join(OPTIMIZERS)
                        + " (default: all; --quick: " + ",".join(QUICK["optimizers"]) + ")")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = dict(QUICK if args.quick else FULL)
    if args.optimizers:
        sizes["optimizers"] = tuple(n for n in args.optimizers.split(",") if n)
        unknown = [n for n in sizes["optimizers"] if n not in OPTIMIZERS]
        if unknown:
            parser.error(f"unknown optimizers {unknown}; expected some of {', '.join(OPTIMIZERS)}")
    results = evaluate(sizes)
    print(format_tables(results))
    if args.json:
        results["env"] = environment(torch.device("cpu"))
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
