"""Steps that run torch.optim's own single-tensor implementation (fusedopt/optim/_torch_path.py), against
torch.optim side by side: ``differentiable=True`` (gradients of a meta-objective through several steps), SGD with
sparse gradients, and the extras (clipping, non-finite policies, GradScaler) around both. Also torch's check
that ``fused=True`` params are on a device with kernels (meta params raise at the step, before any state).

The update is torch's own code, so params, states and meta-gradients are compared bit for bit; only where the
clip coefficient comes from fusedopt's norm (one reduction order) against torch's (another) is a tolerance used.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fusedopt
from helpers import assert_bitwise_equal, assert_close, assert_snapshot_equal, require_rule, snapshot

TORCH = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}
FUSED = {"SGD": fusedopt.SGD, "Adam": fusedopt.Adam, "AdamW": fusedopt.AdamW}
for _name in ("NAdam", "RAdam", "Adadelta", "Rprop", "ASGD"):  # issue 12 part 2
    TORCH[_name], FUSED[_name] = getattr(torch.optim, _name), getattr(fusedopt, _name)
SHAPES = [(4, 3), (3,), ()]
STEPS = 4
RTOL = 1e-5

DIFFERENTIABLE_CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, maximize=True)),
    ("Adam", dict(lr=0.05)),
    ("Adam", dict(lr=0.05, betas=(0.8, 0.95), weight_decay=0.1, maximize=True)),
    ("AdamW", dict(lr=0.05, weight_decay=0.1)),
    # torch's own differentiable amsgrad fails on its in-place max (checked in test_differentiable_amsgrad...).
    # issue 12 part 2
    ("NAdam", dict(lr=0.05, weight_decay=0.1)),
    ("NAdam", dict(lr=0.05, weight_decay=0.1, momentum_decay=0.01, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", dict(lr=0.05, betas=(0.8, 0.9), weight_decay=0.1)),
    ("RAdam", dict(lr=0.05, betas=(0.8, 0.9), weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("Adadelta", dict(lr=0.5, weight_decay=0.1)),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-4, maximize=True)),
    ("ASGD", dict(lr=0.05, weight_decay=0.1)),
    ("ASGD", dict(lr=0.05, lambd=0.01, t0=1, maximize=True)),
]
# Adagrad, RMSprop, Adamax (issue 12 part 2); Lion has no torch implementation to run (no differentiable=True).
TORCH.update(Adagrad=torch.optim.Adagrad, RMSprop=torch.optim.RMSprop, Adamax=torch.optim.Adamax)
FUSED.update(Adagrad=fusedopt.Adagrad, RMSprop=fusedopt.RMSprop, Adamax=fusedopt.Adamax)
DIFFERENTIABLE_CONFIGS += [
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.3, maximize=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, weight_decay=0.1, momentum=0.5, maximize=True)),
    # torch's own differentiable centered RMSprop and Adamax fail on an in-place lerp (test_differentiable_lerp...).
]
IDS = [f"{name}-" + "-".join(f"{k}={v}" for k, v in kwargs.items()) for name, kwargs in DIFFERENTIABLE_CONFIGS]


def _inner_loss(params, x):
    """A small model's loss: its gradients depend on the params, so second derivatives are not zero. The
    forward reads clones: the optimizer updates the params in place, and autograd must still find the values
    an earlier step's graph saved (the usual pattern with in-place differentiable optimizers)."""
    w, b, s = (p.clone() for p in params)
    return (torch.tanh(x @ w + b) * s).pow(2).sum()


