// Per-element update rules of fusedopt: the single source of truth shared by the CPU loops and the CUDA
// kernels. Plain fp32 math, no torch. Each rule is torch.optim's single-tensor for-loop (foreach=False; also
// fusedopt/reference.py) in torch's order of operations, rounded as torch's CPU pointwise kernels round them
// (measured on torch 2.13, AVX2, fp32, in the vectorized bodies and the scalar tails alike):
//   a.add(b, alpha=s)            fma(b, s, a)
//   a.addcmul(b, c, value=s)     fma(s * b, c, a)
//   a.addcdiv(b, c, value=s)     a + (s * b) / c        (no fma)
//   a.lerp(b, w)                 one fma per branch (see lerp below)
//   a.mul(s), a / s              one rounding each
// so every std::fma below stands for one of those kernels, and fp32 SGD is bit-identical to torch.optim on the
// CPU. Adam is not, for one op: torch's fp32 a.sqrt() is MKL VML's vmsSqrt, which is not correctly rounded and
// has no portable formula; std::sqrt here (as on CUDA and in Triton) is IEEE. (torch run with
// ATEN_CPU_CAPABILITY=default fuses nothing; the rules follow its default, vectorized kernels.) See
// tests/test_bitwise_torch.py. Build without FP contraction (-ffp-contract=off, nvcc -fmad=false) so that the
// compiler adds no fusions of its own.
//
// Hyperparameters that torch computes in Python double (1 - beta1, lr / bias_correction1, ...) are computed on
// the host in double and passed here already rounded to float, as torch's kernels round a Python scalar.
#pragma once

#include <stdint.h>
#include <string.h>

#include <array>
#include <cmath>

#ifdef __CUDACC__
#define FUSEDOPT_HD __host__ __device__
#else
#define FUSEDOPT_HD
#endif

namespace fusedopt {

// ---------------------------------------------------------------------------------------------------------------
// Bit casts and low-precision conversions. Branch-free (selects, not branches) so loops over them vectorize.
// They are also the storage rules of op contract v2: bf16/fp16 params and bf16 states load with *_to_float, and
// every store (params from their fp32 master, bf16 states after the fp32 math) rounds to nearest even with
// float_to_*.

FUSEDOPT_HD inline uint32_t float_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
}

