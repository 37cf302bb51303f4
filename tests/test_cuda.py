"""The CUDA backend (csrc/cuda): parity with the CPU backend, the reference and torch.optim, no host syncs, CUDA
graphs, GradScaler, 64-bit indexing and torch.compile.

Two targets run the same op-level cases and a share of the optimizer-level ones:
- "cuda": the real kernels on a GPU (skipped, with the reason, without one; with one, a missing CUDA build fails
  instead of skipping: require_backend);
- "cuda-emu": the same kernels compiled as host C++ against the CUDA emulation of csrc/tests/cuda_emu (blocks in a
  seeded order, a block's threads as fibers with real barriers and warp shuffles, alignment and argument-size
  limits checked), on CPU tensors: the module fusedopt_cuda_emu of `make cuda-emu`, which `make test` builds and
  runs (also under ASan + UBSan). Each test gets its own block order (a seed from its id); test_op_block_order
  compares several. It fails, never skips, when the module is not built.
The GPU-only tests (syncs, graphs, GradScaler, compile, 2^31 elements, every config) skip without a GPU.

Tolerances (why):
- op level, CUDA against the CPU op on the same inputs (clip coefficient and scale given as tensors): bitwise.
  Both run math.h's rules with no contraction (-fmad=false, -ffp-contract=off), IEEE division and square root,
  and the same conversions; the bias corrections are the same double formulas (the device's pow differs from
  glibc's by at most an ulp of a double, which rounds to the same float but with a chance of about 1e-8; the
  emulation uses glibc's, as the CPU op does).
- op level against the reference: fp32 1e-6 relative (the reference evaluates the same formulas with torch's
  kernels), low precision 1 ulp of the stored dtype. The reference runs under helpers.ieee_sqrt, whose fp32
  sqrt is correctly rounded as the kernels' is (torch's own on the CPU, MKL VML's, is 1 ulp off in places, and a
  bf16 rounding flipped by it is carried on by the later steps); so do the optimizer-level runs compared with
  the reference (all three, so that the global norm's sqrt in fusedopt's Python is the same on every side).
- the check pass against the reference and the CPU op: the flag exactly, the sum bitwise (exact squares added in
  double by every backend, in its own order); the same bits on every run and block order.
- optimizer level, CUDA against the CPU backend: the check pass sums squares in another order (per 64K-element
  block, then the blocks in double), so grad_norm and the clip coefficient differ in the last bits: fp32
  tensors within test_parity's fp32 tolerance, bf16/fp16 tensors within 2 ulps of their dtype plus 1e-6 of
  the tensor's largest magnitude (values that cancel down to near zero carry that absolute error); against
  torch.optim: test_parity's own rules (fp32 1e-5, the low-precision bound for bf16/fp16).
"""
from __future__ import annotations

import contextlib
import copy
import math
import zlib
from dataclasses import dataclass

import pytest
import torch

import fusedopt
from fusedopt import ops, reference, rules
from configs import ALL_CONFIGS, REPRESENTATIVE, config_id, for_dtype
from helpers import (assert_bitwise_equal, assert_close, assert_raises_unchanged, assert_within_ulps,
                     backend_served_by, ieee_sqrt, load_cuda_emu, require_backend, require_rule)
from test_parity import (LOW_PRECISION, PARAM_NAMES, RTOL, Run, assert_low_precision_bound, assert_runs_close,
                         clone_params, flat, make_grads, make_params, reference_clips_as, run, run_torch)

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
STEPS = 5
NO_GPU = ("no CUDA device (torch.cuda.is_available() is False): the real CUDA kernels run only on a machine with a "
          "GPU (`make gpu-check`); the \"cuda-emu\" cases run the same kernels on an emulated grid here")
HAS_GPU = torch.cuda.is_available()


@dataclass(frozen=True)
class Target:
    """Where a test runs the CUDA kernels: ``ops`` is the backend (check and update, and the named entries
    sgd_update/adam_update on its update), ``device`` where its tensors live."""
    name: str
    ops: object
    device: torch.device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def _target(name: str, seed_key: str) -> Target:
    if name == "cuda":
        if not HAS_GPU:
            pytest.skip(NO_GPU)
        require_backend("cuda")
        return Target(name, ops.BACKENDS["cuda"], CUDA)
    emu = load_cuda_emu()
    emu.set_seed(1 + zlib.crc32(seed_key.encode()) % 100_000)  # each test its own block and warp orders
    return Target(name, emu, CPU)


@pytest.fixture(params=("cuda", "cuda-emu"))
def target(request) -> Target:
    t = _target(request.param, request.node.nodeid)
    yield t
    t.sync()


@pytest.fixture
def gpu():
    """The tests that need the GPU itself (streams, graphs, the caching allocator, torch.compile's CUDA path)."""
    if not HAS_GPU:
        pytest.skip(NO_GPU)
    require_backend("cuda")
    yield
    torch.cuda.synchronize()


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------------------------------
# Op level: the tensors a call gets. Sizes 0, 1, 4097, a multi-chunk one (3 * 64K + 5), contiguous slices at
# element offsets 1, 2 and 3 (their pointers are not vector-aligned: the scalar path, also across chunks), one whose
# grad alone is misaligned, and enough small ones to need several chunk tables.

def _sizes(many: int) -> list[int]:
    return [0, 1, 4097, 3 * 65536 + 5, 4097, 65536 + 7, 65536 + 3, 4099] + [37 + (i % 5) for i in range(many)]


MISALIGNED = {4: 1, 5: 2, 6: 3}  # index in _sizes -> element offset of every tensor of that param
GRAD_ONLY_MISALIGNED = 7  # its grad at offset 1, its other tensors aligned


def _tensor(numel: int, dtype, device, gen, *, offset: int = 0, scale: float = 1.0, positive=False):
    values = torch.randn(numel + offset, generator=gen, dtype=torch.float32) * scale
    values = values.abs() if positive else values
    base = values.to(dtype).to(device)
    return base[offset:] if offset else base[:numel].clone()


def _offset_copy(t: torch.Tensor, offset: int) -> torch.Tensor:
    """A copy of ``t`` that starts ``offset`` elements into its storage (misaligned for offsets 1..3)."""
    out = torch.empty(t.numel() + offset, dtype=t.dtype, device=t.device)[offset:]
    out.copy_(t)
    return out


