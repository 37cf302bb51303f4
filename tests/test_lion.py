"""fusedopt.Lion against the ``lion-pytorch`` package (pinned in requirements.txt), which defines its semantics:
Lion has no torch.optim namesake, so what test_contract.py checks against torch.optim is checked here against
lion_pytorch.Lion: results, state layout, checkpoints both ways, and fusedopt's own decisions (signature,
constructor errors, no differentiable mode, no step count). The parity tables (configs.py, test_parity.py,
test_bad_input.py) run Lion against configs.LionPytorch, lion-pytorch's update behind fusedopt.Lion's
signature; the first test checks that adapter against lion_pytorch.Lion itself.
"""
from __future__ import annotations

import copy
import inspect
import io

import lion_pytorch
import pytest
import torch
from torch import nn

import fusedopt
from configs import LionPytorch
from helpers import assert_bitwise_equal, assert_snapshot_equal, require_rule, snapshot

SHAPES = [(4, 3), (5,), (2, 2, 2), (), (0,), (4097,)]
STEPS = 10
# lion-pytorch's own arguments (float lr, no maximize): (lr, betas, weight_decay)
CONFIGS = [
    dict(lr=1e-4),
    dict(lr=0.01, betas=(0.95, 0.98)),
    dict(lr=0.01, weight_decay=0.5),
    dict(lr=0.003, betas=(0.8, 0.9), weight_decay=1.0),
    dict(lr=0.01, betas=(1.0, 0.0)),
]
IDS = ["-".join(f"{k}={v}" for k, v in kwargs.items()) for kwargs in CONFIGS]


@pytest.fixture
def lion_backend(backend):
    require_rule(backend, fusedopt.Lion)
    return backend


def make_params(dtype=torch.float32, seed=0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(shape, generator=gen).to(dtype)) for shape in SHAPES]


def clone_params(params) -> list[nn.Parameter]:
    return [nn.Parameter(p.detach().clone()) for p in params]


def set_grads(params, step: int) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen).to(p.dtype)
        if step % 3 == 1 and g.numel() > 2:
            g.view(-1)[:2] = 0.0  # zero grads on a zero momentum (first steps): sign(0) = 0
        p.grad = None if (step == 2 and i == 1) else g


def train(opt, params, steps) -> None:
    for step in steps:
        set_grads(params, step)
        opt.step()


def assert_same(opt, params, lion, lion_params) -> None:
    for i, (p, q) in enumerate(zip(params, lion_params, strict=True)):
        assert_bitwise_equal(p.detach(), q.detach(), name=f"param {i}")
        assert sorted(opt.state[p]) == sorted(lion.state[q]) == ["exp_avg"], f"state keys of param {i}"
        assert_bitwise_equal(opt.state[p]["exp_avg"], lion.state[q]["exp_avg"], name=f"exp_avg of param {i}")


