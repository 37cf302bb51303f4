// csrc/cuda/adam.cu, unchanged, compiled as host C++ against the emulation (include/cuda_runtime.h).
#include "../../cuda/adam.cu"