def _op_inputs(kind: str, dtype, state_dtype, master: bool, device, many: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sizes = _sizes(many)
    t = lambda n, i, dt, **kw: _tensor(n, dt, device, gen, offset=MISALIGNED.get(i, 0), **kw)  # noqa: E731
    inputs = {
        "params": [t(n, i, dtype) for i, n in enumerate(sizes)],
        "master_params": [],
    }
    if master:
        inputs["master_params"] = [p.float() + 1e-3 * torch.randn(p.shape, generator=gen).to(device)
                                   for p in inputs["params"]]
        inputs["params"] = [m.to(dtype, copy=True) for m in inputs["master_params"]]
        for i, offset in MISALIGNED.items():
            inputs["params"][i] = _offset_copy(inputs["params"][i], offset)
            inputs["master_params"][i] = _offset_copy(inputs["master_params"][i], offset)
    if kind == "sgd":
        inputs["momentum_buffers"] = [t(n, i, state_dtype, scale=0.5) for i, n in enumerate(sizes)]
    else:
        inputs["exp_avgs"] = [t(n, i, state_dtype, scale=0.1) for i, n in enumerate(sizes)]
        inputs["exp_avg_sqs"] = [t(n, i, state_dtype, scale=0.01, positive=True) for i, n in enumerate(sizes)]
        inputs["max_exp_avg_sqs"] = [t(n, i, state_dtype, scale=0.02, positive=True) for i, n in enumerate(sizes)]
        inputs["steps"] = [torch.full((), float(3 + i % 4), device=device) for i in range(len(sizes))]
    return inputs


def _grads(params, step: int, *, scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    offsets = {**MISALIGNED, GRAD_ONLY_MISALIGNED: 1}
    return [_tensor(p.numel(), p.dtype, p.device, gen, offset=offsets.get(i, 0), scale=scale)
            for i, p in enumerate(params)]


def _to(inputs: dict, device) -> dict:
    """A copy on ``device`` with the same layout (a misaligned tensor stays misaligned by as many elements)."""
    return {key: [_offset_copy(x.to(device), x.storage_offset()) if x.storage_offset() else x.to(device, copy=True)
                  for x in tensors]
            for key, tensors in inputs.items()}


def _scalar(value, device):
    return None if value is None else torch.tensor([value], dtype=torch.float32, device=device)


def _call(backend, kind: str, inputs: dict, grads, *, is_first, lr_tensor, grad_scale, clip_coef, found_inf,
          amsgrad=True, device):
    lr = 0.01
    extra = dict(lr_tensor=_scalar(lr_tensor, device), grad_scale=_scalar(grad_scale, device),
                 clip_coef=_scalar(clip_coef, device), found_inf=_scalar(found_inf, device))
    if kind == "sgd":
        backend.sgd_update(inputs["params"], grads, inputs["momentum_buffers"], inputs["master_params"], is_first,
                           lr, 0.01, 0.9, 0.1, False, False, *extra.values())
    else:
        backend.adam_update(inputs["params"], grads, inputs["exp_avgs"], inputs["exp_avg_sqs"],
                            inputs["max_exp_avg_sqs"] if amsgrad else [], inputs["master_params"], inputs["steps"],
                            lr, 0.9, 0.999, 1e-8, 0.05, amsgrad, False, True, *extra.values())


# More tensors than one chunk table holds (SGD's tables take 150, Adam's 115: update.cuh's UpdateTable): several
# launches per call.
TABLE_OVERFLOW = {"sgd": 200, "adam": 150}

OP_CASES = [
    pytest.param(kind, dtype, state_dtype, master, id=f"{kind}-{_dtype_name(dtype)}-states_{_dtype_name(state_dtype)}"
                 f"{'-master' if master else ''}")
    for kind in ("sgd", "adam")
    for dtype in DTYPES
    for state_dtype in (torch.float32, torch.bfloat16)
    for master in (False, True)  # an fp32 master copy of fp32 params is allowed too (a second copy)
]
SCALARS = [
    pytest.param(None, None, None, None, id="plain"),
    pytest.param(0.02, 1024.0, 0.3, 0.0, id="lr_tensor-scale-clip"),
    pytest.param(0.02, 1024.0, 0.3, 1.0, id="found_inf"),
]


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).cpu() for t in tensors]) if tensors else torch.empty(0)


def _assert_all_bitwise(actual, expected, *, name: str) -> None:
    """assert_bitwise_equal for every pair of the two lists: one comparison of the concatenations, then, only on a
    mismatch, per tensor (the report names the first one that differs)."""
    assert len(actual) == len(expected), f"{name}: {len(actual)} tensors vs {len(expected)}"
    if all(a.dtype == e.dtype and a.shape == e.shape for a, e in zip(actual, expected)):
        a, e = _flat(actual), _flat(expected)
        if a.dtype == e.dtype and torch.equal(a.view(torch.int16) if a.element_size() == 2 else a.view(torch.int32),
                                              e.view(torch.int16) if e.element_size() == 2 else e.view(torch.int32)):
            return
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_bitwise_equal(a.cpu(), e.cpu(), name=f"{name}[{i}]")


def _assert_all_ref_close(actual, expected, *, name: str) -> None:
    """_assert_ref_close for every pair (one comparison of the concatenations, per tensor on a mismatch)."""
    try:
        _assert_ref_close(_flat(actual), _flat(expected), name=name)
    except AssertionError:
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_ref_close(a, e, name=f"{name}[{i}]")
        raise


