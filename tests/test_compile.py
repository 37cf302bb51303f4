"""torch.compile: ``opt.step()`` traces into one graph (fullgraph=True: any graph break fails) through the
torch.library ops and their fake impls (fusedopt/ops.py), and the compiled steps give eager's results.

Inductor compiles the graph around the ops (the clip coefficient, the skip flag); its fp32 ``sqrt`` is correctly
rounded where eager's CPU ``sqrt`` may be 1 ulp off, so clipped runs agree to rounding, unclipped ones bitwise.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo

import fusedopt
from fusedopt import ops
from helpers import assert_bitwise_equal, assert_close, require_backend

STEPS = 5
NAN_STEP = 2  # a NaN grad at this step: skipped under nonfinite="skip", identically compiled and eager

CASES = {
    "AdamW-clip-skip": (fusedopt.AdamW, dict(lr=0.01, weight_decay=0.1, max_grad_norm=0.05, nonfinite="skip")),
    "Adam-amsgrad": (fusedopt.Adam, dict(lr=0.01, amsgrad=True)),
    "SGD-nesterov-clip-skip": (fusedopt.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01,
                                                  max_grad_norm=0.05, nonfinite="skip")),
}


def _device_or_skip(device: str) -> str:
    if device == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        if ops._KERNEL_FOR_DEVICE.get("cuda") not in ops.BACKENDS:
            pytest.skip("this build has no compiled CUDA backend (the reference backend reads flags on the host)")
    else:
        require_backend("cpu")
    return device


def _model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 33), torch.nn.Tanh(), torch.nn.Linear(33, 4))
    model[2].to(torch.bfloat16)  # two dtypes: two kernel calls in the graph
    return model.to(device)


def _backward(model: torch.nn.Module, step: int, device: str) -> None:
    gen = torch.Generator().manual_seed(step)
    x, y = torch.randn(16, 8, generator=gen).to(device), torch.randn(16, 4, generator=gen).to(device)
    out = model[2](model[1](model[0](x)).to(torch.bfloat16)).float()
    torch.nn.functional.mse_loss(out, y).backward()
    if step == NAN_STEP:
        model[0].weight.grad[3, 1] = float("nan")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_step_matches_eager(case, device):
    device = _device_or_skip(device)
    cls, kwargs = CASES[case]
    torch._dynamo.reset()
    eager_model = _model(device)
    model = copy.deepcopy(eager_model)
    eager_opt, opt = cls(eager_model.parameters(), **kwargs), cls(model.parameters(), **kwargs)

    @torch.compile(fullgraph=True)  # a graph break anywhere in step() raises
    def compiled_step():
        opt.step()

    for step in range(STEPS):
        _backward(eager_model, step, device)
        _backward(model, step, device)
        eager_opt.step()
        compiled_step()
        if kwargs.get("nonfinite") == "skip":
            assert bool(opt.found_nonfinite) == (step == NAN_STEP) == bool(eager_opt.found_nonfinite)
        eager_opt.zero_grad()
        opt.zero_grad()

    clipped = kwargs.get("max_grad_norm") is not None
    for i, (p, e) in enumerate(zip(model.parameters(), eager_model.parameters())):
        _assert_same(p, e, clipped, f"param {i}")
        for key, value in eager_opt.state[e].items():
            _assert_same(opt.state[p][key], value, clipped, f"state {key} of param {i}")
    if clipped:
        _assert_same(opt.grad_norm, eager_opt.grad_norm, True, "grad_norm")


def _assert_same(actual, expected, clipped: bool, name: str) -> None:
    if clipped:
        assert_close(actual, expected, rtol=1e-5, atol=1e-7, name=name)
    else:
        assert_bitwise_equal(actual, expected, name=name)


def test_training_step_breaks_only_outside_fusedopt():
    """A whole training step (forward, backward, step, zero_grad) under dynamo: the only graph breaks are
    torch's own (``Tensor.backward``, ``Optimizer.zero_grad``), none inside fusedopt."""
    require_backend("cpu")
    torch._dynamo.reset()
    model = _model("cpu")
    opt = fusedopt.AdamW(model.parameters(), lr=0.01, max_grad_norm=0.05, nonfinite="skip")

    def train_step(step):
        _backward(model, step, "cpu")
        opt.step()
        opt.zero_grad()

    explanation = torch._dynamo.explain(train_step)(0)
    in_fusedopt = [reason for reason in explanation.break_reasons
                   if any("/fusedopt/" in frame.filename for frame in reason.user_stack)]
    assert not in_fusedopt, in_fusedopt
    assert opt.grad_norm is not None and all(s["step"] == 1 for s in opt.state.values())
