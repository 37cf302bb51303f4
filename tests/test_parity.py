"""Numerical parity of fusedopt.SGD/Adam/AdamW with torch.optim (its single-tensor for-loop), for the configs in
configs.py, on both backends ("cpu" fails, never skips, when the extension is missing; see conftest.py).

Every run has two param groups with different hyperparameters and params of shape (7, 11, 2), 4097, a
transposed weight, a non-dense slice, a 0-dim one, shape (0,), shape (1,), and a transposed one with a
contiguous grad; 10 steps of fixed random grads (a global norm of about 66). Params, every state entry and
the clip norm are compared.

Tolerances (why):
- fp32: the same formulas, in another order of operations: a few ulp per step. Params:
  ``|fused - torch| <= 1e-5 * |torch| + 1e-7 * max|torch| + 1e-5 * (largest distance moved)``, per tensor (the
  floors cover elements that cancel to near zero, see assert_runs_close); states: 1e-5 relative with a floor of
  1e-6 of the tensor's largest magnitude (STATE_FLOOR_FACTOR).
- bf16/fp16 (flash-attention's rule): the truth is torch.optim in fp32 on the same (rounded) initial params and
  grads; fusedopt's largest error against it must be at most twice that of torch's own low-precision run, plus
  one ulp of the low-precision dtype at the largest magnitude; for params and for each kind of state entry
  (see assert_low_precision_bound).
- fp64: fusedopt runs the reference math in fp64: 1e-10 relative with a 1e-13 * max floor, except where one
  side rounds a factor to fp32 (fp64_tolerance).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from typing import NamedTuple

import pytest
import torch
from torch import Tensor
from torch.nn.utils import clip_grad_norm_

import fusedopt
from fusedopt import ops
from configs import (ALGORITHMS, ALL_CONFIGS, REPRESENTATIVE, Algorithm, OptimConfig, config_id, covering, extras_of,
                     for_dtype, missing_pairs, select)
from conftest import BACKEND_NAMES
from helpers import (assert_bitwise_equal, assert_close, assert_snapshot_equal, assert_within_ulps, ieee_sqrt,
                     max_errors, require_backend, require_rule, snapshot, ulp)

STEPS = 10
LOW_PRECISION = (torch.bfloat16, torch.float16)
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.complex64: 1e-5}
FLOOR = {torch.float32: 1e-7, torch.float64: 1e-13, torch.complex64: 1e-7}
# States sum up to 1 / (1 - beta) ~ 10 rounded terms of the grads' scale, larger than the state's own
# magnitude where they cancel: their floor is ten times the params'.
STATE_FLOOR_FACTOR = 10

# Two param groups (the second gets ALGORITHMS[...].second_group's hyperparameters): (name, shape, layout).
# "transposed" is a dense param in another dim order (its grad has the same strides, as autograd makes it);
# "transposed_cgrad" the same with a contiguous grad; "strided" is not dense (every other column).
PARAM_SPECS = (
    (("w3d", (7, 11, 2), "contiguous"), ("big", (4097,), "contiguous"), ("weight_t", (5, 3), "transposed"),
     ("every_other", (4, 6), "strided")),
    (("scalar", (), "contiguous"), ("empty", (0,), "contiguous"), ("one", (1,), "contiguous"),
     ("mat_t_cgrad", (3, 4), "transposed_cgrad")),
)
PARAM_NAMES = [name for group in PARAM_SPECS for name, _, _ in group]
DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _single_threaded_torch():
    """torch's elementwise ops on these small tensors are fastest on one thread: on a busy 2-core machine each
    OpenMP wake-up costs milliseconds (sqrt of 4097 floats: 6 ms on 2 threads, 8 us on one). The compiled
    backend's steps still run on all threads (see fused_step), so its parallel loops are what is tested."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(DEFAULT_THREADS)


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- building params, grads and optimizers ---
def _empty(shape, layout: str, dtype) -> Tensor:
    if layout.startswith("transposed"):
        return torch.empty(tuple(reversed(shape)), dtype=dtype).t()
    if layout == "strided":
        return torch.empty((shape[0], 2 * shape[1]), dtype=dtype)[:, ::2]
    return torch.empty(shape, dtype=dtype)


def make_params(dtype, seed: int = 0, specs=PARAM_SPECS) -> list[list[Tensor]]:
    """Leaf params per group with values ~N(0, 1) (rounded to ``dtype`` from fp32 draws, so every dtype starts
    from the same numbers as far as it can represent them)."""
    gen = torch.Generator().manual_seed(seed)
    groups = []
    for group in specs:
        params = []
        for _, shape, layout in group:
            values = torch.randn(shape, generator=gen, dtype=_real(dtype))
            values = torch.complex(values, torch.randn(shape, generator=gen, dtype=_real(dtype))) \
                if dtype.is_complex else values
            p = _empty(shape, layout, dtype).copy_(values).requires_grad_()
            p.contiguous_grad = layout == "transposed_cgrad"
            params.append(p)
        groups.append(params)
    return groups


def _real(dtype) -> torch.dtype:
    return torch.float32 if dtype in LOW_PRECISION or dtype == torch.complex64 else \
        torch.float64 if dtype == torch.complex128 else dtype


