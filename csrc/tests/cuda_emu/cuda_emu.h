// An emulated CUDA grid on the CPU, for running csrc/cuda's kernels unchanged as host C++ (g++ -x c++, or a .cpp
// that includes the .cu) with GPU semantics, so that CI without a GPU executes every kernel (see README, "CUDA").
// include/ next to this file stands in for the toolkit's include folder (cuda_runtime.h, cuda_runtime_api.h).
//
// What it models, and checks (a failure becomes the launch's error, which check_launch turns into an exception):
// - a launch runs its blocks one after another, in an order shuffled by a seed (set_seed, or the environment
//   variable FUSEDOPT_CUDA_EMU_SEED; 0 = index order): no kernel may depend on block order;
// - a block's threads are cooperative fibers on their own stacks. A thread runs until it waits at a barrier
//   (__syncthreads, __syncthreads_or/_and/_count) or a warp primitive (__shfl_*_sync, __ballot_sync, ...),
//   which completes when every thread of the block (every lane of the mask) has arrived; the warps run in a
//   seeded order and a warp runs as far as it can before the next one (so a missing barrier shows as stale
//   shared memory). A barrier that cannot complete (threads exited, or waiting elsewhere) is a deadlock report;
// - __shared__ variables are one copy per block (static: blocks run one at a time);
// - limits: threads per block (<= 1024, dims <= 1024 x 1024 x 64), grid dims, the by-value kernel argument size
//   (<= 32764 bytes: CUDA 12.1+ on sm_70+, what chunk_table.h's tables are sized for), trivially copyable
//   arguments, and every 16-/8-byte vector access (multi_tensor.cuh's Pack) at an address aligned to its size;
// - device pointers are host pointers; streams are tokens (a launch completes before it returns).
// Not modelled: the memory model (there are no concurrent threads), timings, __launch_bounds__ (ignored: the
// emulator cannot see it), atomics and textures (unused by the kernels).
#pragma once

#define FUSEDOPT_CUDA_EMU 1

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_emu_api.h"
#include "fusedopt/chunk_table.h"  // kVecElems: the width of multi_tensor.cuh's vector accesses

// Execution and memory spaces: all host code here.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__ static  // one copy shared by the block's threads; blocks run one at a time
#define __restrict__ __restrict

namespace cuda_emu {

struct Index {
  unsigned x, y, z;
};

constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr size_t kMaxParamBytes = 32764;  // CUDA 12.1+, sm_70+ (4096 before)
constexpr int kWarpSize = 32;

// Set by the scheduler before it resumes a thread (emulated launches run one at a time, under a lock).
inline Index g_thread_idx{0, 0, 0}, g_block_idx{0, 0, 0}, g_block_dim{1, 1, 1}, g_grid_dim{1, 1, 1};

// What a GPU would fault on (a misaligned vector access, a bad warp primitive, ...): thrown inside the kernel,
// it stops the launch and becomes the launch's error.
struct Fault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {

enum BarrierKind : int { kSync, kSyncOr, kSyncAnd, kSyncCount };
enum WarpOp : int { kShflDown, kShflUp, kShflXor, kShflIdx, kBallot, kAny, kAll, kSyncWarp };

// Called by the running emulated thread: returns when the barrier / warp primitive completes.
int barrier(int kind, int pred);
uint64_t warp_op(int op, unsigned mask, uint64_t value, int arg, int width);
[[noreturn]] void misaligned(const void* p, size_t bytes);

template <typename T>
uint64_t to_bits(const T& v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffles move up to 8 bytes");
  uint64_t u = 0;
  memcpy(&u, &v, sizeof v);
  return u;
}

template <typename T>
T from_bits(uint64_t u) {
  T v;
  memcpy(&v, &u, sizeof v);
  return v;
}

struct LaunchConfig {
  dim3 grid, block;
  size_t param_bytes;
};
using Body = void (*)(void* ctx);
// Runs body(ctx) once per thread of the grid; on a fault or a bad configuration, sets the last error.
void run_grid(const LaunchConfig& config, Body body, void* ctx);

// Size of the kernel's parameter buffer: each parameter at its alignment, in order (the CUDA ABI's layout).
template <typename... P>
constexpr size_t param_bytes() {
  size_t off = 0;
  ((off = (off + alignof(P) - 1) / alignof(P) * alignof(P) + sizeof(P)), ...);
  return off;
}

}  // namespace detail

// kernel<<<grid, block, 0, stream>>>(args...), emulated (multi_tensor.cuh's launch() calls this).
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "kernel launched with the wrong number of arguments");
  static_assert((std::is_trivially_copyable_v<Params> && ...),
                "kernel arguments are copied bytewise to the device: trivially copyable types only");
  // The parameter memory: one copy, converted as the real launch converts, read by every thread.
  struct Ctx {
    void (*kernel)(Params...);
    std::tuple<Params...> params;
  };
  Ctx ctx{kernel, std::tuple<Params...>(std::forward<Args>(args)...)};
  detail::run_grid({grid, block, detail::param_bytes<Params...>()},
                   [](void* c) {
                     auto* x = static_cast<Ctx*>(c);
                     std::apply(x->kernel, x->params);
                   },
                   &ctx);
}