def _meta_run(cls, kwargs, *, lr_requires_grad=False, steps=STEPS, **extras):
    """Unrolled inner training of a copy of fixed initial weights with ``cls`` (differentiable=True), then the
    meta-objective's gradient w.r.t. the initial weights (and the lr when it is a tensor that requires grad).
    Returns (final params, optimizer state per param, meta-gradients)."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(shape, generator=gen, dtype=torch.float64).to(torch.float32).requires_grad_()
            for shape in SHAPES]
    x = torch.randn(6, 4, generator=gen)
    kwargs = copy.deepcopy(kwargs)
    if lr_requires_grad:
        kwargs["lr"] = torch.tensor(kwargs["lr"], requires_grad=True)
    params = [p.clone() for p in init]  # non-leaf: the optimizer updates them in place, in the graph
    opt = cls(params, differentiable=True, **kwargs, **extras)
    for _ in range(steps):
        grads = torch.autograd.grad(_inner_loss(params, x), params, create_graph=True)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    meta = sum((p * p).sum() for p in params)
    wrt = init + ([kwargs["lr"]] if lr_requires_grad else [])
    meta_grads = torch.autograd.grad(meta, wrt)
    states = [{k: v.detach().clone() for k, v in opt.state[p].items()} for p in params]
    return [p.detach().clone() for p in params], states, meta_grads, opt


def _assert_runs_equal(ours, theirs, *, bitwise=True):
    def same(a, b, name):
        if bitwise:
            assert_bitwise_equal(a, b, name=name)
        else:
            assert_close(a, b, rtol=RTOL, name=name)

    (params, states, meta_grads), (t_params, t_states, t_meta_grads) = ours[:3], theirs[:3]
    for i, (a, b) in enumerate(zip(params, t_params, strict=True)):
        same(a, b, f"param {i}")
    for i, (a, b) in enumerate(zip(states, t_states, strict=True)):
        assert sorted(a) == sorted(b), f"state {i}: keys {sorted(a)} != torch's {sorted(b)}"
        for key in b:
            same(a[key], b[key], f"state[{i}][{key!r}]")
    for i, (a, b) in enumerate(zip(meta_grads, t_meta_grads, strict=True)):
        same(a, b, f"meta-gradient {i}")


# --- differentiable=True ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs", DIFFERENTIABLE_CONFIGS, ids=IDS)
def test_differentiable_meta_gradients_equal_torch(name, kwargs):
    ours = _meta_run(FUSED[name], kwargs)
    _assert_runs_equal(ours, _meta_run(TORCH[name], kwargs))
    assert all(g.abs().sum() > 0 for g in ours[2]), "the meta-gradient does not flow through the steps"


@pytest.mark.parametrize("name, kwargs", DIFFERENTIABLE_CONFIGS[2:3] + DIFFERENTIABLE_CONFIGS[4:5],
                         ids=IDS[2:3] + IDS[4:5])
def test_differentiable_learning_rate_gradient_equals_torch(name, kwargs):
    # Meta-learning the lr itself: a tensor lr that requires grad, as torch's differentiable path supports.
    # (Not with plain momentum: torch's update then saves the buffer it later changes in place, and raises.)
    ours = _meta_run(FUSED[name], kwargs, lr_requires_grad=True)
    _assert_runs_equal(ours, _meta_run(TORCH[name], kwargs, lr_requires_grad=True))
    assert ours[2][-1].abs() > 0


def test_differentiable_rprop_fails_like_torch():
    # torch 2.13's differentiable Rprop changes in place (step_size.mul_(...).clamp_(...)) a tensor its backward
    # saved at the previous step; ours runs torch's code.
    errors = []
    for cls in (torch.optim.Rprop, fusedopt.Rprop):
        with pytest.raises(RuntimeError, match="modified by an inplace operation") as info:
            _meta_run(cls, dict(lr=0.05))
        errors.append(str(info.value).split(";")[0])
    assert errors[0] == errors[1]


def test_differentiable_amsgrad_fails_like_torch():
    # torch 2.13's differentiable amsgrad overwrites a tensor its backward needs; ours runs torch's code.
    errors = []
    for cls in (torch.optim.Adam, fusedopt.Adam):
        with pytest.raises(RuntimeError, match="modified by an inplace operation") as info:
            _meta_run(cls, dict(lr=0.05, amsgrad=True))
        errors.append(str(info.value).split(";")[0])
    assert errors[0] == errors[1]


@pytest.mark.parametrize("name, kwargs", [("RMSprop", dict(lr=0.01, centered=True)), ("Adamax", dict(lr=0.05))],
                         ids=["RMSprop-centered", "Adamax"])
def test_differentiable_lerp_state_fails_like_torch(name, kwargs):
    # torch 2.13's differentiable centered RMSprop (grad_avg) and Adamax (exp_avg) lerp a state in place after
    # the backward saved it; ours runs torch's code.
    errors = []
    for cls in (TORCH[name], FUSED[name]):
        with pytest.raises(RuntimeError, match="modified by an inplace operation") as info:
            _meta_run(cls, kwargs)
        errors.append(str(info.value).split(";")[0])
    assert errors[0] == errors[1]


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_differentiable_grad_mode_is_torchs(name):
    """Autograd records the update when the optimizer's default differentiable is True (torch's
    _use_grad_for_differentiable), and the caller's grad mode is restored afterwards."""
    seen = []
    for cls in (TORCH[name], FUSED[name]):
        p = torch.randn(3, requires_grad=True).clone()
        opt = cls([p], lr=0.1, differentiable=True)
        p.grad = torch.ones(3)
        with torch.no_grad():
            opt.step()
            assert not torch.is_grad_enabled()
        seen.append(p.grad_fn is not None and "Clone" not in type(p.grad_fn).__name__)
    assert seen[0] and seen[1]