FUSEDOPT_HD inline float bits_float(uint32_t u) {
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

FUSEDOPT_HD inline bool is_nonfinite(float x) {
  // Exponent all ones: inf or NaN. On the bits, so no float compare can be reordered or flushed away.
  return (float_bits(x) & 0x7F800000u) == 0x7F800000u;
}

FUSEDOPT_HD inline float bf16_to_float(uint16_t h) { return bits_float(uint32_t(h) << 16); }

// fp32 -> bf16 rounded to nearest even: add just under half an ulp plus the lowest kept bit, then drop the low 16
// bits. A NaN could round to inf (or wrap): it keeps its sign and top payload with the quiet bit forced, i.e.
// (u >> 16) | 0x0040, added here as the quiet bit if it is clear (u | q == u + (~u & q)). One 32-bit addend
// chosen, one shift, one narrowing: GCC's vectorized store loop (csrc/cpu/multi_tensor.h) then stays on 32-bit
// words; a select between two shifted results it narrowed to 16 bits piecewise, packing and unpacking each
// (about 1.4x the instructions). NaN is tested as x != x (one vector compare, as in the Triton mirror).
FUSEDOPT_HD inline uint16_t float_to_bf16(float x) {
  const uint32_t u = float_bits(x);
  const uint32_t add = x != x ? ~u & 0x00400000u : 0x7FFFu + ((u >> 16) & 1u);
  return uint16_t((u + add) >> 16);
}

// ---------------------------------------------------------------------------------------------------------------
// Master remainders (master_weights="remainder"; op contract v3: an int16 master_params[i] of a bf16 param): the
// bf16 param `hi` and a 16-bit remainder `lo` hold the fp32 master m exactly, 4 bytes in all instead of 2 + 4.
//
// split_bf16 rounds m to bf16 to nearest with ties away from zero, on the bit pattern: with L the low 16 bits,
// the magnitude rounds up when L >= 0x8000. lo is L itself read as int16, i.e. the signed remainder of the
// magnitude, in [-32768, 32767] units of 2^-16 bf16 ulp: L when rounded down, L - 2^16 when rounded up.
// join_bf16 undoes the carry: u = ((hi - (lo < 0)) << 16) | L. Integer arithmetic only, so the pair is exact for
// every finite m and for inf whatever the carry does: into the exponent (0x3F7FFFFF: hi = 1.0, lo = -1), up to
// bf16's inf (|m| from 0x7F7F8000 up: hi = inf with lo < 0 while m is finite, as float_to_bf16 too rounds those
// to inf), through subnormals (no flush: no float operation), and for signed zeros and tiny values (the sign is
// hi's: -0 -> (0x8000, 0), -2^-149 -> (0x8000, 1)).
// hi is float_to_bf16(m) except at a tie (L == 0x8000) whose truncated value is even: round to nearest even
// takes it down, but the remainder of that, +32768, is one more than int16 holds, so split_bf16 rounds it up
// (no 16-bit code can do otherwise: with hi even both neighbouring ties round to hi, 65537 remainders). Both
// are nearest values of m; the master itself, and so every later step, is the same in both modes.
// NaN: hi is float_to_bf16's NaN (sign, top payload, quiet bit set), lo the low 16 payload bits; join_bf16
// returns the NaN with the quiet bit set (a signalling NaN comes back quiet, as any arithmetic would return it).
// A pair split_bf16 cannot give (the param written from outside the optimizer, its remainder kept) still joins
// to a value within half a bf16 ulp of hi, except hi = +-0 with lo < 0, which joins to hi's sign with L's bits (a
// subnormal, not a borrow through zero into NaN), and hi = inf with lo > 0 (a NaN).

FUSEDOPT_HD inline void split_bf16(float m, uint16_t& hi, int16_t& lo) {
  const uint32_t u = float_bits(m);
  const uint32_t low = u & 0xFFFFu;
  const uint32_t up = low >> 15;  // L >= 0x8000: the magnitude rounds up
  const bool is_nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  hi = uint16_t(is_nan ? (u >> 16) | 0x0040u : (u >> 16) + up);  // a NaN's carry would reach the sign
  lo = int16_t(int32_t(low) - int32_t(up << 16));
}

FUSEDOPT_HD inline float join_bf16(uint16_t hi, int16_t lo) {
  const uint32_t mag = uint32_t(hi) & 0x7FFFu;
  // Rounded up: take the carry back, unless hi is a NaN (not rounded) or a zero (nothing to borrow from).
  const uint32_t down = (lo < 0) & (mag != 0u) & (mag <= 0x7F80u);
  return bits_float(((uint32_t(hi) - down) << 16) | uint32_t(uint16_t(lo)));
}

FUSEDOPT_HD inline float fp16_to_float(uint16_t h) {
  uint32_t sign = (uint32_t(h) & 0x8000u) << 16;
  uint32_t mag = (uint32_t(h) & 0x7FFFu) << 13;  // exponent and mantissa moved to float positions
  uint32_t exp = mag & 0x0F800000u;
  uint32_t normal = mag + ((127u - 15u) << 23);  // rebias the exponent
  uint32_t infnan = normal + ((128u - 16u) << 23);  // exponent 31 becomes 255, payload kept
  // Subnormal (or zero) m * 2^-24: build 2^-14 * (1 + m / 1024) and subtract 2^-14, both exact.
  uint32_t subnormal = float_bits(bits_float(mag + (113u << 23)) - bits_float(113u << 23));
  uint32_t r = exp == 0x0F800000u ? infnan : (exp == 0 ? subnormal : normal);
  return bits_float(r | sign);
}

FUSEDOPT_HD inline uint16_t float_to_fp16(float x) {
  uint32_t u = float_bits(x);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7FFFFFFFu;
  // Normal results: rebias, round to nearest even on the 13 dropped bits (a carry may bump the exponent).
  // Clamping at 2^16 makes every magnitude from 65520 up (inf included) come out as exponent 31, mantissa 0.
  uint32_t c = a < 0x47800000u ? a : 0x47800000u;
  uint32_t normal = (c - ((127u - 15u) << 23) + 0x0FFFu + ((c >> 13) & 1u)) >> 13;
  // Below 2^-14 the result is subnormal: in a + 0.5 the float ulp is 2^-24, the fp16 subnormal step, so the
  // addition itself rounds to nearest even and the low mantissa bits are the fp16 bits (1024 = smallest normal).
  uint32_t subnormal = float_bits(bits_float(a) + 0.5f) - 0x3F000000u;
  uint32_t nan = 0x7E00u | ((a >> 13) & 0x03FFu);
  uint32_t r = a > 0x7F800000u ? nan : (a < 0x38800000u ? subnormal : normal);
  return uint16_t(r | sign);
}

// ---------------------------------------------------------------------------------------------------------------
// Stochastic rounding of bf16 params (issue 13, param_rounding="stochastic"). The random bits come from Philox
// 4x32-10 (Salmon, Moraes, Dror, Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3"), a counter-based
// generator: output = a keyed bijection of the counter, so any element's bits are computed directly from where
// it is, whatever thread, block or backend computes it. fusedopt/triton/math.py and fusedopt/reference.py mirror
// this section line for line; tests check all of them against the paper's known-answer vectors.
//
// Key: the optimizer's 64-bit seed (low word, high word). Counter of the call that serves elements 4q..4q+3 of a
// param: (q low word, q high word, the param's id (its position in the optimizer's param groups), the
// optimizer's rounding step). Element e takes the high 16 bits of output word e % 4. So the bits depend on
// (seed, param id, step, element index) only: not on bucketing, chunking, thread count or backend.

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;  // the multipliers of Philox 4x32 (the paper's table)
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // the key schedule's Weyl increments (golden ratio, sqrt(3) - 1)
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

// Op contract v4: bit 16 of the update op's `flags`, above every rule's own flag bits, asks for stochastic
// rounding of the (bf16) params; then `hyper` carries 2 + n more doubles after the rule's (the seed's low and
// high words, then one id per param) and `scalars` one more entry after the rule's: the rounding step, a
// one-element int64 tensor on the params' device, read (never written) by the op. fusedopt/reference.py says it.
constexpr uint32_t kFlagStochasticRounding = uint32_t(1) << 16;

// Philox 4x32 with 10 rounds: ctr -> out, keyed by (k0, k1). One round multiplies words 0 and 2 by the two
// constants into 64-bit products and mixes their halves with words 1 and 3 and the key; the key advances by the
// Weyl increments between rounds. The low half of a product is the 32-bit product: written so, a loop over
// counters (the CPU's stochastic store, quad by quad) vectorizes with vpmulld for it and widening vpmuludq for
// the high half only (each widened product costs shuffles to pack back into 32-bit lanes).
FUSEDOPT_HD inline void philox4x32_10(const uint32_t (&ctr)[4], uint32_t k0, uint32_t k1, uint32_t (&out)[4]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const uint32_t hi0 = uint32_t((uint64_t(kPhiloxM0) * c0) >> 32), lo0 = kPhiloxM0 * c0;
    const uint32_t hi1 = uint32_t((uint64_t(kPhiloxM1) * c2) >> 32), lo1 = kPhiloxM1 * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// What the random bits of one param's elements in one step depend on, besides the element's index.
struct RoundingKey {
  uint32_t seed_lo, seed_hi;  // the optimizer's seed
  uint32_t param_id;          // the param's position in the optimizer's param groups
  uint32_t step;              // the optimizer's rounding step (low 32 bits)
};

// The 16 random bits of elements 4q..4q+3 (r[k] for element 4q + k), from one Philox call.
FUSEDOPT_HD inline void rounding_bits4(const RoundingKey& key, uint64_t q, uint32_t (&r)[4]) {
  const uint32_t ctr[4] = {uint32_t(q), uint32_t(q >> 32), key.param_id, key.step};
  uint32_t out[4];
  philox4x32_10(ctr, key.seed_lo, key.seed_hi, out);
  for (int k = 0; k < 4; ++k) r[k] = out[k] >> 16;
}

// The random bits of element e alone: the same as rounding_bits4's for its quad.
FUSEDOPT_HD inline uint32_t rounding_bits(const RoundingKey& key, uint64_t e) {
  uint32_t r[4];
  rounding_bits4(key, e >> 2, r);
  return r[e & 3];
}

// fp32 -> bf16, rounded up in magnitude with probability (dropped low 16 bits) / 2^16, given 16 uniform random
// bits: adding them to the low half carries into the kept half exactly that often, so the expected bf16 value is
// x (unbiased). On the bits, so the same for both signs and for subnormals (bf16 shares fp32's exponent range; a
// carry out of the mantissa is the next binade, as it should be). A bf16 value (low half 0), +-0 and +-inf never
// change. Magnitudes above the largest bf16 (0x7F7F) round to it or to inf by the same rule: inf is the next
// value up, as round-to-nearest's overflow. NaN as float_to_bf16: sign and top payload kept, quiet bit forced.
// (The NaN's quiet bit is an addend, as in float_to_bf16, for the same vectorized code.)
FUSEDOPT_HD inline uint16_t float_to_bf16_stochastic(float x, uint32_t random16) {
  const uint32_t u = float_bits(x);
  return uint16_t((u + (x != x ? ~u & 0x00400000u : random16)) >> 16);
}

// ---------------------------------------------------------------------------------------------------------------
// Gradient preparation.

// GradScaler: g / grad_scale (a division, as the reference does); this value is also written back to grad.
FUSEDOPT_HD inline float unscale_grad(float g, float grad_scale) { return g / grad_scale; }

// Clipping and maximize fold into one factor: (-c) * g == -(c * g) exactly, and 1 * g == g.
FUSEDOPT_HD inline float grad_factor(bool has_clip, float clip_coef, bool maximize) {
  float c = has_clip ? clip_coef : 1.0f;
  return maximize ? -c : c;
}

FUSEDOPT_HD inline float prepare_grad(float g, float factor) { return g * factor; }

// ---------------------------------------------------------------------------------------------------------------
// Update rules. Each is a struct of one shape, which the generic CPU loop (csrc/cpu/update.h) and the CUDA
// kernel template take as a template argument; fusedopt/rules.py describes the same rule to Python (same name,
// same hyperparameter, flag, state and scalar names in the same order: tests/test_rules.py compares them), and
// csrc/include/fusedopt/rules.h lists the rules the backends compile.
//
//   kName                        the rule's name (the op's `rule` argument)
//   kHyper, kHyperNames          per-call hyperparameters, host doubles in the op's `hyper` order; [0] is lr
//   kFlags, kFlagNames           user switches: bit i of the op's `flags` is kFlagNames[i]
//   kStates, kStateNames         per-param tensor states (state_dict keys; the op's lists are named key + "s")
//   kScalars, kScalarNames       per-param one-element float32 states (step counts), advanced by per_tensor
//   kScalarNonNegative           which scalar states the op refuses below zero (where it can read them)
//   kTakesIsFirst                whether the op's is_first says a state has no history yet
//   switches(hyper, flags)       the compile-time switches (kSwitchBits bits) from the flags and from values
//                                (weight_decay != 0): the loops dispatch over them as a template argument, so
//                                element() has no branches on them
//   uses_state(k, sw)            whether the op's states list holds state k under switches sw
//   Hyper hyper(h)               the per-call float coefficients from the doubles (h[0]: lr, lr_tensor's value
//                                when given)
//   PerTensor per_tensor(h, scalars, first)
//                                once per tensor before its elements, only when the step is not skipped:
//                                advances its scalar states in place (scalars[j] points at the tensor's j-th;
//                                count_step() counts a step) and returns its per-tensor coefficients (a rule that
//                                only counts its steps inherits both from CountOnly); a function of h, the
//                                scalar states' values and `first` alone (the CPU loop reuses its results for
//                                a tensor whose inputs have the previous tensor's bits, cpu/update.h)
//   element<SW>(p, g, s, hyper, per_tensor)
//                                one element: p is the param's fp32 value, g the gradient already unscaled,
//                                clipped and sign-flipped (take_grad/prepare_grad, in the loops), s the fp32
//                                values of its states (those not in use hold 0 and are not stored)
// Name lists are std::arrays, as an empty C array (kScalars = 0) is not valid C++.

// Per-tensor pieces the rules share, all in double as torch's Python floats.

// step_t += 1 on a rule's step count (its first scalar state, float32, as torch's), and the new count as the
// double that torch's Python float reads: the first line of every per_tensor() that counts steps.
FUSEDOPT_HD inline double count_step(float* const* scalars) {
  *scalars[0] += 1.0f;
  return double(*scalars[0]);
}

// 1 - beta^step (Python's ** is C's pow).
FUSEDOPT_HD inline double bias_correction(double beta, double step) { return 1.0 - std::pow(beta, step); }

// The per-tensor part of the rules whose step count is only counted, not read (Adadelta, Rprop, RMSprop): they
// inherit it.
struct CountOnly {
  struct PerTensor {};
  FUSEDOPT_HD static PerTensor per_tensor(const double* /*h*/, float* const* scalars, bool /*first*/) {
    count_step(scalars);  // step += 1
    return {};
  }
};

// SGD (torch.optim.sgd._single_tensor_sgd).
struct SgdRule {
  static constexpr const char* kName = "sgd";
  static constexpr int kHyper = 4;
  static constexpr int kFlags = 1;
  static constexpr int kStates = 1;
  static constexpr int kScalars = 0;
  static constexpr std::array<const char*, kHyper> kHyperNames = {"lr", "weight_decay", "momentum", "dampening"};
  static constexpr std::array<const char*, kFlags> kFlagNames = {"nesterov"};
  static constexpr std::array<const char*, kStates> kStateNames = {"momentum_buffer"};
  static constexpr std::array<const char*, kScalars> kScalarNames = {};
  static constexpr std::array<bool, kScalars> kScalarNonNegative = {};
  static constexpr bool kTakesIsFirst = true;

  enum : uint32_t { kWeightDecay = 1, kMomentum = 2, kNesterov = 4 };
  static constexpr int kSwitchBits = 3;
  FUSEDOPT_HD static uint32_t switches(const double* h, uint32_t flags) {
    const bool momentum = h[2] != 0.0;
    return (h[1] != 0.0 ? kWeightDecay : 0u) | (momentum ? kMomentum : 0u) |
           (momentum && (flags & 1u) ? kNesterov : 0u);
  }
  FUSEDOPT_HD static constexpr bool uses_state(int /*k: the momentum buffer*/, uint32_t sw) {
    return (sw & kMomentum) != 0;
  }

  struct Hyper {
    float lr;
    float weight_decay;
    float momentum;
    float one_minus_dampening;  // 1 - dampening, from double
  };
  FUSEDOPT_HD static Hyper hyper(const double* h) {
    return {float(h[0]), float(h[1]), float(h[2]), float(1.0 - h[3])};
  }

  struct PerTensor {
    bool first;  // the momentum buffer has no history yet: buf = g
  };
  FUSEDOPT_HD static PerTensor per_tensor(const double* /*h*/, float* const* /*scalars*/, bool first) {
    return {first};
  }

  // Each line is one torch op of _single_tensor_sgd (named at its end).
  template <uint32_t SW>
  FUSEDOPT_HD static void element(float& p, float g, float (&s)[kStates], const Hyper& h, const PerTensor& t) {
    if constexpr ((SW & kWeightDecay) != 0) g = std::fma(p, h.weight_decay, g);  // grad.add(param, alpha=wd)
    if constexpr ((SW & kMomentum) != 0) {
      float& buf = s[0];
      // buf = grad.clone(), then buf.mul_(momentum).add_(grad, alpha=1 - dampening)
      buf = t.first ? g : std::fma(g, h.one_minus_dampening, buf * h.momentum);
      g = (SW & kNesterov) != 0 ? std::fma(buf, h.momentum, g) : buf;  // grad.add(buf, alpha=momentum)
    }
    p = std::fma(g, -h.lr, p);  // param.add_(grad, alpha=-lr)
  }
};

// torch.lerp: two branches (on |weight| < 0.5, as torch's is_lerp_weight_small) so that weight 1 gives exactly
// `end`, each a single fused multiply-add, which is how torch evaluates it (its vectorized CPU kernel uses fmadd,
// its scalar tail is contracted to one; nvcc contracts the CUDA one). Two roundings instead would differ from
// torch in ~11% of elements and, in the second branch, by up to an ulp of `end` after cancellation. Both
// branches are computed and one selected: with a branch, GCC left the Adam loops of the x86-64-v3 clone scalar
// (6x slower on one 16M-element tensor), and an extra fma costs nothing in a memory-bound loop.
FUSEDOPT_HD inline float lerp(float start, float end, float weight) {
  const float small = std::fma(weight, end - start, start);
  const float large = std::fma(weight - 1.0f, end - start, end);
  return std::fabs(weight) < 0.5f ? small : large;
}

// torch.maximum: a NaN in either operand wins. `|`, not `||`: GCC kept the short circuit as a branch in Adamax's
// loop (maximum of two computed values) and left it scalar; the same bits either way.
FUSEDOPT_HD inline float maximum(float a, float b) { return ((a != a) | (a > b)) ? a : b; }

// Adam / AdamW (torch.optim.adam._single_tensor_adam).
struct AdamRule {
  static constexpr const char* kName = "adam";
  static constexpr int kHyper = 5;
  static constexpr int kFlags = 2;
  static constexpr int kStates = 3;
  static constexpr int kScalars = 1;
  static constexpr std::array<const char*, kHyper> kHyperNames = {"lr", "beta1", "beta2", "eps", "weight_decay"};
  static constexpr std::array<const char*, kFlags> kFlagNames = {"amsgrad", "decoupled"};
  static constexpr std::array<const char*, kStates> kStateNames = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
  static constexpr std::array<const char*, kScalars> kScalarNames = {"step"};
  // A count below 0 would make a bias correction 1 - beta^0 = 0 and write inf/NaN.
  static constexpr std::array<bool, kScalars> kScalarNonNegative = {true};
  static constexpr bool kTakesIsFirst = false;

  enum : uint32_t { kWeightDecay = 1, kDecoupled = 2, kAmsgrad = 4 };
  static constexpr int kSwitchBits = 3;
  FUSEDOPT_HD static uint32_t switches(const double* h, uint32_t flags) {
    const bool wd = h[4] != 0.0;
    return (wd ? kWeightDecay : 0u) | (wd && (flags & 2u) ? kDecoupled : 0u) | ((flags & 1u) ? kAmsgrad : 0u);
  }
  FUSEDOPT_HD static constexpr bool uses_state(int k, uint32_t sw) { return k != 2 || (sw & kAmsgrad) != 0; }

  // In double as torch.optim computes them (on the host, or on the device when lr lives there).
  struct Hyper {
    float lerp_weight;      // 1 - beta1
    float beta2;
    float one_minus_beta2;  // 1 - beta2
    float eps;
    float weight_decay;
    float decay;            // 1 - lr * weight_decay (decoupled)
  };
  FUSEDOPT_HD static Hyper hyper(const double* h) {
    const double lr = h[0], beta1 = h[1], beta2 = h[2], eps = h[3], weight_decay = h[4];
    return {float(1.0 - beta1), float(beta2), float(1.0 - beta2), float(eps), float(weight_decay),
            float(1.0 - lr * weight_decay)};
  }

  // From the step count after this step's increment, in double.
  struct PerTensor {
    float step_size;  // lr / (1 - beta1^step)
    float bc2_sqrt;   // sqrt(1 - beta2^step)
  };
  // bias_correction2 ** 0.5 as torch writes it: Python's float ** is C's pow, which differs from sqrt in the
  // last double bit for ~0.1% of arguments (seen: none of those changed the float here, but pow is what torch
  // rounds).
  FUSEDOPT_HD static PerTensor coefficients(double lr, double beta1, double beta2, double step) {
    return {float(lr / bias_correction(beta1, step)), float(std::pow(bias_correction(beta2, step), 0.5))};
  }
  // The count advances, then the bias corrections use the new count (as torch.optim does).
  FUSEDOPT_HD static PerTensor per_tensor(const double* h, float* const* scalars, bool /*first*/) {
    return coefficients(h[0], h[1], h[2], count_step(scalars));
  }

  // The weight decay (coupled, or decoupled: DECOUPLED implies WD) and the moments, the first lines of
  // element, which NAdam and RAdam share. Each line is one torch op of _single_tensor_adam (named at its end).
  template <bool WD, bool DECOUPLED>
  FUSEDOPT_HD static void decay_and_moments(float& p, float& g, float& m, float& v, const Hyper& h) {
    if constexpr (DECOUPLED) {
      p = p * h.decay;  // param.mul_(1 - lr * weight_decay)
    } else if constexpr (WD) {
      g = std::fma(p, h.weight_decay, g);  // grad.add(param, alpha=weight_decay)
    }
    m = lerp(m, g, h.lerp_weight);  // exp_avg.lerp_(grad, 1 - beta1)
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    v = std::fma(h.one_minus_beta2 * g, g, v * h.beta2);
  }

  template <uint32_t SW>
  FUSEDOPT_HD static void element(float& p, float g, float (&s)[kStates], const Hyper& h, const PerTensor& t) {
    float& m = s[0];
    float& v = s[1];
    float& vmax = s[2];
    decay_and_moments<(SW & kWeightDecay) != 0, (SW & kDecoupled) != 0>(p, g, m, v, h);
    float vhat = v;
    if constexpr ((SW & kAmsgrad) != 0) {
      vmax = maximum(vmax, v);  // torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
      vhat = vmax;
    }
    float denom = std::sqrt(vhat) / t.bc2_sqrt + h.eps;  // (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    // param.addcdiv_(exp_avg, denom, value=-step_size) is p + ((-step_size) * m) / denom: the same bits as this,
    // since rounding to nearest is symmetric under negation.
    p = p - (t.step_size * m) / denom;
  }
};


// ---------------------------------------------------------------------------------------------------------------
// NAdam, RAdam, Adadelta, Rprop, ASGD (issue 12 part 2): fusedopt/reference.py's bodies, which are torch's
// single-tensor for-loops. Their per-tensor math reads only the scalar states and the hyperparameters (in double,
// as torch's Python floats), so the CUDA kernels compute it on the device from the counts there.

// `c ? a : b` on the bits, for the rules' selects: a and b are both computed whatever c is. Written as `?:`,
// GCC moved math that only one side needs under a branch (where its if-conversion will not speculate a
// floating-point op that could trap) and left the loop scalar: Rprop's selects, and RAdam's per-tensor choice
// once the loop was unswitched on Adam's lerp weight.
FUSEDOPT_HD inline float bit_select(bool c, float a, float b) {
  const uint32_t mask = 0u - uint32_t(c);
  return bits_float((float_bits(a) & mask) | (float_bits(b) & ~mask));
}

// torch.sign as torch's vectorized kernel computes it, (0 < x) - (x < 0): 1, -1 or +0, and +0 for NaN.
FUSEDOPT_HD inline float sign(float x) { return bit_select(0.0f < x, 1.0f, 0.0f) - bit_select(x < 0.0f, 1.0f, 0.0f); }

// torch.clamp(x, lo, hi) with float bounds: max with lo, then min with hi, as torch's CPU kernels take them
// (vector and scalar alike): a NaN x stays NaN, and hi wins where lo > hi.
FUSEDOPT_HD inline float clamp(float x, float lo, float hi) {
  const float y = bit_select(lo > x, lo, x);
  return bit_select(hi < y, hi, y);
}

// NAdam (torch.optim.nadam._single_tensor_nadam).
struct NadamRule {
  static constexpr const char* kName = "nadam";
  static constexpr int kHyper = 6;
  static constexpr int kFlags = 1;
  static constexpr int kStates = 2;
  static constexpr int kScalars = 2;
  static constexpr std::array<const char*, kHyper> kHyperNames = {"lr",  "beta1",        "beta2",
                                                                  "eps", "weight_decay", "momentum_decay"};
  static constexpr std::array<const char*, kFlags> kFlagNames = {"decoupled"};
  static constexpr std::array<const char*, kStates> kStateNames = {"exp_avg", "exp_avg_sq"};
  static constexpr std::array<const char*, kScalars> kScalarNames = {"step", "mu_product"};
  static constexpr std::array<bool, kScalars> kScalarNonNegative = {true, false};  // step 0: 1 - beta2^0 = 0
  static constexpr bool kTakesIsFirst = false;

  enum : uint32_t { kWeightDecay = 1, kDecoupled = 2 };
  static constexpr int kSwitchBits = 2;
  FUSEDOPT_HD static uint32_t switches(const double* h, uint32_t flags) {
    const bool wd = h[4] != 0.0;
    return (wd ? kWeightDecay : 0u) | (wd && (flags & 1u) ? kDecoupled : 0u);
  }
  FUSEDOPT_HD static constexpr bool uses_state(int /*k*/, uint32_t /*sw*/) { return true; }

  // Adam's (its first five hyperparameters are Adam's; momentum_decay enters per tensor only).
  using Hyper = AdamRule::Hyper;
  FUSEDOPT_HD static Hyper hyper(const double* h) { return AdamRule::hyper(h); }

  struct PerTensor {
    float bias_correction2;  // 1 - beta2^step
    float grad_coef;         // -lr (1 - mu) / (1 - mu_product)
    float exp_avg_coef;      // -lr mu_next / (1 - mu_product mu_next)
  };
  // In double from the new count, as torch's Python floats; mu_product is a float32 state, which torch
  // multiplies in float32 (a 0-dim float32 tensor times a Python float) and then reads back as a double.
  FUSEDOPT_HD static PerTensor per_tensor(const double* h, float* const* scalars, bool /*first*/) {
    const double lr = h[0], beta1 = h[1], beta2 = h[2], momentum_decay = h[5];
    const double step = count_step(scalars);
    const double bias_correction2 = bias_correction(beta2, step);
    const double mu = beta1 * (1.0 - 0.5 * std::pow(0.96, step * momentum_decay));
    const double mu_next = beta1 * (1.0 - 0.5 * std::pow(0.96, (step + 1.0) * momentum_decay));
    *scalars[1] *= float(mu);  // mu_product *= mu
    const double mu_product = *scalars[1];
    return {float(bias_correction2), float(-lr * (1.0 - mu) / (1.0 - mu_product)),
            float((-lr * mu_next) / (1.0 - mu_product * mu_next))};
  }

  // Each line is one torch op of _single_tensor_nadam (named at its end).
  template <uint32_t SW>
  FUSEDOPT_HD static void element(float& p, float g, float (&s)[kStates], const Hyper& h, const PerTensor& t) {
    float& m = s[0];
    float& v = s[1];
    AdamRule::decay_and_moments<(SW & kWeightDecay) != 0, (SW & kDecoupled) != 0>(p, g, m, v, h);
    const float denom = std::sqrt(v / t.bias_correction2) + h.eps;  // exp_avg_sq.div(bc2).sqrt(), .add_(eps)
    p = p + (t.grad_coef * g) / denom;                               // param.addcdiv_(grad, denom, value=...)
    p = p + (t.exp_avg_coef * m) / denom;                            // param.addcdiv_(exp_avg, denom, value=...)
  }
};

// RAdam (torch.optim.radam._single_tensor_radam).
struct RadamRule {
  static constexpr const char* kName = "radam";
  static constexpr int kHyper = 5;
  static constexpr int kFlags = 1;
  static constexpr int kStates = 2;
  static constexpr int kScalars = 1;
  static constexpr std::array<const char*, kHyper> kHyperNames = {"lr", "beta1", "beta2", "eps", "weight_decay"};
  static constexpr std::array<const char*, kFlags> kFlagNames = {"decoupled"};
  static constexpr std::array<const char*, kStates> kStateNames = {"exp_avg", "exp_avg_sq"};
  static constexpr std::array<const char*, kScalars> kScalarNames = {"step"};
  static constexpr std::array<bool, kScalars> kScalarNonNegative = {true};  // step 0: 1 - beta^0 = 0
  static constexpr bool kTakesIsFirst = false;

  enum : uint32_t { kWeightDecay = 1, kDecoupled = 2 };
  static constexpr int kSwitchBits = 2;
  FUSEDOPT_HD static uint32_t switches(const double* h, uint32_t flags) { return NadamRule::switches(h, flags); }
  FUSEDOPT_HD static constexpr bool uses_state(int /*k*/, uint32_t /*sw*/) { return true; }

  struct Hyper : AdamRule::Hyper {
    float lr;
  };
  FUSEDOPT_HD static Hyper hyper(const double* h) { return {AdamRule::hyper(h), float(h[0])}; }

  struct PerTensor {
    float bias_correction1;  // 1 - beta1^step
    float bc2_sqrt;          // (1 - beta2^step) ** 0.5
    float rect;              // the rectification term (1 when not rectified)
    bool rectified;          // rho_t > 5: torch's branch, taken per tensor
  };
  // In double from the new count, as torch's Python floats (** as pow, as Python computes it).
  FUSEDOPT_HD static PerTensor per_tensor(const double* h, float* const* scalars, bool /*first*/) {
    const double beta1 = h[1], beta2 = h[2];
    const double step = count_step(scalars);
    const double bias_correction1 = bias_correction(beta1, step);
    const double bias_correction2 = bias_correction(beta2, step);
    const double rho_inf = 2.0 / (1.0 - beta2) - 1.0;
    const double rho_t = rho_inf - 2.0 * step * std::pow(beta2, step) / bias_correction2;
    const bool rectified = rho_t > 5.0;
    const double rect =
        rectified ? std::pow((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t), 0.5)
                  : 1.0;
    return {float(bias_correction1), float(std::pow(bias_correction2, 0.5)), float(rect), rectified};
  }

  // Each line is one torch op of _single_tensor_radam (named at its end). torch's branch on rho_t is per tensor:
  // here a select of the two results (a branch in the loop body would keep it from vectorizing).
  template <uint32_t SW>
  FUSEDOPT_HD static void element(float& p, float g, float (&s)[kStates], const Hyper& h, const PerTensor& t) {
    float& m = s[0];
    float& v = s[1];
    AdamRule::decay_and_moments<(SW & kWeightDecay) != 0, (SW & kDecoupled) != 0>(p, g, m, v, h);
    const float scaled = (m / t.bias_correction1) * h.lr;  // bias_corrected_exp_avg * lr
    // bias_correction2 ** 0.5 / exp_avg_sq.sqrt().add_(eps): Tensor.__rtruediv__ is reciprocal(x) * s.
    const float adaptive_lr = (1.0f / (std::sqrt(v) + h.eps)) * t.bc2_sqrt;
    const float rectified = (scaled * adaptive_lr) * t.rect;  // ... * _compute_adaptive_lr() * _compute_rect()
    p = p - bit_select(t.rectified, rectified, scaled);       // param.add_(..., alpha=-1.0)
  }
};

// Adadelta (torch.optim.adadelta._single_tensor_adadelta).
struct AdadeltaRule : CountOnly {
  static constexpr const char* kName = "adadelta";
  static constexpr int kHyper = 4;
  static constexpr int kFlags = 0;
  static constexpr int kStates = 2;
  static constexpr int kScalars = 1;
  static constexpr std::array<const char*, kHyper> kHyperNames = {"lr", "rho", "eps", "weight_decay"};
  static constexpr std::array<const char*, kFlags> kFlagNames = {};
  static constexpr std::array<const char*, kStates> kStateNames = {"square_avg", "acc_delta"};
  static constexpr std::array<const char*, kScalars> kScalarNames = {"step"};
  static constexpr std::array<bool, kScalars> kScalarNonNegative = {true};  // as every step count
  static constexpr bool kTakesIsFirst = false;

  enum : uint32_t { kWeightDecay = 1 };
  static constexpr int kSwitchBits = 1;
  FUSEDOPT_HD static uint32_t switches(const double* h, uint32_t /*flags*/) {
    return h[3] != 0.0 ? kWeightDecay : 0u;
  }
  FUSEDOPT_HD static constexpr bool uses_state(int /*k*/, uint32_t /*sw*/) { return true; }

  struct Hyper {
    float lr;
    float rho;
    float one_minus_rho;  // 1 - rho, from double
    float eps;
    float weight_decay;
  };
  FUSEDOPT_HD static Hyper hyper(const double* h) {
    return {float(h[0]), float(h[1]), float(1.0 - h[1]), float(h[2]), float(h[3])};
  }

  // Each line is one torch op of _single_tensor_adadelta (named at its end).
  template <uint32_t SW>
  FUSEDOPT_HD static void element(float& p, float g, float (&s)[kStates], const Hyper& h, const PerTensor&) {
    float& square_avg = s[0];
    float& acc_delta = s[1];
    if constexpr ((SW & kWeightDecay) != 0) g = std::fma(p, h.weight_decay, g);  // grad.add(param, alpha=wd)
    // square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
    square_avg = std::fma(h.one_minus_rho * g, g, square_avg * h.rho);
    const float std_dev = std::sqrt(square_avg + h.eps);  // square_avg.add(eps).sqrt_()
    float delta = std::sqrt(acc_delta + h.eps);           // acc_delta.add(eps).sqrt_()
    delta = (delta / std_dev) * g;                        // delta.div_(std).mul_(grad)
    // acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
    acc_delta = std::fma(h.one_minus_rho * delta, delta, acc_delta * h.rho);
    p = std::fma(delta, -h.lr, p);  // param.add_(delta, alpha=-lr)
  }
};

// Rprop (torch.optim.rprop._single_tensor_rprop). lr only sets the initial step sizes (the optimizer's state
// init); the update reads the step_size state.
struct RpropRule : CountOnly {
  static constexpr const char* kName = "rprop";
  static constexpr int kHyper = 5;
  static constexpr int kFlags = 0;
  static constexpr int kStates = 2;
  static constexpr int kScalars = 1;
  static constexpr std::array<const char*, kHyper> kHyperNames = {"lr", "etaminus", "etaplus", "step_size_min",
                                                                  "step_size_max"};
  static constexpr std::array<const char*, kFlags> kFlagNames = {};
  static constexpr std::array<const char*, kStates> kStateNames = {"prev", "step_size"};
  static constexpr std::array<const char*, kScalars> kScalarNames = {"step"};
  static constexpr std::array<bool, kScalars> kScalarNonNegative = {true};  // as every step count
  static constexpr bool kTakesIsFirst = false;

  static constexpr int kSwitchBits = 0;
  FUSEDOPT_HD static uint32_t switches(const double* /*h*/, uint32_t /*flags*/) { return 0; }
  FUSEDOPT_HD static constexpr bool uses_state(int /*k*/, uint32_t /*sw*/) { return true; }

  struct Hyper {
    float etaminus;
    float etaplus;
    float step_size_min;
    float step_size_max;
  };
  FUSEDOPT_HD static Hyper hyper(const double* h) { return {float(h[1]), float(h[2]), float(h[3]), float(h[4])}; }

  // Each line is one torch op of _single_tensor_rprop (named at its end), in the same order, so that any etas
  // (an etaminus of 1, say) select as torch's masked writes do. All selects: no branch in the loop body.
  template <uint32_t SW>
  FUSEDOPT_HD static void element(float& p, float g, float (&s)[kStates], const Hyper& h, const PerTensor&) {
    float& prev = s[0];
    float& step_size = s[1];
    float factor = sign(g * prev);                // sign = grad.mul(prev).sign()
    factor = bit_select(factor > 0.0f, h.etaplus, factor);   // sign[sign.gt(0)] = etaplus
    factor = bit_select(factor < 0.0f, h.etaminus, factor);  // sign[sign.lt(0)] = etaminus
    factor = bit_select(factor == 0.0f, 1.0f, factor);       // sign[sign.eq(0)] = 1
    // step_size.mul_(sign).clamp_(step_size_min, step_size_max)
    step_size = clamp(step_size * factor, h.step_size_min, h.step_size_max);
    g = bit_select(factor == h.etaminus, 0.0f, g);  // grad[sign.eq(etaminus)] = 0
    p = std::fma(-1.0f * sign(g), step_size, p);    // param.addcmul_(grad.sign(), step_size, value=-1)
    prev = g;                                       // prev.copy_(grad)
  }
};

// ASGD (torch.optim.asgd._single_tensor_asgd).
struct AsgdRule {
  static constexpr const char* kName = "asgd";
  static constexpr int kHyper = 5;
  static constexpr int kFlags = 0;
  static constexpr int kStates = 1;
  static constexpr int kScalars = 3;
  static constexpr std::array<const char*, kHyper> kHyperNames = {"lr", "lambd", "alpha", "t0", "weight_decay"};
  static constexpr std::array<const char*, kFlags> kFlagNames = {};
  static constexpr std::array<const char*, kStates> kStateNames = {"ax"};
  static constexpr std::array<const char*, kScalars> kScalarNames = {"step", "eta", "mu"};
  static constexpr std::array<bool, kScalars> kScalarNonNegative = {true, false, false};  // as every step count
  static constexpr bool kTakesIsFirst = false;

  enum : uint32_t { kWeightDecay = 1 };
  static constexpr int kSwitchBits = 1;
  FUSEDOPT_HD static uint32_t switches(const double* h, uint32_t /*flags*/) {
    return h[4] != 0.0 ? kWeightDecay : 0u;
  }
  FUSEDOPT_HD static constexpr bool uses_state(int /*k*/, uint32_t /*sw*/) { return true; }

  struct Hyper {
    float weight_decay;
  };
  FUSEDOPT_HD static Hyper hyper(const double* h) { return {float(h[4])}; }

  // From eta and mu as they were before this step.
  struct PerTensor {
    float decay;    // 1 - lambd * eta
    float neg_eta;  // -eta
    float mu;
    bool average;   // mu != 1: torch's branch (else ax is a copy of the param), taken per tensor
  };
  // The update reads eta and mu as they were; then they advance from the new count, in double as torch's
  // Python floats (written as float32, as torch copies them into the float32 states).
  FUSEDOPT_HD static PerTensor per_tensor(const double* h, float* const* scalars, bool /*first*/) {
    const double lr = h[0], lambd = h[1], alpha = h[2], t0 = h[3];
    const double eta = *scalars[1];
    const float mu = *scalars[2];
    const PerTensor t{float(1.0 - lambd * eta), float(-eta), mu, mu != 1.0f};
    const double step = count_step(scalars);
    *scalars[1] = float(lr / std::pow(1.0 + lambd * lr * step, alpha));  // eta = lr / (1 + lambd lr step)^alpha
    const double since = step - t0;
    *scalars[2] = float(1.0 / (since > 1.0 ? since : 1.0));  // mu = 1 / max(1, step - t0) (Python's max)
    return t;
  }

  // Each line is one torch op of _single_tensor_asgd (named at its end); torch's branch on mu is per tensor:
  // here a select (a branch in the loop body would keep it from vectorizing).
  template <uint32_t SW>
  FUSEDOPT_HD static void element(float& p, float g, float (&s)[kStates], const Hyper& h, const PerTensor& t) {
    float& ax = s[0];
    if constexpr ((SW & kWeightDecay) != 0) g = std::fma(p, h.weight_decay, g);  // grad.add(param, alpha=wd)
    p = p * t.decay;                  // param.mul_(1 - lambd * eta)
    p = std::fma(g, t.neg_eta, p);    // param.add_(grad, alpha=-eta)
    const float averaged = ax + (p - ax) * t.mu;  // ax.add_(param.sub(ax).mul_(mu))
    ax = bit_select(t.average, averaged, p);      // or ax.copy_(param)
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Adagrad, RMSprop, Adamax, Lion (issue 12 part 2): fusedopt/reference.py's bodies, which are torch's single-tensor
// for-loops (Lion: lion-pytorch's update_fn), op for op. Their per-tensor math reads only the step count and the
// hyperparameters (in double, as torch's Python floats), so the CUDA kernels compute it on the device.

// Adagrad (torch.optim.adagrad._single_tensor_adagrad, dense grads).
struct AdagradRule {
  static constexpr const char* kName = "adagrad";
  static constexpr int kHyper = 4;
  static constexpr int kFlags = 0;
  static constexpr int kStates = 1;
  static constexpr int kScalars = 1;
  static constexpr std::array<const char*, kHyper> kHyperNames = {"lr", "lr_decay", "weight_decay", "eps"};
  static constexpr std::array<const char*, kFlags> kFlagNames = {};
  static constexpr std::array<const char*, kStates> kStateNames = {"sum"};
  static constexpr std::array<const char*, kScalars> kScalarNames = {"step"};
  // A count below 0 could make 1 + (step - 1) * lr_decay zero (the reference refuses every negative count too).
  static constexpr std::array<bool, kScalars> kScalarNonNegative = {true};
  static constexpr bool kTakesIsFirst = false;

  enum : uint32_t { kWeightDecay = 1 };
  static constexpr int kSwitchBits = 1;
  FUSEDOPT_HD static uint32_t switches(const double* h, uint32_t /*flags*/) { return h[2] != 0.0 ? kWeightDecay : 0u; }
  FUSEDOPT_HD static constexpr bool uses_state(int /*k: the sum*/, uint32_t /*sw*/) { return true; }

  struct Hyper {
    float weight_decay;
    float eps;
  };
  FUSEDOPT_HD static Hyper hyper(const double* h) { return {float(h[2]), float(h[3])}; }

  struct PerTensor {
    float clr;  // lr / (1 + (step - 1) * lr_decay), in double from the new count
  };
  FUSEDOPT_HD static PerTensor per_tensor(const double* h, float* const* scalars, bool /*first*/) {
    const double step = count_step(scalars);
    return {float(h[0] / (1.0 + (step - 1.0) * h[1]))};
  }

  // Each line is one torch op of _single_tensor_adagrad (named at its end).
  template <uint32_t SW>
  FUSEDOPT_HD static void element(float& p, float g, float (&s)[kStates], const Hyper& h, const PerTensor& t) {
    float& sum = s[0];
    if constexpr ((SW & kWeightDecay) != 0) g = std::fma(p, h.weight_decay, g);  // grad.add(param, alpha=wd)
    sum = std::fma(g, g, sum);                   // state_sum.addcmul_(grad, grad, value=1): 1 * g is g
    const float stdev = std::sqrt(sum) + h.eps;  // std = state_sum.sqrt().add_(eps)
    p = p - (t.clr * g) / stdev;  // param.addcdiv_(grad, std, value=-clr): the same bits (rounding is symmetric)
  }
};


// RMSprop (torch.optim.rmsprop._single_tensor_rmsprop).
struct RmspropRule : CountOnly {
  static constexpr const char* kName = "rmsprop";
  static constexpr int kHyper = 5;
  static constexpr int kFlags = 1;
  static constexpr int kStates = 3;
  static constexpr int kScalars = 1;
  static constexpr std::array<const char*, kHyper> kHyperNames = {"lr", "alpha", "eps", "weight_decay", "momentum"};
  static constexpr std::array<const char*, kFlags> kFlagNames = {"centered"};
  static constexpr std::array<const char*, kStates> kStateNames = {"square_avg", "grad_avg", "momentum_buffer"};
  static constexpr std::array<const char*, kScalars> kScalarNames = {"step"};
  // Counted only (the update does not read it); refused below zero as the reference refuses every count.
  static constexpr std::array<bool, kScalars> kScalarNonNegative = {true};
  static constexpr bool kTakesIsFirst = false;

  enum : uint32_t { kWeightDecay = 1, kCentered = 2, kMomentum = 4 };
  static constexpr int kSwitchBits = 3;
  FUSEDOPT_HD static uint32_t switches(const double* h, uint32_t flags) {
    return (h[3] != 0.0 ? kWeightDecay : 0u) | ((flags & 1u) ? kCentered : 0u) | (h[4] > 0.0 ? kMomentum : 0u);
  }
  FUSEDOPT_HD static constexpr bool uses_state(int k, uint32_t sw) {
    return k == 0 || (k == 1 && (sw & kCentered) != 0) || (k == 2 && (sw & kMomentum) != 0);
  }

  struct Hyper {
    float lr;
    float alpha;
    float one_minus_alpha;  // 1 - alpha, from double
    float eps;
    float weight_decay;
    float momentum;
  };
  FUSEDOPT_HD static Hyper hyper(const double* h) {
    return {float(h[0]), float(h[1]), float(1.0 - h[1]), float(h[2]), float(h[3]), float(h[4])};
  }

  // Each line is one torch op of _single_tensor_rmsprop (named at its end).
  template <uint32_t SW>
  FUSEDOPT_HD static void element(float& p, float g, float (&s)[kStates], const Hyper& h, const PerTensor&) {
    float& square_avg = s[0];
    float& grad_avg = s[1];
    float& buf = s[2];
    if constexpr ((SW & kWeightDecay) != 0) g = std::fma(p, h.weight_decay, g);  // grad.add(param, alpha=wd)
    // square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    square_avg = std::fma(h.one_minus_alpha * g, g, square_avg * h.alpha);
    float avg;
    if constexpr ((SW & kCentered) != 0) {
      grad_avg = lerp(grad_avg, g, h.one_minus_alpha);  // grad_avg.lerp_(grad, 1 - alpha)
      // square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_(): (-1) * grad_avg is -grad_avg
      avg = std::sqrt(std::fma(-grad_avg, grad_avg, square_avg));
    } else {
      avg = std::sqrt(square_avg);  // square_avg.sqrt()
    }
    avg = avg + h.eps;  // avg.add_(eps)
    if constexpr ((SW & kMomentum) != 0) {
      buf = buf * h.momentum + g / avg;  // buf.mul_(momentum).addcdiv_(grad, avg): 1 * g is g
      p = std::fma(buf, -h.lr, p);       // param.add_(buf, alpha=-lr)
    } else {
      p = p - (h.lr * g) / avg;  // param.addcdiv_(grad, avg, value=-lr): the same bits (rounding is symmetric)
    }
  }
};

// Adamax (torch.optim.adamax._single_tensor_adamax).
struct AdamaxRule {
  static constexpr const char* kName = "adamax";
  static constexpr int kHyper = 5;
  static constexpr int kFlags = 0;
  static constexpr int kStates = 2;
  static constexpr int kScalars = 1;
  static constexpr std::array<const char*, kHyper> kHyperNames = {"lr", "beta1", "beta2", "eps", "weight_decay"};
  static constexpr std::array<const char*, kFlags> kFlagNames = {};
  static constexpr std::array<const char*, kStates> kStateNames = {"exp_avg", "exp_inf"};
  static constexpr std::array<const char*, kScalars> kScalarNames = {"step"};
  // A count below 0 would make the bias correction 1 - beta1^0 = 0 and write inf/NaN.
  static constexpr std::array<bool, kScalars> kScalarNonNegative = {true};
  static constexpr bool kTakesIsFirst = false;

  enum : uint32_t { kWeightDecay = 1 };
  static constexpr int kSwitchBits = 1;
  FUSEDOPT_HD static uint32_t switches(const double* h, uint32_t /*flags*/) { return h[4] != 0.0 ? kWeightDecay : 0u; }
  FUSEDOPT_HD static constexpr bool uses_state(int /*k*/, uint32_t /*sw*/) { return true; }

  // Adam's (the same five hyperparameters; Adamax reads lerp_weight, beta2, eps and weight_decay).
  using Hyper = AdamRule::Hyper;
  FUSEDOPT_HD static Hyper hyper(const double* h) { return AdamRule::hyper(h); }

  struct PerTensor {
    float clr;  // lr / (1 - beta1^step), in double from the new count
  };
  FUSEDOPT_HD static PerTensor per_tensor(const double* h, float* const* scalars, bool /*first*/) {
    return {float(h[0] / bias_correction(h[1], count_step(scalars)))};
  }

  // Each line is one torch op of _single_tensor_adamax (not differentiable, not capturable; named at its end).
  template <uint32_t SW>
  FUSEDOPT_HD static void element(float& p, float g, float (&s)[kStates], const Hyper& h, const PerTensor& t) {
    float& exp_avg = s[0];
    float& exp_inf = s[1];
    if constexpr ((SW & kWeightDecay) != 0) g = std::fma(p, h.weight_decay, g);  // grad.add(param, alpha=wd)
    exp_avg = lerp(exp_avg, g, h.lerp_weight);  // exp_avg.lerp_(grad, 1 - beta1)
    // torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf): a NaN on either side wins (the
    // differentiable path's amax over the stacked pair, norm_buf, takes the same values)
    exp_inf = maximum(exp_inf * h.beta2, std::fabs(g) + h.eps);
    // param.addcdiv_(exp_avg, exp_inf, value=-clr): the same bits (rounding is symmetric)
    p = p - (t.clr * exp_avg) / exp_inf;
  }
};

// Lion (Chen et al. 2023, Algorithm 2, as lion-pytorch's update_fn computes it). No step count: the update uses
// none (lion-pytorch keeps none).
struct LionRule {
  static constexpr const char* kName = "lion";
  static constexpr int kHyper = 4;
  static constexpr int kFlags = 0;
  static constexpr int kStates = 1;
  static constexpr int kScalars = 0;
  static constexpr std::array<const char*, kHyper> kHyperNames = {"lr", "beta1", "beta2", "weight_decay"};
  static constexpr std::array<const char*, kFlags> kFlagNames = {};
  static constexpr std::array<const char*, kStates> kStateNames = {"exp_avg"};
  static constexpr std::array<const char*, kScalars> kScalarNames = {};
  static constexpr std::array<bool, kScalars> kScalarNonNegative = {};
  static constexpr bool kTakesIsFirst = false;

  // lion-pytorch multiplies by 1 - lr * 0 = 1 as well: the same bits as not multiplying.
  enum : uint32_t { kWeightDecay = 1 };
  static constexpr int kSwitchBits = 1;
  FUSEDOPT_HD static uint32_t switches(const double* h, uint32_t /*flags*/) { return h[3] != 0.0 ? kWeightDecay : 0u; }
  FUSEDOPT_HD static constexpr bool uses_state(int /*k*/, uint32_t /*sw*/) { return true; }

  struct Hyper {
    float lr;
    float decay;  // 1 - lr * weight_decay, from double
    float beta1;
    float one_minus_beta1;
    float beta2;
    float one_minus_beta2;
  };
  FUSEDOPT_HD static Hyper hyper(const double* h) {
    const double lr = h[0], beta1 = h[1], beta2 = h[2], weight_decay = h[3];
    return {float(lr), float(1.0 - lr * weight_decay), float(beta1), float(1.0 - beta1), float(beta2),
            float(1.0 - beta2)};
  }

  struct PerTensor {};
  FUSEDOPT_HD static PerTensor per_tensor(const double* /*h*/, float* const* /*scalars*/, bool /*first*/) {
    return {};
  }

  // Each line is one torch op of lion-pytorch's update_fn (named at its end).
  template <uint32_t SW>
  FUSEDOPT_HD static void element(float& p, float g, float (&s)[kStates], const Hyper& h, const PerTensor&) {
    float& exp_avg = s[0];
    if constexpr ((SW & kWeightDecay) != 0) p = p * h.decay;  // p.data.mul_(1 - lr * wd)
    // exp_avg.clone().mul_(beta1).add(grad, alpha=1 - beta1).sgn_()
    const float update = sign(std::fma(g, h.one_minus_beta1, exp_avg * h.beta1));
    p = std::fma(update, -h.lr, p);                                // p.add_(update, alpha=-lr)
    exp_avg = std::fma(g, h.one_minus_beta2, exp_avg * h.beta2);  // exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)
  }
};

}  // namespace fusedopt