// A vector of N elements moved as one access that must be aligned to its size (as a GPU's 16-/8-byte loads and
// stores must): multi_tensor.cuh's Pack, below, in the emulated build.
template <typename T, int N>
struct CheckedVector {
  T v[N];

  CheckedVector() = default;
  CheckedVector(const CheckedVector& o) {
    check(&o);
    check(this);
    memcpy(v, o.v, sizeof v);
  }
  CheckedVector& operator=(const CheckedVector& o) {
    check(&o);
    check(this);
    memcpy(v, o.v, sizeof v);
    return *this;
  }

 private:
  static void check(const void* p) {
    if (reinterpret_cast<uintptr_t>(p) % (sizeof(T) * N) != 0) detail::misaligned(p, sizeof(T) * N);
  }
};

}  // namespace cuda_emu

// multi_tensor.cuh's vector type, specialized before its definition for the storage types the kernels use, so that
// every vector load and store checks its alignment (x86 would silently accept a misaligned one).
namespace fusedopt::mt {
template <typename T>
struct Pack;
template <>
struct alignas(sizeof(float) * kVecElems) Pack<float> : ::cuda_emu::CheckedVector<float, kVecElems> {};
template <>
struct alignas(sizeof(uint16_t) * kVecElems) Pack<uint16_t> : ::cuda_emu::CheckedVector<uint16_t, kVecElems> {};
}  // namespace fusedopt::mt

// Built-in variables (read-only) and device functions.
#define threadIdx (static_cast<const ::cuda_emu::Index&>(::cuda_emu::g_thread_idx))
#define blockIdx (static_cast<const ::cuda_emu::Index&>(::cuda_emu::g_block_idx))
#define blockDim (static_cast<const ::cuda_emu::Index&>(::cuda_emu::g_block_dim))
#define gridDim (static_cast<const ::cuda_emu::Index&>(::cuda_emu::g_grid_dim))
#define warpSize (::cuda_emu::kWarpSize)

inline void __syncthreads() { ::cuda_emu::detail::barrier(::cuda_emu::detail::kSync, 1); }
inline int __syncthreads_or(int pred) { return ::cuda_emu::detail::barrier(::cuda_emu::detail::kSyncOr, pred); }
inline int __syncthreads_and(int pred) { return ::cuda_emu::detail::barrier(::cuda_emu::detail::kSyncAnd, pred); }
inline int __syncthreads_count(int pred) {
  return ::cuda_emu::detail::barrier(::cuda_emu::detail::kSyncCount, pred);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::cuda_emu::detail::warp_op(::cuda_emu::detail::kSyncWarp, mask, 0, 0, 32);
}
// One thread runs at a time, so every write is already visible to every other thread.
inline void __threadfence() {}
inline void __threadfence_block() {}

template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  using namespace ::cuda_emu::detail;
  return from_bits<T>(warp_op(kShflDown, mask, to_bits(var), int(delta), width));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  using namespace ::cuda_emu::detail;
  return from_bits<T>(warp_op(kShflUp, mask, to_bits(var), int(delta), width));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  using namespace ::cuda_emu::detail;
  return from_bits<T>(warp_op(kShflXor, mask, to_bits(var), lane_mask, width));
}
template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  using namespace ::cuda_emu::detail;
  return from_bits<T>(warp_op(kShflIdx, mask, to_bits(var), src_lane, width));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return unsigned(::cuda_emu::detail::warp_op(::cuda_emu::detail::kBallot, mask, pred != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int pred) {
  return int(::cuda_emu::detail::warp_op(::cuda_emu::detail::kAny, mask, pred != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int pred) {
  return int(::cuda_emu::detail::warp_op(::cuda_emu::detail::kAll, mask, pred != 0, 0, 32));
}