def test_differentiable_groups_mixed_with_plain_groups_equal_torch():
    results = []
    for cls in (torch.optim.Adam, fusedopt.Adam):
        gen = torch.Generator().manual_seed(3)
        a = torch.randn(4, generator=gen, requires_grad=True)
        b = torch.randn(3, generator=gen)  # autograd is on during the step: a leaf requiring grad would raise
        a_work = a.clone()
        opt = cls([{"params": [a_work]}, {"params": [b], "differentiable": False, "lr": 0.2}], lr=0.1,
                  differentiable=True)
        for step in range(STEPS):
            loss = (a_work.clone().sin() * (step + 1)).sum()
            a_work.grad, = torch.autograd.grad(loss, a_work, create_graph=True)
            b.grad = torch.randn(3, generator=gen)
            opt.step()
        meta_grad, = torch.autograd.grad(a_work.sum(), a)
        results.append((a_work.detach().clone(), b.detach().clone(), meta_grad))
    for i, (ours, theirs) in enumerate(zip(*results)):
        assert_bitwise_equal(ours, theirs, name=f"result {i}")


@pytest.mark.parametrize("name, kwargs", DIFFERENTIABLE_CONFIGS[1:2] + DIFFERENTIABLE_CONFIGS[3:4],
                         ids=IDS[1:2] + IDS[3:4])
def test_differentiable_clipping_equals_torch_with_clipped_grads(name, kwargs, backend):
    """max_grad_norm on the differentiable path: the grads the update reads are multiplied by torch's clip
    coefficient (a constant for autograd), .grad is left unclipped, grad_norm is the pre-clip norm."""
    max_norm = 0.01

    class ClippedTorch(TORCH[name]):
        def step(self, closure=None):
            grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))
            coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
            assert coef < 1, "the test must clip"
            for group in self.param_groups:
                for p in group["params"]:
                    p.grad = p.grad * coef
            return super().step(closure)

    ours = _meta_run(FUSED[name], kwargs, max_grad_norm=max_norm, backend=backend)
    _assert_runs_equal(ours, _meta_run(ClippedTorch, kwargs), bitwise=False)
    opt = ours[3]
    grads = [p.grad for p in opt.param_groups[0]["params"]]
    expected_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))
    assert_close(opt.grad_norm, expected_norm, rtol=RTOL, name="grad_norm (of the unclipped last grads)")


def _differentiable_opt(name, backend, **extras):
    gen = torch.Generator().manual_seed(5)
    params = [torch.randn(shape, generator=gen, requires_grad=True).clone() for shape in SHAPES]
    opt = FUSED[name](params, lr=0.1, differentiable=True, backend=backend, **extras)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()  # some state, so a skipped step has something to leave alone
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    return opt, params


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_differentiable_skip_changes_nothing(name, backend):
    opt, params = _differentiable_opt(name, backend, nonfinite="skip")
    params[1].grad[2] = float("nan")
    before = snapshot(opt)
    opt.step()
    assert_snapshot_equal(before, snapshot(opt))
    assert bool(opt.found_nonfinite)


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_differentiable_raise_names_the_param_and_changes_nothing(name, backend):
    opt, params = _differentiable_opt(name, backend, nonfinite="raise")
    params[2].grad.fill_(float("inf"))
    before = snapshot(opt)
    with pytest.raises(RuntimeError, match="parameter 2 of param group 0"):
        opt.step()
    assert_snapshot_equal(before, snapshot(opt))


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_differentiable_grad_scaler_protocol(name, backend):
    """found_inf skips the step; grad_scale is divided out of the grads in place, as on the kernel path."""
    opt, params = _differentiable_opt(name, backend)
    opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(1.0)
    before = snapshot(opt)
    opt.step()
    assert_snapshot_equal(before, snapshot(opt))

    torch_params = [p.detach().clone() for p in params]
    torch_opt = TORCH[name](torch_params, lr=0.1)
    torch_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for tp, p in zip(torch_params, params):
        tp.grad = p.grad / 4
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    torch_opt.step()
    for i, (p, tp) in enumerate(zip(params, torch_params)):
        assert_bitwise_equal(p.detach(), tp, name=f"param {i}")
        assert_bitwise_equal(p.grad, tp.grad, name=f"grad {i} (unscaled in place)")


