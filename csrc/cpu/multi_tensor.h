// Multi-tensor machinery of the CPU kernels: a chunk table over all tensors of a call, a parallel loop over
// it, fp32 block buffers for low-precision storage, and compile-time dispatch of the structural switches.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

#include <ATen/Parallel.h>

#include "fusedopt/math.h"
#include "kernels.h"

// Runtime ISA dispatch (GCC function multiversioning, an ifunc resolved at load time): the hot loops get an
// x86-64-v3 (AVX2/FMA/F16C) clone next to the baseline one. Not install-time sniffing: one binary runs anywhere.
// FUSEDOPT_NO_CLONES (setup.py: FUSEDOPT_CPU_CLONES=0) builds the baseline only.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FUSEDOPT_NO_CLONES)
#define FUSEDOPT_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FUSEDOPT_CLONES
#endif

// The hot loops must be inlined into the cloned segment functions: a helper left out of line is compiled for
// the baseline ISA only.
#if defined(__GNUC__)
#define FUSEDOPT_INLINE inline __attribute__((always_inline))
#define FUSEDOPT_LAMBDA_INLINE __attribute__((always_inline))
#else
#define FUSEDOPT_INLINE inline
#define FUSEDOPT_LAMBDA_INLINE
#endif

namespace fusedopt::cpu {

// Elements per chunk: one parallel work item. Large enough that scheduling costs nothing, small enough that
// a few big tensors still split evenly over the threads. Small tensors share a chunk.
constexpr int64_t kChunkElems = int64_t(1) << 16;
// Elements converted at a time into fp32 stack buffers for bf16/fp16 storage (2 KiB per buffer).
constexpr int64_t kBlockElems = 512;

// ---------------------------------------------------------------------------------------------------------------
// Storage types: how one element is held in memory and converted to fp32.

struct F32 {
  using storage = float;
  static float load(float x) { return x; }
  static float store(float x) { return x; }
};

struct BF16 {
  using storage = uint16_t;
  static float load(uint16_t x) { return bf16_to_float(x); }
  static uint16_t store(float x) { return float_to_bf16(x); }
};

struct F16 {
  using storage = uint16_t;
  static float load(uint16_t x) { return fp16_to_float(x); }
  static uint16_t store(float x) { return float_to_fp16(x); }
};

template <typename S>
FUSEDOPT_INLINE void load_block(const typename S::storage* __restrict__ src, float* __restrict__ dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = S::load(src[i]);
}

template <typename S>
FUSEDOPT_INLINE void store_block(const float* __restrict__ src, typename S::storage* __restrict__ dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = S::store(src[i]);
}

// Runs body(p, g, offset, n) over elements [begin, end) of one param/grad pair with p and g as fp32 arrays:
// the tensors themselves for fp32, else stack buffers converted in and out block by block (g is converted
// back only when the body rewrites it, i.e. when grads are unscaled).
template <typename S, bool WRITE_GRAD, typename Body>
FUSEDOPT_INLINE void for_fp32_blocks(void* param, void* grad, int64_t begin, int64_t end, const Body& body) {
  auto* p = static_cast<typename S::storage*>(param);
  auto* g = static_cast<typename S::storage*>(grad);
  if constexpr (std::is_same_v<S, F32>) {
    body(p + begin, g + begin, begin, end - begin);
  } else {
    alignas(64) float pf[kBlockElems];
    alignas(64) float gf[kBlockElems];
    for (int64_t off = begin; off < end; off += kBlockElems) {
      int64_t n = std::min(kBlockElems, end - off);
      load_block<S>(p + off, pf, n);
      load_block<S>(g + off, gf, n);
      body(pf, gf, off, n);
      store_block<S>(pf, p + off, n);
      if constexpr (WRITE_GRAD) store_block<S>(gf, g + off, n);
    }
  }
}

// The gradient an update rule sees: unscaled under GradScaler (and that value written back through g), then
// clipped and sign-flipped for maximize.
template <bool UNSCALE>
FUSEDOPT_INLINE float take_grad(float& g, float grad_scale, float factor) {
  float x = g;
  if constexpr (UNSCALE) {
    x = unscale_grad(x, grad_scale);
    g = x;
  }
  return prepare_grad(x, factor);
}

// ---------------------------------------------------------------------------------------------------------------
// Compile-time dispatch: f receives a storage tag or a std::bool_constant, so the switches become template
// arguments and the element rules compile without branches.

template <typename F>
inline void with_dtype(Dtype dtype, const F& f) {
  switch (dtype) {
    case Dtype::Float32: f(F32{}); break;
    case Dtype::BFloat16: f(BF16{}); break;
    case Dtype::Float16: f(F16{}); break;
  }
}

template <typename F>
inline void with_bool(bool b, const F& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Chunk table: every tensor cut into segments of at most kChunkElems elements; consecutive segments grouped
// into chunks of about kChunkElems elements. One call covers all tensors in one parallel loop.

struct Segment {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

class ChunkTable {
 public:
  explicit ChunkTable(const std::vector<int64_t>& numels) {
    int64_t filled = 0;
    chunk_first_.push_back(0);
    for (int64_t t = 0; t < int64_t(numels.size()); ++t) {
      for (int64_t b = 0; b < numels[t]; b += kChunkElems) {
        int64_t e = std::min(numels[t], b + kChunkElems);
        segments_.push_back({t, b, e});
        filled += e - b;
        if (filled >= kChunkElems) {
          chunk_first_.push_back(int64_t(segments_.size()));
          filled = 0;
        }
      }
    }
    if (filled > 0) chunk_first_.push_back(int64_t(segments_.size()));
  }

  int64_t num_chunks() const { return int64_t(chunk_first_.size()) - 1; }

  // f(chunk index, segment) for every segment. at::parallel_for's threads take chunks one at a time from a
  // shared counter rather than a fixed half each, so a thread slowed by other load leaves its share to the rest.
  template <typename F>
  void parallel_for_each(const F& f) const {
    std::atomic<int64_t> next{0};
    int64_t workers = std::min<int64_t>(at::get_num_threads(), num_chunks());
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
      for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < num_chunks();
           c = next.fetch_add(1, std::memory_order_relaxed)) {
        for (int64_t s = chunk_first_[c]; s < chunk_first_[c + 1]; ++s) f(c, segments_[s]);
      }
    });
  }

 private:
  std::vector<Segment> segments_;
  std::vector<int64_t> chunk_first_;  // chunk c holds segments [chunk_first_[c], chunk_first_[c + 1])
};

}  // namespace fusedopt::cpu
