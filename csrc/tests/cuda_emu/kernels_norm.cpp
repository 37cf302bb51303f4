// csrc/cuda/norm.cu, unchanged, compiled as host C++ against the emulation (include/cuda_runtime.h).
#include "../../cuda/norm.cu"