def test_differentiable_low_precision_params_raise_before_anything_changes(backend):
    # torch's for-loop keeps states in the param's dtype; fusedopt's are fp32 for bf16 params.
    p32 = torch.randn(3, requires_grad=True).clone()
    p16 = torch.randn(3, requires_grad=True).to(torch.bfloat16)
    opt = fusedopt.Adam([p32, p16], lr=0.1, differentiable=True, backend=backend)
    p32.grad, p16.grad = torch.ones(3), torch.ones(3, dtype=torch.bfloat16)
    before = snapshot(opt)
    with pytest.raises(RuntimeError, match=r"parameter 1 of param group 0 is torch.bfloat16.*param's dtype"):
        opt.step()
    assert_snapshot_equal(before, snapshot(opt))


# --- SGD with sparse gradients ---------------------------------------------------------------------------------

# No weight_decay: torch's SGD cannot add a dense param to a sparse grad (it raises; so does ours, as its code).
SPARSE_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True),
    dict(lr=torch.tensor(0.1)),
]


def _sparse_grad(step: int, numel: int, dtype) -> torch.Tensor:
    """An uncoalesced sparse grad (index 0 twice) touching a step-dependent subset, as embeddings give."""
    gen = torch.Generator().manual_seed(50 + step)
    index = torch.tensor([[0, 0, (step + 1) % numel, (3 * step + 2) % numel]])
    return torch.sparse_coo_tensor(index, torch.randn(4, generator=gen, dtype=torch.float64).to(dtype), (numel,))


def _sparse_training(cls, kwargs, steps=STEPS, dtype=torch.float32, **extras):
    """An embedding-like 1-D param with sparse grads next to a dense param, trained for ``steps``."""
    gen = torch.Generator().manual_seed(7)
    emb = nn.Parameter(torch.randn(10, generator=gen).to(dtype))
    dense = nn.Parameter(torch.randn(3, generator=gen).to(dtype))
    opt = cls([emb, dense], **copy.deepcopy(kwargs), **extras)
    for step in range(steps):
        emb.grad = _sparse_grad(step, emb.numel(), dtype)
        dense.grad = torch.randn(3, generator=gen).to(dtype)
        opt.step()
    return opt, [emb, dense]


def _dense(t):
    return t.to_dense() if t.is_sparse else t


@pytest.mark.parametrize("kwargs", SPARSE_CONFIGS, ids=[str(k) for k in SPARSE_CONFIGS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_grads_equal_torch(kwargs, dtype):
    opt, params = _sparse_training(fusedopt.SGD, kwargs, dtype=dtype)
    torch_opt, torch_params = _sparse_training(torch.optim.SGD, kwargs, dtype=dtype)
    for i, (p, tp) in enumerate(zip(params, torch_params)):
        assert_bitwise_equal(p.detach(), tp.detach(), name=f"param {i}")
        state, torch_state = opt.state.get(p, {}), torch_opt.state.get(tp, {})
        assert sorted(state) == sorted(torch_state)
        for key, value in torch_state.items():
            assert value.is_sparse == state[key].is_sparse, f"{key}: layout differs from torch's"
            assert_bitwise_equal(_dense(state[key]), _dense(value), name=f"state[{i}][{key!r}]")


def test_sparse_grads_with_clipping_equal_torch_with_clipped_grads(backend):
    """The global norm counts a sparse grad's coalesced values (duplicates summed first), as its dense form."""
    max_norm = 0.3
    opt, params = _sparse_training(fusedopt.SGD, dict(lr=0.1, momentum=0.9), steps=1, max_grad_norm=max_norm,
                                   backend=backend)
    torch_opt, torch_params = _sparse_training(torch.optim.SGD, dict(lr=0.1, momentum=0.9), steps=0)
    grads = [_sparse_grad(0, 10, torch.float32), params[1].grad.clone()]
    norm = torch.linalg.vector_norm(torch.cat([_dense(g).flatten() for g in grads]))
    assert_close(opt.grad_norm, norm, rtol=RTOL, name="grad_norm")
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    assert coef < 1, "the test must clip"
    for tp, g in zip(torch_params, grads):
        tp.grad = g * coef
    torch_opt.step()
    for i, (p, tp) in enumerate(zip(params, torch_params)):
        assert_close(p.detach(), tp.detach(), rtol=RTOL, name=f"param {i}")
    assert params[0].grad.is_sparse and torch.equal(_dense(params[0].grad), _dense(grads[0])), \
        "the sparse .grad must be left unclipped"


def test_sparse_grads_skip_changes_nothing(backend):
    opt, params = _sparse_training(fusedopt.SGD, dict(lr=0.1, momentum=0.9), steps=2, nonfinite="skip",
                                   backend=backend)
    bad = _sparse_grad(5, 10, torch.float32)
    bad._values()[1] = float("nan")
    params[0].grad = bad
    before = [p.detach().clone() for p in params] + [_dense(opt.state[p]["momentum_buffer"]).clone() for p in params]
    opt.step()
    after = [p.detach() for p in params] + [_dense(opt.state[p]["momentum_buffer"]) for p in params]
    for i, (a, b) in enumerate(zip(after, before)):
        assert_bitwise_equal(a, b, name=f"tensor {i}")
    assert bool(opt.found_nonfinite)


def test_sparse_grads_still_rejected_by_adam():
    p = nn.Parameter(torch.randn(4))
    opt = fusedopt.Adam([p], lr=0.1)
    p.grad = torch.ones(4).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    assert not opt.state


# --- fused=True needs params on a device with kernels (torch's check, at the step) ------------------------------

def _meta_model():
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1))


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_fused_on_meta_params_raises_torchs_error_before_any_state(name):
    messages = []
    for cls in (TORCH[name], FUSED[name]):
        model = _meta_model()
        opt = cls(model.parameters(), fused=True)  # construction succeeds, as torch's
        with torch.device("meta"):
            for p in model.parameters():
                p.grad = torch.rand_like(p)
        with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point "
                                               "Tensors of supported devices") as info:
            opt.step()
        messages.append(str(info.value))
        if cls is FUSED[name]:
            assert not opt.state, "a rejected step created state"
        # and once the params are real, the same optimizer steps
        opt.zero_grad(set_to_none=True)
        model.to_empty(device="cpu")
        for p in model.parameters():
            p.grad = torch.rand_like(p)
        opt.step()
    assert messages[1].endswith("but torch.float32 and meta"), messages[1]


