"""param_rounding="stochastic" (issue 13 part 2): bf16 params without a master copy rounded stochastically, with
the random bits of Philox 4x32-10 keyed by the optimizer's seed (math.h's section "Stochastic rounding", mirrored
in fusedopt/triton/math.py and fusedopt/reference.py).

- Philox: the paper's known-answer vectors on every mirror (reference, Triton; math.h natively in
  csrc/tests/test_stochastic_rounding.cpp), and the Triton mirror's bits equal to the reference's.
- The rounding: unbiased (the mean of many roundings of one value converges to it, within a binomial bound),
  through the optimizer on every backend; its edges (NaN, inf, signed zero, subnormal, near the bf16 maximum).
- Determinism: same seed, same bits; another seed, other bits; other torch thread counts, same bits; a run
  resumed from a state_dict, the same bits as one that never stopped.
- Backends equal bitwise (cpu, cuda-emu, triton) over the shared configs of every algorithm, and the reference
  within one bf16 ulp (it takes torch's sqrt, not IEEE's, in some rules).
- The constructor's and the op's refusals (the step-level rows are in tests/test_bad_input.py).
- Physics: a bf16 MLP trained 300 steps next to an fp32 run: stochastic rounding clearly closer than rounding to
  nearest.
"""
from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

import fusedopt
import test_parity
from configs import ALGORITHMS, REPRESENTATIVE, config_id
from fusedopt import ops, reference, rules
from helpers import assert_bitwise_equal, assert_raises_unchanged, backend_served_by, load_cuda_emu, require_backend, \
    require_rule

STOCHASTIC = dict(param_rounding="stochastic", seed=0x0123456789ABCDEF)

# Salmon et al. 2011, the Random123 distribution's kat_vectors for philox4x32_10: (counter, key, output).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def test_philox_known_answers_reference():
    for ctr, key, out in PHILOX_KAT:
        words = reference.philox4x32_10(*(torch.tensor([c], dtype=torch.int64) for c in ctr), *key)
        assert [int(w) for w in words] == list(out), f"counter {ctr}"


def _bf16_bits(t: torch.Tensor) -> list[int]:
    return [int(v) & 0xFFFF for v in t.view(torch.int16)]


def _round(values: list[int], random16: list[int]) -> list[int]:
    x = torch.tensor(values, dtype=torch.int64).to(torch.int32).view(torch.float32)
    return _bf16_bits(reference.float_to_bf16_stochastic(x, torch.tensor(random16, dtype=torch.int64)))


def test_rounding_edges_reference():
    """The reference's float_to_bf16_stochastic on math.h's edge cases (csrc/tests/test_stochastic_rounding.cpp
    checks math.h's on the same ones)."""
    assert _round([0x3F800001, 0x3F800001, 0xBF800001, 0x3FFFFFFF], [0, 0xFFFF, 0xFFFF, 1]) == \
        [0x3F80, 0x3F81, 0xBF81, 0x4000]
    exact = [0x00000000, 0x80000000, 0x7F7F0000, 0x7F800000, 0xFF800000, 0x00010000]
    for r in (0, 1, 0xFFFF):
        assert _round(exact, [r] * len(exact)) == [u >> 16 for u in exact], f"exact values with r={r}"
    assert _round([0x00008000, 0x00008000, 0x007FFFFF], [0x7FFF, 0x8000, 1]) == [0x0000, 0x0001, 0x0080]
    assert _round([0x7F7FFFFF, 0x7F7FFFFF, 0xFF7F0001], [0, 1, 0xFFFF]) == [0x7F7F, 0x7F80, 0xFF80]
    nans = [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF80FFFF, 0x7FFFFFFF]
    for r in (0, 1, 0xFFFF):  # as the round-to-nearest conversion: quiet bit set, sign and top payload kept
        assert _round(nans, [r] * len(nans)) == [(u >> 16) | 0x0040 for u in nans]


