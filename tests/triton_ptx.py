"""Compiles the Triton kernels for a CUDA target (sm_90) without a GPU and prints facts about their PTX as JSON:
run by test_triton.py in a process of its own, without TRITON_INTERPRET (the kernels must be real JIT functions
there). Triton's bundled ptxas assembles the PTX too, so this is the compiler's full path short of a launch."""
import json
import os
import re

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fusedopt.triton import _multi_tensor as mt  # noqa: E402
from fusedopt.triton import adam, norm, sgd  # noqa: E402

# Types of the runtime (non-constexpr) arguments; tables are int64, everything else here fp32 tensors.
_TYPES = {"records": "*i64", "work": "*i64", "n_tensors": "i32", "n_partials": "i32",
          **{name: "fp64" for name in ("lr", "beta1", "beta2", "eps", "weight_decay", "momentum", "dampening")}}

CASES = {
    "adam_bf16_master_amsgrad": (adam._adam_kernel, dict(
        P_KIND=1, S_KIND=1, HAS_MASTER=True, HAS_LR_TENSOR=True, HAS_GRAD_SCALE=True, HAS_CLIP=True,
        HAS_FOUND_INF=True, AMSGRAD=True, MAXIMIZE=True, DECOUPLED=True, RECORD=8, BLOCK=mt.BLOCK_GPU)),
    "adam_steps": (adam._adam_steps_kernel, dict(HAS_LR_TENSOR=False, HAS_FOUND_INF=True, RECORD=8,
                                                 TENSOR_BLOCK=mt.TENSOR_BLOCK)),
    "sgd_fp32_nesterov": (sgd._sgd_kernel, dict(
        P_KIND=0, S_KIND=0, HAS_MASTER=False, HAS_LR_TENSOR=False, HAS_GRAD_SCALE=True, HAS_CLIP=True,
        HAS_FOUND_INF=True, HAS_MOMENTUM=True, NESTEROV=True, MAXIMIZE=False, RECORD=6, BLOCK=mt.BLOCK_GPU)),
    "check_partials_fp16": (norm._partials_kernel, dict(G_KIND=2, RECORD=2, BLOCK=mt.BLOCK_GPU)),
    "check_reduce": (norm._reduce_kernel, dict(BLOCK=1024)),
}


def compile_case(kernel, constexprs: dict):
    names = [p.name for p in kernel.params]
    signature = {n: "constexpr" if n in constexprs else _TYPES.get(n, "*fp32") for n in names}
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(names.index(n),): v for n, v in constexprs.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": mt.NUM_WARPS, "enable_fp_fusion": False})


def facts(ptx: str) -> dict:
    count = lambda pattern: len(re.findall(pattern, ptx))  # noqa: E731
    return {"fma_f32": count(r"\bfma\.rn\.f32\b"), "div_rn_f32": count(r"\bdiv\.rn\.f32\b"),
            "div_approx": count(r"\bdiv\.(full|approx)\.f32\b"), "sqrt_rn_f32": count(r"\bsqrt\.rn\.f32\b"),
            "sqrt_approx": count(r"\bsqrt\.approx\.f32\b"), "rcp_approx": count(r"\brcp\.approx"),
            "fp64_sqrt": count(r"\bsqrt\.rn\.f64\b"), "elements_per_thread": mt.BLOCK_GPU // (32 * mt.NUM_WARPS)}


if __name__ == "__main__":
    print(json.dumps({name: facts(compile_case(k, c).asm["ptx"]) for name, (k, c) in CASES.items()}))
