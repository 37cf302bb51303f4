// Multi-tensor machinery of the CPU kernels: a chunk table over all tensors of a call, a parallel loop over
// it, fp32 block buffers for low-precision storage, and compile-time dispatch of the structural switches (used
// by the generic update loop, update.h, and the check pass, norm.cpp).
#pragma once

#include <stdint.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <type_traits>
#include <utility>
#include <vector>

#include <ATen/Parallel.h>

#include "fusedopt/math.h"
#include "kernels.h"

// The hot loops must be inlined into the ISA variants' functions (with_isa below): a helper left out of line
// is compiled for the baseline ISA only.
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

// Master remainders (bf16 params, master_weights="remainder"): the fp32 master of each element from its bf16
// param and int16 remainder, and back (math.h's join_bf16/split_bf16).
FUSEDOPT_INLINE void join_block(const uint16_t* __restrict__ hi, const int16_t* __restrict__ lo,
                                float* __restrict__ dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = join_bf16(hi[i], lo[i]);
}

FUSEDOPT_INLINE void split_block(const float* __restrict__ src, uint16_t* __restrict__ hi, int16_t* __restrict__ lo,
                                 int64_t n) {
  for (int64_t i = 0; i < n; ++i) split_bf16(src[i], hi[i], lo[i]);
}

// fp32 values stored as bf16, rounded stochastically (math.h): dst[i] is element first + i of its param. Whole
// quads take one Philox call for four elements; a block starts on a quad (chunks and blocks are multiples of 4
// elements), and the per-element form, the same bits, covers any other start and the tail. The quad loop is
// vectorized across quads (GCC unrolls the ten rounds: 8 quads per 256-bit vector in x86-64-v3, 16 in x86-64-v4),
// so the Philox calls already run side by side, one counter per lane.
FUSEDOPT_INLINE void store_block_stochastic(const float* __restrict__ src, uint16_t* __restrict__ dst, int64_t n,
                                            const RoundingKey& key, int64_t first) {
  int64_t i = 0;
  if (first % 4 == 0) {
    for (; i + 4 <= n; i += 4) {
      uint32_t r[4];
      rounding_bits4(key, uint64_t(first + i) >> 2, r);
      for (int k = 0; k < 4; ++k) dst[i + k] = float_to_bf16_stochastic(src[i + k], r[k]);
    }
  }
  for (; i < n; ++i) dst[i] = float_to_bf16_stochastic(src[i], rounding_bits(key, uint64_t(first + i)));
}

// The memory of one param's update: its param and grad (storage S), an optional master (an fp32 copy, or for
// bf16 params an int16 remainder), and NSTATES states (fp32 or bf16, one dtype per call; nullptr for a state the
// rule does not use).
template <size_t NSTATES>
struct ParamSpan {
  void* param;
  void* grad;
  float* master;       // nullptr: no fp32 copy
  int16_t* remainder;  // nullptr: no remainder; else the value is join_bf16(param, remainder)
  std::array<void*, NSTATES> states;
  const RoundingKey* rounding;  // bf16 params rounded stochastically with this key; nullptr: to nearest even
};

