// The check pass: global sum of squares and a non-finite flag over all grads, one parallel loop.
#include <algorithm>
#include <cmath>

#include "fusedopt/math.h"
#include "kernels.h"
#include "multi_tensor.h"

namespace fusedopt::cpu {
namespace {

// 16 independent double partial sums (four AVX2 registers, also in the x86-64-v4 variant, or eight SSE ones), so
// the loop vectorizes without reassociation flags and the summation order, hence the result, is the same on every
// ISA variant (tests/test_cpu_isa.py). Each element is widened to double before it is squared: the square of an
// fp32 value is exact in double (24-bit significands make a 48-bit one), so only the additions round, at 2^-53
// each. The sum rounded to fp32 (the op's result) is then the exact sum rounded, unless the exact sum lies within
// the double sum's error (about the number of terms per lane times 2^-53, relative) of a point halfway between two
// fp32 values. So the CUDA and Triton kernels, which add the same exact squares in other orders, give the same fp32
// sum of squares but with a probability of at most about 1e-5 per step for 1e8 elements, typically 1e-7
// (tests/test_cuda.py, tests/test_triton.py and tests/test_stochastic_rounding.py: bitwise, clipped configs
// included).
//
// The non-finite flag comes from the double sum itself: the square of a finite fp32 value is at most 2^256 in
// double, so a sum of fewer than 2^700 of them is finite, while an inf or NaN element makes every sum it enters
// inf or NaN (squares are never negative: no inf - inf). So a finite grad whose square overflows fp32 is not
// non-finite, as the op requires, without a look at each element's exponent (which cost as much as the squares).
// Lane j of the 16 sums adds the elements i + j of each 16, written as plain double arithmetic for the vectorizer:
// it loads and widens four floats per vcvtps2pd from memory (GCC lowered vector-extension conversions of 8-float
// vectors to 2-float conversions and shuffles, twice the instructions).
constexpr int kLanes = 16;

struct SumOfSquares {
  double sum[kLanes] = {};
  double tail = 0.0;

  FUSEDOPT_INLINE void add_block(const float* __restrict__ x, int64_t n) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) {
        const double d = double(x[i + j]);
        sum[j] += d * d;  // exact products: fused or not, the same bits
      }
    }
    for (; i < n; ++i) tail += double(x[i]) * double(x[i]);
  }

  FUSEDOPT_INLINE void finish(double& sumsq) const {
    double s = tail;
    for (int j = 0; j < kLanes; ++j) s += sum[j];
    sumsq += s;
  }
};

template <typename S>
FUSEDOPT_INLINE void check_segment(const void* grad, int64_t begin, int64_t end, double* sumsq) {
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
  acc.finish(*sumsq);
}

}  // namespace

CheckResult check(const std::vector<GradView>& grads) {
  const Isa isa = active_isa();
  std::vector<int64_t> numels(grads.size());
  for (size_t i = 0; i < grads.size(); ++i) numels[i] = grads[i].numel;
  ChunkTable table(numels);
  // One partial per chunk, summed in chunk order: the result does not depend on the thread count.
  std::vector<double> sums(table.num_chunks(), 0.0);
  table.parallel_for_each([&](int64_t c, const Segment& s) {
    const GradView& g = grads[s.tensor];
    with_dtype(g.dtype, [&](auto tag) {
      with_isa(isa, [&]() FUSEDOPT_LAMBDA_INLINE {
        check_segment<decltype(tag)>(g.data, s.begin, s.end, &sums[c]);
      });
    });
  });
  double sumsq = 0.0;
  for (int64_t c = 0; c < table.num_chunks(); ++c) sumsq += sums[c];
  return {sumsq, !std::isfinite(sumsq)};  // non-finite exactly when some element is (see SumOfSquares)
}

}  // namespace fusedopt::cpu
