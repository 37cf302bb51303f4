"""pytest-benchmark over the same tables as `python -m fusedopt.bench`: every case of every suite, every optimizer,
every implementation (the baseline's ways: torch's for-loop, foreach and fused where torch has them, or
lion-pytorch for Lion; and fusedopt's backends on this device, each as the bare update and as the
clipped, checked step). Before timing, each implementation's first step is checked against torch's for-loop doing
the same job; a row that disagrees fails instead of being timed. Benchmarks are grouped per case, optimizer and
job, so pytest-benchmark's table puts the implementations of one job side by side."""
from __future__ import annotations

import re

import pytest
import torch

from fusedopt.bench import cases, impls, runner

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS, _ = impls.fusedopt_backends(DEVICE)


def pytest_generate_tests(metafunc):
    if "impl" not in metafunc.fixturenames:
        return
    size = metafunc.config.fusedopt_bench_size  # set by bench/conftest.py
    params, ids = [], []
    for suite in cases.SUITES:
        for case in cases.select(suite, quick=size == "quick", full=size == "full"):
            for optim in impls.OPTIMS:
                for impl in impls.impls_for(optim, BACKENDS, DEVICE):
                    params.append((case, impl))
                    ids.append(re.sub(r"[^A-Za-z0-9.-]+", "_", f"{case.name}-{optim}-{impl.name}"))
    metafunc.parametrize(("case", "impl"), params, ids=ids)


_cache: dict[str, tuple] = {}


def _tensors(case: cases.Case):
    """The case's initial params, grads and clip norm, as the runner makes them; only the last case is kept."""
    if case.name not in _cache:
        _cache.clear()
        gen = torch.Generator().manual_seed(0)
        init = [torch.randn(s, generator=gen).mul_(0.02).to(DEVICE) for s in case.shapes]
        grads = [torch.randn(s, generator=gen).to(DEVICE) for s in case.shapes]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) for g in grads]))
        _cache[case.name] = (init, grads, runner.CLIP_FRACTION * float(norm))
    return _cache[case.name]


def _build(impl: impls.Impl, init, grads, max_norm):
    params = [p.clone().requires_grad_() for p in init]
    for p, g in zip(params, grads):
        p.grad = g.clone()  # every row its own: clip_grad_norm_ rewrites them
    return params, impl.setup(params, max_norm)


def test_step(benchmark, case, impl):
    init, grads, max_norm = _tensors(case)
    reference = next(i for i in impls.impls_for(impl.optim, [], DEVICE) if i.name == impls.reference_of(impl))
    ref_params, ref_step = _build(reference, init, grads, max_norm)
    ref_step()
    try:
        params, step = _build(impl, init, grads, max_norm)
    except impls.NoKernel as exc:  # not timing the reference fallback under a kernel's name
        pytest.skip(str(exc))
    step()
    error = runner.compare_updates(init, ref_params, params)
    del ref_params, ref_step
    assert error <= 1.0, f"{impl.name} is wrong: after one step its params differ from {reference.name}'s by " \
                         f"{error:.3g}x the tolerance"
    benchmark.group = f"{case.name} {impl.optim} {impl.job}"
    benchmark.extra_info.update(n_params=case.n_params, n_tensors=case.n_tensors,
                                bytes_per_step=impl.bytes_per_param(case.dtype) * case.n_params)
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else None
    benchmark(lambda: (step(), sync and sync()))
