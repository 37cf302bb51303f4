// csrc/cuda/update_1.cu, unchanged, compiled as host C++ against the emulation (include/cuda_runtime.h).
#include "../../cuda/update_1.cu"