def make_grads(dtype, steps: int = STEPS, seed: int = 1, specs=PARAM_SPECS) -> list[list[Tensor]]:
    """``grads[step][i]`` for the flattened params: ~N(0, 1) each, a global norm of about 66."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [shape for group in specs for _, shape, _ in group]
    out = []
    for _ in range(steps):
        grads = [torch.randn(shape, generator=gen, dtype=_real(dtype)) for shape in shapes]
        if dtype.is_complex:
            grads = [torch.complex(g, torch.randn(g.shape, generator=gen, dtype=g.dtype)) for g in grads]
        out.append([g.to(dtype) for g in grads])
    return out


def clone_params(groups: list[list[Tensor]], dtype=None) -> list[list[Tensor]]:
    """Same values and strides, non-dense ones included (optionally converted to ``dtype``), new leaves."""
    out = []
    for group in groups:
        out.append([])
        for p in group:
            q = torch.empty_strided(p.shape, p.stride(), dtype=dtype or p.dtype).copy_(p.detach()).requires_grad_()
            q.contiguous_grad = getattr(p, "contiguous_grad", False)
            out[-1].append(q)
    return out


def param_groups(alg: Algorithm, groups: list[list[Tensor]], first: dict | None = None) -> list[dict]:
    return [{"params": groups[0], **(first or {})}, {"params": groups[1], **copy.deepcopy(alg.second_group)}]


def set_grads(params: list[Tensor], grads: list[Tensor | None]) -> None:
    """Assign copies of ``grads`` laid out like their params (autograd's contract), or contiguous for params
    marked ``contiguous_grad`` by make_params."""
    for p, g in zip(params, grads, strict=True):
        if g is None:
            p.grad = None
        elif getattr(p, "contiguous_grad", False):
            p.grad = g.to(p.dtype).contiguous().clone()
        else:
            p.grad = torch.empty_like(p).copy_(g)


def flat(groups: list[list[Tensor]]) -> list[Tensor]:
    return [p for group in groups for p in group]


def torch_step(opt: torch.optim.Optimizer, max_grad_norm: float | None) -> Tensor | None:
    """torch's way to do what fusedopt's ``max_grad_norm`` does: clip_grad_norm_, then step. Returns the norm,
    or None when nothing was clipped (no ``max_grad_norm``, or no grads: fusedopt's ``grad_norm`` then still
    holds the last step's norm)."""
    norm = None
    params = [p for group in opt.param_groups for p in group["params"]]
    if max_grad_norm is not None and any(p.grad is not None for p in params):
        norm = clip_grad_norm_(params, max_grad_norm, foreach=False)
    opt.step()
    return norm


def fused_step(opt: torch.optim.Optimizer) -> Tensor | None:
    """A fusedopt step that also checks the grads were left as they were (clipping is folded into the update)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    before = [None if p.grad is None else p.grad.clone() for p in params]
    with _threads(DEFAULT_THREADS if opt.backend == "cpu" else 1):
        opt.step()
    for i, (p, g) in enumerate(zip(params, before)):
        if g is not None:
            assert_bitwise_equal(p.grad, g, name=f"grad {i} after a fusedopt step")
    norm = opt.grad_norm
    if norm is not None:
        # fp32, or fp64 when there are fp64 grads (as clip_grad_norm_ returns)
        wide = any(p.grad is not None and p.dtype in (torch.float64, torch.complex128) for p in params)
        expected = torch.float64 if wide else torch.float32
        assert norm.dtype == expected and norm.shape == (), f"grad_norm: {norm.dtype} {list(norm.shape)}"
        found = opt.found_nonfinite
        assert found is not None and found.dtype == torch.bool and found.shape == ()
    return None if norm is None else norm.clone()


def states(opt: torch.optim.Optimizer, params: list[Tensor]) -> list[dict[str, Tensor]]:
    return [{k: v.detach().clone() for k, v in opt.state.get(p, {}).items()} for p in params]


class Run(NamedTuple):
    params: list[Tensor]  # final values
    states: list[dict[str, Tensor]]
    norms: list[Tensor | None]  # per step: clip_grad_norm_'s on the torch side, opt.grad_norm on fusedopt's
    initial: list[Tensor] | None = None  # the params before the first step


def run(opt_factory, groups, grad_steps, step_fn) -> Run:
    """Steps ``opt_factory(groups)`` through ``grad_steps`` with ``step_fn(opt)``."""
    opt = opt_factory(groups)
    params = flat(groups)
    initial = [p.detach().clone() for p in params]
    norms = []
    for grads in grad_steps:
        set_grads(params, grads)
        norms.append(step_fn(opt))
    return Run([p.detach().clone() for p in params], states(opt, params), norms, initial)


def run_torch(alg: Algorithm, config: OptimConfig, groups, grad_steps, dtype=None):
    kwargs = for_dtype(alg, config.torch_kwargs(), dtype or flat(groups)[0].dtype)
    return run(lambda g: alg.torch_cls(param_groups(alg, g), **kwargs), groups, grad_steps,
               lambda opt: torch_step(opt, config.max_grad_norm))


def run_fused(alg: Algorithm, config: OptimConfig, backend: str, groups, grad_steps):
    kwargs = for_dtype(alg, config.fused_kwargs(backend), flat(groups)[0].dtype)
    return run(lambda g: alg.fused_cls(param_groups(alg, g), **kwargs), groups, grad_steps, fused_step)


# --- comparisons ---
def assert_runs_close(actual, expected, dtype, names=PARAM_NAMES, equal_nan: bool = False,
                      tol: tuple[float, float] | None = None) -> None:
    """Params, every state entry and the per-step norms of two runs, within RTOL/FLOOR of ``dtype`` (or
    ``tol``: rtol and floor). Params also get ``rtol`` of the largest distance the expected run moved any
    element of the tensor: near g = 0 Adam's update g / (|g| + eps) is ill-conditioned, and a gradient that
    cancels with the weight decay term there turns one ulp of difference in the clip coefficient into
    about 1e-6 (relative to lr) of difference in the update."""
    rtol, floor = tol or (RTOL[dtype], FLOOR[dtype])
    initial = expected.initial or [torch.zeros_like(p) for p in expected.params]
    for name, a, e, e0 in zip(names, actual.params, expected.params, initial, strict=True):
        atol = floor * _scale(e) + (rtol * _scale(e - e0) if expected.initial else 0.0)
        assert_close(a, e, rtol=rtol, atol=atol, equal_nan=equal_nan, name=f"param {name!r}")
    assert_states_close(actual.states, expected.states, rtol, floor, names, equal_nan)
    for step, (na, ne) in enumerate(zip(actual.norms, expected.norms, strict=True)):
        if ne is not None:
            assert na is not None, f"step {step}: fusedopt computed no grad_norm"
            assert_close(na, ne, rtol=rtol, equal_nan=equal_nan, name=f"grad_norm at step {step}")


def assert_states_close(states_a, states_e, rtol: float, floor: float, names=PARAM_NAMES,
                        equal_nan: bool = False) -> None:
    """The same state keys and dtypes per param, every entry within ``rtol`` and STATE_FLOOR_FACTOR * ``floor``
    times its largest magnitude."""
    for name, sa, se in zip(names, states_a, states_e, strict=True):
        assert sorted(sa) == sorted(se), f"state keys of {name!r}: {sorted(sa)} vs torch's {sorted(se)}"
        for key in se:
            assert sa[key].dtype == se[key].dtype, f"state[{name!r}][{key!r}]: {sa[key].dtype} vs {se[key].dtype}"
            atol = STATE_FLOOR_FACTOR * floor * _scale(se[key])
            assert_close(sa[key], se[key], rtol=rtol, atol=atol, equal_nan=equal_nan, name=f"state[{name!r}][{key!r}]")


def _scale(t: Tensor) -> float:
    """The largest finite magnitude in ``t`` (0 if none)."""
    t = torch.view_as_real(t) if t.is_complex() else t
    finite = t[torch.isfinite(t)]
    return float(finite.abs().max()) if finite.numel() else 0.0


def assert_low_precision_bound(fused: Run, torch_lp: Run, truth: Run, dtype, names=PARAM_NAMES) -> None:
    """err(fused) <= 2 * err(torch_lp) + one ``dtype`` ulp at the truth's largest magnitude, for the params and
    for each state entry, where err is the largest abs error against the fp32 truth over all elements of that
    quantity in the run (all params pooled, all exp_avg pooled, ...: a one-element tensor's error is a single
    sample, where torch can get lucky). Step counts must be exact."""
    quantities = {"params": (fused.params, torch_lp.params, truth.params)}
    for i, (sf, st, se) in enumerate(zip(fused.states, torch_lp.states, truth.states, strict=True)):
        assert sorted(sf) == sorted(se), f"state keys of {names[i]!r}: {sorted(sf)} vs torch's {sorted(se)}"
        for key in se:
            if key == "step":
                assert_bitwise_equal(sf[key], se[key], name=f"state[{names[i]!r}]['step']")
                continue
            for pooled, value in zip(quantities.setdefault(key, ([], [], [])), (sf[key], st[key], se[key])):
                pooled.append(value)
    failures = []
    for quantity, (f, t, e) in quantities.items():
        f, t, e = (torch.cat([x.detach().reshape(-1).float() for x in xs]) for xs in (f, t, e))
        if not bool(torch.isfinite(t).all()):
            failures.append(f"{quantity}: torch's own {dtype} run is not finite; no bound to test against")
            continue
        err_f, err_t = max_errors(f, e)[0], max_errors(t, e)[0]
        slack = ulp(_scale(e), dtype)
        if not bool(torch.isfinite(f).all()) or err_f > 2 * err_t + slack:
            failures.append(f"{quantity}: fusedopt max abs err {err_f:.4g} > 2 * torch's {err_t:.4g} + {slack:.3g} "
                            f"(fusedopt finite: {bool(torch.isfinite(f).all())})")
    assert not failures, "\n".join(failures)


def fp64_tolerance(config: OptimConfig, dtype) -> tuple[float, float] | None:
    """fp64 runs agree to fp32 precision only where one side rounds a factor to fp32: fusedopt's global norm is
    an fp32 reduction for every dtype (grad_norm is fp32), so its clip coefficient is; torch computes with a
    tensor lr/beta in the tensor's dtype (fp32). Seen: about 6e-8 relative. None: the dtype's default."""
    fp32_factor = config.max_grad_norm is not None or config.has_tensor_hyperparameter
    return (1e-6, 1e-6) if dtype == torch.float64 and fp32_factor else None


# --- every config against torch.optim ---
def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- the trimmed tables: each case on one backend (or more), a pairwise covering (configs.covering) ---
# Every (algorithm, config, dtype, ...) case of these tables still runs, but on one of the two backends rather than
# on both: every algorithm, every extra of configs.extras_of (each clipping mode, each nonfinite mode, tensor lr
# and other tensor hyperparameters, maximize, capturable, torch's implementation flags) and every dtype, poisoned
# value and step index of a table runs on both backends. That is enough because the backends share everything
# but the update itself (the classes' validation, state handling, clipping and skipping are the same Python), and
# the updates are compared case by case, every config in every dtype, by test_cpu_matches_reference: a config run
# against torch.optim on one backend is checked on the other through it. test_trimmed_tables_cover_every_pair
# checks the covering.
def _label(value) -> str:
    return _dtype_name(value) if isinstance(value, torch.dtype) else str(value)


def _case_tags(case: tuple) -> set:
    """The factors of a case ``(alg, config, *values)`` that must meet every backend: its algorithm, the extras of
    its config, and each of its other values (dtype, poisoned value, step)."""
    alg, config, *values = case
    return {("algorithm", alg.name), *(("extra", e) for e in extras_of(config)),
            *((f"value {i}", _label(v)) for i, v in enumerate(values))}


TRIMMED = {}  # table name -> its cases, for test_trimmed_tables_cover_every_pair


def on_backends(name: str, cases: list[tuple]) -> list:
    """pytest params ``(*case, backend)`` of configs.covering(cases) over BACKEND_NAMES (for a test that takes
    ``backend`` as an indirect parameter: conftest's fixture still checks that the backend exists)."""
    TRIMMED[name] = cases
    return [pytest.param(*row, id="-".join([config_id(row[0], row[1]), *map(_label, row[2:])]))
            for row in covering(cases, _case_tags, [(b,) for b in BACKEND_NAMES])]


def _trimmed(name: str, argnames: str, cases: list[tuple]):
    return pytest.mark.parametrize(f"{argnames},backend", on_backends(name, cases), indirect=["backend"])


# Every config in fp32, bf16 and fp16; the representative ones in fp64 too (fp64 always runs the reference math).
MATRIX = [(alg, config, dtype) for dtype in (torch.float32, torch.bfloat16, torch.float16)
          for alg, config in ALL_CONFIGS] + [(alg, config, torch.float64) for alg, config in REPRESENTATIVE]


@_trimmed("matches_torch", "alg,config,dtype", MATRIX)
def test_matches_torch(alg, config, backend, dtype):
    assert_matches_torch(alg, config, backend, dtype)


def assert_matches_torch(alg, config, backend: str, dtype, steps: int = STEPS, specs=PARAM_SPECS) -> None:
    """``steps`` of fusedopt on ``backend`` against torch.optim (test_triton.py reuses it with fewer steps and
    params)."""
    names = [name for group in specs for name, _, _ in group]
    groups = make_params(dtype, specs=specs)
    grads = make_grads(dtype, steps, specs=specs)
    fused = run_fused(alg, config, backend, clone_params(groups), grads)
    if dtype not in LOW_PRECISION:
        expected = run_torch(alg, config, clone_params(groups), grads)
        assert_runs_close(fused, expected, dtype, names=names, tol=fp64_tolerance(config, dtype))
        return
    truth = run_torch(alg, config, clone_params(groups, torch.float32),
                      [[g.float() for g in step] for step in grads], dtype=dtype)
    torch_lp = run_torch(alg, config, clone_params(groups), grads)
    assert_low_precision_bound(fused, torch_lp, truth, dtype, names=names)
    for name, state in zip(names, fused.states):
        for key, value in state.items():
            assert value.dtype == torch.float32, f"state[{name!r}][{key!r}] of a {dtype} param is {value.dtype}"
    for step, (nf, nt) in enumerate(zip(fused.norms, truth.norms, strict=True)):
        if nt is not None:  # the same grad values, summed in fp32 on both sides
            assert_close(nf, nt, rtol=1e-5, name=f"grad_norm at step {step}")


def _ids(pairs) -> list[str]:
    return [config_id(a, c) for a, c in pairs]


CLIP_CONFIGS = select("SGD-fusedopt:clip_active", "Adam-fusedopt:clip_active", "AdamW-fusedopt:clip_active")
SKIP_CONFIGS = select("SGD-fusedopt:dampening", "SGD-fusedopt:clip_active", "Adam-fusedopt:amsgrad",
                      "Adam-fusedopt:clip_active", "AdamW-optim_db:default", "AdamW-fusedopt:everything")
RAISE_CONFIGS = select("SGD-fusedopt:nonfinite_raise_with_clip", "Adam-fusedopt:nonfinite_raise_with_clip",
                       "AdamW-fusedopt:nonfinite_raise_with_clip")
# NAdam, RAdam, Adadelta, Rprop, ASGD (issue 12 part 2)
CLIP_CONFIGS += select("NAdam-fusedopt:clip_active", "RAdam-fusedopt:clip_active", "Adadelta-fusedopt:clip_active",
                       "Rprop-fusedopt:clip_active", "ASGD-fusedopt:clip_active")
SKIP_CONFIGS += select("NAdam-fusedopt:clip_active", "NAdam-fusedopt:everything", "RAdam-fusedopt:clip_active",
                       "RAdam-fusedopt:everything", "Adadelta-fusedopt:clip_active",
                       "Adadelta-fusedopt:everything", "Rprop-fusedopt:clip_active", "Rprop-fusedopt:everything",
                       "ASGD-fusedopt:clip_active", "ASGD-fusedopt:everything")
RAISE_CONFIGS += select("NAdam-fusedopt:nonfinite_raise_with_clip", "RAdam-fusedopt:nonfinite_raise_with_clip",
                        "Adadelta-fusedopt:nonfinite_raise_with_clip", "Rprop-fusedopt:nonfinite_raise_with_clip",
                        "ASGD-fusedopt:nonfinite_raise_with_clip")
# Adagrad, RMSprop, Adamax, Lion (issue 12 part 2).
CLIP_CONFIGS += select("Adagrad-fusedopt:clip_active", "RMSprop-fusedopt:clip_active", "Adamax-fusedopt:clip_active",
                       "Lion-fusedopt:clip_active")
SKIP_CONFIGS += select("Adagrad-fusedopt:everything", "Adagrad-fusedopt:clip_active", "RMSprop-fusedopt:everything",
                       "RMSprop-fusedopt:clip_active", "Adamax-fusedopt:everything", "Adamax-fusedopt:clip_active",
                       "Lion-fusedopt:everything", "Lion-fusedopt:clip_active")
RAISE_CONFIGS += select("Adagrad-fusedopt:nonfinite_raise_with_clip", "RMSprop-fusedopt:nonfinite_raise_with_clip",
                        "Adamax-fusedopt:nonfinite_raise_with_clip", "Lion-fusedopt:nonfinite_raise_with_clip")
BAD_AT = ("w3d", (3, 4, 1))  # where a non-finite value is injected: param name, element


def _without(steps: list, k: int) -> list:
    return steps[:k] + steps[k + 1:]


def _poisoned(grads: list[list[Tensor]], k: int, value: float) -> list[list[Tensor]]:
    """``grads`` with ``value`` written into one element of param BAD_AT[0]'s grad at step ``k``."""
    out = [list(step) for step in grads]
    i = PARAM_NAMES.index(BAD_AT[0])
    out[k][i] = out[k][i].clone()
    out[k][i][BAD_AT[1]] = value
    return out


# --- clipping with non-finite grads under nonfinite="ignore": exactly clip_grad_norm_ + step ---
@_trimmed("clip_nonfinite_ignore", "alg,config,bad",
          [(alg, config, bad) for alg, config in CLIP_CONFIGS for bad in (math.inf, -math.inf, math.nan)])
def test_clip_nonfinite_ignore(alg, config, backend, bad):
    """An inf norm makes the finite grads 0 and the inf ones NaN; a NaN norm makes every grad NaN."""
    groups = make_params(torch.float32)
    grads = _poisoned(make_grads(torch.float32, steps=5), 2, bad)
    fused = run_fused(alg, config, backend, clone_params(groups), grads)
    expected = run_torch(alg, config, clone_params(groups), grads)
    assert not math.isfinite(expected.norms[2]), "the poisoned step should have a non-finite norm"
    assert_runs_close(fused, expected, torch.float32, equal_nan=True)
    params = fused.params
    at = PARAM_NAMES.index(BAD_AT[0])
    # Not Rprop: its update takes sign(g * prev) and torch's sign of NaN is 0, so a NaN step changes no param and
    # the next grad overwrites prev (compared with torch above all the same). Lion: torch's sign of NaN is 0 too,
    # so the param stays where it was and its momentum holds the NaN.
    if alg.name != "Rprop":
        assert bool(params[at].isnan().any()) or any(bool(v.isnan().any()) for v in fused.states[at].values()), \
            "the poisoned element should end up NaN"
    if not math.isnan(bad):  # an inf norm zeroes the finite grads: those params stay finite
        assert all(bool(p.isfinite().all()) for name, p in zip(PARAM_NAMES, params) if name != BAD_AT[0])


# --- nonfinite="skip": the poisoned step changes nothing, the rest goes on as if it never happened ---
@_trimmed("nonfinite_skip", "alg,config,dtype,bad,k",
          [(alg, config, dtype, bad, k) for alg, config in SKIP_CONFIGS for dtype in (torch.float32, torch.bfloat16)
           for bad in (math.inf, math.nan) for k in (0, 4)])
def test_nonfinite_skip(alg, config, backend, dtype, bad, k):
    config = dataclasses.replace(config, extras={**config.extras, "nonfinite": "skip"})
    groups = make_params(dtype)
    grads = make_grads(dtype)
    poisoned = _poisoned(grads, k, bad)
    params = flat(clone_params(groups))
    opt = alg.fused_cls(param_groups(alg, [params[:4], params[4:]]), **config.fused_kwargs(backend))
    norms = []
    for step, step_grads in enumerate(poisoned):
        set_grads(params, step_grads)
        before = snapshot(opt)
        norms.append(fused_step(opt))
        assert bool(opt.found_nonfinite) == (step == k), f"found_nonfinite after step {step}"
        if step != k:
            continue
        assert not math.isfinite(norms[-1]), f"grad_norm of the poisoned step: {norms[-1]}"
        after = snapshot(opt)
        if k == 0:  # no history before: state may have been created, but only as fresh state
            assert_snapshot_equal({**before, "state": []}, {**after, "state": []})
            for name, p, state in zip(PARAM_NAMES, params, after["state"]):
                _assert_fresh_state(opt, p, state, name)
        else:
            assert_snapshot_equal(before, after)
    final = Run([p.detach().clone() for p in params], states(opt, params), _without(norms, k))
    # bitwise what fusedopt does without the poisoned step, and close to torch without it
    never_saw = run_fused(alg, config, backend, clone_params(groups), _without(grads, k))
    for name, a, e in zip(PARAM_NAMES, final.params, never_saw.params):
        assert_bitwise_equal(a, e, name=f"param {name!r}")
    for name, sa, se in zip(PARAM_NAMES, final.states, never_saw.states):
        assert sorted(sa) == sorted(se), f"state keys of {name!r}"
        for key in se:
            assert_bitwise_equal(sa[key], se[key], name=f"state[{name!r}][{key!r}]")
    if dtype == torch.float32:
        assert_runs_close(final, run_torch(alg, config, clone_params(groups), _without(grads, k)), dtype)


def _assert_fresh_state(opt, param: Tensor, state: dict, name: str) -> None:
    """``state`` holds only what the optimizer's initialisation makes for ``param`` (zeros; NAdam's mu_product 1,
    Rprop's step_size lr, ASGD's eta lr and mu 1, Adagrad's sum its initial value), bit for bit; SGD with
    dampening drops its buffer on a skipped first step."""
    group = next(g for g in opt.param_groups if any(q is param for q in g["params"]))
    fresh: dict = {}
    opt._init_state(param, fresh, group)
    assert set(state) <= set(fresh), f"state keys of {name!r} after a skipped first step: {sorted(state)}"
    for key, value in state.items():
        assert_bitwise_equal(value, fresh[key], name=f"state[{name!r}][{key!r}] after a skipped first step")


# --- nonfinite="raise": an error naming the params, and nothing changed (no state created at step 0) ---
@_trimmed("nonfinite_raise", "alg,config,dtype,k",
          [(alg, config, dtype, k) for alg, config in RAISE_CONFIGS for dtype in (torch.float32, torch.bfloat16)
           for k in (0, 3)])
def test_nonfinite_raise(alg, config, backend, dtype, k):
    groups = make_params(dtype)
    grads = make_grads(dtype, steps=6)
    poisoned = _poisoned(grads, k, math.inf)
    scalar = PARAM_NAMES.index("scalar")
    poisoned[k][scalar] = torch.full_like(poisoned[k][scalar], math.nan)
    params = flat(clone_params(groups))
    named = list(zip(PARAM_NAMES, params))
    opt = alg.fused_cls(param_groups(alg, [named[:4], named[4:]]), **config.fused_kwargs(backend))
    for step, step_grads in enumerate(poisoned):
        set_grads(params, step_grads)
        if step != k:
            fused_step(opt)
            continue
        before = snapshot(opt)
        with pytest.raises(RuntimeError, match="non-finite") as info:
            opt.step()
        message = str(info.value)
        assert "'w3d'" in message and "'scalar'" in message, f"message does not name the params: {message}"
        assert not any(f"'{n}'" in message for n in PARAM_NAMES if n not in ("w3d", "scalar")), message
        assert_snapshot_equal(before, snapshot(opt))
    if dtype == torch.float32:
        final = Run([p.detach().clone() for p in params], states(opt, params), [])
        expected = run_torch(alg, config, clone_params(groups), _without(grads, k))
        assert_runs_close(final, expected._replace(norms=[]), dtype)


# --- optim_db's fused-matches-forloop sequence, on a model whose grads come from backward ---
def _sequence(opt_cls, kwargs, dtype, step_fn, steps: int = 7):
    """torch's test_optim sequence: grads None at step 2 (no backward), layer 2 frozen at steps 3-4, and a 0-dim
    extra param. Returns a Run per step (params and states after it, its norm)."""
    gen = torch.Generator().manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Sigmoid(), torch.nn.Linear(4, 2),
                                torch.nn.Sigmoid())
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    model = model.to(dtype)
    extra = torch.randn((), generator=gen, dtype=dtype).requires_grad_()
    x = torch.randn(5, 3, generator=gen, dtype=dtype)
    params = [*model.parameters(), extra]
    opt = opt_cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.005}], **kwargs)
    initial = [p.detach().clone() for p in params]
    history = []
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        model[2].requires_grad_(i not in (3, 4))
        if i != 2:
            (model(x) * extra).sum().backward()
        norm = step_fn(opt)
        history.append(Run([p.detach().clone() for p in params], states(opt, params), [norm], initial))
    return history


