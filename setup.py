"""Build of fusedopt's compiled ops, ``fusedopt._C`` (torch.library ops; see csrc/bindings.cpp).

Build switches are environment variables, never properties of the build machine:
  MAX_JOBS=N               parallel compile jobs (ninja; read by torch's BuildExtension)
  FUSEDOPT_CPU_CLONES=0    no runtime-dispatched x86-64-v3 (AVX2) and x86-64-v4 (AVX-512) variants of the hot
                           loops (baseline ISA only; csrc/cpu/kernels.h). On x86-64 the baseline has no FMA
                           instruction, so math.h's fmas (where torch's kernels fuse: up to 4 per element) become
                           libm fmaf calls (same results, several times slower); pair it with e.g.
                           FUSEDOPT_CXXFLAGS=-march=x86-64-v3 when the target machines are known. (The baseline
                           variant of a default build, run only by CPUs without AVX2/FMA, calls fmaf the same way.)
                           Which variant runs is chosen at run time (FUSEDOPT_CPU_ISA, README).
  FUSEDOPT_CXXFLAGS="..."  extra compiler flags, appended last
  FUSEDOPT_CUDA=1|0        build the CUDA kernels (csrc/cuda) or not. Unset: build them when torch is a CUDA
                           build and nvcc is found (CUDA_HOME or PATH); 1 with either missing fails, naming why.
  FUSEDOPT_CUDA_ARCHS="80;90"  GPU architectures (SASS for each, plus PTX of the last for newer GPUs)
  FUSEDOPT_NVCCFLAGS="..."  extra nvcc flags, appended last
Sources are globbed per folder: csrc/cpu/*.cpp, and for a CUDA build csrc/cuda/*.cpp and csrc/cuda/*.cu.
"""
import glob
import importlib.util
import os
import shlex

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(*patterns):
    # Relative paths: setuptools wants them, and they keep object names stable across checkouts.
    return sorted(os.path.relpath(p, ROOT) for pat in patterns for p in glob.glob(os.path.join(ROOT, pat)))


def cxx_flags():
    flags = [
        "-O3",
        # No debug info: Python's CFLAGS, which torch's build passes first, carry -g, which makes the objects six
        # times larger and the compiles about a third longer (update_*.cpp: 100 s against 134 s on 2 cores).
        # FUSEDOPT_CXXFLAGS=-g (appended last) puts it back.
        "-g0",
        "-fopenmp",  # at::parallel_for's OpenMP backend is header code: it needs the pragma compiled in
        "-fno-math-errno",  # lets sqrtf vectorize (errno is never read); results unchanged
        # No fused multiply-add contraction: every operation rounds as written in math.h (whose fused
        # multiply-adds, where torch's kernels fuse, are explicit std::fma), in each clone and in the scalar tail
        # alike, so a result does not depend on the CPU that ran it.
        "-ffp-contract=off",
    ]
    if os.environ.get("FUSEDOPT_CPU_CLONES", "1") == "0":
        flags.append("-DFUSEDOPT_NO_CLONES")
    flags += shlex.split(os.environ.get("FUSEDOPT_CXXFLAGS", ""))
    return flags


def nvcc_path():
    """nvcc of the toolkit torch will use (CUDA_HOME, else found on PATH by torch), or None."""
    if CUDA_HOME is None:
        return None
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc")
    return nvcc if os.path.exists(nvcc) else None


def build_cuda():
    flag = os.environ.get("FUSEDOPT_CUDA", "")
    if flag not in ("", "0", "1"):
        raise SystemExit(f"FUSEDOPT_CUDA must be 0 or 1, got {flag!r}")
    if flag == "0":
        return False
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)")
    if nvcc_path() is None:
        problems.append(f"torch.utils.cpp_extension found no nvcc (CUDA_HOME="
                        f"{os.environ.get('CUDA_HOME')!r}, PATH)")
    elif not os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_runtime.h")):
        problems.append(f"CUDA_HOME={CUDA_HOME} has no include/cuda_runtime.h: set CUDA_HOME to the toolkit "
                        f"folder of nvcc (e.g. the parent of the bin/ that holds the real nvcc)")
    if flag == "1" and problems:
        raise SystemExit("FUSEDOPT_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(problems))
    return not problems


def cuda_arch_flags():
    archs = [a.strip().replace(".", "") for a in os.environ.get("FUSEDOPT_CUDA_ARCHS", "80;90").split(";")]
    archs = [a for a in archs if a]
    if not archs or not all(a[:2].isdigit() for a in archs):
        raise SystemExit(f"FUSEDOPT_CUDA_ARCHS must list architectures like '80;90', got "
                         f"{os.environ.get('FUSEDOPT_CUDA_ARCHS')!r}")
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    # PTX of the newest listed arch: GPUs newer than the list still run (JIT-compiled by the driver).
    flags.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return flags


def nvcc_flags():
    return [
        "-O3",
        # No fused multiply-add contraction (as -ffp-contract=off for the CPU): math.h's rounding, as written.
        "-fmad=false",
        "-lineinfo",  # source lines in compute-sanitizer reports; no effect on the code
        *cuda_arch_flags(),
        *shlex.split(os.environ.get("FUSEDOPT_NVCCFLAGS", "")),
    ]


def cuda_library_includes():
    """torch's CUDA headers include CUDA library headers (cusparse.h, ...) that CUDA wheels install under
    site-packages/nvidia/cu13/include: searched after the toolkit's own (-idirafter), for the C++ files only (the
    .cu files include no torch header)."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    found = [d for root in roots for d in sorted(glob.glob(os.path.join(root, "cu*", "include")))]
    return [flag for d in found for flag in ("-idirafter", d)]


def extensions():
    cpu_sources = sources("csrc/bindings.cpp", "csrc/python.cpp", "csrc/cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    if build_cuda():
        return [
            CUDAExtension(
                name="fusedopt._C",
                sources=cpu_sources + sources("csrc/cuda/*.cpp", "csrc/cuda/*.cu"),
                include_dirs=include_dirs,
                define_macros=[("FUSEDOPT_CUDA", "1")],
                extra_compile_args={"cxx": cxx_flags() + cuda_library_includes(), "nvcc": nvcc_flags()},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        CppExtension(
            name="fusedopt._C",
            sources=cpu_sources,
            include_dirs=[os.path.join(ROOT, "csrc", "include")],
            extra_compile_args={"cxx": cxx_flags()},
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    name="fusedopt",
    version="0.1.0",
    description="Fused optimizer kernels for PyTorch",
    packages=find_packages(include=["fusedopt", "fusedopt.*"]),
    python_requires=">=3.10",
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension},
)