def _run_op_steps(target: Target, kind, dtype, state_dtype, master, lr_tensor, grad_scale, clip_coef, found_inf,
                  *, many: int, steps: int = 3, reference_too: bool = True) -> dict:
    """``steps`` steps of the op on ``target`` against the CPU op (bitwise, every step) and the reference (close,
    the last step, from the CPU op's inputs of that step: a low-precision value one ulp away would otherwise drift
    step by step). Params, grads (written back when unscaled), master copies, states and step counts. Returns
    the target's final tensors."""
    dev_in = _op_inputs(kind, dtype, state_dtype, master, target.device, many)
    cpu_in = _to(dev_in, "cpu")
    original = _to(dev_in, "cpu") if found_inf else None
    scale = grad_scale or 1.0
    for step in range(steps):
        with_reference = reference_too and step == steps - 1
        grads = _grads(dev_in["params"], step, scale=scale)
        cpu_grads, ref_grads = (_to({"g": grads}, "cpu")["g"] for _ in range(2))
        ref_in = _to(cpu_in, "cpu") if with_reference else None
        is_first = [step == 0 and i % 2 == 0 for i in range(len(grads))]
        kwargs = dict(is_first=is_first, lr_tensor=lr_tensor, grad_scale=grad_scale, clip_coef=clip_coef,
                      found_inf=found_inf)
        _call(target.ops, kind, dev_in, grads, device=target.device, **kwargs)
        _call(ops.BACKENDS["cpu"], kind, cpu_in, cpu_grads, device="cpu", **kwargs)
        if with_reference:
            with ieee_sqrt():  # as the kernels take it (see the module doc)
                _call(reference, kind, ref_in, ref_grads, device="cpu", **kwargs)
        target.sync()
        _assert_step_bitwise(target, step, grads, cpu_grads, dev_in, cpu_in, original)
        if with_reference:
            _assert_all_ref_close(grads, ref_grads, name=f"step {step} grads ({target.name} vs reference)")
            for key in dev_in:
                _assert_all_ref_close(dev_in[key], ref_in[key], name=f"step {step} {key} ({target.name} vs reference)")
    return dev_in


def _assert_step_bitwise(target: Target, step: int, grads, cpu_grads, dev_in: dict, cpu_in: dict, original,
                         prefix: str = "") -> None:
    """After a step: the target's grads and tensors bit for bit the CPU op's; after a skipped one (``original``:
    the inputs before the first step), as they were."""
    _assert_all_bitwise(grads, cpu_grads, name=f"{prefix}step {step} grads ({target.name} vs CPU)")
    for key in dev_in:
        _assert_all_bitwise(dev_in[key], cpu_in[key], name=f"{prefix}step {step} {key} ({target.name} vs CPU)")
    if original is not None:
        for key in dev_in:
            _assert_all_bitwise(dev_in[key], original[key], name=f"{prefix}skipped step {step}: {key}")


@pytest.mark.parametrize("lr_tensor,grad_scale,clip_coef,found_inf", SCALARS)
@pytest.mark.parametrize("kind,dtype,state_dtype,master", OP_CASES)
def test_op_matches_cpu_and_reference(target, kind, dtype, state_dtype, master, lr_tensor, grad_scale, clip_coef,
                                      found_inf):
    """Three steps of the CUDA op against the CPU op (bitwise) and the reference (close); more tensors than one
    chunk table holds (emulated: in the plain case and in test_op_block_order, which has the scalars; the rest
    with a few small tensors, to keep the emulated suite within CI's time)."""
    many = TABLE_OVERFLOW[kind] if target.name == "cuda" or lr_tensor is None else 6
    _run_op_steps(target, kind, dtype, state_dtype, master, lr_tensor, grad_scale, clip_coef, found_inf, many=many)


def _assert_ref_close(actual, expected, *, name):
    if actual.dtype == torch.float32:
        scale = float(expected.abs().max()) if expected.numel() else 0.0
        assert_close(actual, expected, rtol=1e-6, atol=1e-7 * scale, name=name)
    else:
        assert_within_ulps(actual.cpu(), expected, ulps=1, name=name)


@pytest.mark.parametrize("kind", ("sgd", "adam"))
def test_op_block_order(target, kind):
    """Several block and warp orders (emulator seeds; a GPU's own on "cuda") give the same bits as the CPU op and
    as each other: no kernel depends on the order its blocks run in."""
    seeds = (0, 1, 2, 3) if target.name == "cuda-emu" else (None,)
    results = []
    for seed in seeds:
        if seed is not None:
            target.ops.set_seed(seed)
        results.append(_run_op_steps(target, kind, torch.bfloat16, torch.float32, True, 0.02, 1024.0, 0.3, 0.0,
                                     many=TABLE_OVERFLOW[kind], steps=2, reference_too=False))
    for seed, other in zip(seeds[1:], results[1:]):
        for key in other:
            for i, (x, x0) in enumerate(zip(other[key], results[0][key])):
                assert_bitwise_equal(x, x0, name=f"seed {seed} vs seed {seeds[0]}: {key}[{i}]")


def test_adam_without_amsgrad_and_empty_lists(target):
    """max_exp_avg_sqs empty without amsgrad; a call with no params does nothing."""
    dev_in = _op_inputs("adam", torch.float32, torch.float32, False, target.device, 3)
    cpu_in = _to(dev_in, "cpu")
    grads = _grads(dev_in["params"], 0)
    kwargs = dict(is_first=[], lr_tensor=None, grad_scale=None, clip_coef=None, found_inf=None, amsgrad=False)
    _call(target.ops, "adam", dev_in, grads, device=target.device, **kwargs)
    _call(ops.BACKENDS["cpu"], "adam", cpu_in, _to({"g": grads}, "cpu")["g"], device="cpu", **kwargs)
    for key in ("params", "exp_avgs", "exp_avg_sqs", "steps"):
        for i, (x, xc) in enumerate(zip(dev_in[key], cpu_in[key])):
            assert_bitwise_equal(x.cpu(), xc, name=f"{key}[{i}]")
    target.ops.adam_update([], [], [], [], [], [], [], 0.1, 0.9, 0.99, 1e-8, 0.0, False, False, False,
                           None, None, None, _scalar(0.0, target.device))


# More params than one launch of Adam's per-tensor pass takes (update.cuh's PrepTable: 2048 step counts).
MANY_STEPS = 2048 + 70