@_trimmed("sequence_matches_forloop", "alg,config,dtype",
          [(alg, config, dtype) for alg, config in ALL_CONFIGS for dtype in (torch.float32, torch.float64)])
def test_sequence_matches_forloop(alg, config, backend, dtype):
    fused = _sequence(alg.fused_cls, config.fused_kwargs(backend), dtype, fused_step)
    expected = _sequence(alg.torch_cls, config.torch_kwargs(), dtype, lambda o: torch_step(o, config.max_grad_norm))
    names = ["w0", "b0", "w2", "b2", "extra"]
    for step, (f, e) in enumerate(zip(fused, expected)):
        assert_runs_close(f, e, dtype, names=[f"{n} after step {step}" for n in names],
                          tol=fp64_tolerance(config, dtype))


# --- edge cases of the step itself ---
@_trimmed("zero_grads", "alg,config", ALL_CONFIGS)
def test_zero_grads(alg, config, backend):
    """Zero grads: torch's results (a no-op on params without weight decay); with lr=0 a no-op everywhere (what
    DCP's state initialisation step relies on), with the state torch creates."""
    groups = make_params(torch.float32)
    zeros = [[torch.zeros_like(g) for g in step] for step in make_grads(torch.float32, steps=3)]
    fused = run_fused(alg, config, backend, clone_params(groups), zeros)
    assert_runs_close(fused, run_torch(alg, config, clone_params(groups), zeros), torch.float32)
    # AdamW decays by default, ASGD by lambd
    if float(config.kwargs.get("weight_decay", 0)) == 0 and alg.name not in ("AdamW", "ASGD"):
        for name, p, initial in zip(PARAM_NAMES, fused.params[:4], groups[0]):
            assert_bitwise_equal(p, initial.detach(), name=f"param {name!r} after zero-grad steps")

    params = flat(clone_params(groups))
    opt = alg.fused_cls(param_groups(alg, [params[:4], params[4:]], {"lr": 0.0}), **config.fused_kwargs(backend))
    opt.param_groups[1]["lr"] = 0.0
    set_grads(params, zeros[0])
    fused_step(opt)
    for name, p, initial in zip(PARAM_NAMES, params, flat(groups)):
        assert_bitwise_equal(p.detach(), initial.detach(), name=f"param {name!r} after an lr=0 step")
    torch_opt = alg.torch_cls(param_groups(alg, clone_params(groups)), **config.torch_kwargs())
    for group in torch_opt.param_groups:
        set_grads(group["params"], [torch.zeros_like(p) for p in group["params"]])
    torch_opt.step()
    torch_states = states(torch_opt, [p for g in torch_opt.param_groups for p in g["params"]])
    for name, s, t in zip(PARAM_NAMES, states(opt, params), torch_states):
        assert sorted(s) == sorted(t), f"state keys of {name!r} after an lr=0 step: {sorted(s)} vs {sorted(t)}"


