// Shim for the emulated build of csrc/cuda (csrc/tests/cuda_emu): this folder stands in for the CUDA toolkit's
// include folder.
#pragma once
#include "../cuda_emu_api.h"