def test_adam_steps_over_several_per_tensor_launches(target):
    """Every step count advances once and every param reads its own bias corrections when the per-tensor pass
    takes several launches (tiny and empty params: the update's tables overflow too); then a skipped step."""
    gen = torch.Generator().manual_seed(5)
    n = MANY_STEPS
    params = [_tensor(i % 4, torch.float32, target.device, gen) for i in range(n)]
    inputs = {"params": params, "master_params": [],
              "exp_avgs": [_tensor(p.numel(), torch.float32, target.device, gen, scale=0.1) for p in params],
              "exp_avg_sqs": [_tensor(p.numel(), torch.float32, target.device, gen, scale=0.01, positive=True)
                              for p in params],
              "max_exp_avg_sqs": [],
              "steps": [torch.full((), float(i % 7), device=target.device) for i in range(n)]}
    cpu_in = _to(inputs, "cpu")
    for step, found_inf in ((0, None), (1, None), (2, 1.0)):
        grads = _grads(params, step)
        kwargs = dict(is_first=[], lr_tensor=0.02, grad_scale=None, clip_coef=None, found_inf=found_inf,
                      amsgrad=False)
        _call(target.ops, "adam", inputs, grads, device=target.device, **kwargs)
        _call(ops.BACKENDS["cpu"], "adam", cpu_in, _to({"g": grads}, "cpu")["g"], device="cpu", **kwargs)
        target.sync()
        for key in inputs:
            _assert_all_bitwise(inputs[key], cpu_in[key], name=f"step {step} {key} ({target.name} vs CPU)")
    assert [float(s) for s in inputs["steps"][:3]] == [2.0, 3.0, 4.0]


def test_update_op_rules_and_refusals(target):
    """The generic op: the rules it has kernels for are the C++ rule list's (the CPU op's too: one rules.h), each
    one of fusedopt/rules.py; an unknown rule, a wrong number of hyperparameters and a states list of the wrong
    length are refused with the problem named, nothing written."""
    assert target.ops.RULES == frozenset(ops._C.rules()) and target.ops.RULES <= frozenset(rules.RULES)
    inputs = _op_inputs("adam", torch.float32, torch.float32, False, target.device, 2)
    grads = _grads(inputs["params"], 0)
    tensors = [t for key in inputs for t in inputs[key]] + grads
    states = [*inputs["exp_avgs"], *inputs["exp_avg_sqs"]]
    hyper = [0.01, 0.9, 0.999, 1e-8, 0.0]

    def update(rule="adam", states=states, hyper=hyper):
        return lambda: target.ops.update(rule, inputs["params"], grads, states, [], inputs["steps"], [], hyper, 0,
                                         False, None, None, None, None)

    assert_raises_unchanged(update(rule="no-such-rule"), tensors, match="unknown update rule 'no-such-rule'")
    assert_raises_unchanged(update(hyper=hyper[:4]), tensors, match="takes 5 hyperparameters")
    assert_raises_unchanged(update(states=states[:-1]), tensors, match=r"states has \d+ entries")
    update()()
    target.sync()
    assert all(float(s) == 4.0 + i % 4 for i, s in enumerate(inputs["steps"]))


# The generic op for every rule, at op level (test_op_matches_cpu_and_reference takes SGD and Adam through their
# named entries): per rule, hyperparameters that put every state in use and turn every value-derived switch on
# (weight decay, momentum, lr_decay), and every flag on.
RULE_OP_CASES = {
    "sgd": ([0.01, 0.01, 0.9, 0.1], ("nesterov",)),
    "adam": ([0.01, 0.9, 0.999, 1e-8, 0.05], ("amsgrad", "decoupled")),
    "nadam": ([0.01, 0.9, 0.999, 1e-8, 0.05, 4e-3], ("decoupled",)),
    "radam": ([0.01, 0.9, 0.999, 1e-8, 0.05], ("decoupled",)),  # steps 4..8: both sides of rho_t > 5
    "adadelta": ([1.0, 0.9, 1e-6, 0.05], ()),
    "rprop": ([0.01, 0.5, 1.2, 1e-6, 50.0], ()),
    "asgd": ([0.01, 1e-4, 0.75, 5.0, 0.05], ()),  # t0 = 5 among the steps: mu both 1 and 1 / (step - t0)
    "adagrad": ([0.01, 0.01, 0.05, 1e-10], ()),
    "rmsprop": ([0.01, 0.99, 1e-8, 0.05, 0.9], ("centered",)),
    "adamax": ([0.01, 0.9, 0.999, 1e-8, 0.05], ()),
    "lion": ([1e-4, 0.9, 0.99, 0.1], ()),
}
# States the rules' math needs positive (square roots, divisions, step sizes): filled with scale * (1 + |x|), so
# that a centered RMSprop's square_avg - grad_avg^2 stays positive (no NaN, whose bits differ by device).
POSITIVE_STATES = {"exp_avg_sq", "max_exp_avg_sq", "square_avg", "acc_delta", "step_size", "sum", "exp_inf"}
SCALAR_STATE_VALUES = {"step": lambda i: 3.0 + i % 4, "mu_product": lambda i: 0.5 + 0.1 * (i % 3),
                       "eta": lambda i: 0.01, "mu": lambda i: 1.0 if i % 2 else 0.5}
# (param dtype, state dtype, master copies): fp32; bf16 params with fp32 masters; fp16 params with bf16 states.
RULE_OP_STORAGE = [(torch.float32, torch.float32, False), (torch.bfloat16, torch.float32, True),
                   (torch.float16, torch.bfloat16, False)]


def _storage_id(dtype, state_dtype, master) -> str:
    return f"{_dtype_name(dtype)}-states_{_dtype_name(state_dtype)}{'-master' if master else ''}"


# Every storage and scalar case on the GPU; on the emulated grid one per rule (the op tests above take the storage
# pairs there, and every rule runs on it at optimizer level).
RULE_OP_PARAMS = (
    [pytest.param("cuda", rule, *storage, *scalars.values,
                  id=f"cuda-{rule}-{_storage_id(*storage)}-{scalars.id}")
     for rule in RULE_OP_CASES for storage in RULE_OP_STORAGE for scalars in SCALARS]
    + [pytest.param("cuda-emu", rule, torch.bfloat16, torch.float32, True, *SCALARS[1].values,
                    id=f"cuda-emu-{rule}-{_storage_id(torch.bfloat16, torch.float32, True)}-{SCALARS[1].id}")
       for rule in RULE_OP_CASES])