@_trimmed("params_without_grads", "alg,config", ALL_CONFIGS)
def test_params_without_grads(alg, config, backend):
    """"big" never gets a grad (so no state), "w3d" first gets one at step 3 (a momentum buffer starts then:
    torch's fused SGD crashes here, its for-loop is the semantics), "scalar" has none at step 5."""
    groups = make_params(torch.float32)
    grads = make_grads(torch.float32, steps=8)
    for step, step_grads in enumerate(grads):
        step_grads[PARAM_NAMES.index("big")] = None
        if step < 3:
            step_grads[PARAM_NAMES.index("w3d")] = None
        if step == 5:
            step_grads[PARAM_NAMES.index("scalar")] = None
    fused = run_fused(alg, config, backend, clone_params(groups), grads)
    expected = run_torch(alg, config, clone_params(groups), grads)
    if not expected.states[PARAM_NAMES.index("big")]:  # torch.optim.Adagrad creates every state up front
        assert fused.states[PARAM_NAMES.index("big")] == {}, "a param that never had a grad got state"
    assert_runs_close(fused, expected, torch.float32)


@_trimmed("tiny_lr_group", "alg,config,dtype",
          [(alg, config, dtype) for alg, config in ALL_CONFIGS for dtype in (torch.float32, torch.bfloat16)])