// Runs body(p, g, states, n) over elements [begin, end) of one param with every array as fp32: fp32 tensors in
// place, anything else through stack buffers converted in and out block by block (g is converted back only
// when the body rewrites it, i.e. when grads are unscaled). With a master copy the value is read from and
// written to the master, and the param receives the new value rounded to S (to nearest even, or for bf16 with
// a.rounding stochastically) in the same pass; with a remainder (bf16 only) the value is joined from param and
// remainder and split back into both.
// The all-fp32 case runs as one block, so its loop is the plain vectorized kernel.
template <typename S, bool WRITE_GRAD, size_t NSTATES, typename Body>
FUSEDOPT_INLINE void for_fp32_blocks(const ParamSpan<NSTATES>& a, bool bf16_states, int64_t begin, int64_t end,
                                     const Body& body) {
  constexpr bool kF32 = std::is_same_v<S, F32>;
  const bool remainder = std::is_same_v<S, BF16> && a.remainder != nullptr;  // validated: bf16 params only
  auto* p = static_cast<typename S::storage*>(a.param);
  auto* g = static_cast<typename S::storage*>(a.grad);
  const int64_t block = kF32 && !bf16_states ? end - begin : kBlockElems;
  alignas(64) float pf[kF32 ? 1 : kBlockElems];
  alignas(64) float gf[kF32 ? 1 : kBlockElems];
  alignas(64) float sf[NSTATES][kBlockElems];
  for (int64_t off = begin; off < end; off += block) {
    const int64_t n = std::min(block, end - off);
    float* pw = a.master != nullptr ? a.master + off : pf;
    float* gw = gf;
    if constexpr (kF32) {
      if (a.master == nullptr) pw = p + off;
      gw = g + off;
    } else {
      if (remainder) {
        join_block(p + off, a.remainder + off, pf, n);
      } else if (a.master == nullptr) {
        load_block<S>(p + off, pf, n);
      }
      load_block<S>(g + off, gf, n);
    }
    std::array<float*, NSTATES> sw{};
    for (size_t k = 0; k < NSTATES; ++k) {
      if (a.states[k] == nullptr) continue;
      if (bf16_states) {
        load_block<BF16>(static_cast<uint16_t*>(a.states[k]) + off, sf[k], n);
        sw[k] = sf[k];
      } else {
        sw[k] = static_cast<float*>(a.states[k]) + off;
      }
    }
    body(pw, gw, sw, n);
    if constexpr (std::is_same_v<S, BF16>) {
      if (remainder) {
        split_block(pw, p + off, a.remainder + off, n);
      } else if (a.rounding != nullptr) {
        store_block_stochastic(pw, p + off, n, *a.rounding, off);
      } else {
        store_block<S>(pw, p + off, n);
      }
    } else if (a.master != nullptr || !kF32) {
      store_block<S>(pw, p + off, n);
    }
    if constexpr (WRITE_GRAD && !kF32) store_block<S>(gf, g + off, n);
    if (bf16_states) {
      for (size_t k = 0; k < NSTATES; ++k) {
        if (a.states[k] != nullptr) store_block<BF16>(sf[k], static_cast<uint16_t*>(a.states[k]) + off, n);
      }
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
// Runtime ISA dispatch: one binary runs anywhere, no install-time sniffing. with_isa(isa, f) runs f, an
// always-inline lambda holding a whole segment's loops, inlined into a function compiled for that ISA (GCC
// target attributes), so each variant's loops are vectorized for its registers from the one source. Not GCC's
// target_clones: its load-time resolver cannot be overridden, and tests run every variant on one machine
// (kernels.h: set_isa). The caller reads active_isa() once per call. 512-bit vectors are asked for explicitly:
// GCC 12's generic tuning uses them for arch=x86-64-v4, but a tuning such as -mtune=skylake-avx512 (e.g. from
// FUSEDOPT_CXXFLAGS) prefers 256-bit ones, and then the x86-64-v4 loops compiled to ymm only.
#ifdef FUSEDOPT_ISA_VARIANTS
template <typename F>
__attribute__((target("arch=x86-64-v3"))) void run_x86_64_v3(const F& f) {
  f();
}

template <typename F>
__attribute__((target("arch=x86-64-v4,prefer-vector-width=512"))) void run_x86_64_v4(const F& f) {
  f();
}
#endif

template <typename F>
FUSEDOPT_INLINE void with_isa([[maybe_unused]] Isa isa, const F& f) {
#ifdef FUSEDOPT_ISA_VARIANTS
  switch (isa) {
    case Isa::V4: return run_x86_64_v4(f);
    case Isa::V3: return run_x86_64_v3(f);
    case Isa::Baseline: break;
  }
#endif
  f();
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

template <typename F, uint32_t... SW>
inline void with_switches(uint32_t sw, const F& f, std::integer_sequence<uint32_t, SW...>) {
  ((sw == SW ? (f(std::integral_constant<uint32_t, SW>{}), 0) : 0), ...);
}

// f(std::integral_constant<uint32_t, sw>): a rule's switches (math.h, Rule::switches) as a template argument.
template <int BITS, typename F>
inline void with_switches(uint32_t sw, const F& f) {
  with_switches(sw, f, std::make_integer_sequence<uint32_t, (uint32_t(1) << BITS)>{});
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