def _rule_op_inputs(rule: rules.Rule, used, dtype, state_dtype, master: bool, device, many: int) -> dict:
    """Params (and master copies) as _op_inputs makes them, a tensor per state in use and a 0-dim fp32 tensor per
    scalar state."""
    gen = torch.Generator().manual_seed(11)
    inputs = _op_inputs("sgd", dtype, state_dtype, master, device, many)
    del inputs["momentum_buffers"]
    sizes = [p.numel() for p in inputs["params"]]
    for key in used:
        positive = key in POSITIVE_STATES
        tensors = [_tensor(n, state_dtype, device, gen, offset=MISALIGNED.get(i, 0), scale=0.01, positive=positive)
                   for i, n in enumerate(sizes)]
        if positive:
            for t in tensors:
                t.add_(0.01)
        inputs[key] = tensors
    for key in rule.scalars:
        inputs[key] = [torch.full((), SCALAR_STATE_VALUES[key](i), device=device) for i in range(len(sizes))]
    return inputs


def _rule_call(backend, rule: rules.Rule, used, inputs: dict, grads, is_first, hyper, flags, lr_tensor, grad_scale,
               clip_coef, found_inf, device) -> None:
    states = [t for key in used for t in inputs[key]]
    scalars = [t for key in rule.scalars for t in inputs[key]]
    backend.update(rule.name, inputs["params"], grads, states, inputs["master_params"], scalars,
                   is_first if rule.takes_is_first else [], hyper, rule.flag_bits(flags), True,
                   _scalar(lr_tensor, device), _scalar(grad_scale, device), _scalar(clip_coef, device),
                   _scalar(found_inf, device))


@pytest.mark.parametrize("target_name,rule_name,dtype,state_dtype,master,lr_tensor,grad_scale,clip_coef,found_inf",
                         RULE_OP_PARAMS)
def test_update_op_every_rule(request, target_name, rule_name, dtype, state_dtype, master, lr_tensor, grad_scale,
                              clip_coef, found_inf):
    """Each rule's kernel through the generic op (maximize, every flag and state on), three steps over sizes 0, 1,
    4097, several chunks, misaligned slices and more small tensors than one chunk table holds: bitwise equal to the
    CPU op, params, grads (written back when unscaled), master copies, states and scalar states; a found_inf step
    changes nothing."""
    target = _target(target_name, request.node.nodeid)
    rule = rules.RULES[rule_name]
    assert rule_name in target.ops.RULES, f"{target_name} has no kernel for {rule_name!r}"
    hyper, flags = RULE_OP_CASES[rule_name]
    used = rule.used_states(rule.hyper_dict(hyper), frozenset(flags))
    assert used == rule.states, f"{rule_name}: RULE_OP_CASES leaves states out of use: {used} of {rule.states}"
    dev_in = _rule_op_inputs(rule, used, dtype, state_dtype, master, target.device, many=200)
    cpu_in = _to(dev_in, "cpu")
    original = _to(dev_in, "cpu") if found_inf else None
    for step in range(3):
        grads = _grads(dev_in["params"], step, scale=grad_scale or 1.0)
        cpu_grads = _to({"g": grads}, "cpu")["g"]
        is_first = [step == 0 and i % 2 == 0 for i in range(len(grads))]
        args = (is_first, hyper, flags, lr_tensor, grad_scale, clip_coef, found_inf)
        _rule_call(target.ops, rule, used, dev_in, grads, *args, device=target.device)
        _rule_call(ops.BACKENDS["cpu"], rule, used, cpu_in, cpu_grads, *args, device="cpu")
        target.sync()
        _assert_step_bitwise(target, step, grads, cpu_grads, dev_in, cpu_in, original, prefix=f"{rule_name} ")


def test_every_rule_has_an_op_case():
    assert sorted(RULE_OP_CASES) == sorted(rules.RULES), "a rule without a row in RULE_OP_CASES is not op-tested"


# A tensor of more chunks than one check table holds (1000 chunks of 64K elements).
CHECK_HUGE = 1000 * 65536 + 3


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_name)
def test_op_check(target, dtype):
    """Sum of squares and the non-finite flag over sizes 0, 1, 4097, misaligned slices, a tensor of more than one
    table of chunks and more tensors than one table holds: the flag exact, the sum the reference's and the CPU
    op's bits (every backend adds exact squares in double, in its own order: csrc/cpu/norm.cpp), the same bits
    on a second run and (emulated) in other block orders."""
    gen = torch.Generator().manual_seed(3)
    # The tensor of more than one table: every dtype on a GPU; emulated, float32 only (the tables do not depend on
    # the dtype, which changes only the loads, and 65M elements take seconds on the emulated grid).
    with_huge = target.name != "cuda-emu" or dtype == torch.float32
    sizes = _sizes(400) + ([CHECK_HUGE] if with_huge else [])
    offsets = {**MISALIGNED, GRAD_ONLY_MISALIGNED: 1}
    grads = [_tensor(n, dtype, target.device, gen, offset=offsets.get(i, 0)) for i, n in enumerate(sizes)]
    check = target.ops.check
    out = check(grads)
    expected = reference.check(grads)
    assert out.dtype == torch.float32 and out.shape == (2,) and out.device.type == target.device.type
    assert_bitwise_equal(out[0].cpu(), expected[0].cpu(), name="sum of squares vs the reference")
    assert_bitwise_equal(out[0].cpu(), ops.BACKENDS["cpu"].check(_to({"g": grads}, "cpu")["g"])[0],
                         name="sum of squares vs the CPU op")
    assert float(out[1]) == 0.0
    assert_bitwise_equal(check(grads), out, name="check, second run (determinism)")
    if target.name == "cuda-emu":
        for seed in (0, 5):
            target.ops.set_seed(seed)
            assert_bitwise_equal(check(grads), out, name=f"check with block order seed {seed}")
    # Poisoned copies of the tensors that matter (the rest are shared): the last element of a misaligned slice,
    # of the huge tensor (its last chunk, in the second table) and of the last small tensor; inf, -inf and NaN.
    last_small = len(_sizes(400)) - 1
    poisons = [(4, math.nan), (6, math.inf), (last_small, -math.inf)] + ([(len(sizes) - 1, math.nan)] if with_huge
                                                                         else [])
    for where, bad in poisons:
        poisoned = list(grads)
        poisoned[where] = _offset_copy(grads[where], grads[where].storage_offset())
        poisoned[where][-1] = bad
        assert float(check(poisoned)[1]) == 1.0, f"{bad} at the end of grads[{where}]"
    empty = check([torch.empty(0, dtype=dtype, device=target.device)])
    assert empty.tolist() == [0.0, 0.0]


