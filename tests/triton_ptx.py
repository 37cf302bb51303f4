"""Compiles the Triton kernels for a CUDA target (sm_90) without a GPU and prints facts about their PTX as JSON:
run by test_triton.py in a process of its own, without TRITON_INTERPRET (the kernels must be real JIT functions
there). Triton's bundled ptxas assembles the PTX too, so this is the compiler's full path short of a launch; its
bundled cuobjdump disassembles the result (register spills)."""
import importlib
import json
import os
import pathlib
import re
import subprocess
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
import triton.backends.nvidia  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fusedopt.triton import _multi_tensor as mt  # noqa: E402
from fusedopt.triton import norm, rules  # noqa: E402

# The module (the package's `update` is its launcher function).
update = importlib.import_module("fusedopt.triton.update")

# Types of the runtime (non-constexpr) arguments; tables are int64, hyperparameters fp64, everything else here
# fp32 tensors.
_TYPES = {"records": "*i64", "work": "*i64", "n_tensors": "i32", "n_partials": "i32",
          **{f"h{k}": "fp64" for k in range(rules.MAX_HYPER)},
          "rounding_step_ptr": "*i64", "seed_lo": "i64", "seed_hi": "i64"}  # stochastic rounding


def _update_case(rule, flags, used, **constexprs):
    r = rules.RULES[rule]
    constexprs.setdefault("REMAINDER", False)
    return update._update_kernel, dict(
        HYPER=r.hyper, ELEMENT=r.element, FLAGS=flags, USED=used, N_STATES=len(r.rule.states),
        N_COEFS=len(r.coefficients), TAKES_FIRST=r.rule.takes_is_first,
        RECORD=update._record_size(r.rule, bool(constexprs.get("STOCHASTIC", 0))),
        RELOAD=update.reload_addresses(constexprs["HAS_MASTER"], bin(used).count("1")), BLOCK=mt.BLOCK_GPU,
        **{"STOCHASTIC": 0, **constexprs})


CASES = {
    "adam_bf16_master_amsgrad": _update_case(
        "adam", flags=3, used=7, P_KIND=1, S_KIND=1, HAS_MASTER=True, HAS_LR_TENSOR=True, HAS_GRAD_SCALE=True,
        HAS_CLIP=True, HAS_FOUND_INF=True, MAXIMIZE=True),  # amsgrad, decoupled; all three states
    # bf16 params with master remainders (master_weights="remainder"): join and split instead of a master's loads.
    "adam_bf16_remainder_amsgrad": _update_case(
        "adam", flags=3, used=7, P_KIND=1, S_KIND=1, HAS_MASTER=True, REMAINDER=True, HAS_LR_TENSOR=True,
        HAS_GRAD_SCALE=True, HAS_CLIP=True, HAS_FOUND_INF=True, MAXIMIZE=True),
    # Six tensors per element, the most of any update (addresses computed again for the stores: no spills).
    "adam_fp32_master_amsgrad": _update_case(
        "adam", flags=1, used=7, P_KIND=0, S_KIND=0, HAS_MASTER=True, HAS_LR_TENSOR=False, HAS_GRAD_SCALE=False,
        HAS_CLIP=True, HAS_FOUND_INF=True, MAXIMIZE=False),
    "adamw_fp32": _update_case(
        "adam", flags=2, used=3, P_KIND=0, S_KIND=0, HAS_MASTER=False, HAS_LR_TENSOR=False, HAS_GRAD_SCALE=False,
        HAS_CLIP=True, HAS_FOUND_INF=True, MAXIMIZE=False),
    "adam_steps": (update._per_tensor_kernel, dict(
        PER_TENSOR=rules.ADAM.per_tensor, N_STATES=3, N_SCALARS=1, N_COEFS=2, TAKES_FIRST=False,
        HAS_LR_TENSOR=False, HAS_FOUND_INF=True, STOCHASTIC=0, RECORD=update._record_size(rules.ADAM.rule),
        TENSOR_BLOCK=mt.TENSOR_BLOCK)),
    # Stochastic rounding of bf16 params (Philox per element), with bf16 states and the step's other options.
    "adamw_bf16_stochastic": _update_case(
        "adam", flags=2, used=3, P_KIND=1, S_KIND=1, HAS_MASTER=False, HAS_LR_TENSOR=True, HAS_GRAD_SCALE=True,
        HAS_CLIP=True, HAS_FOUND_INF=True, MAXIMIZE=False, STOCHASTIC=1),
    "sgd_bf16_momentum_stochastic": _update_case(
        "sgd", flags=1, used=1, P_KIND=1, S_KIND=0, HAS_MASTER=False, HAS_LR_TENSOR=False, HAS_GRAD_SCALE=False,
        HAS_CLIP=True, HAS_FOUND_INF=True, MAXIMIZE=False, STOCHASTIC=1),
    "sgd_fp32_nesterov": _update_case(
        "sgd", flags=1, used=1, P_KIND=0, S_KIND=0, HAS_MASTER=False, HAS_LR_TENSOR=False, HAS_GRAD_SCALE=True,
        HAS_CLIP=True, HAS_FOUND_INF=True, MAXIMIZE=False),
    "check_partials_fp16": (norm._partials_kernel, dict(G_KIND=2, RECORD=2, BLOCK=mt.BLOCK_GPU)),
    "check_reduce": (norm._reduce_kernel, dict(BLOCK=1024)),
}