def test_rounding_bits_layout():
    """Element e takes the high 16 bits of word e % 4 of the call for e // 4; other keys, other bits."""
    bits = reference.rounding_bits(4097, 7, 9, 3, 11)
    assert bits.shape == (4097,) and int(bits.min()) >= 0 and int(bits.max()) < 1 << 16
    for e in (0, 1, 2, 3, 4, 4095, 4096):
        q = torch.tensor([e // 4], dtype=torch.int64)
        words = reference.philox4x32_10(q, q * 0, q * 0 + 3, q * 0 + 11, 7, 9)
        assert int(bits[e]) == int(words[e % 4]) >> 16, f"element {e}"
    for other in ((8, 9, 3, 11), (7, 9, 4, 11), (7, 9, 3, 12), (7, 10, 3, 11)):
        assert not torch.equal(reference.rounding_bits(64, *other), bits[:64]), f"key {other}"
    # 2^16 words: mean (2^16 - 1) / 2 within 6 standard deviations of a uniform 16-bit word.
    words = reference.rounding_bits(1 << 16, 1, 2, 0, 0).double()
    assert abs(float(words.mean()) - 32767.5) < 6 * 65536 / math.sqrt(12) / 256


# --- the Triton mirror: on the GPU compiled, else under the interpreter (tests/conftest.py) ------------------

triton = pytest.importorskip("triton", reason="the Triton mirror of math.h needs the triton package")
import triton.language as tl  # noqa: E402

from fusedopt.triton.math import philox4x32_10, rounding_bits  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@triton.jit
def _philox_kernel(ctr_ptr, key_ptr, out_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    c0 = tl.load(ctr_ptr + 4 * i).to(tl.uint32)
    c1 = tl.load(ctr_ptr + 4 * i + 1).to(tl.uint32)
    c2 = tl.load(ctr_ptr + 4 * i + 2).to(tl.uint32)
    c3 = tl.load(ctr_ptr + 4 * i + 3).to(tl.uint32)
    k0 = tl.load(key_ptr + 2 * i).to(tl.uint32)
    k1 = tl.load(key_ptr + 2 * i + 1).to(tl.uint32)
    o0, o1, o2, o3 = philox4x32_10(c0, c1, c2, c3, k0, k1)
    tl.store(out_ptr + 4 * i, o0.to(tl.int64))
    tl.store(out_ptr + 4 * i + 1, o1.to(tl.int64))
    tl.store(out_ptr + 4 * i + 2, o2.to(tl.int64))
    tl.store(out_ptr + 4 * i + 3, o3.to(tl.int64))


@triton.jit
def _bits_kernel(out_ptr, scalars_ptr, N: tl.constexpr):
    offs = tl.arange(0, N).to(tl.int64)
    seed_lo, seed_hi = tl.load(scalars_ptr), tl.load(scalars_ptr + 1)
    bits = rounding_bits(offs, seed_lo, seed_hi, tl.load(scalars_ptr + 2), tl.load(scalars_ptr + 3))
    tl.store(out_ptr + offs, bits.to(tl.int64))


def test_philox_known_answers_triton():
    # Four lanes (a power of two): the three vectors and the first again.
    cases = PHILOX_KAT + PHILOX_KAT[:1]
    ctr = torch.tensor([c for case in cases for c in case[0]], dtype=torch.int64, device=DEVICE)
    key = torch.tensor([k for case in cases for k in case[1]], dtype=torch.int64, device=DEVICE)
    out = torch.zeros(16, dtype=torch.int64, device=DEVICE)
    _philox_kernel[(1,)](ctr, key, out, N=4)
    assert out.cpu().tolist() == [w for case in cases for w in case[2]]


@pytest.mark.parametrize("seed_lo, seed_hi, param_id, step", [(7, 9, 3, 11), (0xFFFFFFFF, 0x89ABCDEF, 0, 2**32 + 5)])
def test_triton_bits_equal_reference(seed_lo, seed_hi, param_id, step):
    scalars = torch.tensor([seed_lo, seed_hi, param_id, step], dtype=torch.int64, device=DEVICE)
    out = torch.zeros(1024, dtype=torch.int64, device=DEVICE)
    _bits_kernel[(1,)](out, scalars, N=1024)
    assert torch.equal(out.cpu(), reference.rounding_bits(1024, seed_lo, seed_hi, param_id, step))


# --- through the optimizer, every backend ------------------------------------------------------------------

BACKENDS = ("reference", "cpu", "cuda-emu", "triton")


def _require(backend: str) -> None:
    if backend == "cuda-emu":
        load_cuda_emu()
    else:
        require_backend(backend)


def _served(backend: str):
    """The classes' backend= for ``backend`` on CPU tensors, and the context that makes it run there."""
    if backend == "cuda-emu":
        return "cpu", backend_served_by("cpu", load_cuda_emu())
    return backend, _nothing()


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("backend", BACKENDS)
def test_mean_of_many_roundings_is_the_value(backend):
    """One SGD step p <- 1 + d (d about 0.3 bf16 ulps of 1) on 2^16 elements, and on one element over 300 steps
    (100 under the Triton interpreter; the rounding step moves the bits): the mean of the bf16 results is 1 + d
    within 5 binomial standard deviations; rounding to nearest gives 1 everywhere."""
    _require(backend)
    if backend == "triton" and DEVICE.type != "cpu":
        pytest.skip("CPU tensors: the Triton interpreter (test_stochastic_rounding_gpu covers the GPU)")
    name, ctx = _served(backend)
    ulp = 2.0**-7
    g = torch.tensor(-0.3 * ulp).to(torch.bfloat16)
    d = -float(g)  # the exact fp32 result is 1 + d (a bf16 d: 1 + d needs 16 bits)
    prob = d / ulp
    with ctx:
        n = 1 << 16
        p = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
        opt = fusedopt.SGD([p], lr=1.0, backend=name, **STOCHASTIC)
        p.grad = torch.full_like(p, float(g))
        opt.step()
        ups = int((p.detach() != 1).sum())
        assert set(p.detach().float().unique().tolist()) <= {1.0, 1.0 + ulp}
        sd = math.sqrt(prob * (1 - prob) * n)
        assert abs(ups - prob * n) < 5 * sd, f"{ups} of {n} rounded up, expected {prob * n:.0f} +- {sd:.0f}"

        steps = 100 if backend == "triton" else 300  # the interpreter: ~40 ms a step
        q = torch.nn.Parameter(torch.ones(1, dtype=torch.bfloat16))
        opt = fusedopt.SGD([q], lr=1.0, backend=name, **STOCHASTIC)
        total = 0
        for _ in range(steps):
            q.data.fill_(1.0)
            q.grad = torch.full_like(q, float(g))
            opt.step()
            total += int(q.detach()[0] != 1)
        sd = math.sqrt(prob * (1 - prob) * steps)
        assert abs(total - prob * steps) < 5 * sd, f"{total} of {steps} steps rounded up"
    nearest = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    nearest.grad = torch.full_like(nearest, float(g))
    fusedopt.SGD([nearest], lr=1.0, backend="reference").step()
    assert bool((nearest.detach() == 1).all()), "to nearest, an update of 0.3 ulps is lost"


def _configs():
    """The shared configs every algorithm runs: the representative ones, and each other algorithm's first."""
    chosen = list(REPRESENTATIVE)
    covered = {alg.name for alg, _ in chosen}
    chosen += [(alg, alg.configs[0]) for alg in ALGORITHMS.values() if alg.name not in covered]
    return [pytest.param(alg, config, id=config_id(alg, config)) for alg, config in chosen]


CONFIGS = _configs()
STEPS = 5


def _stochastic(config, **extra):
    return dataclasses.replace(config, extras={**config.extras, **STOCHASTIC, **extra})


def _run(alg, config, backend: str, groups=None, grads=None, **extra):
    groups = groups if groups is not None else test_parity.make_params(torch.bfloat16)
    grads = grads if grads is not None else test_parity.make_grads(torch.bfloat16, steps=STEPS)
    name, ctx = _served(backend)
    with ctx:
        return test_parity.run_fused(alg, _stochastic(config, **extra), name, test_parity.clone_params(groups), grads)


def _assert_runs_equal(a, b, what: str) -> None:
    for i, (x, y) in enumerate(zip(a.params, b.params, strict=True)):
        assert_bitwise_equal(x, y, name=f"{what}: param {i}")
    for i, (sa, sb) in enumerate(zip(a.states, b.states, strict=True)):
        assert sorted(sa) == sorted(sb), f"{what}: state keys of param {i}"
        for key in sb:
            assert_bitwise_equal(sa[key], sb[key], name=f"{what}: state[{i}][{key!r}]")


def _assert_params_within_one_ulp(a, b, what: str) -> None:
    """bf16 params at most one bf16 ulp (of the larger magnitude) apart: fp32 results one fp32 ulp apart may
    round to neighbours when the random threshold falls between them."""
    for i, (x, y) in enumerate(zip(a.params, b.params, strict=True)):
        x, y = x.float(), y.float()
        big = torch.maximum(x.abs(), y.abs())
        ulp = torch.nextafter(big.to(torch.bfloat16), torch.tensor(math.inf, dtype=torch.bfloat16)).float() - big
        ulp = torch.where(ulp > 0, ulp, torch.full_like(ulp, 2.0**-126))
        assert bool(((x - y).abs() <= ulp).all()), f"{what}: param {i} more than one bf16 ulp apart"


@pytest.mark.parametrize("backend", ["cuda-emu", "triton"])
@pytest.mark.parametrize("alg, config", CONFIGS)
def test_backends_equal_cpu_bitwise(alg, config, backend):
    """bf16 params of every layout (contiguous, transposed, strided, empty, 4097 elements) in two groups: the
    emulated CUDA kernels and the Triton kernels give the CPU backend's bits, params and states, every step,
    with max_grad_norm too (every backend's check pass adds exact squares in double: the same fp32 norm)."""
    _require(backend)
    require_backend("cpu")
    if backend == "triton" and DEVICE.type != "cpu":
        pytest.skip("CPU tensors: the Triton interpreter")
    for name in (backend, "cpu"):
        require_rule(name, alg.fused_cls)
    _assert_runs_equal(_run(alg, config, backend), _run(alg, config, "cpu"), f"{backend} vs cpu")


@pytest.mark.parametrize("alg, config", CONFIGS)
def test_reference_within_one_ulp_of_cpu(alg, config):
    """The reference backend rounds with the same bits; its fp32 math is torch's ops (MKL's sqrt in some rules),
    so a value one fp32 ulp off may round the other way: params at most one bf16 ulp apart, and bitwise for SGD
    without clipping (whose ops round as the kernels' do)."""
    require_backend("cpu")
    ref, cpu = _run(alg, config, "reference"), _run(alg, config, "cpu")
    if alg.name == "SGD" and config.max_grad_norm is None:
        for i, (x, y) in enumerate(zip(ref.params, cpu.params, strict=True)):
            assert_bitwise_equal(x, y, name=f"param {i}")
    _assert_params_within_one_ulp(ref, cpu, "reference vs cpu")


def test_stochastic_differs_from_nearest_and_from_another_seed():
    """The same seed gives the same bits (test_backends_equal_cpu_bitwise runs each twice); another seed other
    ones; rounding to nearest others still."""
    require_backend("cpu")
    alg, config = next((a, c) for a, c in REPRESENTATIVE if a.name == "Adam")
    runs = [_run(alg, config, "cpu"), _run(alg, config, "cpu"), _run(alg, config, "cpu", seed=1)]
    _assert_runs_equal(runs[0], runs[1], "same seed")
    nearest = test_parity.run_fused(alg, config, "cpu", test_parity.clone_params(test_parity.make_params(
        torch.bfloat16)), test_parity.make_grads(torch.bfloat16, steps=STEPS))
    big = 1  # the 4097-element param
    assert not torch.equal(runs[0].params[big], runs[2].params[big]), "another seed, other bits"
    assert not torch.equal(runs[0].params[big], nearest.params[big]), "stochastic differs from nearest"


def test_thread_count_does_not_change_the_bits():
    """The CPU backend's chunks go to whichever thread comes first; the bits depend on the element only."""
    require_backend("cpu")
    specs = ((("big", (300_001,), "contiguous"), ("odd", (65_537,), "contiguous")), (("small", (3,), "contiguous"),))
    groups = test_parity.make_params(torch.bfloat16, specs=specs)
    grads = test_parity.make_grads(torch.bfloat16, steps=3, specs=specs)
    alg = ALGORITHMS["AdamW"]
    config = alg.configs[0]
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(test_parity.run_fused(alg, _stochastic(config), "cpu", test_parity.clone_params(groups),
                                              grads))
    finally:
        torch.set_num_threads(before)
    for run in runs[1:]:
        _assert_runs_equal(run, runs[0], "threads")


@pytest.mark.parametrize("name", ["Adam", "SGD", "Lion"])
def test_resume_from_state_dict_gives_the_same_bits(name):
    """Three steps, a state_dict (saved and loaded through torch.save), a new optimizer with another seed loads
    it and takes three more: the bits of six steps in one run. Lion keeps no step count of its own: the rounding
    step is the optimizer's."""
    require_backend("cpu")
    alg = ALGORITHMS[name]
    config = alg.configs[0]
    groups = test_parity.make_params(torch.bfloat16)
    grads = test_parity.make_grads(torch.bfloat16, steps=6)
    straight = test_parity.run_fused(alg, _stochastic(config), "cpu", test_parity.clone_params(groups), grads)

    params = test_parity.clone_params(groups)
    kwargs = test_parity.for_dtype(alg, _stochastic(config).fused_kwargs("cpu"), torch.bfloat16)
    opt = alg.fused_cls(test_parity.param_groups(alg, params), **kwargs)
    flat = test_parity.flat(params)
    for step in grads[:3]:
        test_parity.set_grads(flat, step)
        test_parity.fused_step(opt)
    saved = opt.state_dict()
    assert saved["param_rounding"]["seed"] == STOCHASTIC["seed"] and int(saved["param_rounding"]["step"]) == 3
    import io
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    resumed = alg.fused_cls(test_parity.param_groups(alg, params), **{**kwargs, "seed": 99})
    resumed.load_state_dict(loaded)
    assert resumed.seed == STOCHASTIC["seed"]
    for step in grads[3:]:
        test_parity.set_grads(flat, step)
        test_parity.fused_step(resumed)
    for i, (a, b) in enumerate(zip(flat, straight.params, strict=True)):
        assert_bitwise_equal(a.detach(), b, name=f"param {i}")


def test_fp32_params_are_not_rounded_and_checkpoints_interchange():
    """fp32 params in a stochastic optimizer get the exact result (nothing to round): the same as rounding to
    nearest. A checkpoint of a nearest optimizer (or torch.optim's) loads into a stochastic one, keeping its
    seed; the reverse ignores the entry."""
    require_backend("cpu")
    alg = ALGORITHMS["Adam"]
    config = alg.configs[0]
    groups = test_parity.make_params(torch.float32)
    grads = test_parity.make_grads(torch.float32, steps=3)
    a = test_parity.run_fused(alg, _stochastic(config), "cpu", test_parity.clone_params(groups), grads)
    b = test_parity.run_fused(alg, config, "cpu", test_parity.clone_params(groups), grads)
    _assert_runs_equal(a, b, "fp32 params, stochastic vs nearest")

    p = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    p.grad = torch.ones_like(p)
    torch_opt = torch.optim.Adam([p])
    torch_opt.step()
    stochastic = fusedopt.Adam([p], **STOCHASTIC)
    stochastic.load_state_dict(torch_opt.state_dict())
    assert stochastic.seed == STOCHASTIC["seed"]
    stochastic.step()
    nearest = fusedopt.Adam([p])
    nearest.load_state_dict(stochastic.state_dict())
    nearest.step()
    assert "param_rounding" not in nearest.state_dict()


def test_constructor_refusals():
    p = [torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))]
    cases = [
        (dict(param_rounding="stochastik"), ValueError, "Invalid param_rounding: 'stochastik'"),
        (dict(param_rounding=None), ValueError, "Invalid param_rounding: None"),
        (dict(param_rounding="stochastic", master_weights=True), ValueError,
         "without a master copy; master_weights=True keeps an fp32 one, which holds the exact value"),
        (dict(param_rounding="stochastic", master_weights="remainder"), ValueError,
         "master_weights='remainder' keeps one, and needs each param to be its master rounded to nearest, so that "
         "the 16-bit remainder holds the rest exactly"),
        (dict(param_rounding="stochastic", seed=-1), ValueError, "Invalid seed: -1"),
        (dict(param_rounding="stochastic", seed=2**64), ValueError, "Invalid seed"),
        (dict(param_rounding="stochastic", seed=1.5), ValueError, "Invalid seed: 1.5"),
        (dict(param_rounding="stochastic", seed=True), ValueError, "Invalid seed: True"),
        (dict(seed=3), ValueError, "does not apply to 'nearest'"),
        (dict(param_rounding="stochastic", differentiable=True), ValueError, "differentiable=True"),
    ]
    for kwargs, error, words in cases:
        with pytest.raises(error, match=words):
            fusedopt.Adam(p, **kwargs)
    for cls in (fusedopt.SGD, fusedopt.Lion, fusedopt.RMSprop):
        assert cls(p, **STOCHASTIC).seed == STOCHASTIC["seed"]
    torch.manual_seed(3)
    first = fusedopt.Adam(p, param_rounding="stochastic").seed
    torch.manual_seed(3)
    assert fusedopt.Adam(p, param_rounding="stochastic").seed == first, "the default seed is torch's draw"
    assert fusedopt.Adam(p).seed is None


# --- the op's refusals, every backend ----------------------------------------------------------------------

def _op(backend: str):
    return load_cuda_emu() if backend == "cuda-emu" else ops.BACKENDS[backend]


def _sgd_call(**change):
    """An SGD update call with stochastic rounding (two bf16 params), as keyword arguments of ``update``."""
    params = [torch.ones(5, dtype=torch.bfloat16), torch.ones(3, dtype=torch.bfloat16)]
    call = dict(rule="sgd", params=params, grads=[torch.full_like(p, 0.001) for p in params], states=[],
                master_params=[], scalars=[torch.tensor(4)], is_first=[],
                hyper=[0.1, 0.0, 0.0, 0.0, 7.0, 9.0, 0.0, 1.0], flags=rules.STOCHASTIC_ROUNDING, maximize=False)
    call.update(change)
    return call


OP_REFUSALS = [
    ("hyper without the param ids", dict(hyper=[0.1, 0.0, 0.0, 0.0, 7.0, 9.0]), "one id per param"),
    ("a negative seed word", dict(hyper=[0.1, 0.0, 0.0, 0.0, -7.0, 9.0, 0.0, 1.0]), "the seed's low word"),
    ("a fractional param id", dict(hyper=[0.1, 0.0, 0.0, 0.0, 7.0, 9.0, 0.0, 1.5]), "the id of params[1]"),
    ("an id of 2^32", dict(hyper=[0.1, 0.0, 0.0, 0.0, 7.0, 9.0, 2.0**32, 1.0]), "the id of params[0]"),
    ("fp32 params", dict(params=[torch.ones(5), torch.ones(3)], grads=[torch.ones(5), torch.ones(3)]),
     "rounds bfloat16 params"),
    ("a master copy", dict(master_params=[torch.ones(5), torch.ones(3)]), "without a master copy"),
    ("master remainders", dict(master_params=[torch.zeros(5, dtype=torch.int16), torch.zeros(3, dtype=torch.int16)]),
     "without a master copy"),
    ("no rounding step", dict(scalars=[]), "then the rounding step"),
    ("a float rounding step", dict(scalars=[torch.tensor(4.0)]), "one-element int64 tensor"),
    ("a rounding step of two elements", dict(scalars=[torch.tensor([4, 5])]), "one-element int64 tensor"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case, change, words", OP_REFUSALS, ids=[c[0] for c in OP_REFUSALS])
def test_op_refuses_bad_rounding_arguments(backend, case, change, words):
    _require(backend)
    if backend == "triton" and DEVICE.type != "cpu":
        pytest.skip("CPU tensors: the Triton interpreter")
    call = _sgd_call(**change)
    op = _op(backend)
    written = [*call["params"], *call["grads"], *call["master_params"]]
    assert_raises_unchanged(lambda: op.update(*call.values(), None, None, None, None), written,
                            match=re.escape(words))


@pytest.mark.parametrize("backend", BACKENDS)
def test_op_reads_the_rounding_step_and_writes_nothing_else(backend):
    """A valid call: the params change, the rounding step does not (the optimizer advances it), and the bits are
    the reference's."""
    _require(backend)
    if backend == "triton" and DEVICE.type != "cpu":
        pytest.skip("CPU tensors: the Triton interpreter")
    call = _sgd_call()
    op = _op(backend)
    op.update(*call.values(), None, None, None, None)
    assert int(call["scalars"][0]) == 4
    want = _sgd_call()
    reference.update(*want.values(), None, None, None, None)
    for i, (a, b) in enumerate(zip(call["params"], want["params"])):
        assert_bitwise_equal(a, b, name=f"params[{i}]")


# --- physics: a bf16 MLP against an fp32 run ---------------------------------------------------------------

def _mlp(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)).to(dtype)


def _train(cls, kwargs, dtype, steps: int = 300):
    model = _mlp(dtype)
    opt = cls(model.parameters(), **kwargs)
    gen = torch.Generator().manual_seed(1)
    w_true = torch.randn(16, 1, generator=gen)
    loss = None
    for _ in range(steps):
        x = torch.randn(64, 16, generator=gen)
        y = torch.tanh(x @ w_true)
        loss = torch.nn.functional.mse_loss(model(x.to(dtype)).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()]), float(loss.detach())


PHYSICS = [
    pytest.param(fusedopt.AdamW, dict(lr=1e-4, weight_decay=0.01), id="AdamW"),
    pytest.param(fusedopt.SGD, dict(lr=1e-3, momentum=0.9), id="SGD"),
    pytest.param(fusedopt.Lion, dict(lr=3e-5, weight_decay=0.1), id="Lion"),
    pytest.param(fusedopt.Adagrad, dict(lr=1e-3), id="Adagrad"),
]


@pytest.mark.parametrize("cls, kwargs", PHYSICS)
def test_physics_bf16_mlp_stochastic_closer_to_fp32_than_nearest(cls, kwargs):
    """300 steps with small updates (most of them below half a bf16 ulp of the weights): rounding to nearest
    loses them, stochastic rounding keeps them on average. The final weights' distance to the fp32 run's
    (relative, over all weights) is at most half of rounding to nearest's; the master copy's is the smallest."""
    require_backend("cpu")
    fp32, fp32_loss = _train(cls, dict(kwargs), torch.float32)
    errors, losses = {}, {}
    for mode, extra in (("nearest", {}), ("stochastic", STOCHASTIC), ("master", dict(master_weights=True))):
        weights, losses[mode] = _train(cls, {**kwargs, **extra}, torch.bfloat16)
        errors[mode] = float((weights - fp32).norm() / fp32.norm())
    report = ", ".join(f"{m}: weight error {errors[m]:.2e}, loss {losses[m]:.4f}" for m in errors)
    print(f"{cls.__name__}: fp32 loss {fp32_loss:.4f}; {report}")
    assert errors["stochastic"] < 0.5 * errors["nearest"], report
    assert errors["master"] <= errors["stochastic"], report


def test_stochastic_rounding_gpu():
    """With a GPU: the CUDA and Triton kernels give the CPU backend's bits (params and states) on the shared
    representative configs."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (the emulated CUDA and interpreted Triton cases cover the logic here)")
    require_backend("cpu")
    for alg, config in [(p.values[0], p.values[1]) for p in CONFIGS]:
        groups = test_parity.make_params(torch.bfloat16)
        grads = test_parity.make_grads(torch.bfloat16, steps=STEPS)
        on_cpu = _run(alg, config, "cpu", groups, grads)
        for backend in ("cuda", "triton"):
            if backend not in ops.BACKENDS or alg.fused_cls._RULE.name not in ops.rules_of(ops.BACKENDS[backend]):
                continue
            cuda_groups = [[p.detach().cuda().requires_grad_() if p.is_contiguous() else
                            torch.empty_strided(p.shape, p.stride(), dtype=p.dtype, device="cuda")
                            .copy_(p.detach()).requires_grad_() for p in g] for g in groups]
            for g, src in zip(cuda_groups, groups):
                for q, p in zip(g, src):
                    q.contiguous_grad = getattr(p, "contiguous_grad", False)
            cuda_grads = [[g.cuda() for g in step] for step in grads]
            run = test_parity.run_fused(alg, _stochastic(config), backend, cuda_groups, cuda_grads)
            moved = test_parity.Run([p.cpu() for p in run.params],
                                    [{k: v.cpu() for k, v in s.items()} for s in run.states], run.norms)
            _assert_runs_equal(moved, on_cpu, f"{backend} vs cpu ({config_id(alg, config)})")