def test_op_validation_names_the_argument(target):
    dev_in = _op_inputs("adam", torch.float32, torch.float32, False, target.device, 2)
    before = copy.deepcopy(dev_in)
    grads = _grads(dev_in["params"], 0)
    kwargs = dict(is_first=[], lr_tensor=None, grad_scale=None, clip_coef=None, found_inf=None)
    bad = dict(dev_in)
    if target.device.type == "cuda":
        bad["exp_avgs"] = list(dev_in["exp_avgs"])
        bad["exp_avgs"][3] = bad["exp_avgs"][3].cpu()
        with pytest.raises(RuntimeError, match=r"exp_avgs\[3\] is on cpu"):
            _call(target.ops, "adam", bad, grads, device=target.device, **kwargs)
    else:  # the emulated ops take CPU tensors, and refuse others by device type
        bad["exp_avgs"] = list(dev_in["exp_avgs"])
        bad["exp_avgs"][3] = bad["exp_avgs"][3].to("meta")
        with pytest.raises(RuntimeError, match=r"exp_avgs\[3\] is on meta"):
            _call(target.ops, "adam", bad, grads, device=target.device, **kwargs)
    bad["exp_avgs"] = list(dev_in["exp_avgs"])
    bad["exp_avgs"][2] = bad["exp_avgs"][2].double()
    with pytest.raises(RuntimeError, match=r"exp_avgs\[2\] has dtype"):
        _call(target.ops, "adam", bad, grads, device=target.device, **kwargs)
    with pytest.raises(RuntimeError, match="lr_tensor must be float32"):
        target.ops.adam_update(dev_in["params"], grads, dev_in["exp_avgs"], dev_in["exp_avg_sqs"], [], [],
                               dev_in["steps"], 0.1, 0.9, 0.99, 1e-8, 0.0, False, False, False,
                               torch.tensor([0.1], dtype=torch.float64, device=target.device), None, None, None)
    for key in before:
        for i, (x, x0) in enumerate(zip(dev_in[key], before[key])):
            assert_bitwise_equal(x, x0, name=f"{key}[{i}] after a rejected call")


# --------------------------------------------------------------------------------------------------------------
# Optimizer level: every config of configs.py and every dtype, CUDA against the CPU backend and torch.optim.

def _cuda_params(groups):
    """The same params on the GPU with the same strides (dense, transposed and strided layouts)."""
    out = []
    for group in groups:
        out.append([])
        for p in group:
            q = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype, device=CUDA).copy_(p.detach())
            q.requires_grad_()
            q.contiguous_grad = getattr(p, "contiguous_grad", False)
            out[-1].append(q)
    return out


def _on_device(kwargs: dict, device) -> dict:
    """A tensor lr moves to ``device`` (the lr_tensor path: read by the kernels on the device)."""
    kwargs = copy.deepcopy(kwargs)
    if torch.is_tensor(kwargs.get("lr")):
        kwargs["lr"] = kwargs["lr"].to(device)
    return kwargs


def run_fused_on(alg, config, backend, groups, grad_steps, device, **extra) -> Run:
    kwargs = for_dtype(alg, _on_device(config.fused_kwargs(backend), device), flat(groups)[0].dtype)
    second = _on_device(alg.second_group, device)
    grad_steps = [[g.to(device) for g in step] for step in grad_steps]
    return run(lambda g: alg.fused_cls([{"params": g[0]}, {"params": g[1], **second}], **kwargs, **extra),
               groups, grad_steps, lambda opt: _step(opt))


def _step(opt):
    opt.step()
    return None if opt.grad_norm is None else opt.grad_norm.detach().clone()


def _cpu(r: Run) -> Run:
    to = lambda x: None if x is None else x.detach().cpu()  # noqa: E731
    return Run([to(p) for p in r.params], [{k: to(v) for k, v in s.items()} for s in r.states],
               [to(n) for n in r.norms], None if r.initial is None else [to(p) for p in r.initial])


def assert_backends_close(actual: Run, expected: Run) -> None:
    """fp32 tensors within test_parity's fp32 tolerance, bf16/fp16 ones within 2 ulps (see the module doc)."""
    for name, a, e in zip(PARAM_NAMES, actual.params, expected.params, strict=True):
        _close_by_dtype(a, e, f"param {name!r}")
    for name, sa, se in zip(PARAM_NAMES, actual.states, expected.states, strict=True):
        assert sorted(sa) == sorted(se), f"state keys of {name!r}: {sorted(sa)} vs {sorted(se)}"
        for key in se:
            assert sa[key].dtype == se[key].dtype, f"state[{name!r}][{key!r}]: {sa[key].dtype} vs {se[key].dtype}"
            if key == "step":
                assert_bitwise_equal(sa[key], se[key], name=f"state[{name!r}]['step']")
            else:
                _close_by_dtype(sa[key], se[key], f"state[{name!r}][{key!r}]")
    for step, (na, ne) in enumerate(zip(actual.norms, expected.norms, strict=True)):
        assert (na is None) == (ne is None), f"step {step}: grad_norm computed on one side only"
        if ne is not None:
            assert_close(na, ne, rtol=1e-5, name=f"grad_norm at step {step}")


def _close_by_dtype(a, e, name):
    if e.dtype in LOW_PRECISION:
        # 2 ulps, plus 1e-6 of the tensor's largest magnitude: a last-bit difference of the clip coefficient,
        # carried over the steps, is an absolute error at that scale in values that cancel down to near zero
        # (an exp_avg of 7e-9 among values of 1e-3 was 4 bf16 ulps off).
        magnitude = e.detach().cpu().abs()
        spacing = torch.nextafter(magnitude, torch.full_like(magnitude, math.inf)) - magnitude
        scale = float(magnitude.max()) if magnitude.numel() else 0.0
        assert_close(a, e, rtol=0.0, atol=2 * spacing.double() + 1e-6 * scale, name=f"{name} (2 ulps + 1e-6 max)")
    else:
        scale = float(e.abs().max()) if e.numel() else 0.0
        assert_close(a, e, rtol=RTOL[torch.float32], atol=1e-6 * scale, name=name)


