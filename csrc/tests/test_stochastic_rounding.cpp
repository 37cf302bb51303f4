// Native test of math.h's stochastic rounding section alone (no torch): Philox 4x32-10 against the known-answer
// vectors of Salmon et al. 2011 (the Random123 distribution's kat_vectors), the random bits' layout (one call per
// quad of elements), and float_to_bf16_stochastic's edges and exact unbiasedness over all 2^16 random inputs.
#include <stdint.h>
#include <stdio.h>

#include "expect.h"
#include "fusedopt/math.h"

namespace {

using fusedopt::bf16_to_float;
using fusedopt::bits_float;
using fusedopt::float_bits;
using fusedopt::float_to_bf16;
using fusedopt::float_to_bf16_stochastic;

void test_philox_known_answers() {
  struct Case {
    uint32_t ctr[4];
    uint32_t k0, k1;
    uint32_t out[4];
  };
  const Case cases[] = {
      {{0u, 0u, 0u, 0u}, 0u, 0u, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       0xffffffffu,
       0xffffffffu,
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       0xa4093822u,
       0x299f31d0u,
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (const Case& c : cases) {
    uint32_t out[4];
    fusedopt::philox4x32_10(c.ctr, c.k0, c.k1, out);
    for (int k = 0; k < 4; ++k) {
      EXPECT(out[k] == c.out[k], "philox ctr %08x...: word %d is %08x, expected %08x", c.ctr[0], k, out[k],
             c.out[k]);
    }
  }
}

void test_bits_layout() {
  const fusedopt::RoundingKey key{0x01234567u, 0x89abcdefu, 7u, 42u};
  // Element e takes the high half of word e % 4 of the call for quad e / 4: counter (q lo, q hi, id, step).
  const uint64_t quads[] = {0, 1, 1000, (uint64_t(1) << 32) + 5};
  for (uint64_t q : quads) {
    uint32_t r[4];
    fusedopt::rounding_bits4(key, q, r);
    const uint32_t ctr[4] = {uint32_t(q), uint32_t(q >> 32), key.param_id, key.step};
    uint32_t out[4];
    fusedopt::philox4x32_10(ctr, key.seed_lo, key.seed_hi, out);
    for (int k = 0; k < 4; ++k) {
      EXPECT(r[k] == out[k] >> 16, "quad %llu word %d", (unsigned long long)q, k);
      EXPECT(fusedopt::rounding_bits(key, 4 * q + k) == r[k], "element %llu", (unsigned long long)(4 * q + k));
      EXPECT(r[k] < 0x10000u, "16 bits");
    }
  }
  // Another step, param or seed: other bits (a collision of all four 16-bit words would be a 2^-64 event).
  uint32_t base[4], other[4];
  fusedopt::rounding_bits4(key, 3, base);
  const fusedopt::RoundingKey others[] = {{key.seed_lo, key.seed_hi, key.param_id, key.step + 1},
                                          {key.seed_lo, key.seed_hi, key.param_id + 1, key.step},
                                          {key.seed_lo ^ 1u, key.seed_hi, key.param_id, key.step},
                                          {key.seed_lo, key.seed_hi ^ 0x80000000u, key.param_id, key.step}};
  for (const auto& k2 : others) {
    fusedopt::rounding_bits4(k2, 3, other);
    EXPECT(base[0] != other[0] || base[1] != other[1] || base[2] != other[2] || base[3] != other[3],
           "a changed key or counter word gives other bits");
  }
  // The 16-bit words are uniform: their mean over 2^16 elements is 32767.5 within 6 standard deviations
  // (sd of one word 65536 / sqrt(12)).
  double sum = 0.0;
  const int count = 1 << 16;
  for (int e = 0; e < count; ++e) sum += fusedopt::rounding_bits(key, uint64_t(e));
  const double mean = sum / count, sd = 65536.0 / 3.4641016151377544 / 256.0;
  EXPECT(mean > 32767.5 - 6 * sd && mean < 32767.5 + 6 * sd, "mean of the random words %g", mean);
}

uint16_t sr(uint32_t bits, uint32_t r) { return float_to_bf16_stochastic(bits_float(bits), r); }

void test_stochastic_edges() {
  // Random 0 truncates, random 0xFFFF rounds every inexact value up in magnitude.
  EXPECT(sr(0x3F800001u, 0) == 0x3F80u, "1 + ulp truncates with r = 0");
  EXPECT(sr(0x3F800001u, 0xFFFFu) == 0x3F81u, "1 + ulp rounds up with r = 0xFFFF");
  EXPECT(sr(0xBF800001u, 0xFFFFu) == 0xBF81u, "negative: up in magnitude");
  EXPECT(sr(0x3F80FFFFu, 1) == 0x3F81u, "low half 0xFFFF rounds up with any r > 0");
  // Exact bf16 values, signed zeros and infinities never change.
  const uint32_t exact[] = {0x00000000u, 0x80000000u, 0x3F800000u, 0xC0490000u, 0x7F7F0000u, 0x7F800000u,
                            0xFF800000u, 0x00010000u, 0x80010000u};
  for (uint32_t u : exact) {
    for (uint32_t r : {0u, 1u, 0x8000u, 0xFFFFu}) {
      EXPECT(sr(u, r) == uint16_t(u >> 16), "exact %08x with r %04x gave %04x", u, r, sr(u, r));
    }
  }
  // A carry out of the mantissa is the next binade: 2 - ulp rounds up to 2.
  EXPECT(sr(0x3FFFFFFFu, 1) == 0x4000u, "carry into the exponent");
  EXPECT(bf16_to_float(sr(0x3FFFFFFFu, 1)) == 2.0f, "2");
  // Subnormals: the same rule on the bits (bf16 shares fp32's exponent range); up from the largest subnormal is
  // the smallest normal.
  EXPECT(sr(0x00008000u, 0x7FFFu) == 0x0000u && sr(0x00008000u, 0x8000u) == 0x0001u, "subnormal half");
  EXPECT(sr(0x007FFFFFu, 1) == 0x0080u, "largest subnormal up to the smallest normal");
  EXPECT(sr(0x80000001u, 0xFFFFu) == 0x8001u, "negative subnormal");
  // Past the largest bf16: to it or to inf (the next value up), by the same rule.
  EXPECT(sr(0x7F7FFFFFu, 0) == 0x7F7Fu && sr(0x7F7FFFFFu, 1) == 0x7F80u, "near the maximum");
  EXPECT(sr(0xFF7F0001u, 0xFFFFu) == 0xFF80u, "negative near the maximum: -inf");
  // NaN as float_to_bf16: sign and top payload kept, quiet bit forced (no wrap, no inf).
  const uint32_t nans[] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFF80FFFFu, 0x7FFFFFFFu, 0xFFFFFFFFu};
  for (uint32_t u : nans) {
    for (uint32_t r : {0u, 1u, 0xFFFFu}) {
      EXPECT(sr(u, r) == float_to_bf16(bits_float(u)), "NaN %08x with r %04x gave %04x", u, r, sr(u, r));
    }
  }
  // Every NaN: (u >> 16) | 0x0040 whatever the random bits (no carry from them into the payload or the sign).
  for (uint32_t sign : {0u, 0x80000000u}) {
    for (uint32_t m = 1; m < (1u << 23); ++m) {
      const uint32_t u = sign | 0x7F800000u | m;
      for (uint32_t r : {0u, 0x8000u, 0xFFFFu, m & 0xFFFFu}) {
        EXPECT(sr(u, r) == uint16_t((u >> 16) | 0x0040u), "NaN %08x with r %04x gave %04x", u, r, sr(u, r));
      }
    }
  }
}

// Over all 2^16 random inputs, a value rounds up exactly (low half) times: the expected result is the value
// itself, exactly (unbiased), for every low half, at several magnitudes and both signs.
void test_unbiased_exactly() {
  const uint32_t highs[] = {0x3F80u, 0xBF80u, 0x0001u, 0x7F7Eu, 0xC2F7u, 0x4000u};
  const uint32_t lows[] = {0x0001u, 0x0100u, 0x7FFFu, 0x8000u, 0x8001u, 0xABCDu, 0xFFFFu};
  for (uint32_t hi : highs) {
    for (uint32_t lo : lows) {
      const uint32_t u = (hi << 16) | lo;
      uint32_t ups = 0;
      for (uint32_t r = 0; r < 0x10000u; ++r) {
        const uint16_t b = sr(u, r);
        EXPECT(b == hi || b == hi + 1, "%08x rounds to a neighbour", u);
        ups += b == hi + 1;
      }
      EXPECT(ups == lo, "%08x rounds up %u times in 2^16, expected %u", u, ups, lo);
    }
  }
}

}  // namespace

int main() {
  test_philox_known_answers();
  test_bits_layout();
  test_stochastic_edges();
  test_unbiased_exactly();
  if (failures) {
    printf("%d check(s) failed\n", failures);
    return 1;
  }
  printf("all stochastic rounding checks passed\n");
  return 0;
}
