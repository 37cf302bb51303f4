// Native tests of the CUDA emulation (csrc/tests/cuda_emu): its checks fire and its primitives compute what a GPU
// computes. Small kernels written for the test; the fusedopt kernels themselves are tested through Python
// (tests/test_cuda.py, target "cuda-emu").
#include <cuda_runtime.h>

#include <stdio.h>

#include <set>
#include <string>
#include <vector>

#include "expect.h"
#include "fusedopt/multi_tensor.cuh"

namespace {

using fusedopt::mt::launch;

// The error of the last launch: "" when it succeeded.
std::string launch_error() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string(cudaGetErrorString(e));
}

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

template <int THREADS>
__global__ void block_sum(const float* in, float* out) {
  __shared__ float warp_sums[THREADS / 32];
  float x = in[blockIdx.x * THREADS + threadIdx.x];
  for (int off = 16; off > 0; off /= 2) x += __shfl_down_sync(0xffffffffu, x, off);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = x;
  __syncthreads();
  if (threadIdx.x < 32) {
    x = threadIdx.x < THREADS / 32 ? warp_sums[threadIdx.x] : 0.0f;
    for (int off = 16; off > 0; off /= 2) x += __shfl_down_sync(0xffffffffu, x, off);
    if (threadIdx.x == 0) out[blockIdx.x] = x;
  }
}

// block_sum without its __syncthreads: warp 0 reads the other warps' sums before they are written.
template <int THREADS>
__global__ void block_sum_racy(const float* in, float* out) {
  __shared__ float warp_sums[THREADS / 32];
  float x = in[blockIdx.x * THREADS + threadIdx.x];
  for (int off = 16; off > 0; off /= 2) x += __shfl_down_sync(0xffffffffu, x, off);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = x;
  if (threadIdx.x < 32) {
    x = threadIdx.x < THREADS / 32 ? warp_sums[threadIdx.x] : 0.0f;
    for (int off = 16; off > 0; off /= 2) x += __shfl_down_sync(0xffffffffu, x, off);
    if (threadIdx.x == 0) out[blockIdx.x] = x;
  }
}

void test_block_sum_and_race() {
  constexpr int kThreads = 256, kBlocks = 6;
  std::vector<float> in(kThreads * kBlocks);
  for (size_t i = 0; i < in.size(); ++i) in[i] = float(i % 97);
  for (uint64_t seed : {0, 1, 7}) {
    cuda_emu::set_seed(seed);
    std::vector<float> out(kBlocks, -1.0f), racy(kBlocks, -1.0f);
    launch(block_sum<kThreads>, kBlocks, kThreads, nullptr, in.data(), out.data());
    EXPECT(launch_error().empty(), "seed %llu", (unsigned long long)seed);
    launch(block_sum_racy<kThreads>, kBlocks, kThreads, nullptr, in.data(), racy.data());
    EXPECT(launch_error().empty(), "seed %llu", (unsigned long long)seed);
    int stale = 0;
    for (int b = 0; b < kBlocks; ++b) {
      float want = 0;
      for (int t = 0; t < kThreads; ++t) want += in[b * kThreads + t];
      EXPECT(out[b] == want, "block %d: %g != %g", b, out[b], want);
      stale += racy[b] != want;
    }
    EXPECT(stale > 0, "the missing __syncthreads went unnoticed (seed %llu)", (unsigned long long)seed);
  }
}