def _run_on_target(target: Target, alg, config, groups, grads, **extra) -> Run:
    """The optimizer class on ``target``: the real CUDA backend on GPU copies of the params, or the emulated kernels
    on CPU params (serving backend="cpu" for the run)."""
    if target.name == "cuda":
        return _cpu(run_fused_on(alg, config, "cuda", _cuda_params(groups), grads, CUDA, **extra))
    with backend_served_by("cpu", target.ops):
        return run_fused_on(alg, config, "cpu", clone_params(groups), grads, CPU, **extra)


# Every config on the GPU; the representative ones (every distinct kernel path) on the emulated grid.
MATRIX = ([pytest.param("cuda", alg, config, dtype, id=f"cuda-{config_id(alg, config)}-{_dtype_name(dtype)}")
           for dtype in DTYPES for alg, config in ALL_CONFIGS]
          + [pytest.param("cuda-emu", alg, config, dtype, id=f"cuda-emu-{config_id(alg, config)}-{_dtype_name(dtype)}")
             for dtype in DTYPES for alg, config in REPRESENTATIVE])


@pytest.mark.parametrize("target_name,alg,config,dtype", MATRIX)
def test_matches_cpu_backend_and_torch(request, target_name, alg, config, dtype):
    target = _target(target_name, request.node.nodeid)
    for name in (target_name, "cpu"):
        require_rule(name, alg.fused_cls)
    groups = make_params(dtype)
    grads = make_grads(dtype, steps=STEPS)
    on_cuda = _run_on_target(target, alg, config, groups, grads)
    on_cpu = run_fused_on(alg, config, "cpu", clone_params(groups), grads, "cpu")
    assert_backends_close(on_cuda, on_cpu)
    if dtype not in LOW_PRECISION:
        assert_runs_close(on_cuda, run_torch(alg, config, clone_params(groups), grads), dtype)
        return
    truth = run_torch(alg, config, clone_params(groups, torch.float32), [[g.float() for g in s] for s in grads],
                      dtype=dtype)
    assert_low_precision_bound(on_cuda, run_torch(alg, config, clone_params(groups), grads), truth, dtype)


VARIANTS = [
    ("master_weights", dict(master_weights=True)),
    ("bf16_states", dict(state_dtype=torch.bfloat16)),
    ("master_weights-bf16_states", dict(master_weights=True, state_dtype=torch.bfloat16)),
]


# Every dtype on the GPU; bf16 params on the emulated grid (the op tests take every dtype with masters and states).
VARIANT_CASES = [pytest.param(target_name, alg, config, dtype, extra,
                              id=f"{target_name}-{config_id(alg, config)}-{_dtype_name(dtype)}-{extra_id}")
                 for target_name, dtypes in (("cuda", DTYPES), ("cuda-emu", (torch.bfloat16,)))
                 for alg, config in REPRESENTATIVE for dtype in dtypes for extra_id, extra in VARIANTS]


@pytest.mark.parametrize("target_name,alg,config,dtype,extra", VARIANT_CASES)
def test_variants_match_cpu_backend(request, target_name, alg, config, dtype, extra):
    """Master weights and bf16 states: CUDA against the CPU backend and the reference backend."""
    target = _target(target_name, request.node.nodeid)
    for name in (target_name, "cpu"):
        require_rule(name, alg.fused_cls)
    groups = make_params(dtype)
    grads = make_grads(dtype, steps=STEPS)
    # Emulated (CPU tensors): the CPU and reference runs clip with the target's check pass (reference_clips_as).
    same_clip = (reference_clips_as(target.ops, config, names=("cpu", "reference")) if target.name == "cuda-emu"
                 else contextlib.nullcontext())
    with ieee_sqrt():  # the reference's fp32 sqrt correctly rounded, as the kernels' (see the module doc)
        on_cuda = _run_on_target(target, alg, config, groups, grads, **extra)
        with same_clip:
            on_cpu = run_fused_on(alg, config, "cpu", clone_params(groups), grads, "cpu", **extra)
            on_ref = run_fused_on(alg, config, "reference", clone_params(groups), grads, "cpu", **extra)
    assert_backends_close(on_cuda, on_cpu)
    assert_backends_close(on_cuda, on_ref)


# --------------------------------------------------------------------------------------------------------------
# Behaviour on the device: no host syncs, CUDA graphs, GradScaler, torch.compile, 64-bit indexing.

def _model(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 10)).to(CUDA)


def _batch(i: int):
    gen = torch.Generator(device=CUDA).manual_seed(1000 + i)
    return (torch.randn(32, 64, device=CUDA, generator=gen), torch.randint(0, 10, (32,), device=CUDA, generator=gen))


OPTIMIZERS = [
    pytest.param(fusedopt.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4), id="SGD"),
    pytest.param(fusedopt.Adam, dict(lr=1e-3, amsgrad=True), id="Adam"),
    pytest.param(fusedopt.AdamW, dict(lr=1e-3, weight_decay=0.01), id="AdamW"),
]


@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS)
def test_step_has_no_host_sync(gpu, cls, kwargs):
    """max_grad_norm and nonfinite="skip": the clip coefficient, the skip flag, the step counts and a tensor lr
    stay on the device; the first step (state creation) included, and a step with an inf grad."""
    model = _model()
    opt = cls(model.parameters(), **{**kwargs, "lr": torch.tensor(kwargs["lr"], device=CUDA)},
              max_grad_norm=1.0, nonfinite="skip", backend="cuda")
    x, y = _batch(0)
    torch.cuda.synchronize()
    for i in range(3):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if i == 2:
            next(model.parameters()).grad.view(-1)[0] = math.inf  # a device write: no sync either
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        opt.zero_grad(set_to_none=True)
    assert bool(opt.found_nonfinite)


