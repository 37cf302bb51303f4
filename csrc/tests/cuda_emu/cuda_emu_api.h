// The CUDA runtime API as the emulated build of csrc/cuda sees it (the part kernels.h and the launch code use):
// streams, errors, dim3, float2, double2. Device pointers are host pointers and a stream is only a token: an emulated
// launch runs to completion before it returns. Plain C++, no CUDA toolkit; see cuda_emu.h for the grid itself.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <string>

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,  // a fault inside the kernel (the emulator's report says which)
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

struct alignas(8) float2 {
  float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }

struct alignas(16) double2 {
  double x, y;
};
inline double2 make_double2(double x, double y) { return double2{x, y}; }

namespace cuda_emu {

// The last launch error and its report (the emulator's message names the kernel fault, the block and thread).
void set_error(cudaError_t code, const std::string& message);
cudaError_t take_error();      // cudaGetLastError: returns and clears
cudaError_t peek_error();      // cudaPeekAtLastError
const char* error_string(cudaError_t code);

// Control of the emulation (the Python module exposes these): seed 0 runs blocks and warps in index order, any
// other seed shuffles them, a fresh order per launch; set_seed also restarts the launch count.
void set_seed(uint64_t seed);
uint64_t seed();

struct Stats {
  uint64_t launches = 0;   // kernels run to completion
  uint64_t blocks = 0;     // blocks run
  uint64_t threads = 0;    // threads (fibers) run
  uint64_t switches = 0;   // fiber switches (2 per thread, plus 2 per wait at a barrier or warp primitive)
};
Stats stats();
void reset_stats();

}  // namespace cuda_emu

inline cudaError_t cudaGetLastError() { return cuda_emu::take_error(); }
inline cudaError_t cudaPeekAtLastError() { return cuda_emu::peek_error(); }
inline const char* cudaGetErrorString(cudaError_t code) { return cuda_emu::error_string(code); }