def test_tiny_lr_group_leaves_params_unchanged(alg, config, backend, dtype):
    if alg.name == "Rprop":
        pytest.skip("Rprop's lr is only its initial step size, which the update clamps to step_sizes[0] (1e-6 by "
                    "default), as torch's does")
    groups = make_params(dtype)
    params = flat(clone_params(groups))
    opt = alg.fused_cls(param_groups(alg, [params[:4], params[4:]], {"lr": 1e-28}), **config.fused_kwargs(backend))
    for step_grads in make_grads(dtype, steps=3):
        set_grads(params, step_grads)
        fused_step(opt)
    for name, p, initial in zip(PARAM_NAMES[:4], params[:4], flat(groups)):
        assert_bitwise_equal(p.detach(), initial.detach(), name=f"param {name!r} in the lr=1e-28 group")
    if dtype == torch.float32:  # in bf16 a decoupled decay alone (clip to zero) can be below half an ulp
        moved = [not torch.equal(p, initial) for p, initial in zip(params[4:], flat(groups)[4:]) if p.numel()]
        assert any(moved), "the other group (normal lr) should have moved"


COMPLEX_SPECS = (
    (("c_vec", (5,), "contiguous"), ("c_t", (3, 4), "transposed"), ("c_scalar", (), "contiguous")),
    (("c_two", (2,), "contiguous"), ("c_empty", (0,), "contiguous"), ("c_strided", (2, 3), "strided")),
)


