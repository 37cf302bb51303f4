"""Build of fusedopt's compiled ops, ``fusedopt._C`` (torch.library ops; see csrc/bindings.cpp).

Build switches are environment variables, never properties of the build machine:
  MAX_JOBS=N               parallel compile jobs (ninja; read by torch's BuildExtension)
  FUSEDOPT_CPU_CLONES=0    no runtime-dispatched x86-64-v3 clones of the hot loops (baseline ISA only). On
                           x86-64 the baseline has no FMA instruction, so Adam's lerp becomes a libm fmaf call
                           (same results, Adam ~3x slower end to end); pair it with e.g.
                           FUSEDOPT_CXXFLAGS=-march=x86-64-v3 when the target machines are known.
  FUSEDOPT_CXXFLAGS="..."  extra compiler flags, appended last
Sources are globbed per folder: csrc/cpu/*.cpp now; a CUDA build adds csrc/cuda/*.cu as its own folder.
"""
import glob
import os
import shlex

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(*patterns):
    # Relative paths: setuptools wants them, and they keep object names stable across checkouts.
    return sorted(os.path.relpath(p, ROOT) for pat in patterns for p in glob.glob(os.path.join(ROOT, pat)))


def cxx_flags():
    flags = [
        "-O3",
        "-fopenmp",  # at::parallel_for's OpenMP backend is header code: it needs the pragma compiled in
        "-fno-math-errno",  # lets sqrtf vectorize (errno is never read); results unchanged
        # No fused multiply-add contraction: every operation rounds as written in math.h (whose one fused
        # multiply-add, torch's lerp, is an explicit std::fma), in each clone and in the scalar tail alike, so a
        # result does not depend on the CPU that ran it.
        "-ffp-contract=off",
    ]
    if os.environ.get("FUSEDOPT_CPU_CLONES", "1") == "0":
        flags.append("-DFUSEDOPT_NO_CLONES")
    flags += shlex.split(os.environ.get("FUSEDOPT_CXXFLAGS", ""))
    return flags


def extensions():
    cpu_sources = sources("csrc/bindings.cpp", "csrc/python.cpp", "csrc/cpu/*.cpp")
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
