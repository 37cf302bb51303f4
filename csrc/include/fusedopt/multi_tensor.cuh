// Device side of the multi-tensor launcher: one thread block per chunk of the table built by chunk_table.h,
// element access through fp32 registers (vectorized when the tensor's pointers allow it), and the host loop
// that launches one kernel per filled table. Used by csrc/cuda/*.cu only: compiled by nvcc, or as host C++ against
// the CUDA emulation of csrc/tests/cuda_emu (its cuda_runtime.h defines FUSEDOPT_CUDA_EMU).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "fusedopt/chunk_table.h"
#include "fusedopt/math.h"

namespace fusedopt::mt {

// Threads per block. Each thread moves kVecElems elements per iteration: 32 iterations per 64K chunk.
constexpr int kThreads = 512;

// ---------------------------------------------------------------------------------------------------------------
// Storage types: an element in memory and its fp32 value (the conversions are math.h's, so CPU and CUDA round
// identically).

struct F32 {
  using storage = float;
  __device__ static float load(float x) { return x; }
  __device__ static float store(float x) { return x; }
};

struct BF16 {
  using storage = uint16_t;
  __device__ static float load(uint16_t x) { return bf16_to_float(x); }
  __device__ static uint16_t store(float x) { return float_to_bf16(x); }
};

struct F16 {
  using storage = uint16_t;
  __device__ static float load(uint16_t x) { return fp16_to_float(x); }
  __device__ static uint16_t store(float x) { return float_to_fp16(x); }
};

// kVecElems elements moved as one aligned access (16 bytes for fp32, 8 for bf16/fp16).
template <typename T>
struct alignas(sizeof(T) * kVecElems) Pack {
  T v[kVecElems];
};

// Registers of one thread: kVecElems consecutive elements as fp32.
using Frag = float[kVecElems];

// Loads elements [i, i + kVecElems) of `base` (n elements) as fp32; those at or past n read as 0. One vector
// load when the tensor is vector-aligned (vec) and the whole vector is in range, else one load per element.
template <typename S>
__device__ __forceinline__ void load(Frag& out, const void* base, int64_t i, int64_t n, bool vec) {
  const auto* p = static_cast<const typename S::storage*>(base) + i;
  if (vec && i + kVecElems <= n) {
    const Pack<typename S::storage> pk = *reinterpret_cast<const Pack<typename S::storage>*>(p);
#pragma unroll
    for (int k = 0; k < kVecElems; ++k) out[k] = S::load(pk.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < kVecElems; ++k) out[k] = i + k < n ? S::load(p[k]) : 0.0f;
  }
}

// Stores elements [i, i + kVecElems) that are below n.
template <typename S>
__device__ __forceinline__ void store(void* base, const Frag& in, int64_t i, int64_t n, bool vec) {
  auto* p = static_cast<typename S::storage*>(base) + i;
  if (vec && i + kVecElems <= n) {
    Pack<typename S::storage> pk;
#pragma unroll
    for (int k = 0; k < kVecElems; ++k) pk.v[k] = S::store(in[k]);
    *reinterpret_cast<Pack<typename S::storage>*>(p) = pk;
  } else {
#pragma unroll
    for (int k = 0; k < kVecElems; ++k) {
      if (i + k < n) p[k] = S::store(in[k]);
    }
  }
}

// bf16 params with master remainders (master_weights="remainder"): elements [i, i + kVecElems) of the fp32 master
// joined from the bf16 param and its int16 remainder (math.h's join_bf16; past n: 0), and split back into both.
__device__ __forceinline__ void load_joined(Frag& out, const void* param, const void* rem, int64_t i, int64_t n,
                                            bool vec) {
  const auto* p = static_cast<const uint16_t*>(param) + i;
  const auto* r = static_cast<const int16_t*>(rem) + i;
  if (vec && i + kVecElems <= n) {
    const Pack<uint16_t> pk = *reinterpret_cast<const Pack<uint16_t>*>(p);
    const Pack<int16_t> rk = *reinterpret_cast<const Pack<int16_t>*>(r);
#pragma unroll
    for (int k = 0; k < kVecElems; ++k) out[k] = join_bf16(pk.v[k], rk.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < kVecElems; ++k) out[k] = i + k < n ? join_bf16(p[k], r[k]) : 0.0f;
  }
}

__device__ __forceinline__ void store_split(void* param, void* rem, const Frag& in, int64_t i, int64_t n, bool vec) {
  auto* p = static_cast<uint16_t*>(param) + i;
  auto* r = static_cast<int16_t*>(rem) + i;
  if (vec && i + kVecElems <= n) {
    Pack<uint16_t> pk;
    Pack<int16_t> rk;
#pragma unroll
    for (int k = 0; k < kVecElems; ++k) split_bf16(in[k], pk.v[k], rk.v[k]);
    *reinterpret_cast<Pack<uint16_t>*>(p) = pk;
    *reinterpret_cast<Pack<int16_t>*>(r) = rk;
  } else {
#pragma unroll
    for (int k = 0; k < kVecElems; ++k) {
      if (i + k < n) split_bf16(in[k], p[k], r[k]);
    }
  }
}

// A chunk's element offsets for this thread: body(i) for i = its first element of each vector. The chunk base
// pointer already holds the 64-bit offset of the chunk; offsets within it fit easily.
template <typename Body>
__device__ __forceinline__ void for_each_vector(int64_t n, const Body& body) {
  for (int64_t i = int64_t(threadIdx.x) * kVecElems; i < n; i += int64_t(blockDim.x) * kVecElems) body(i);
}

// The chunk of block b in pointer list d, as a byte-typed base advanced by the chunk's 64-bit element offset.
template <typename S, typename TableT>
__device__ __forceinline__ void* chunk_ptr(const TableT& t, int d, int slot, int64_t begin) {
  return static_cast<typename S::storage*>(t.ptrs[d][slot]) + begin;
}

// Reads an optional device scalar (nullptr: absent).
__device__ __forceinline__ float read_or(const float* p, float fallback) { return p != nullptr ? *p : fallback; }

// True when the optimizer step is skipped (GradScaler's or the non-finite check's found_inf is non-zero).
__device__ __forceinline__ bool skipped(const float* found_inf) { return found_inf != nullptr && *found_inf != 0.0f; }

// ---------------------------------------------------------------------------------------------------------------
// Host: one launch per filled table. `info(t)` describes tensor t (chunk_table.h's TensorInfo);
// `launch_table(table, blocks)` starts the kernel on the caller's stream.

// Every kernel launch of csrc/cuda goes through here: `<<<grid, block, 0, stream>>>` under nvcc, the emulated grid
// of csrc/tests/cuda_emu (blocks in a shuffled order, threads as fibers, limits checked) in the emulated build.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
#ifdef FUSEDOPT_CUDA_EMU
  ::cuda_emu::launch(kernel, grid, block, stream, std::forward<Args>(args)...);
#else
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
#endif
}

// A failed launch (bad configuration, or an earlier asynchronous error) as an exception naming the kernel; the
// dispatcher turns it into a Python RuntimeError.
inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("fusedopt: CUDA kernel ") + kernel + " failed to launch: " +
                             cudaGetErrorString(err));
  }
}

template <typename TableT, typename InfoFn, typename LaunchFn>
void launch_tables(const std::vector<int64_t>& numels, const InfoFn& info, const LaunchFn& launch_table) {
  for (const LaunchPlan& plan : plan_launches(numels, TableT::kMaxTensors, TableT::kMaxBlocks)) {
    TableT table;
    const int blocks = fill_table(table, plan, info);
    launch_table(table, blocks);
  }
}

}  // namespace fusedopt::mt