@_trimmed("complex_matches_torch", "alg,config", ALL_CONFIGS)
def test_complex_matches_torch(alg, config, backend):
    """Complex params (handled as view_as_real) give torch's complex results."""
    groups = make_params(torch.complex64, specs=COMPLEX_SPECS)
    grads = make_grads(torch.complex64, specs=COMPLEX_SPECS)
    names = [name for group in COMPLEX_SPECS for name, _, _ in group]
    fused = run_fused(alg, config, backend, clone_params(groups), grads)
    expected = run_torch(alg, config, clone_params(groups), grads)
    assert_runs_close(fused, expected, torch.complex64, names=names)
    for name, s in zip(names, fused.states):
        for key, value in s.items():
            scalar = key in alg.fused_cls._RULE.scalars  # 0-dim fp32, as torch's
            assert scalar or value.dtype == torch.complex64, f"state[{name!r}][{key!r}] is {value.dtype}"


@pytest.mark.parametrize("alg", [ALGORITHMS[n] for n in ("Adam", "AdamW", "Adagrad", "RMSprop", "Adamax")],
                         ids=lambda a: a.name)
def test_fp16_tiny_eps(alg, backend):
    """fp16 with the default eps (1e-8; Adagrad's 1e-10), where torch's own fp16 run divides by zero (see
    configs.for_dtype). Without weight decay the fp32 states depend on the grads alone, so they must match the
    fp32 truth to fp32 precision, and each step adds at most half an fp16 ulp of rounding to the params."""
    config = OptimConfig("tiny eps", {"lr": 0.01, "weight_decay": 0.0})
    second = {"lr": 0.003, **({"betas": (0.8, 0.99)} if "betas" in alg.fused_cls._HYPERPARAMETERS else {})}
    alg = dataclasses.replace(alg, second_group=second)
    groups = make_params(torch.float16)
    grads = make_grads(torch.float16)
    grads[0][PARAM_NAMES.index("big")][:10] = 1e-4  # g*g underflows fp16 here
    fused = run(lambda g: alg.fused_cls(param_groups(alg, g), **config.fused_kwargs(backend)),  # not for_dtype
                clone_params(groups), grads, fused_step)
    truth = run(lambda g: alg.torch_cls(param_groups(alg, g), **config.torch_kwargs()),
                clone_params(groups, torch.float32), [[g.float() for g in step] for step in grads],
                lambda opt: torch_step(opt, None))
    for name, f, t in zip(PARAM_NAMES, fused.params, truth.params):
        bound = STEPS / 2 * ulp(_scale(t), torch.float16) + 1e-5 * _scale(t)
        assert_close(f, t, rtol=0.0, atol=bound, name=f"fp16 param {name!r}")
    assert_states_close(fused.states, truth.states, RTOL[torch.float32], FLOOR[torch.float32])


