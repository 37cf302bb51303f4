// The check pass: global sum of squares and a non-finite flag over all grads, one parallel loop.
#include <string.h>

#include <algorithm>

#include "fusedopt/math.h"
#include "kernels.h"
#include "multi_tensor.h"

namespace fusedopt::cpu {
namespace {

// 16 independent double partial sums in four 4-lane vectors (GCC vector extensions: one AVX2 register each, also
// in the x86-64-v4 variant, or two SSE ones), so the loop vectorizes without reassociation flags and the summation
// order, hence the result, is the same on every ISA variant (tests/test_cpu_isa.py). Each element is widened to
// double before it is squared: the square of an fp32 value is exact in double (24-bit significands make a 48-bit
// one), so only the additions round, at 2^-53 each. The sum rounded to fp32 (the op's result) is then the exact sum
// rounded, unless the exact sum lies within the double sum's error (about the number of terms per lane times
// 2^-53, relative) of a point halfway between two fp32 values. So the CUDA and Triton kernels, which add the same
// exact squares in other orders, give the same fp32 sum of squares but with a probability of at most about 1e-5
// per step for 1e8 elements, typically 1e-7 (tests/test_cuda.py, tests/test_triton.py and
// tests/test_stochastic_rounding.py: bitwise, clipped configs included).
typedef float f32x8 __attribute__((vector_size(32)));
typedef double f64x4 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));  // exponent fields are non-negative as int32
constexpr int kVectors = 2;
constexpr int kLanes = 8 * kVectors;

// The flag comes from the bits, not from the sum (a finite grad whose square overflows is not non-finite): the
// largest exponent field seen decides, through is_nonfinite().
struct SumOfSquares {
  f64x4 sum[2 * kVectors] = {};
  i32x8 exponent[kVectors] = {};
  double tail = 0.0;
  uint32_t tail_exponent = 0;

  FUSEDOPT_INLINE void add_block(const float* __restrict__ x, int64_t n) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      for (int k = 0; k < kVectors; ++k) {
        f32x8 v;
        i32x8 e;
        memcpy(&v, x + i + 8 * k, sizeof v);
        memcpy(&e, x + i + 8 * k, sizeof e);
        const f64x4 lo = __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3), f64x4);
        const f64x4 hi = __builtin_convertvector(__builtin_shufflevector(v, v, 4, 5, 6, 7), f64x4);
        sum[2 * k] += lo * lo;  // exact products: fused or not, the same bits
        sum[2 * k + 1] += hi * hi;
        e &= int32_t(0x7F800000);
        exponent[k] = exponent[k] > e ? exponent[k] : e;
      }
    }
    for (; i < n; ++i) {
      tail += double(x[i]) * double(x[i]);
      tail_exponent = std::max(tail_exponent, float_bits(x[i]) & 0x7F800000u);
    }
  }

  FUSEDOPT_INLINE void finish(double& sumsq, uint32_t& max_exponent) const {
    double s = tail;
    uint32_t e = tail_exponent;
    for (int k = 0; k < 2 * kVectors; ++k) {
      for (int j = 0; j < 4; ++j) s += sum[k][j];
    }
    for (int k = 0; k < kVectors; ++k) {
      for (int j = 0; j < 8; ++j) e = std::max(e, uint32_t(exponent[k][j]));
    }
    sumsq += s;
    max_exponent = std::max(max_exponent, e);
  }
};

template <typename S>
FUSEDOPT_INLINE void check_segment(const void* grad, int64_t begin, int64_t end, double* sumsq,
                                   uint32_t* max_exponent) {
  const auto* g = static_cast<const typename S::storage*>(grad);
  alignas(64) float block[kBlockElems];
  SumOfSquares acc;
  for (int64_t off = begin; off < end; off += kBlockElems) {
    int64_t n = std::min(kBlockElems, end - off);
    if constexpr (std::is_same_v<S, F32>) {
      acc.add_block(g + off, n);
    } else {
      load_block<S>(g + off, block, n);
      acc.add_block(block, n);
    }
  }
  acc.finish(*sumsq, *max_exponent);
}

}  // namespace

CheckResult check(const std::vector<GradView>& grads) {
  const Isa isa = active_isa();
  std::vector<int64_t> numels(grads.size());
  for (size_t i = 0; i < grads.size(); ++i) numels[i] = grads[i].numel;
  ChunkTable table(numels);
  // One partial per chunk, summed in chunk order: the result does not depend on the thread count.
  std::vector<double> sums(table.num_chunks(), 0.0);
  std::vector<uint32_t> exponents(table.num_chunks(), 0);  // largest exponent field per chunk
  table.parallel_for_each([&](int64_t c, const Segment& s) {
    const GradView& g = grads[s.tensor];
    with_dtype(g.dtype, [&](auto tag) {
      with_isa(isa, [&]() FUSEDOPT_LAMBDA_INLINE {
        check_segment<decltype(tag)>(g.data, s.begin, s.end, &sums[c], &exponents[c]);
      });
    });
  });
  CheckResult r{0.0, false};
  for (int64_t c = 0; c < table.num_chunks(); ++c) {
    r.sumsq += sums[c];
    r.nonfinite = r.nonfinite || is_nonfinite(bits_float(exponents[c]));
  }
  return r;
}

}  // namespace fusedopt::cpu
