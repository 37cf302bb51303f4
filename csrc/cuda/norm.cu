// The check pass on CUDA: sum of squares and a non-finite flag over all grads of a call, without atomics. Stage
// one writes one (sum, flag) pair per block into a workspace; stage two, a single block, adds them in a fixed
// order. The same grads give the same bits on every run (the reduction tree depends only on the plan, which
// depends only on the numels). Every element is squared in double (exact for fp32 values) and every addition is
// in double, as in the CPU kernel (csrc/cpu/norm.cpp says why its fp32 result then equals the other backends').
#include <cuda_runtime.h>

#include "fusedopt/multi_tensor.cuh"
#include "dispatch.cuh"
#include "kernels.h"

namespace fusedopt::cuda {
namespace {

using namespace fusedopt::mt;

// Grads only; up to 320 tensors and 1000 chunks (64M elements) per launch, about 14 KiB of kernel argument.
using CheckTable = Table<1, 320, 1000>;

constexpr int kFinishThreads = 1024;

// Fixed-shape tree sum over the block (warp shuffles, then the warps' sums): deterministic.
template <typename T, int THREADS>
__device__ T block_sum(T x) {
  static_assert(THREADS % 32 == 0 && THREADS <= 1024, "whole warps");
  __shared__ T warp_sums[THREADS / 32];
#pragma unroll
  for (int off = 16; off > 0; off /= 2) x += __shfl_down_sync(0xffffffffu, x, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = lane < THREADS / 32 ? warp_sums[lane] : T(0);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) x += __shfl_down_sync(0xffffffffu, x, off);
  }
  return x;  // valid in thread 0
}

template <typename S>
__device__ __forceinline__ void accumulate(const void* base, int64_t n, bool vec, double& sum, bool& bad) {
  for_each_vector(n, [&](int64_t i) {
    Frag x;
    load<S>(x, base, i, n, vec);  // elements past n read as 0: no contribution
#pragma unroll
    for (int k = 0; k < kVecElems; ++k) {
      sum += double(x[k]) * double(x[k]);  // exact product
      bad |= is_nonfinite(x[k]);
    }
  });
}

__global__ void __launch_bounds__(kThreads) check_blocks(const __grid_constant__ CheckTable t, double2* partials) {
  const int b = blockIdx.x;
  const int slot = t.block_slot[b];
  const int64_t begin = t.begin(b), n = t.count(b);
  const bool vec = t.flags[slot] & kFlagVectorized;
  double sum = 0.0;
  bool bad = false;
  switch (Dtype(t.flags[slot] >> kDtypeShift)) {
    case Dtype::Float32: accumulate<F32>(chunk_ptr<F32>(t, 0, slot, begin), n, vec, sum, bad); break;
    case Dtype::BFloat16: accumulate<BF16>(chunk_ptr<BF16>(t, 0, slot, begin), n, vec, sum, bad); break;
    case Dtype::Float16: accumulate<F16>(chunk_ptr<F16>(t, 0, slot, begin), n, vec, sum, bad); break;
  }
  const bool any_bad = __syncthreads_or(bad);
  sum = block_sum<double, kThreads>(sum);
  if (threadIdx.x == 0) partials[t.first_block + b] = make_double2(sum, any_bad ? 1.0 : 0.0);
}

__global__ void __launch_bounds__(kFinishThreads) check_finish(const double2* partials, int64_t blocks, float* out) {
  double sum = 0.0;
  bool bad = false;
  for (int64_t i = threadIdx.x; i < blocks; i += kFinishThreads) {
    const double2 p = partials[i];
    sum += p.x;
    bad |= p.y != 0.0;
  }
  const bool any_bad = __syncthreads_or(bad);
  sum = block_sum<double, kFinishThreads>(sum);
  if (threadIdx.x == 0) {
    out[0] = float(sum);
    out[1] = any_bad ? 1.0f : 0.0f;
  }
}

std::vector<int64_t> numels_of(const std::vector<GradView>& grads) {
  std::vector<int64_t> numels;
  numels.reserve(grads.size());
  for (const GradView& g : grads) numels.push_back(g.numel);
  return numels;
}

}  // namespace

int64_t check_workspace_floats(const std::vector<GradView>& grads) {
  const int64_t blocks = total_blocks(numels_of(grads));
  return 4 * (blocks > 0 ? blocks : 1);  // one double2 per block
}

void check(const std::vector<GradView>& grads, float* workspace, float* out, cudaStream_t stream) {
  const std::vector<int64_t> numels = numels_of(grads);
  auto* partials = reinterpret_cast<double2*>(workspace);  // torch's allocations are 16-byte aligned
  launch_tables<CheckTable>(
      numels,
      [&](int64_t i) {
        const GradView& g = grads[size_t(i)];
        TensorInfo ti{};
        ti.ptrs[0] = const_cast<void*>(g.data);
        ti.numel = g.numel;
        const int bytes = elem_bytes(g.dtype);
        ti.flags = uint8_t(vector_flag(&g.data, &bytes, 1) | (uint8_t(g.dtype) << kDtypeShift));
        return ti;
      },
      [&](const CheckTable& table, int blocks) {
        launch(check_blocks, blocks, kThreads, stream, table, partials);
        check_launch("check_blocks");
      });
  // Also with no elements at all: writes [0, 0].
  launch(check_finish, 1, kFinishThreads, stream, partials, total_blocks(numels), out);
  check_launch("check_finish");
}

}  // namespace fusedopt::cuda
