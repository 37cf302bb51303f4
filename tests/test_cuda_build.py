"""The CUDA backend's host side, which runs without a GPU: setup.py's CUDA switches, backend="cuda" errors, and
(in a CUDA build, as `make test-cuda-build` runs this file) the CUDA ops' argument validation, which happens
before any kernel launch. The kernels themselves are tested in test_cuda.py (GPU only)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusedopt
from fusedopt import ops, rules

ROOT = Path(__file__).resolve().parents[1]


def _setup_py(env: dict) -> subprocess.CompletedProcess:
    """`python setup.py --name` with ``env``: runs setup.py's extension choice without building anything."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("FUSEDOPT_")}
    full.update(env)
    return subprocess.run([sys.executable, str(ROOT / "setup.py"), "--name"], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=120)


def test_setup_rejects_a_bad_cuda_flag():
    result = _setup_py({"FUSEDOPT_CUDA": "yes"})
    assert result.returncode != 0 and "FUSEDOPT_CUDA must be 0 or 1" in result.stderr + result.stdout


def test_setup_cuda_forced_without_the_means_fails_naming_why():
    """FUSEDOPT_CUDA=1 with a CPU-only torch (the main venv), or with no CUDA toolkit where torch looks for it."""
    env = {"FUSEDOPT_CUDA": "1"}
    if torch.version.cuda is None:
        expected = "is a CPU-only build"
    else:
        env.update(CUDA_HOME="/nonexistent-cuda", PATH="/usr/bin:/bin")
        expected = "found no nvcc"
    result = _setup_py(env)
    output = result.stderr + result.stdout
    assert result.returncode != 0, output
    assert "FUSEDOPT_CUDA=1 but the CUDA kernels cannot be built" in output and expected in output, output


def test_setup_cpu_build_unchanged_without_cuda():
    """FUSEDOPT_CUDA=0, or a CPU-only torch with the flag unset: the plain CPU extension (setup.py succeeds)."""
    for env in ({"FUSEDOPT_CUDA": "0"}, {} if torch.version.cuda is None else {"FUSEDOPT_CUDA": "0"}):
        result = _setup_py(env)
        assert result.returncode == 0 and result.stdout.strip().endswith("fusedopt"), result.stderr


def _toolkit() -> str | None:
    """The CUDA toolkit folder torch's cpp_extension found, if it is a real one (make sets CUDA_HOME)."""
    from torch.utils.cpp_extension import CUDA_HOME
    return CUDA_HOME if CUDA_HOME and (Path(CUDA_HOME) / "include" / "cuda_runtime.h").exists() else None


@pytest.mark.skipif(torch.version.cuda is None or _toolkit() is None,
                    reason="the arch list is parsed only for a CUDA build: a CUDA torch and a toolkit (CUDA_HOME)")
def test_setup_rejects_a_bad_arch_list():
    result = _setup_py({"FUSEDOPT_CUDA": "1", "FUSEDOPT_CUDA_ARCHS": "sm_90", "CUDA_HOME": _toolkit()})
    assert result.returncode != 0 and "FUSEDOPT_CUDA_ARCHS must list architectures" in result.stderr + result.stdout


@pytest.mark.skipif(ops.HAS_CUDA_KERNELS or ops.EXTENSION_ERROR is not None,
                    reason="a build without the CUDA kernels is what this checks")
def test_cuda_backend_in_a_cpu_build_is_explained():
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(RuntimeError, match="built without the CUDA kernels.*FUSEDOPT_CUDA=1"):
        fusedopt.AdamW([p], backend="cuda")


# --- a CUDA build: the CUDA ops validate their arguments on the host, before any launch -----------------------

cuda_build = pytest.mark.skipif(not ops.HAS_CUDA_KERNELS, reason="needs the extension built with FUSEDOPT_CUDA=1 "
                                                                 "(make test-cuda-build runs this file so)")


@cuda_build
def test_cuda_ops_are_registered():
    for op in ("check", "update"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedopt::{op}", "CUDA"), op
    assert "cuda" in ops.BACKENDS
    # every rule of fusedopt/rules.py (all twelve algorithms) has its CUDA kernel, the C++ rule list's
    cuda_rules = ops.BACKENDS["cuda"].RULES
    assert cuda_rules == frozenset(ops._C.rules()) == frozenset(rules.RULES), sorted(cuda_rules)


def _adam_args(n: int = 3, **changes) -> dict:
    params = [torch.zeros(5) for _ in range(n)]
    args = dict(params=params, grads=[torch.zeros(5) for _ in range(n)], exp_avgs=[torch.zeros(5) for _ in range(n)],
                exp_avg_sqs=[torch.zeros(5) for _ in range(n)], max_exp_avg_sqs=[], master_params=[],
                steps=[torch.zeros(()) for _ in range(n)], lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8,
                weight_decay=0.0, amsgrad=False, maximize=False, decoupled=False, lr_tensor=None, grad_scale=None,
                clip_coef=None, found_inf=None)
    args.update(changes)
    return args


@cuda_build
@pytest.mark.parametrize("changes,message", [
    (dict(exp_avgs=[torch.zeros(5)]), r"states has 4 entries, expected 6 \(2 state lists \(exp_avgs, exp_avg_sqs\)"),
    (dict(steps=[torch.zeros(())] * 2), r"scalars has 2 entries, expected 3"),
    (dict(grads=[torch.zeros(5), torch.zeros(4), torch.zeros(5)]), r"grads\[1\] has 4 elements but params\[1\]"),
    (dict(exp_avg_sqs=[torch.zeros(5), torch.zeros(5), torch.zeros(5, dtype=torch.bfloat16)]),
     r"exp_avg_sqs\[2\] has dtype BFloat16 but the other states"),
    (dict(master_params=[torch.zeros(5)] * 2), r"master_params has 2 entries, expected 3"),
    (dict(steps=[torch.zeros(()), torch.zeros((), dtype=torch.float64), torch.zeros(())]),
     r"steps\[1\] must be a one-element float32 CPU tensor on cpu"),
    (dict(), r"params\[0\] is on cpu, expected cuda"),
])
def test_cuda_adam_validates_before_launching(changes, message):
    """Errors name the argument and index; CPU tensors given to the CUDA op are refused, not launched on (the
    generic op through the named entry adam_update)."""
    args = _adam_args(**changes)
    with pytest.raises(RuntimeError, match=message):
        ops.BACKENDS["cuda"].adam_update(*args.values())


@cuda_build
def test_cuda_sgd_and_check_refuse_cpu_tensors():
    p = [torch.zeros(4)]
    with pytest.raises(RuntimeError, match=r"params\[0\] is on cpu, expected cuda"):
        ops.BACKENDS["cuda"].sgd_update(p, [torch.zeros(4)], [], [], [], 0.1, 0.0, 0.0, 0.0, False, False, None, None,
                                        None, None)
    with pytest.raises(RuntimeError, match="unknown update rule 'nope'"):
        ops.BACKENDS["cuda"].update("nope", p, [torch.zeros(4)], [], [], [], [], [0.1], 0, False, None, None, None,
                                    None)
    with pytest.raises(RuntimeError, match="check needs at least one grad"):
        ops._C.cuda_check([])
    with pytest.raises(RuntimeError, match=r"grads\[0\] is on cpu, expected cuda"):
        ops._C.cuda_check([torch.zeros(3)])


@cuda_build
def test_cuda_backend_refuses_cpu_params():
    p = torch.nn.Parameter(torch.ones(3))
    opt = fusedopt.AdamW([p], backend="cuda")
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run tensors on device cpu"):
        opt.step()