__global__ void divergent_barrier(int* out) {
  if (threadIdx.x < 40) __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void barrier_then_exit(int* out) {
  if (threadIdx.x == 3) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void shuffle_missing_lane(float* out) {
  float x = 1.0f;
  if (threadIdx.x != 5) x = __shfl_down_sync(0xffffffffu, x, 1);
  else __syncthreads();
  out[threadIdx.x] = x;
}

void test_deadlocks() {
  std::vector<int> out(128);
  launch(divergent_barrier, 1, 128, nullptr, out.data());
  std::string e = launch_error();
  EXPECT(contains(e, "deadlock"), "%s", e.c_str());
  launch(barrier_then_exit, 2, 64, nullptr, out.data());
  e = launch_error();
  EXPECT(contains(e, "deadlock"), "%s", e.c_str());
  std::vector<float> f(64);
  launch(shuffle_missing_lane, 1, 64, nullptr, f.data());
  e = launch_error();
  EXPECT(contains(e, "deadlock"), "%s", e.c_str());
  // The emulator recovers: the next launch runs normally.
  launch(barrier_then_exit, 1, 1, nullptr, out.data());
  EXPECT(launch_error().empty(), "after a deadlock");
}

__global__ void warp_ops(int* out) {
  const int lane = int(threadIdx.x % 32), tid = int(threadIdx.x);
  int* o = out + 6 * tid;
  o[0] = __shfl_down_sync(0xffffffffu, tid, 3, 16);
  o[1] = __shfl_up_sync(0xffffffffu, tid, 2);
  o[2] = __shfl_xor_sync(0xffffffffu, tid, 5, 8);
  o[3] = __shfl_sync(0xffffffffu, tid, 35, 16);
  o[4] = int(__ballot_sync(0xffffffffu, lane % 3 == 0));
  o[5] = __syncthreads_count(lane < 4) * 1000 + __syncthreads_or(tid == 63) * 10 + __syncthreads_and(tid < 64);
}

void test_warp_primitives() {
  std::vector<int> out(6 * 64);
  launch(warp_ops, 1, 64, nullptr, out.data());
  EXPECT(launch_error().empty(), "warp_ops");
  unsigned ballot = 0;
  for (int l = 0; l < 32; ++l) ballot |= (l % 3 == 0 ? 1u : 0u) << l;
  for (int tid = 0; tid < 64; ++tid) {
    const int lane = tid % 32, base = tid - lane;
    const int* o = &out[6 * tid];
    const int seg16 = lane / 16 * 16, seg8 = lane / 8 * 8;
    EXPECT(o[0] == (lane - seg16 + 3 < 16 ? tid + 3 : tid), "down tid %d: %d", tid, o[0]);
    EXPECT(o[1] == (lane >= 2 ? tid - 2 : tid), "up tid %d: %d", tid, o[1]);
    EXPECT(o[2] == ((lane ^ 5) < seg8 + 8 ? base + (lane ^ 5) : tid), "xor tid %d: %d", tid, o[2]);
    EXPECT(o[3] == base + seg16 + 35 % 16, "idx tid %d: %d", tid, o[3]);
    EXPECT(unsigned(o[4]) == ballot, "ballot tid %d: %x", tid, o[4]);
    EXPECT(o[5] == 8 * 1000 + 10 + 1, "barrier results tid %d: %d", tid, o[5]);
  }
}

__global__ void vector_copy(const float* in, float* out) {
  using P = fusedopt::mt::Pack<float>;
  *reinterpret_cast<P*>(out + 4 * threadIdx.x) = *reinterpret_cast<const P*>(in + 4 * threadIdx.x);
}

void test_alignment() {
  alignas(16) float in[64 + 4] = {}, out[64 + 4] = {};
  launch(vector_copy, 1, 16, nullptr, in, out);
  EXPECT(launch_error().empty(), "aligned vector access");
  launch(vector_copy, 1, 16, nullptr, in + 1, out);
  std::string e = launch_error();
  EXPECT(contains(e, "misaligned 16-byte vector access"), "%s", e.c_str());
  launch(vector_copy, 1, 16, nullptr, in, out + 2);
  e = launch_error();
  EXPECT(contains(e, "misaligned 16-byte vector access"), "%s", e.c_str());
}

struct Big {
  char bytes[32760];
};
__global__ void big_argument(Big b, int* out) { out[0] = b.bytes[0]; }
__global__ void record_block(int* order, int* next) { order[(*next)++] = int(blockIdx.x); }

void test_limits_and_order() {
  std::vector<int> out(2048);
  launch(divergent_barrier, 1, 1025, nullptr, out.data());
  std::string e = launch_error();
  EXPECT(contains(e, "invalid configuration"), "1025 threads: %s", e.c_str());
  launch(divergent_barrier, 0, 32, nullptr, out.data());
  EXPECT(contains(launch_error(), "invalid configuration"), "empty grid");
  static Big big{};
  launch(big_argument, 1, 1, nullptr, big, out.data());  // 32760 + 8 bytes at 8-byte alignment: 32768
  e = launch_error();
  EXPECT(contains(e, "exceed CUDA's limit of 32764"), "%s", e.c_str());
  EXPECT((cuda_emu::detail::param_bytes<char, double, int>() == 20), "param layout");

  // Seed 0: index order; other seeds: a permutation, another one per launch and per seed.
  std::set<std::vector<int>> orders;
  for (uint64_t seed : {0, 0, 1, 2}) {
    cuda_emu::set_seed(seed);
    for (int rep = 0; rep < 2; ++rep) {
      std::vector<int> order(64, -1);
      int next = 0;
      launch(record_block, 64, 1, nullptr, order.data(), &next);
      EXPECT(launch_error().empty() && next == 64, "record_block");
      std::vector<int> sorted = order;
      std::sort(sorted.begin(), sorted.end());
      for (int i = 0; i < 64; ++i) EXPECT(sorted[i] == i, "a permutation");
      if (seed == 0) {
        for (int i = 0; i < 64; ++i) EXPECT(order[i] == i, "seed 0 runs blocks in order");
      }
      orders.insert(order);
    }
  }
  EXPECT(orders.size() == 5, "distinct orders: %zu", orders.size());
  cuda_emu::set_seed(1);
}

}  // namespace

int main() {
  test_block_sum_and_race();
  test_deadlocks();
  test_warp_primitives();
  test_alignment();
  test_limits_and_order();
  const cuda_emu::Stats s = cuda_emu::stats();
  printf("test_cuda_emu: %d failures (%llu launches, %llu blocks, %llu threads, %llu switches)\n", failures,
         (unsigned long long)s.launches, (unsigned long long)s.blocks, (unsigned long long)s.threads,
         (unsigned long long)s.switches);
  return failures == 0 ? 0 : 1;
}