def save_load(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("kwargs", CONFIGS, ids=IDS)
def test_adapter_is_lion_pytorch(kwargs):
    lion_params = make_params()
    params = clone_params(lion_params)
    lion = lion_pytorch.Lion(lion_params, **kwargs)
    adapter = LionPytorch(params, **kwargs)
    train(lion, lion_params, range(STEPS))
    train(adapter, params, range(STEPS))
    assert_same(adapter, params, lion, lion_params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kwargs", CONFIGS, ids=IDS)
def test_matches_lion_pytorch_bit_for_bit(kwargs, dtype, lion_backend):
    """The reference runs lion-pytorch's ops in its order: the same bits, params and exp_avg."""
    lion_params = make_params(dtype)
    params = clone_params(lion_params)
    lion = lion_pytorch.Lion(lion_params, **kwargs)
    opt = fusedopt.Lion(params, **kwargs, backend=lion_backend)
    train(lion, lion_params, range(STEPS))
    train(opt, params, range(STEPS))
    assert_same(opt, params, lion, lion_params)


def test_the_issues_update_by_hand():
    """Issue 12's order: p *= 1 - lr*wd; p -= lr * sign(beta1*m + (1-beta1)*g); m = beta2*m + (1-beta2)*g."""
    lr, beta1, beta2, wd = 0.5, 0.75, 0.5, 0.25  # exact in binary, so the expected values are exact
    p = nn.Parameter(torch.tensor([1.0, 2.0, -4.0, 8.0]))
    opt = fusedopt.Lion([p], lr=lr, betas=(beta1, beta2), weight_decay=wd, backend="reference")
    p.grad = torch.tensor([1.0, 0.0, -2.0, -1.0])
    opt.step()
    # m = 0: the sign is the grad's, and 0 for a zero grad
    assert p.detach().tolist() == [1.0 * 0.875 - 0.5, 2.0 * 0.875, -4.0 * 0.875 + 0.5, 8.0 * 0.875 + 0.5]
    assert opt.state[p]["exp_avg"].tolist() == [0.5, 0.0, -1.0, -0.5]
    p.grad = torch.tensor([-1.0, 0.0, 4.0, 1.0])
    before = p.detach().clone()
    opt.step()
    # beta1 * m + (1 - beta1) * g = [0.125, 0, 0.25, -0.125]
    assert p.detach().tolist() == (before * 0.875 - 0.5 * torch.tensor([1.0, 0.0, 1.0, -1.0])).tolist()
    assert opt.state[p]["exp_avg"].tolist() == [-0.25, 0.0, 1.5, 0.25]


def test_maximize_is_a_negated_grad():
    params, other = make_params(), make_params()
    opt = fusedopt.Lion(params, lr=0.01, weight_decay=0.1, maximize=True, backend="reference")
    lion = lion_pytorch.Lion(other, lr=0.01, weight_decay=0.1)
    for step in range(4):
        set_grads(params, step)
        opt.step()
        set_grads(other, step)
        for p in other:
            if p.grad is not None:
                p.grad.neg_()
        lion.step()
    assert_same(opt, params, lion, other)


# --- fusedopt's decisions: signature, errors, no differentiable mode, no step count ----------------------------

def test_signature_is_the_issues():
    params = inspect.signature(fusedopt.Lion).parameters.values()
    assert [(p.name, p.kind, p.default) for p in params] == [
        ("params", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ("lr", inspect.Parameter.POSITIONAL_OR_KEYWORD, 1e-4),
        ("betas", inspect.Parameter.POSITIONAL_OR_KEYWORD, (0.9, 0.99)),
        ("weight_decay", inspect.Parameter.POSITIONAL_OR_KEYWORD, 0.0),
        *[(name, inspect.Parameter.KEYWORD_ONLY, default) for name, default in (
            ("maximize", False), ("foreach", None), ("capturable", False), ("max_grad_norm", None),
            ("nonfinite", "ignore"), ("backend", "auto"), ("master_weights", False), ("state_dtype", None),
            ("param_rounding", "nearest"), ("seed", None))],
    ]
    # lion-pytorch's positional order and defaults, for the arguments both have
    theirs = list(inspect.signature(lion_pytorch.Lion).parameters.values())[:4]
    assert [(p.name, p.default) for p in theirs] == [(p.name, p.default) for p in list(params)[:4]]


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(lr=-0.1), ValueError, "Invalid learning rate: -0.1"),
    (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element"),
    (dict(betas=(1.5, 0.9)), ValueError, "Invalid beta parameter at index 0: 1.5"),
    (dict(betas=(0.9, -0.1)), ValueError, "Invalid beta parameter at index 1: -0.1"),
    (dict(betas=(0.9,)), ValueError, "Invalid betas: (0.9,); expected two values"),
    (dict(weight_decay=-1.0), ValueError, "Invalid weight_decay value: -1.0"),
    (dict(lr=-1.0, weight_decay=-1.0), ValueError, "Invalid learning rate: -1.0"),  # torch.optim's order
    (dict(differentiable=True), TypeError, "differentiable"),
    (dict(fused=True), TypeError, "fused"),
    (dict(backend="gpu"), ValueError, "backend"),
    (dict(nonfinite="warn"), ValueError, "nonfinite"),
])
def test_constructor_errors(kwargs, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        fusedopt.Lion(make_params(), **kwargs)


def test_lr_zero_and_betas_at_the_ends_are_taken():
    """lion-pytorch asserts lr > 0; an lr of 0 is taken (as torch.optim takes it: a step that only creates
    state). Betas 0 and 1 are in lion-pytorch's range."""
    params = make_params()
    before = [p.detach().clone() for p in params]
    opt = fusedopt.Lion(params, lr=0.0, betas=(1.0, 0.0), backend="reference")
    train(opt, params, range(2))
    for i, (p, b) in enumerate(zip(params, before)):
        assert_bitwise_equal(p.detach(), b, name=f"param {i}")


def test_differentiable_is_refused_in_a_loaded_group():
    params = make_params()
    opt = fusedopt.Lion(params, lr=0.01, backend="reference")
    train(opt, params, range(2))
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0]["differentiable"] = True
    before = snapshot(opt)
    with pytest.raises(ValueError, match="Lion does not support differentiable=True"):
        opt.load_state_dict(sd)
    assert_snapshot_equal(before, snapshot(opt))
    assert "differentiable" not in opt.param_groups[0]


def test_differentiable_set_by_hand_is_refused():
    params = make_params()
    opt = fusedopt.Lion(params, lr=0.01, backend="reference")
    opt.param_groups[0]["differentiable"] = True
    set_grads(params, 0)
    before = snapshot(opt)
    with pytest.raises(RuntimeError, match="Lion does not support differentiable=True"):
        opt.step()
    assert_snapshot_equal(before, snapshot(opt))
    assert not opt.state


def test_state_is_exp_avg_only():
    params = make_params(torch.bfloat16)
    opt = fusedopt.Lion(params, lr=0.01, backend="reference")
    train(opt, params, range(2))
    for i, p in enumerate(params):
        state = opt.state[p]
        assert list(state) == ["exp_avg"], f"param {i}: {list(state)}"
        assert state["exp_avg"].dtype == torch.float32 and state["exp_avg"].shape == p.shape


# --- checkpoints move between lion-pytorch and fusedopt ---------------------------------------------------------

@pytest.mark.parametrize("via", ["object", "torch.save"])
@pytest.mark.parametrize("kwargs", CONFIGS[1:4], ids=IDS[1:4])
def test_lion_pytorch_checkpoint_continues_identically(kwargs, via, lion_backend):
    lion_params = make_params()
    lion = lion_pytorch.Lion(lion_params, **kwargs)
    train(lion, lion_params, range(3))
    checkpoint = copy.deepcopy(lion.state_dict())
    checkpoint = save_load(checkpoint) if via == "torch.save" else checkpoint
    params = clone_params(lion_params)
    opt = fusedopt.Lion(params, backend=lion_backend)  # every hyperparameter from the checkpoint
    opt.load_state_dict(checkpoint)
    assert opt.param_groups[0]["maximize"] is False
    train(lion, lion_params, range(3, 7))
    train(opt, params, range(3, 7))
    assert_same(opt, params, lion, lion_params)


@pytest.mark.parametrize("via", ["object", "torch.save"])
@pytest.mark.parametrize("kwargs", CONFIGS[1:4], ids=IDS[1:4])
def test_fusedopt_checkpoint_continues_identically_in_lion_pytorch(kwargs, via, lion_backend):
    params = make_params()
    opt = fusedopt.Lion(params, **kwargs, backend=lion_backend)
    train(opt, params, range(3))
    checkpoint = copy.deepcopy(opt.state_dict())
    checkpoint = save_load(checkpoint) if via == "torch.save" else checkpoint
    lion_params = clone_params(params)
    lion = lion_pytorch.Lion(lion_params)
    lion.load_state_dict(checkpoint)
    train(lion, lion_params, range(3, 7))
    train(opt, params, range(3, 7))
    assert_same(opt, params, lion, lion_params)


def test_bf16_checkpoint_keeps_fp32_exp_avg(lion_backend):
    params = make_params(torch.bfloat16)
    opt = fusedopt.Lion(params, lr=0.01, weight_decay=0.1, backend=lion_backend)
    train(opt, params, range(3))
    checkpoint = save_load(copy.deepcopy(opt.state_dict()))
    loaded = clone_params(params)
    resumed = fusedopt.Lion(loaded, backend=lion_backend)
    resumed.load_state_dict(checkpoint)
    for i, (p, q) in enumerate(zip(params, loaded)):
        assert_bitwise_equal(resumed.state[q]["exp_avg"], opt.state[p]["exp_avg"], name=f"exp_avg {i}")
    train(opt, params, range(3, 5))
    train(resumed, loaded, range(3, 5))
    for i, (p, q) in enumerate(zip(params, loaded)):
        assert_bitwise_equal(q.detach(), p.detach(), name=f"param {i} after continuing")
