"""``master_weights="remainder"`` (issue 13, part 1): a bf16 param and a 16-bit remainder hold its fp32 master
exactly (state entry "master_remainder", int16; math.h's split_bf16/join_bf16, mirrored in Triton and in the
reference), so a step equals ``master_weights=True``'s bit for bit in 2 bytes per param instead of 4.

- split/join: the reference's torch mirror against a numpy model written here (another formulation of the same
  rule), over every bf16 pattern with edge and random low halves and random float32 patterns.
- the ops of every backend on those patterns: an identity update (SGD, lr 0) and an exact one (SGD, lr 1:
  p - g, one correctly rounded subtraction, which numpy computes too): params and remainders are the model's
  split of the model's result, the master-weights op's master is that result, and the two ops' params differ
  exactly at the ties that round to nearest even takes down.
- the optimizers: remainder mode against master_weights=True over the shared config tables, 20 steps, every
  backend: the joined master and every state bitwise, the params each the own rounding of the same master.
- checkpoints between the modes and from torch.optim; float16 params refused; what the kernels refuse.
- the physics (the issue's run): a bf16 MLP trained 300 steps against an fp32 run, per optimizer: the error and
  loss for no master, remainder and fp32 master; remainder equals the fp32 master (run in lock step on the same
  gradients, exactly; and trained on its own, within the noise of its tie roundings).
"""
from __future__ import annotations

import contextlib
import copy
import functools

import numpy as np
import pytest
import torch

import fusedopt
from configs import ALL_CONFIGS, REPRESENTATIVE, config_id, covering, for_dtype
from fusedopt import ops, reference
from helpers import (assert_bitwise_equal, backend_served_by, load_cuda_emu, max_errors, require_backend,
                     require_rule)
from test_mixed_precision import FACTORY, _save_load, _train, assert_torch_ignores, mlp_problem, torch_checkpoint
from test_parity import (PARAM_NAMES, Run, _case_tags, _threads, clone_params, flat, fused_step, make_grads,
                         make_params, param_groups, run, set_grads, states)

BF16 = torch.bfloat16
BACKENDS = ("reference", "cpu", "cuda-emu", "triton", "cuda")
NO_GPU = "no CUDA device: the real CUDA kernels run only with a GPU (\"cuda-emu\" runs them emulated here)"


# --- the model ------------------------------------------------------------------------------------------------

def model_split(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bf16 bits, remainder) of float32 ``m``: the magnitude rounded to nearest, ties away from zero, and the
    signed rest of the magnitude in units of 2^-16 bf16 ulp; a NaN becomes float_to_bf16's quiet NaN."""
    u = m.view(np.uint32).astype(np.int64)
    sign, mag = u & 0x80000000, u & 0x7FFFFFFF
    nan = mag > 0x7F800000
    hi_mag = (mag + 0x8000) >> 16  # round half up on the magnitude
    rest = mag - (hi_mag << 16)  # in [-32768, 32767]
    hi = np.where(nan, (u >> 16) | 0x0040, (sign >> 16) | hi_mag)
    lo = np.where(nan, (u & 0xFFFF) - ((u & 0x8000) << 1), rest)
    return hi.astype(np.uint16), lo.astype(np.int16)