@pytest.mark.parametrize("alg", list(ALGORITHMS.values()), ids=list(ALGORITHMS))
def test_fp64_grads_beyond_fp32_range(alg, backend):
    """Finite fp64 grads of 1e20 (square beyond fp32) and 1e39 (beyond fp32 itself) behave as in torch."""
    config = OptimConfig("huge fp64 grads", {"lr": 1e-3}, {"max_grad_norm": 1e50, "nonfinite": "skip"})
    groups = [[torch.ones(3, dtype=torch.float64, requires_grad=True)], [torch.ones(2, dtype=torch.float64,
                                                                                    requires_grad=True)]]
    grads = [[torch.tensor([1e20, 1.0, -1.0], dtype=torch.float64), torch.tensor([1e39, 2.0], dtype=torch.float64)]]
    alg = dataclasses.replace(alg, second_group={})
    fused = run_fused(alg, config, backend, clone_params(groups), grads)
    expected = run_torch(alg, config, clone_params(groups), grads)
    assert_runs_close(fused, expected, torch.float64, names=["a", "b"], tol=(1e-6, 1e-6))


def test_trimmed_tables_cover_every_pair():
    """Each trimmed table keeps every case and is a pairwise covering of its product with the backends: every
    algorithm, every extra and every value of the table meets every backend (configs.covering)."""
    def key(row) -> tuple:
        return (config_id(row[0], row[1]), *map(_label, row[2:]))

    for name, cases in TRIMMED.items():
        trimmed = covering(cases, _case_tags, [(b,) for b in BACKEND_NAMES])
        full = [(*case, b) for case in cases for b in BACKEND_NAMES]
        assert not missing_pairs(full, trimmed, _case_tags, 1), f"{name}: {missing_pairs(full, trimmed, _case_tags, 1)}"
        assert {key(row[:-1]) for row in trimmed} == {key(case) for case in cases}, f"{name}: a case was dropped"
        assert len(trimmed) < len(full), f"{name}: nothing trimmed"


