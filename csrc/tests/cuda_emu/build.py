"""Builds the Python module fusedopt_cuda_emu (csrc/tests/cuda_emu: csrc/cuda's kernels on an emulated grid, on CPU
tensors) out of place: `python csrc/tests/cuda_emu/build.py OUT_DIR [--sanitize]` puts fusedopt_cuda_emu*.so
in OUT_DIR (objects in OUT_DIR/tmp; ninja rebuilds only what changed). Test-only: setup.py never sees it.

--sanitize: AddressSanitizer + UBSan (alignment excluded: the emulator checks vector alignment itself and raises
an error instead of aborting). Python must then start with libasan preloaded; see the Makefile's
test-cuda-emu-asan.
"""
import argparse
import os
import pathlib
import sys

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = pathlib.Path(__file__).resolve().parent
CSRC = HERE.parents[1]

# kernels_*.cpp: csrc/cuda/norm.cu and the shares of update.cuh (update_*.cu), one translation unit each.
SOURCES = ["module.cpp", "cuda_emu.cpp", *sorted(p.name for p in HERE.glob("kernels_*.cpp"))]
# The CPU ops' floating-point flags (setup.py): math.h's roundings as written, so results equal the CPU op's bits.
# -g0: Python's CFLAGS carry -g, which lengthens the compiles by about a third (setup.py); the sanitized build keeps
# line tables only (-g1), so that ASan's reports still name file and line.
FLAGS = ["-O2", "-g0", "-fno-math-errno", "-ffp-contract=off", "-Wno-unknown-pragmas"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize=alignment", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-g1", "-DCUDA_EMU_SANITIZED"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--sanitize", action="store_true")
    args = parser.parse_args()
    out = args.out.resolve()
    flags = FLAGS + (SANITIZE if args.sanitize else [])
    ext = CppExtension(
        name="fusedopt_cuda_emu",
        sources=[str(HERE / s) for s in SOURCES],
        # include/ (cuda_runtime.h, cuda_runtime_api.h) first: it stands in for the CUDA toolkit.
        include_dirs=[str(HERE / "include"), str(HERE), str(CSRC / "include"), str(CSRC)],
        extra_compile_args={"cxx": flags},
        extra_link_args=SANITIZE[:1] if args.sanitize else [],
    )
    os.chdir(HERE)  # setuptools wants relative paths to stay inside the project: run from here
    setup(name="fusedopt_cuda_emu", ext_modules=[ext], cmdclass={"build_ext": BuildExtension},
          script_args=["--quiet", "build_ext", "--build-lib", str(out), "--build-temp", str(out / "tmp")])


if __name__ == "__main__":
    sys.exit(main())
