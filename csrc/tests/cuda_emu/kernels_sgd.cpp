// csrc/cuda/sgd.cu, unchanged, compiled as host C++ against the emulation (include/cuda_runtime.h).
#include "../../cuda/sgd.cu"