def model_join(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """float32 of (bf16 bits, remainder): sign and magnitude hi_mag * 2^16 + lo; a NaN hi takes lo's bits as its
    low payload, and so does a zero hi with a negative remainder (no borrow through zero)."""
    h, low = hi.astype(np.int64), lo.astype(np.int64)
    sign, mag = (h & 0x8000) << 16, h & 0x7FFF
    plain = (mag > 0x7F80) | ((mag == 0) & (low < 0))
    m = np.where(plain, (mag << 16) | (low & 0xFFFF), (mag << 16) + low)
    return (sign | m).astype(np.uint32).view(np.float32)


def patterns() -> np.ndarray:
    """Every bf16 pattern with the low halves around the rounding boundaries and random ones, then random
    float32 patterns: 1.4M float32 values."""
    rng = np.random.default_rng(13)
    hi = np.arange(1 << 16, dtype=np.uint32)[:, None] << 16
    lows = np.concatenate([np.array([0, 1, 0x7FFE, 0x7FFF, 0x8000, 0x8001, 0xFFFE, 0xFFFF], dtype=np.uint32),
                           rng.integers(0, 1 << 16, 12, dtype=np.uint32)])
    every = (hi | lows[None, :]).reshape(-1)
    return np.concatenate([every, rng.integers(0, 1 << 32, 100_000, dtype=np.uint32)]).view(np.float32)


def _nan(m: np.ndarray) -> np.ndarray:
    return (m.view(np.uint32) & 0x7FFFFFFF) > 0x7F800000


def _rne_bits(m: np.ndarray) -> np.ndarray:
    return torch.from_numpy(m.copy()).to(BF16).view(torch.int16).numpy().view(np.uint16)


def _even_ties(m: np.ndarray) -> np.ndarray:
    """Where round to nearest even rounds the magnitude down at a tie: the one place the split's param differs."""
    u = m.view(np.uint32)
    return ((u & 0xFFFF) == 0x8000) & (((u >> 16) & 1) == 0) & ~_nan(m)


def test_model_is_a_nearest_rounding_with_an_exact_remainder():
    m = patterns()
    hi, lo = model_split(m)
    nan = _nan(m)
    back = model_join(hi, lo).view(np.uint32)
    assert np.array_equal(back[~nan], m.view(np.uint32)[~nan])
    assert np.array_equal(back[nan], m.view(np.uint32)[nan] | 0x00400000)  # NaNs come back quiet
    rne = _rne_bits(m)
    ties = _even_ties(m)
    assert ties.sum() > 32_000  # the tie of every even bf16 pattern (but NaNs)
    assert np.array_equal(hi[~ties & ~nan], rne[~ties & ~nan])
    assert np.array_equal(hi[ties].astype(np.int64), rne[ties].astype(np.int64) + 1)  # one ulp up in magnitude
    # Both are nearest values: |hi - m| <= half an ulp (finite hi only).
    finite = ~nan & ((hi & 0x7FFF) < 0x7F80)
    value = (hi.astype(np.uint32) << 16).view(np.float32)
    half_ulp = np.abs(((hi.astype(np.uint32) | 1) << 16).view(np.float32).astype(np.float64)
                      - ((hi.astype(np.uint32) & ~np.uint32(1)) << 16).view(np.float32).astype(np.float64)) / 2
    err = np.abs(value.astype(np.float64) - m.astype(np.float64))
    assert np.all(err[finite] <= half_ulp[finite])


def test_reference_split_and_join_are_the_model():
    m = patterns()
    hi, lo = reference.split_bf16(torch.from_numpy(m))
    want_hi, want_lo = model_split(m)
    assert hi.dtype == BF16 and lo.dtype == torch.int16
    assert np.array_equal(hi.view(torch.int16).numpy().view(np.uint16), want_hi)
    assert np.array_equal(lo.numpy(), want_lo)
    joined = reference.join_bf16(hi, lo)
    assert joined.dtype == torch.float32
    assert np.array_equal(joined.numpy().view(np.uint32), model_join(want_hi, want_lo).view(np.uint32))
    # Pairs split_bf16 never gives (a param written from outside): the model's reading, every hi and remainder edge.
    rng = np.random.default_rng(3)
    h = np.repeat(np.arange(1 << 16, dtype=np.uint16), 6)
    r = np.tile(np.array([-32768, -1, 0, 1, 32767, 0], dtype=np.int16), 1 << 16)
    r[5::6] = rng.integers(-32768, 32768, 1 << 16)
    got = reference.join_bf16(torch.from_numpy(h.view(np.int16)).view(BF16), torch.from_numpy(r))
    assert np.array_equal(got.numpy().view(np.uint32), model_join(h, r).view(np.uint32))


# --- the ops of every backend on the patterns -----------------------------------------------------------------

def _op(backend: str):
    """(the backend's op module, the device its tensors live on); skips "cuda" without a GPU, and the Triton
    backend off its mode's device."""
    if backend == "cuda-emu":
        return load_cuda_emu(), torch.device("cpu")
    if backend == "cuda":
        if not torch.cuda.is_available():
            pytest.skip(NO_GPU)
        require_backend("cuda")
        return ops.BACKENDS["cuda"], torch.device("cuda")
    require_backend(backend)
    if backend == "triton":
        import fusedopt.triton as ft

        return ops.BACKENDS["triton"], torch.device("cpu" if ft.INTERPRETED else "cuda")
    return ops.BACKENDS[backend], torch.device("cpu")


def _sgd(op, params, grads, masters, lr):
    op.update("sgd", params, grads, [], masters, [], [], [lr, 0.0, 0.0, 0.0], 0, False, None, None, None, None)


def _bits16(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().view(torch.int16).numpy().view(np.uint16)


def _grads(m: np.ndarray, update: str) -> np.ndarray:
    """bf16 grads (as float32 values) for SGD with lr 1, whose update p - g is one correctly rounded float32
    subtraction: small updates (2^-4 .. 2^-30 of the value, the usual case, mostly below half a bf16 ulp),
    g = bf16(m) (the result is m's own remainder: tiny values, subnormals), g = -bf16(m) (doubling: overflow to
    inf near the top), random ones; zeros for the identity update (lr 0)."""
    if update == "identity":
        return np.zeros_like(m)
    rng = np.random.default_rng(29)
    with np.errstate(all="ignore"):
        kind = rng.integers(0, 4, m.size)
        small = m * np.exp2(-rng.integers(4, 31, m.size)).astype(np.float32) * rng.choice([-1, 1], m.size)
        g = np.select([kind == 0, kind == 1, kind == 2], [small, m, -m],
                      rng.standard_normal(m.size)).astype(np.float32)
    return torch.from_numpy(g).to(BF16).to(torch.float32).numpy()


@pytest.mark.parametrize("update", ["identity", "exact"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_op_stores_the_models_split(backend, update):
    """One SGD call on 1.4M patterns (master = join of param and remainder): the new params and remainders are
    the model's split of the model's new value; the fp32-master op gives that value as its master and its
    rounding to nearest even as its param. NaNs compare as NaNs (a device may return another NaN payload)."""
    op, device = _op(backend)
    m = patterns()
    g = _grads(m, update)
    lr = 0.0 if update == "identity" else 1.0
    with np.errstate(all="ignore"):
        want = m if update == "identity" else (m - g).astype(np.float32)  # p + g * -0 is p, -0 included
    hi, lo = model_split(m)
    param = torch.from_numpy(hi.view(np.int16)).view(BF16).to(device)
    remainder = torch.from_numpy(lo).to(device)
    grad = torch.from_numpy(g).to(BF16).to(device)
    master = torch.from_numpy(m.copy()).to(device)
    rne_param = torch.from_numpy(_rne_bits(m).view(np.int16)).view(BF16).to(device)
    _sgd(op, [param], [grad.clone()], [remainder], lr)
    _sgd(op, [rne_param], [grad.clone()], [master], lr)
    want_hi, want_lo = model_split(want)
    nan = _nan(want)
    got_hi, got_lo = _bits16(param), remainder.cpu().numpy()
    assert np.array_equal(got_hi[~nan], want_hi[~nan]), f"{np.sum(got_hi[~nan] != want_hi[~nan])} params differ"
    assert np.array_equal(got_lo[~nan], want_lo[~nan]), f"{np.sum(got_lo[~nan] != want_lo[~nan])} remainders differ"
    joined = model_join(got_hi, got_lo)
    assert np.all(np.isnan(joined[nan])) and np.all((got_hi[nan] & 0x7FFF) > 0x7F80)
    got_master = master.cpu().numpy()
    assert np.array_equal(got_master.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    assert np.array_equal(joined.view(np.uint32)[~nan], got_master.view(np.uint32)[~nan])
    # The two params differ exactly at the even ties, by one ulp in magnitude.
    other = _bits16(rne_param)
    ties = _even_ties(want)
    assert update == "exact" or ties.sum() > 32_000  # the identity keeps every tie of the patterns
    assert np.array_equal(other[~ties & ~nan], got_hi[~ties & ~nan])
    assert np.array_equal(other[ties].astype(np.int64) + 1, got_hi[ties].astype(np.int64))


# What the ops refuse, writing nothing: a remainder of a param that is not bf16, kinds mixed in one call, a wrong
# element count, a remainder sharing the param's memory (the compiled backends check overlap; the reference leaves
# memory checks to them).
OP_BAD = {
    "remainder of fp32 params": (lambda p, r: dict(params=[x.float() for x in p]),
                                 r"master_params\[0\] is int16 \(a master remainder\) but params\[0\] has dtype",
                                 BACKENDS),
    "kinds mixed": (lambda p, r: dict(masters=[r[0], torch.zeros(6)]), r"master_params\[1\] has dtype", BACKENDS),
    "numel": (lambda p, r: dict(masters=[r[0], torch.zeros(5, dtype=torch.int16)]),
              r"master_params\[1\] has 5 elements but params\[1\] has 6", BACKENDS),
    "remainder is the param": (lambda p, r: dict(masters=[r[0], p[1].view(torch.int16)]), r"must not share memory",
                               ("cpu", "cuda-emu", "triton", "cuda")),
}


@pytest.mark.parametrize("case", list(OP_BAD))
@pytest.mark.parametrize("backend", BACKENDS)
def test_ops_refuse_bad_remainders(backend, case):
    make, words, backends = OP_BAD[case]
    if backend not in backends:
        pytest.skip(f"the {backend} backend leaves memory checks to the compiled ones")
    op, device = _op(backend)
    params = [torch.ones(4, dtype=BF16, device=device), torch.ones(6, dtype=BF16, device=device)]
    remainders = [torch.zeros(4, dtype=torch.int16, device=device), torch.zeros(6, dtype=torch.int16, device=device)]
    over = make(params, remainders)
    params = [t.to(device) for t in over.get("params", params)]
    masters = [t.to(device) for t in over.get("masters", remainders)]
    grads = [torch.ones_like(p) for p in params]
    everything = [*params, *masters, *grads]
    before = [t.clone() for t in everything]
    with pytest.raises(RuntimeError, match=words):
        _sgd(op, params, grads, masters, 0.1)
    for i, (t, b) in enumerate(zip(everything, before)):
        assert_bitwise_equal(t, b, name=f"tensor {i}")


# --- the optimizers: remainder mode is master_weights=True ----------------------------------------------------

@contextlib.contextmanager
def _classes_on(backend: str):
    """The ``backend=`` the optimizer classes take to run ``backend`` on CPU tensors (the emulated CUDA ops serve
    "cpu"); skips where this machine cannot run it on CPU tensors."""
    if backend == "cuda-emu":
        with backend_served_by("cpu", load_cuda_emu()):
            yield "cpu"
        return
    if backend == "cuda":
        pytest.skip(NO_GPU if not torch.cuda.is_available() else
                    "these runs use CPU tensors; test_op_stores_the_models_split runs the CUDA kernels")
    require_backend(backend)
    if backend == "triton":
        import fusedopt.triton as ft

        if not ft.INTERPRETED:
            pytest.skip("these runs use CPU tensors; with a GPU the Triton kernels are compiled "
                        "(test_op_stores_the_models_split runs them on CUDA tensors)")
    yield backend


def _require(backend: str, cls) -> None:
    if backend != "cuda":
        require_rule(backend, cls)


def assert_same_master(rem_run, master_run, name: str, names=PARAM_NAMES) -> int:
    """The remainder run against the master_weights=True run: same state keys but the master's, every state
    bitwise, the joined master bitwise the fp32 master, and each param its own rounding of that master (so the
    two params differ exactly at the ties that round to nearest even takes down). Returns how many differ."""
    ties = 0
    assert len(rem_run.params) == len(master_run.params) == len(names)
    for pname, p_rem, p_mas, s_rem, s_mas in zip(names, rem_run.params, master_run.params, rem_run.states,
                                                 master_run.states):
        where = f"{name} param {pname!r}"
        if p_rem.dtype != BF16 or not s_mas:
            assert_bitwise_equal(p_rem, p_mas, name=where)
            continue
        assert sorted(k for k in s_rem if k != "master_remainder") == sorted(k for k in s_mas if k != "master_param")
        for key, value in s_mas.items():
            if key != "master_param":
                assert_bitwise_equal(s_rem[key], value, name=f"{where} state {key!r}")
        master = s_mas["master_param"]
        remainder = s_rem["master_remainder"]
        assert remainder.dtype == torch.int16 and remainder.shape == p_rem.shape
        assert remainder.stride() == torch.empty_like(p_rem).stride()
        assert_bitwise_equal(reference.join_bf16(p_rem, remainder), master, name=f"{where} joined master")
        hi, lo = reference.split_bf16(master)
        assert_bitwise_equal(p_rem, hi, name=f"{where} (split of the master)")
        assert_bitwise_equal(remainder, lo, name=f"{where} remainder")
        assert_bitwise_equal(p_mas, master.to(BF16), name=f"{where} (master_weights=True: nearest even)")
        ties += int((p_rem.view(torch.int16) != p_mas.view(torch.int16)).sum())
    return ties


def _runs(alg, config, backend, steps, state_dtype=None):
    dtype = BF16
    groups = make_params(dtype)
    grads = make_grads(dtype, steps=steps)
    out = {}
    for mode in ("remainder", True):
        kwargs = {**for_dtype(alg, config.fused_kwargs(backend), dtype), "master_weights": mode,
                  "state_dtype": state_dtype}
        out[mode] = run(lambda g: alg.fused_cls(param_groups(alg, g), **kwargs), clone_params(groups), grads,
                        fused_step)
    return out["remainder"], out[True]


def _config_cases():
    # Every config on the CPU backend or the emulated CUDA grid, trimmed as test_parity trims its tables
    # (configs.covering: each algorithm and each extra meets both backends); the representative ones (every
    # distinct path of each algorithm) on the slower pure-torch reference; under the Triton interpreter (seconds
    # per step), each algorithm's config with every option on.
    for alg, config, backend in covering(list(ALL_CONFIGS), _case_tags, [("cpu",), ("cuda-emu",)]):
        yield pytest.param(alg, config, backend, id=f"{backend}-{config_id(alg, config)}")
    for backend in ("reference", "triton"):
        for alg, config in REPRESENTATIVE:
            if backend != "triton" or config.desc == "everything":
                yield pytest.param(alg, config, backend, id=f"{backend}-{config_id(alg, config)}")


@pytest.mark.parametrize("alg, config, backend", list(_config_cases()))
def test_remainder_equals_master_weights(alg, config, backend):
    """20 steps of the shared parity params (sizes 0, 1, 4097, transposed, strided, two groups) in bf16; 6 under
    the Triton interpreter (about a second per step; the property holds step by step, and the other backends
    run all 20)."""
    _require(backend, alg.fused_cls)
    with _classes_on(backend) as cls_backend:
        rem, mas = _runs(alg, config, cls_backend, steps=6 if backend == "triton" else 20)
    assert_same_master(rem, mas, config_id(alg, config))


@pytest.mark.parametrize("backend", ["reference", "cpu", "cuda-emu", "triton"])
@pytest.mark.parametrize("alg, config", REPRESENTATIVE[:4] + REPRESENTATIVE[5:6],
                         ids=[config_id(a, c) for a, c in REPRESENTATIVE[:4] + REPRESENTATIVE[5:6]])
def test_remainder_equals_master_weights_with_bf16_states(alg, config, backend):
    _require(backend, alg.fused_cls)
    with _classes_on(backend) as cls_backend:
        rem, mas = _runs(alg, config, cls_backend, steps=8, state_dtype=BF16)
    assert_same_master(rem, mas, config_id(alg, config))


# --- constructor, float16, repr ---------------------------------------------------------------------------------

def test_float16_params_are_refused_with_the_reason():
    p16 = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"parameter 0 of param group 0 \(float16\).*5 exponent bits.*"
                                         r"master_weights=True"):
        fusedopt.AdamW([p16], master_weights="remainder")
    # Added later (or converted): refused at the step, which changes nothing.
    p = torch.nn.Parameter(torch.ones(4, dtype=BF16))
    opt = fusedopt.AdamW([p], lr=0.1, master_weights="remainder", backend="reference")
    opt.add_param_group({"params": [p16]})
    p.grad, p16.grad = torch.ones_like(p), torch.ones_like(p16)
    with pytest.raises(ValueError, match=r"parameter 0 of param group 1 \(float16\)"):
        opt.step()
    assert not opt.state and torch.equal(p.detach(), torch.ones(4, dtype=BF16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64], ids=str)
def test_full_precision_params_keep_no_remainder(dtype, backend):
    """As master_weights=True: only bf16 params get a master; the others step bitwise as without one."""
    results = []
    for mode in (False, "remainder"):
        params = flat(make_params(dtype))
        opt = fusedopt.AdamW(params, lr=0.01, master_weights=mode, backend=backend)
        for step_grads in make_grads(dtype, steps=3):
            set_grads(params, step_grads)
            opt.step()
        assert all("master_remainder" not in s and "master_param" not in s for s in opt.state.values())
        results.append(params)
    for n, a, b in zip(PARAM_NAMES, *results):
        assert_bitwise_equal(a, b, name=f"param {n!r}")


def test_repr_and_copies_keep_the_mode():
    p = torch.nn.Parameter(torch.ones(3, dtype=BF16))
    opt = fusedopt.SGD([p], lr=0.1, master_weights="remainder")
    assert opt.master_weights == "remainder" and "master_weights: remainder" in repr(opt)
    assert copy.deepcopy(opt).master_weights == "remainder"


# --- checkpoints ----------------------------------------------------------------------------------------------

def _snapshot(opt, params) -> Run:
    """The params and states of ``opt`` now, as a test_parity.Run (what assert_same_master reads)."""
    return Run([p.detach().clone() for p in params], states(opt, params), [])


FACTORIES = {
    "SGD": lambda p, **kw: fusedopt.SGD(p, lr=0.05, momentum=0.9, **kw),
    "AdamW": lambda p, **kw: fusedopt.AdamW(p, lr=0.01, **kw),
    "Lion": lambda p, **kw: fusedopt.Lion(p, lr=0.003, weight_decay=0.1, **kw),
    "ASGD": lambda p, **kw: fusedopt.ASGD(p, lr=0.05, t0=1, **kw),
}


@pytest.mark.parametrize("state_dtype", [None, BF16], ids=["fp32-states", "bf16-states"])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_dict_round_trip_keeps_the_remainder(name, state_dtype, backend):
    """Save after 3 steps, load into a new optimizer on copies of the params, 3 more steps: bitwise the
    uninterrupted run; the remainder comes back int16 in the param's layout."""
    grads = make_grads(BF16, steps=6)
    kwargs = dict(master_weights="remainder", state_dtype=state_dtype, backend=backend)
    params = flat(make_params(BF16))
    opt = FACTORIES[name](params, **kwargs)
    _train(opt, params, grads[:3])
    checkpoint = _save_load(opt.state_dict())
    assert all(s["master_remainder"].dtype == torch.int16 for s in checkpoint["state"].values())
    resumed_params = flat(clone_params([params]))
    resumed = FACTORIES[name](resumed_params, **kwargs)
    resumed.load_state_dict(checkpoint)
    for i, p in enumerate(resumed_params):
        state = resumed.state[p]
        assert state["master_remainder"].dtype == torch.int16
        assert state["master_remainder"].stride() == torch.empty_like(p).stride()
        assert_bitwise_equal(state["master_remainder"], checkpoint["state"][i]["master_remainder"], name=f"{i}")
    _train(opt, params, grads[3:])
    _train(resumed, resumed_params, grads[3:])
    for i, (a, b) in enumerate(zip(resumed_params, params)):
        assert_bitwise_equal(a, b, name=f"param {i}")
        for key in opt.state[b]:
            assert_bitwise_equal(resumed.state[a][key], opt.state[b][key], name=f"state[{i}][{key!r}]")


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("first, then", [(True, "remainder"), ("remainder", True)],
                         ids=["master-to-remainder", "remainder-to-master"])
def test_checkpoint_of_the_other_mode_continues_identically(name, first, then, backend):
    """3 steps in one mode, its checkpoint loaded into an optimizer of the other mode (on the params as they
    are then, as a model's checkpoint restores them), 3 more steps: the same master and states as the run that
    never switched. The conversion happens on the first step after the load: the other kind's entry is
    dropped, the own one made from it exactly (from an fp32 master, the param is set to its split: that
    differs from master_weights=True's param at its ties to even)."""
    grads = make_grads(BF16, steps=6)
    params = flat(make_params(BF16))
    opt = FACTORIES[name](params, master_weights=first, backend=backend)
    _train(opt, params, grads[:3])
    checkpoint = _save_load(opt.state_dict())
    switched_params = flat(clone_params([params]))
    switched = FACTORIES[name](switched_params, master_weights=then, backend=backend)
    switched.load_state_dict(copy.deepcopy(checkpoint))
    _train(opt, params, grads[3:])
    _train(switched, switched_params, grads[3:])
    own, other = ("master_remainder", "master_param") if then == "remainder" else ("master_param", "master_remainder")
    for p in switched_params:
        if p.numel():
            assert own in switched.state[p] and other not in switched.state[p], sorted(switched.state[p])
    runs = {first: _snapshot(opt, params), then: _snapshot(switched, switched_params)}
    assert_same_master(runs["remainder"], runs[True], f"{name} {first} -> {then}")


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_torch_checkpoint_to_remainder_and_back(name, backend):
    """torch.optim (bf16) -> remainder mode: the remainder is created (zero) from the param on the first step,
    which equals master_weights=True's first step from the same checkpoint. Remainder mode -> torch.optim: torch
    keeps the int16 "master_remainder" as an inert entry and continues as from the checkpoint without it."""
    torch_cls, kwargs, grads, params, checkpoint = torch_checkpoint(name, steps=8)
    runs = {}
    for mode in ("remainder", True):
        ours_params = flat(clone_params([params]))
        ours = FACTORIES[name](ours_params, master_weights=mode, backend=backend)
        ours.load_state_dict(copy.deepcopy(checkpoint))
        _train(ours, ours_params, grads[3:5])
        runs[mode] = (ours, ours_params)
    assert_same_master(_snapshot(*runs["remainder"]), _snapshot(*runs[True]), f"{name} from torch")
    ours, ours_params = runs["remainder"]
    assert_torch_ignores(_save_load(ours.state_dict()), "master_remainder", torch_cls, kwargs, ours_params, grads[5:])


def test_loading_remainders_without_them_drops_them(backend):
    """An optimizer that keeps no master (master_weights=False, or fp32 params) drops loaded remainders."""
    params = flat(make_params(BF16))
    opt = fusedopt.AdamW(params, master_weights="remainder", backend=backend)
    _train(opt, params, make_grads(BF16, steps=2))
    checkpoint = opt.state_dict()
    plain = fusedopt.AdamW(flat(clone_params([params])), backend=backend)
    plain.load_state_dict(copy.deepcopy(checkpoint))
    assert all("master_remainder" not in s for s in plain.state.values())
    fp32 = fusedopt.AdamW(flat(clone_params([params], torch.float32)), master_weights="remainder", backend=backend)
    fp32.load_state_dict(copy.deepcopy(checkpoint))
    assert all("master_remainder" not in s for s in fp32.state.values())


@pytest.mark.parametrize("bad, words", [
    (lambda s: torch.zeros(3, dtype=torch.int16), r"state 'master_remainder' has shape \[3\]"),
    (lambda s: s.float(), r"state 'master_remainder' has dtype torch.float32; master remainders are int16"),
], ids=["shape", "dtype"])
def test_loaded_remainder_of_the_wrong_kind_is_rejected(bad, words, backend):
    params = flat(make_params(BF16))
    opt = fusedopt.AdamW(params, master_weights="remainder", backend=backend)
    _train(opt, params, make_grads(BF16, steps=1))
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][1]["master_remainder"] = bad(sd["state"][1]["master_remainder"])
    before = {k: v.clone() for k, v in opt.state[params[1]].items()}
    with pytest.raises(ValueError, match=words):
        opt.load_state_dict(sd)
    for key, value in before.items():
        assert_bitwise_equal(opt.state[params[1]][key], value, name=key)


def test_skipped_step_leaves_params_and_remainders_alone(backend):
    params = flat(make_params(BF16))
    opt = fusedopt.AdamW(params, lr=0.01, master_weights="remainder", nonfinite="skip", backend=backend)
    grads = make_grads(BF16, steps=3)
    _train(opt, params, grads[:2])
    before = _snapshot(opt, params)
    bad = [g.clone() for g in grads[2]]
    bad[0].view(-1)[3] = float("nan")
    set_grads(params, bad)
    opt.step()
    assert bool(opt.found_nonfinite)
    after = _snapshot(opt, params)
    for i, (a, b, sa, sb) in enumerate(zip(after.params, before.params, after.states, before.states)):
        assert_bitwise_equal(a, b, name=f"param {i}")
        for key in sb:
            assert_bitwise_equal(sa[key], sb[key], name=f"state[{i}][{key!r}]")


# --- the physics (the run) ------------------------------------------------------------------------------

PHYSICS_STEPS = 300


def _loss(model, x, y) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model.float()(x.float()), y.float()))


def _fit(model, x, y, opt, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


@functools.lru_cache(maxsize=None)
def _physics(name: str, backend: str) -> dict:
    """Per mode ("fp32": the truth, the model and data in fp32; "none", "stochastic", "remainder", "master": bf16
    params with master_weights False (rounded to nearest, or stochastically), "remainder", True): the final weights'
    largest error against the truth and the loss."""
    factory = FACTORY[name]
    out = {}
    stochastic = dict(param_rounding="stochastic", seed=0)
    with _threads(1):  # tiny tensors: one thread is fastest on a shared machine, and the result is the same
        for mode, dtype, extra in (("fp32", torch.float32, {}), ("none", BF16, {}), ("stochastic", BF16, stochastic),
                                   ("remainder", BF16, dict(master_weights="remainder")),
                                   ("master", BF16, dict(master_weights=True))):
            model, x, y = mlp_problem(dtype)
            _fit(model, x, y, factory(model.parameters(), backend=backend, **extra), PHYSICS_STEPS)
            weights = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
            out[mode] = {"weights": weights, "loss": _loss(model, x, y)}
    truth = out.pop("fp32")
    return {mode: {"error": max_errors(r["weights"], truth["weights"])[0], "loss": r["loss"]}
            | ({"truth loss": truth["loss"]} if mode == "none" else {}) for mode, r in out.items()}


# Every algorithm on the CPU backend; on the pure-torch reference (slower, and run over the shared configs by
# test_remainder_equals_master_weights) the Adam family's, SGD's and Lion's (each a different kind of update).
LOCK_STEP = ([pytest.param(name, "cpu", id=f"cpu-{name}") for name in FACTORY]
             + [pytest.param(name, "reference", id=f"reference-{name}") for name in ("AdamW", "SGD", "Lion")])


@pytest.mark.parametrize("name, backend", LOCK_STEP)
def test_mlp_in_lock_step_keeps_the_same_master(name, backend):
    """Both modes on the same gradients (the master run's, copied), 300 steps of the MLP: the joined master and
    every state bitwise the fp32 master run's, all along (checked every 50 steps and at the end)."""
    require_backend(backend)
    with _threads(1):
        m_model, x, y = mlp_problem(BF16)
        r_model, _, _ = mlp_problem(BF16)
        m_params, r_params = list(m_model.parameters()), list(r_model.parameters())
        m_opt = FACTORY[name](m_params, backend=backend, master_weights=True)
        r_opt = FACTORY[name](r_params, backend=backend, master_weights="remainder")
        names = [n for n, _ in m_model.named_parameters()]
        for step in range(1, PHYSICS_STEPS + 1):
            m_opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(m_model(x), y).backward()
            for p, q in zip(m_params, r_params):
                q.grad = p.grad.clone()
            m_opt.step()
            r_opt.step()
            if step % 50 == 0:
                assert_same_master(_snapshot(r_opt, r_params), _snapshot(m_opt, m_params), f"{name} step {step}",
                                   names)


@pytest.mark.parametrize("name", list(FACTORY))
def test_bf16_mlp_against_fp32(name):
    """The issue's physics: 300 steps of a bf16 MLP against the same model trained in fp32 (the truth). Trained
    on its own, remainder mode's model differs from master_weights=True's only through the ties its params
    round away from zero (their forward then differs by an ulp there), so its error and loss are the master
    run's up to that noise; the table is printed (pytest -s) and quoted in the README. On the CPU backend (the
    README's table): the other backends' steps are bitwise the CPU's or checked against it elsewhere, so their
    300-step runs would repeat this one."""
    backend = "cpu"
    require_backend(backend)
    r = _physics(name, backend)
    print(f"\n{name} ({backend}): " + "; ".join(
        f"{mode}: error {v['error']:.4g}, loss {v['loss']:.5g}" for mode, v in r.items())
        + f"; fp32 loss {r['none']['truth loss']:.5g}")
    master, remainder = r["master"], r["remainder"]
    assert remainder["error"] <= 1.5 * master["error"] + 1e-3, r
    # Where an exact master is clearly better than rounding to nearest (this problem is chaotic for some of the
    # optimizers: Rprop, RMSprop, Lion, ...), stochastic rounding is better than nearest too (measured: 0.03-0.8 of
    # its error); tests/test_stochastic_rounding.py asserts more on a better-conditioned problem.
    if master["error"] < 0.5 * r["none"]["error"]:
        assert r["stochastic"]["error"] < r["none"]["error"], r
    # Losses this small wander between chaotic runs (measured: within 2x, both ways): a loose bound.
    assert remainder["loss"] <= 3 * master["loss"] + 1e-3, r