def test_fused_meta_param_after_real_ones_changes_nothing():
    real = [nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2, 2))]
    meta = nn.Parameter(torch.empty(3, device="meta"))
    opt = fusedopt.Adam([*real, meta], lr=0.1, fused=True)
    for p in real:
        p.grad = torch.randn(p.shape)
    meta.grad = torch.empty(3, device="meta")
    before = [p.detach().clone() for p in real]
    with pytest.raises(RuntimeError, match="`fused=True` requires"):
        opt.step()
    assert not opt.state
    for i, (p, b) in enumerate(zip(real, before)):
        assert_bitwise_equal(p.detach(), b, name=f"param {i}")


# --- Adagrad takes sparse grads too (torch's single-tensor Adagrad; issue 12 part 2) ---------------------------

ADAGRAD_SPARSE_CONFIGS = [dict(lr=0.1), dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.5, maximize=True)]


@pytest.mark.parametrize("kwargs", ADAGRAD_SPARSE_CONFIGS, ids=[str(k) for k in ADAGRAD_SPARSE_CONFIGS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adagrad_sparse_grads_equal_torch(kwargs, dtype, backend):
    require_rule(backend, fusedopt.Adagrad)
    opt, params = _sparse_training(fusedopt.Adagrad, kwargs, dtype=dtype, backend=backend)
    torch_opt, torch_params = _sparse_training(torch.optim.Adagrad, kwargs, dtype=dtype)
    for i, (p, tp) in enumerate(zip(params, torch_params)):
        assert_bitwise_equal(p.detach(), tp.detach(), name=f"param {i}")
        state, torch_state = opt.state[p], torch_opt.state[tp]
        assert sorted(state) == sorted(torch_state)
        for key, value in torch_state.items():
            assert_bitwise_equal(state[key], value, name=f"state[{i}][{key!r}]")


def test_adagrad_sparse_grads_with_weight_decay_fail_like_torch():
    """torch's Adagrad refuses weight decay with sparse grads, before it writes anything."""
    for cls in (torch.optim.Adagrad, fusedopt.Adagrad):
        p = nn.Parameter(torch.randn(4))
        opt = cls([p], lr=0.1, weight_decay=0.1)
        p.grad = torch.ones(4).to_sparse()
        before = [p.detach().clone(), opt.state[p]["sum"].clone()]
        with pytest.raises(RuntimeError, match="weight_decay option is not compatible with sparse gradients"):
            opt.step()
        assert_bitwise_equal(p.detach(), before[0], name="param")
        assert_bitwise_equal(opt.state[p]["sum"], before[1], name="sum")