# --- the compiled backend against the reference, on the same inputs ---
@contextlib.contextmanager
def reference_clips_as(backend, config: OptimConfig, names=("reference",)):
    """Within the block, when ``config`` clips, the reference backend (the backends ``names``) runs ``backend``'s
    check pass, so that a run on it clips with the coefficients of a run on ``backend``: two check passes sum the
    squares in other orders, and their norms may differ by an ulp, which states that cancel to near zero and bf16/fp16
    roundings (fed back by weight decay) carry on over the steps. The check passes are compared op by op
    (test_cpu_ops.test_check_matches_reference, test_cuda.test_op_check)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in names if config.max_grad_norm is not None else ():
            patch.setattr(ops.BACKENDS[name], "check", backend.check)
        yield


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=_dtype_name)
@pytest.mark.parametrize("alg,config", ALL_CONFIGS, ids=_ids(ALL_CONFIGS))
def test_cpu_matches_reference(alg, config, dtype):
    """The same update on both backends, from the same inputs:
    - both runs take a correctly rounded fp32 sqrt in torch's ops (helpers.ieee_sqrt), as the kernels take it:
      torch's own (MKL VML's) is 1 ulp off in places, which a bf16/fp16 rounding or a weight decay carries on
      over the steps;
    - with clipping, the reference run takes the CPU backend's check pass (reference_clips_as), so that both clip
      with the same coefficients.
    fp32: 1e-6 relative, with a floor of 1e-7 of each tensor's largest magnitude. bf16/fp16: params within one
    ulp (a rounding decision may flip where the fp32 math differs in its last bit); their fp32 states then within
    1e-6 relative of the reference's."""
    require_rule("cpu", alg.fused_cls)
    groups = make_params(dtype)
    grads = make_grads(dtype)
    with ieee_sqrt():
        cpu = run_fused(alg, config, "cpu", clone_params(groups), grads)
        with reference_clips_as(ops.BACKENDS["cpu"], config):
            ref = run_fused(alg, config, "reference", clone_params(groups), grads)
    for name, c, r in zip(PARAM_NAMES, cpu.params, ref.params):
        if dtype in LOW_PRECISION:
            assert_within_ulps(c, r, ulps=1, name=f"param {name!r}")
        else:
            assert_close(c, r, rtol=1e-6, atol=1e-7 * _scale(r), name=f"param {name!r}")
    for name, sc, sr in zip(PARAM_NAMES, cpu.states, ref.states):
        assert sorted(sc) == sorted(sr), f"state keys of {name!r}: {sorted(sc)} vs {sorted(sr)}"
        for key in sr:
            assert sc[key].dtype == sr[key].dtype, f"state[{name!r}][{key!r}]: {sc[key].dtype} vs {sr[key].dtype}"
            assert_close(sc[key], sr[key], rtol=1e-6, atol=1e-7 * _scale(sr[key]), name=f"state[{name!r}][{key!r}]")
    for step, (nc, nr) in enumerate(zip(cpu.norms, ref.norms)):
        assert (nc is None) == (nr is None), f"grad_norm at step {step}: {nc} vs {nr}"


# --- end to end: a small MLP trained with clipping ---
def _mlp_losses(make_opt, step_fn, steps: int = 50) -> tuple[list[float], list[float]]:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(256, 10, generator=gen)
    y = torch.sin(x @ torch.randn(10, 1, generator=gen)) + 0.1 * torch.randn(256, 1, generator=gen)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    opt = make_opt(model.parameters())
    losses, norms = [], []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        norms.append(float(step_fn(opt)))
        losses.append(loss.item())
    return losses, norms


def test_mlp_loss_curve(backend):
    """fusedopt.AdamW(max_grad_norm=1.0) against torch.optim.AdamW + clip_grad_norm_(1.0), 50 steps, fp32: the
    loss at every step within 1e-5 relative (measured: about 1e-7), and the same grad norms."""
    fused, fused_norms = _mlp_losses(lambda p: fusedopt.AdamW(p, lr=1e-2, max_grad_norm=1.0, backend=backend),
                                     fused_step)
    expected, expected_norms = _mlp_losses(lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=False),
                                           lambda opt: torch_step(opt, 1.0))
    assert_close(torch.tensor(fused), torch.tensor(expected), rtol=1e-5, name="loss per step")
    assert_close(torch.tensor(fused_norms), torch.tensor(expected_norms), rtol=1e-5, name="grad norm per step")
    assert sum(n > 1.0 for n in expected_norms) >= 5, "clipping should be active in several steps"
    assert expected[-1] < 0.5 * expected[0], "the model should learn"


# --- a rule without a compiled kernel: backend="auto" runs the reference (torch's results, with a warning), an
# explicit compiled backend refuses at construction (ops.check_backend_rule). Every rule has its kernels now, so
# the CPU backend is made to lack the rule (its RULES without it), one algorithm at a time (each one's first
# representative config) ---
def _first_of_each_algorithm(pairs) -> list:
    first = {}
    for alg, config in pairs:
        first.setdefault(alg.name, (alg, config))
    return list(first.values())


@pytest.mark.parametrize("alg,config,dtype", [
    pytest.param(alg, config, dtype, id=f"{config_id(alg, config)}-{_dtype_name(dtype)}")
    for alg, config in _first_of_each_algorithm(REPRESENTATIVE)
    for dtype in (torch.float32, torch.bfloat16, torch.float16)])  # fp64 always runs the reference
def test_auto_backend_runs_the_reference_for_a_rule_without_kernels(alg, config, dtype, monkeypatch):
    require_backend("cpu")
    rule = alg.fused_cls._RULE.name
    monkeypatch.setattr(ops.BACKENDS["cpu"], "RULES", ops.BACKENDS["cpu"].RULES - {rule})
    monkeypatch.setattr(ops, "_warned", set())
    with pytest.warns(RuntimeWarning, match=f"no compiled cpu kernel for the update rule {rule!r}"):
        assert_matches_torch(alg, config, "auto", dtype)
    params = flat(clone_params(make_params(torch.float32)))
    for backend in ("cpu", "triton"):  # a named backend without the rule refuses at construction
        if backend in ops.BACKENDS and rule not in ops.rules_of(ops.BACKENDS[backend]):
            with pytest.raises(RuntimeError, match=f"backend {backend!r} has no kernel for the update rule "
                                                   f"{rule!r}.*backend='auto'"):
                alg.fused_cls(param_groups(alg, [params[:4], params[4:]]), **config.fused_kwargs(backend))