def _graph_run(cls, kwargs, steps: int, capture: bool):
    """Warm-up steps on a side stream, then ``steps`` steps, captured once and replayed (``capture``) or eager,
    with the tensor lr changed in place half way (as a scheduler writing a capturable lr does)."""
    model = _model()
    lr = torch.tensor(kwargs["lr"], device=CUDA)
    capturable = {} if cls is fusedopt.SGD else {"capturable": True}  # torch.optim.SGD has no such flag
    opt = cls(model.parameters(), **{**kwargs, "lr": lr}, **capturable, max_grad_norm=1.0, nonfinite="skip",
              backend="cuda")
    static_x, static_y = (t.clone() for t in _batch(0))

    def train_step():
        loss = torch.nn.functional.cross_entropy(model(static_x), static_y)
        loss.backward()
        opt.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            train_step()
    torch.cuda.current_stream().wait_stream(side)
    opt.zero_grad(set_to_none=True)
    graph = None
    if capture:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            train_step()
    for i in range(steps):
        x, y = _batch(i + 1)
        static_x.copy_(x)
        static_y.copy_(y)
        if i == steps // 2:
            lr.fill_(kwargs["lr"] / 2)
        if capture:
            graph.replay()
        else:
            opt.zero_grad(set_to_none=True)
            train_step()
    torch.cuda.synchronize()
    return model, opt


@pytest.mark.parametrize("cls,kwargs", OPTIMIZERS)
def test_cuda_graph_replay_equals_eager(gpu, cls, kwargs):
    """capturable=True with a tensor lr: forward, backward and opt.step() captured in one CUDA graph; replays
    equal the same steps run eagerly (params and states, bitwise up to the GEMMs' own determinism: tolerance)."""
    graph_model, graph_opt = _graph_run(cls, kwargs, steps=6, capture=True)
    eager_model, eager_opt = _graph_run(cls, kwargs, steps=6, capture=False)
    for i, (pg, pe) in enumerate(zip(graph_model.parameters(), eager_model.parameters())):
        assert_close(pg, pe, rtol=1e-5, atol=1e-6, name=f"param {i}")
        sg, se = graph_opt.state[pg], eager_opt.state[pe]
        assert sorted(sg) == sorted(se)
        for key in se:
            assert_close(sg[key], se[key], rtol=1e-5, atol=1e-7, name=f"state[{i}][{key!r}]")
    if "step" in eager_opt.state[next(eager_model.parameters())]:
        assert float(graph_opt.state[next(graph_model.parameters())]["step"]) == 3 + 6


def test_grad_scaler_matches_torch(gpu):
    """GradScaler hands grad_scale/found_inf to the kernels (unscale folded in, an inf step skipped) and gives the
    same results as torch.optim.AdamW's own GradScaler path."""
    results = []
    for make in (lambda ps: fusedopt.AdamW(ps, lr=1e-3, backend="cuda"),
                 lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=False)):
        model = _model()
        opt = make(model.parameters())
        scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
        for i in range(6):
            x, y = _batch(i)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            if i == 3:
                next(model.parameters()).grad.view(-1)[0] = math.inf
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
        results.append((model, opt, scaler.get_scale()))
    (fm, fo, fs), (tm, to, ts) = results
    assert fs == ts
    for i, (pf, pt) in enumerate(zip(fm.parameters(), tm.parameters())):
        assert_close(pf, pt, rtol=1e-5, atol=1e-7, name=f"param {i}")
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert_close(fo.state[pf][key], to.state[pt][key], rtol=1e-5, atol=1e-9, name=f"state[{i}][{key!r}]")
        assert float(fo.state[pf]["step"]) == 5  # the inf step was skipped


def test_torch_compile_step(gpu):
    """torch.compile of opt.step() on CUDA (the ops traced through their fake implementations) equals eager."""
    runs = []
    for compiled in (False, True):
        model = _model()
        opt = fusedopt.AdamW(model.parameters(), lr=torch.tensor(1e-3, device=CUDA), max_grad_norm=1.0,
                             nonfinite="skip", backend="cuda")
        step = torch.compile(opt.step) if compiled else opt.step
        for i in range(4):
            x, y = _batch(i)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            step()
            opt.zero_grad(set_to_none=True)
        runs.append((model, opt))
    (em, eo), (cm, co) = runs
    for i, (pe, pc) in enumerate(zip(em.parameters(), cm.parameters())):
        assert_close(pc, pe, rtol=1e-6, atol=1e-7, name=f"param {i}")
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert_close(co.state[pc][key], eo.state[pe][key], rtol=1e-6, atol=1e-9, name=f"state[{i}][{key!r}]")


HUGE = 2**31 + 4101  # elements: offsets past 2^31 in the last chunks


@pytest.mark.skipif(HAS_GPU and torch.cuda.mem_get_info()[0] < 48 * 2**30,
                    reason="needs 48 GiB of free GPU memory for a tensor of more than 2^31 elements")
def test_tensor_over_2_31_elements(gpu):
    """An fp32 param of 2^31 + 4101 elements through the check pass and one Adam step: the elements past 2^31
    get the right update, and the norm covers them (64-bit indexing)."""
    p = torch.nn.Parameter(torch.ones(HUGE, device=CUDA))
    p.grad = torch.ones(HUGE, device=CUDA)
    tail = torch.linspace(-3.0, 5.0, 4101, device=CUDA)
    p.grad[-4101:] = tail
    opt = fusedopt.Adam([p], lr=0.1, max_grad_norm=1e12, nonfinite="skip", backend="cuda")
    opt.step()
    expected_sumsq = (HUGE - 4101) + float((tail.double() ** 2).sum())
    assert_close(opt.grad_norm.double().cpu(), torch.tensor(math.sqrt(expected_sumsq), dtype=torch.float64),
                 rtol=1e-6, name="grad_norm")
    # First Adam step: p - lr * g / (|g| + eps * bias terms), elementwise: the reference on the tail alone.
    q = torch.ones(4101, device=CUDA)
    reference.adam_update([q], [tail.clone()], [torch.zeros_like(q)], [torch.zeros_like(q)], [], [],
                          [torch.zeros((), device=CUDA)], 0.1, 0.9, 0.999, 1e-8, 0.0, False, False, False)
    assert_close(p.detach()[-4101:], q, rtol=1e-6, name="the last 4101 elements")
    assert_close(p.detach()[:1000], torch.full((1000,), 0.9, device=CUDA), rtol=1e-6, name="the first elements")
    assert float(opt.state[p]["step"]) == 1.0