def _per_tensor_case(rule):
    r = rules.RULES[rule]
    return update._per_tensor_kernel, dict(
        PER_TENSOR=r.per_tensor, N_STATES=len(r.rule.states), N_SCALARS=len(r.rule.scalars),
        N_COEFS=len(r.coefficients), TAKES_FIRST=r.rule.takes_is_first, HAS_LR_TENSOR=True, HAS_FOUND_INF=True,
        STOCHASTIC=0, RECORD=update._record_size(r.rule), TENSOR_BLOCK=mt.TENSOR_BLOCK)


# NAdam, RAdam, Adadelta, Rprop, ASGD (issue 12 part 2): every flag on, bf16 params with masters and bf16 states
# (the most tensors and conversions), and each rule's per-tensor pass (float64 exp/log/sqrt from libdevice).
for _rule in ("nadam", "radam", "adadelta", "rprop", "asgd"):
    _r = rules.RULES[_rule]
    CASES[f"{_rule}_bf16_master"] = _update_case(
        _rule, flags=(1 << len(_r.rule.flags)) - 1, used=(1 << len(_r.rule.states)) - 1, P_KIND=1, S_KIND=1,
        HAS_MASTER=True, HAS_LR_TENSOR=True, HAS_GRAD_SCALE=True, HAS_CLIP=True, HAS_FOUND_INF=True, MAXIMIZE=True)
    CASES[f"{_rule}_steps"] = _per_tensor_case(_rule)


def compile_case(kernel, constexprs: dict):
    names = [p.name for p in kernel.params]
    signature = {n: "constexpr" if n in constexprs else _TYPES.get(n, "*fp32") for n in names}
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(names.index(n),): v for n, v in constexprs.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": mt.NUM_WARPS, "enable_fp_fusion": False})


_CUOBJDUMP = pathlib.Path(triton.backends.nvidia.__file__).parent / "bin" / "cuobjdump"


def spills(cubin: bytes) -> int:
    """Local-memory loads and stores in the machine code: ptxas's register spills."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([str(_CUOBJDUMP), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    return len(re.findall(r"\b(LDL|STL)\b", sass))


def facts(compiled) -> dict:
    ptx = compiled.asm["ptx"]
    count = lambda pattern: len(re.findall(pattern, ptx))  # noqa: E731
    return {"spills": spills(compiled.asm["cubin"]),
            "fma_f32": count(r"\bfma\.rn\.f32\b"), "div_rn_f32": count(r"\bdiv\.rn\.f32\b"),
            "div_approx": count(r"\bdiv\.(full|approx)\.f32\b"), "sqrt_rn_f32": count(r"\bsqrt\.rn\.f32\b"),
            "sqrt_approx": count(r"\bsqrt\.approx\.f32\b"),
            # float32 only: libdevice's float64 log (ASGD's per-tensor power) seeds with rcp.approx.f64 and
            # refines it with fma steps to its documented accuracy
            "rcp_approx": count(r"\brcp\.approx(\.ftz)?\.f32\b"),
            "fp64_sqrt": count(r"\bsqrt\.rn\.f64\b"), "elements_per_thread": mt.BLOCK_GPU // (32 * mt.NUM_WARPS)}


if __name__ == "__main__":
    print(json.dumps({name: facts(compile_case(k, c)) for name, (k, c) in CASES.items()}))
