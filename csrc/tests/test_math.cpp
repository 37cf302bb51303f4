// Native test of csrc/include/fusedopt/math.h alone (no torch): the update rules against straightforward
// double-precision implementations written here, and the low-precision conversions against known bit patterns
// and an independent nearest-value search.
#include <stdint.h>
#include <stdio.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "expect.h"
#include "fusedopt/math.h"

namespace {


// Deterministic inputs without <random>'s implementation-defined distributions.
struct Lcg {
  uint64_t s;
  uint32_t next() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return uint32_t(s >> 32);
  }
  double uniform() { return (next() + 0.5) / 4294967296.0; }
  double normal() { return std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()); }
};

using fusedopt::AdamRule;
using fusedopt::SgdRule;

// A rule's element<SW> with the switches chosen at run time, as the loops dispatch them.
template <typename Rule, uint32_t SW = 0>
void element(uint32_t sw, float& p, float g, float (&s)[Rule::kStates], const typename Rule::Hyper& h,
             const typename Rule::PerTensor& t) {
  if constexpr (SW < (uint32_t(1) << Rule::kSwitchBits)) {
    if (sw == SW) return Rule::template element<SW>(p, g, s, h, t);
    element<Rule, SW + 1>(sw, p, g, s, h, t);
  }
}

// The rules in the shape of the tests below: one call per element with the states and switches spelled out.
AdamRule::Hyper adam_hyper(double lr, double beta1, double beta2, double eps, double weight_decay) {
  const double h[] = {lr, beta1, beta2, eps, weight_decay};
  return AdamRule::hyper(h);
}

AdamRule::PerTensor adam_step(double lr, double beta1, double beta2, double step) {
  return AdamRule::coefficients(lr, beta1, beta2, step);
}

void adam_element(float& p, float g, float& m, float& v, float& vmax, const AdamRule::Hyper& h,
                  const AdamRule::PerTensor& t, bool weight_decay, bool decoupled, bool amsgrad) {
  const uint32_t sw = (weight_decay ? AdamRule::kWeightDecay : 0u) |
                      (weight_decay && decoupled ? AdamRule::kDecoupled : 0u) | (amsgrad ? AdamRule::kAmsgrad : 0u);
  float s[3] = {m, v, vmax};
  element<AdamRule>(sw, p, g, s, h, t);
  m = s[0];
  v = s[1];
  vmax = s[2];
}

SgdRule::Hyper sgd_hyper(double lr, double weight_decay, double momentum, double dampening) {
  const double h[] = {lr, weight_decay, momentum, dampening};
  return SgdRule::hyper(h);
}

void sgd_element(float& p, float g, float& buf, bool first, const SgdRule::Hyper& h, bool weight_decay,
                 bool momentum, bool nesterov) {
  const uint32_t sw = (weight_decay ? SgdRule::kWeightDecay : 0u) | (momentum ? SgdRule::kMomentum : 0u) |
                      (momentum && nesterov ? SgdRule::kNesterov : 0u);
  float s[1] = {buf};
  element<SgdRule>(sw, p, g, s, h, SgdRule::PerTensor{first});
  buf = s[0];
}

bool close(double actual, double expected, double rtol, double atol) {
  return std::fabs(actual - expected) <= atol + rtol * std::fabs(expected);
}

// ---------------------------------------------------------------------------------------------------------------
// Update rules over 10 steps vs double precision.

struct AdamCase {
  const char* name;
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled, amsgrad, maximize;
  double clip;  // 1: none
};

void test_adam(const AdamCase& c) {
  const int n = 2000, steps = 10;
  Lcg rng{42};
  std::vector<float> p(n), m(n, 0.f), v(n, 0.f), vmax(n, 0.f);
  std::vector<double> pd(n), md(n, 0.0), vd(n, 0.0), vmaxd(n, 0.0);
  for (int i = 0; i < n; ++i) pd[i] = p[i] = float(rng.normal());

  const AdamRule::Hyper h = adam_hyper(c.lr, c.beta1, c.beta2, c.eps, c.weight_decay);
  const float factor = fusedopt::grad_factor(c.clip != 1.0, float(c.clip), c.maximize);
  const bool wd = c.weight_decay != 0.0;

  int bad = 0;
  double worst = 0.0;
  for (int t = 1; t <= steps; ++t) {
    const AdamRule::PerTensor s = adam_step(c.lr, c.beta1, c.beta2, t);
    for (int i = 0; i < n; ++i) {
      float g = float(rng.normal());
      adam_element(p[i], fusedopt::prepare_grad(g, factor), m[i], v[i], vmax[i], h, s, wd, c.decoupled, c.amsgrad);

      double gd = double(g) * c.clip * (c.maximize ? -1.0 : 1.0);
      if (wd && c.decoupled) pd[i] *= 1.0 - c.lr * c.weight_decay;
      if (wd && !c.decoupled) gd += c.weight_decay * pd[i];
      md[i] = c.beta1 * md[i] + (1.0 - c.beta1) * gd;
      vd[i] = c.beta2 * vd[i] + (1.0 - c.beta2) * gd * gd;
      double vhat = vd[i];
      if (c.amsgrad) vhat = vmaxd[i] = std::max(vmaxd[i], vd[i]);
      double bc1 = 1.0 - std::pow(c.beta1, t), bc2 = 1.0 - std::pow(c.beta2, t);
      pd[i] -= c.lr / bc1 * md[i] / (std::sqrt(vhat) / std::sqrt(bc2) + c.eps);
    }
  }
  for (int i = 0; i < n; ++i) {
    // 1e-5 relative; the absolute part covers moments that cancel to near zero.
    bool ok = close(p[i], pd[i], 1e-5, 1e-6) && close(m[i], md[i], 1e-5, 1e-6) && close(v[i], vd[i], 1e-5, 1e-7) &&
              (!c.amsgrad || close(vmax[i], vmaxd[i], 1e-5, 1e-7));
    worst = std::max(worst, std::fabs(p[i] - pd[i]) / (std::fabs(pd[i]) + 1e-6));
    if (!ok && bad++ < 3) {
      printf("  adam %s elem %d: p %.9g vs %.9g, m %.9g vs %.9g, v %.9g vs %.9g\n", c.name, i, p[i], pd[i], m[i],
             md[i], v[i], vd[i]);
    }
  }
  EXPECT(bad == 0, "adam %s: %d of %d elements off after %d steps", c.name, bad, n, steps);
  printf("adam %-28s max rel param error vs double after %d steps: %.2e\n", c.name, steps, worst);
}

struct SgdCase {
  const char* name;
  double lr, weight_decay, momentum, dampening;
  bool nesterov, maximize;
  double clip;
};

void test_sgd(const SgdCase& c) {
  const int n = 2000, steps = 10;
  Lcg rng{7};
  std::vector<float> p(n), buf(n, 123.0f);  // garbage before the first step: buf = g must ignore it
  std::vector<double> pd(n), bufd(n, 0.0);
  for (int i = 0; i < n; ++i) pd[i] = p[i] = float(rng.normal());
  const SgdRule::Hyper h = sgd_hyper(c.lr, c.weight_decay, c.momentum, c.dampening);
  const float factor = fusedopt::grad_factor(c.clip != 1.0, float(c.clip), c.maximize);
  const bool wd = c.weight_decay != 0.0, mom = c.momentum != 0.0;

  int bad = 0;
  for (int t = 0; t < steps; ++t) {
    for (int i = 0; i < n; ++i) {
      float g = float(rng.normal());
      sgd_element(p[i], fusedopt::prepare_grad(g, factor), buf[i], t == 0, h, wd, mom, c.nesterov);

      double gd = double(g) * c.clip * (c.maximize ? -1.0 : 1.0);
      if (wd) gd += c.weight_decay * pd[i];
      if (mom) {
        bufd[i] = t == 0 ? gd : c.momentum * bufd[i] + (1.0 - c.dampening) * gd;
        gd = c.nesterov ? gd + c.momentum * bufd[i] : bufd[i];
      }
      pd[i] -= c.lr * gd;
    }
  }
  for (int i = 0; i < n; ++i) {
    bool ok = close(p[i], pd[i], 1e-5, 1e-6) && (!mom || close(buf[i], bufd[i], 1e-5, 1e-6));
    if (!ok && bad++ < 3) printf("  sgd %s elem %d: p %.9g vs %.9g, buf %.9g vs %.9g\n", c.name, i, p[i], pd[i],
                                  buf[i], bufd[i]);
  }
  EXPECT(bad == 0, "sgd %s: %d of %d elements off after %d steps", c.name, bad, n, steps);
}

// torch's CPU kernels round each op once, fusing where they compute an fma (see math.h's header): the rules
// must give the same bits as that op sequence, modelled here with double arithmetic: a product of two floats is
// exact in double, so float(a * b + c) in double is the fused result (barring double rounding, which these fixed
// inputs do not hit), and every other op rounds to float as written.
float fused(float a, float b, float c) { return float(double(a) * double(b) + double(c)); }

void test_torch_roundings() {
  using namespace fusedopt;
  Lcg rng{13};
  const SgdRule::Hyper sh = sgd_hyper(0.05, 0.01, 0.9, 0.3);
  const AdamRule::Hyper ah = adam_hyper(1e-2, 0.9, 0.999, 1e-8, 0.05);
  const AdamRule::PerTensor as = adam_step(1e-2, 0.9, 0.999, 3.0);
  int sgd_bad = 0, adam_bad = 0;
  for (int k = 0; k < 100000; ++k) {
    const float p0 = float(rng.normal()), g0 = float(rng.normal()), b0 = float(rng.normal());
    const float m0 = float(0.1 * rng.normal()), v0 = float(0.01 * rng.uniform());
    for (bool nesterov : {false, true}) {
      float p = p0, buf = b0;
      sgd_element(p, g0, buf, false, sh, true, true, nesterov);
      float g = fused(p0, sh.weight_decay, g0);                           // grad.add(param, alpha=wd)
      float want_buf = fused(g, sh.one_minus_dampening, b0 * sh.momentum);  // buf.mul_(m).add_(g, alpha=1-d)
      g = nesterov ? fused(want_buf, sh.momentum, g) : want_buf;          // grad.add(buf, alpha=m)
      float want_p = fused(g, -sh.lr, p0);                                // param.add_(grad, alpha=-lr)
      sgd_bad += float_bits(p) != float_bits(want_p) || float_bits(buf) != float_bits(want_buf);
    }
    float p = p0, m = m0, v = v0, unused = 0.0f;
    adam_element(p, g0, m, v, unused, ah, as, true, false, false);
    float g = fused(p0, ah.weight_decay, g0);                        // grad.add(param, alpha=wd)
    float want_m = fused(ah.lerp_weight, g - m0, m0);                // exp_avg.lerp_(grad, 1 - beta1)
    float want_v = fused(ah.one_minus_beta2 * g, g, v0 * ah.beta2);  // mul_(beta2).addcmul_(g, g, value=1-b2)
    float denom = std::sqrt(want_v) / as.bc2_sqrt + ah.eps;          // (sqrt / bc2_sqrt).add_(eps)
    float want_p = p0 + (-as.step_size * want_m) / denom;            // addcdiv_(m, denom, value=-step_size)
    adam_bad += float_bits(p) != float_bits(want_p) || float_bits(m) != float_bits(want_m) ||
                float_bits(v) != float_bits(want_v);
  }
  EXPECT(sgd_bad == 0, "sgd_element rounds as torch's kernels: %d of 200000 results differ", sgd_bad);
  EXPECT(adam_bad == 0, "adam_element rounds as torch's kernels: %d of 100000 results differ", adam_bad);
  // The bias corrections as torch.optim computes them in Python: bias_correction2 ** 0.5 is C's pow.
  for (double t = 1; t <= 1000; ++t) {
    AdamRule::PerTensor s = adam_step(1e-3, 0.9, 0.999, t);
    EXPECT(float_bits(s.bc2_sqrt) == float_bits(float(std::pow(1.0 - std::pow(0.999, t), 0.5))) &&
               float_bits(s.step_size) == float_bits(float(1e-3 / (1.0 - std::pow(0.9, t)))),
           "adam_step at step %g", t);
  }
}

void test_element_details() {
  using namespace fusedopt;
  // lerp: both branches, and the endpoints exact.
  EXPECT(lerp(2.0f, 6.0f, 0.25f) == 3.0f, "small-weight branch");
  EXPECT(lerp(2.0f, 6.0f, 0.75f) == 5.0f, "large-weight branch");
  EXPECT(lerp(0.1f, 0.7f, 1.0f) == 0.7f, "weight 1 gives end exactly");
  EXPECT(lerp(0.1f, 0.7f, 0.0f) == 0.1f, "weight 0 gives start exactly");
  // Single rounding, as torch computes lerp (a fused multiply-add): the product of two floats is exact in
  // double, so the double expression below rounds like the fused one (barring double rounding, which these
  // fixed inputs do not hit).
  Lcg rng{11};
  int unfused = 0;
  for (int k = 0; k < 100000; ++k) {
    float a = float(rng.normal()), b = float(rng.normal());
    for (float w : {0.1f, 0.7f}) {
      double coeff = w < 0.5f ? double(w) : double(w - 1.0f), base = w < 0.5f ? a : b;
      unfused += lerp(a, b, w) != float(base + coeff * double(b - a));
    }
  }
  EXPECT(unfused == 0, "lerp rounds once: %d of 200000 results differ", unfused);
  // torch.maximum semantics for amsgrad: NaN from either side wins.
  float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT(maximum(1.0f, 2.0f) == 2.0f && maximum(3.0f, 2.0f) == 3.0f, "maximum");
  EXPECT(std::isnan(maximum(nan, 2.0f)) && std::isnan(maximum(2.0f, nan)), "maximum propagates NaN");
  // Gradient preparation.
  EXPECT(unscale_grad(3.0f, 4.0f) == 0.75f, "unscale divides");
  EXPECT(grad_factor(false, 0.5f, false) == 1.0f, "no clip, no maximize: factor exactly 1");
  EXPECT(grad_factor(true, 0.5f, false) == 0.5f && grad_factor(true, 0.5f, true) == -0.5f, "clip and maximize");
  EXPECT(prepare_grad(3.0f, grad_factor(false, 0.0f, true)) == -3.0f, "maximize negates");
  // Switched-off terms do not touch the value: no 0 * inf NaN from an absent weight decay, buf = g exactly.
  float inf = std::numeric_limits<float>::infinity();
  SgdRule::Hyper h{0.5f, 0.0f, 0.9f, 0.7f};
  float p = inf, buf = 42.0f;
  sgd_element(p, 1.0f, buf, true, h, false, true, false);
  EXPECT(buf == 1.0f && p == inf, "first step: buf = g; inf param stays inf (got buf %g, p %g)", buf, p);
  float q = 1.0f, unused = 0.0f;
  SgdRule::Hyper zero_lr{0.0f, 0.0f, 0.0f, 1.0f};
  sgd_element(q, 123.0f, unused, false, zero_lr, false, false, false);
  EXPECT(q == 1.0f, "lr 0 leaves the param");
  // Adam without amsgrad leaves vmax alone; with it, vmax is the running max.
  AdamRule::Hyper ah{0.1f, 0.999f, 0.001f, 1e-8f, 0.0f, 1.0f};
  AdamRule::PerTensor as{1e-3f, 1.0f};
  float ap = 1.0f, am = 0.0f, av = 4.0f, avmax = 9.0f;
  adam_element(ap, 0.0f, am, av, avmax, ah, as, false, false, false);
  EXPECT(avmax == 9.0f, "vmax untouched without amsgrad");
  adam_element(ap, 0.0f, am, av, avmax, ah, as, false, false, true);
  EXPECT(avmax == 9.0f && av < 4.0f, "amsgrad keeps the larger max");
  adam_element(ap, nan, am, av, avmax, ah, as, false, false, true);
  EXPECT(std::isnan(avmax), "amsgrad: a NaN second moment propagates into vmax, as torch.maximum does");
  // Non-finite detection from the bits.
  EXPECT(is_nonfinite(inf) && is_nonfinite(-inf) && is_nonfinite(nan), "inf/nan are non-finite");
  EXPECT(!is_nonfinite(std::numeric_limits<float>::max()) && !is_nonfinite(1e30f) && !is_nonfinite(1e-45f) &&
             !is_nonfinite(0.0f),
         "finite values are finite");
}

// The rules' switches, states in use and per-tensor step, as the ops use them.
void test_rule_interfaces() {
  using fusedopt::float_bits;
  const double sgd_plain[] = {0.1, 0.0, 0.0, 0.0}, sgd_momentum[] = {0.1, 0.01, 0.9, 0.0};
  EXPECT(SgdRule::switches(sgd_plain, 1) == 0, "sgd: nesterov without momentum switches nothing on");
  EXPECT(SgdRule::switches(sgd_momentum, 1) == (SgdRule::kWeightDecay | SgdRule::kMomentum | SgdRule::kNesterov),
         "sgd: weight decay, momentum, nesterov");
  EXPECT(!SgdRule::uses_state(0, SgdRule::switches(sgd_plain, 0)) &&
             SgdRule::uses_state(0, SgdRule::switches(sgd_momentum, 0)),
         "sgd: the momentum buffer only with momentum");
  const double adam_plain[] = {1e-3, 0.9, 0.999, 1e-8, 0.0}, adam_wd[] = {1e-3, 0.9, 0.999, 1e-8, 0.1};
  EXPECT(AdamRule::switches(adam_plain, 2) == 0, "adam: decoupled without weight decay switches nothing on");
  EXPECT(AdamRule::switches(adam_wd, 3) == (AdamRule::kWeightDecay | AdamRule::kDecoupled | AdamRule::kAmsgrad),
         "adam: weight decay, decoupled, amsgrad");
  EXPECT(AdamRule::uses_state(0, 0) && AdamRule::uses_state(1, 0) && !AdamRule::uses_state(2, 0) &&
             AdamRule::uses_state(2, AdamRule::kAmsgrad),
         "adam: max_exp_avg_sq only with amsgrad");
  float step = 2.0f;
  float* scalars[] = {&step};
  const AdamRule::PerTensor t = AdamRule::per_tensor(adam_wd, scalars, false);
  const AdamRule::PerTensor want = AdamRule::coefficients(1e-3, 0.9, 0.999, 3.0);
  EXPECT(step == 3.0f && float_bits(t.step_size) == float_bits(want.step_size) &&
             float_bits(t.bc2_sqrt) == float_bits(want.bc2_sqrt),
         "adam: per_tensor advances the step, then uses the new count");
}

// ---------------------------------------------------------------------------------------------------------------
// Conversions.

uint32_t bits(float x) { return fusedopt::float_bits(x); }
float from_bits(uint32_t u) { return fusedopt::bits_float(u); }

void expect_bf16(uint32_t in, uint16_t want) {
  uint16_t got = fusedopt::float_to_bf16(from_bits(in));
  EXPECT(got == want, "float_to_bf16(0x%08x) = 0x%04x, want 0x%04x", in, got, want);
}

void expect_fp16(uint32_t in, uint16_t want) {
  uint16_t got = fusedopt::float_to_fp16(from_bits(in));
  EXPECT(got == want, "float_to_fp16(0x%08x) = 0x%04x, want 0x%04x", in, got, want);
}

bool is_nan16(uint16_t h, int exp_bits) {
  uint16_t exp_mask = exp_bits == 8 ? 0x7F80 : 0x7C00;
  return (h & exp_mask) == exp_mask && (h & ~exp_mask & 0x7FFF) != 0;
}

// Independent oracle: the nearest of the two bracketing representable values (ties to the even one). `value`
// maps infinity to the next power of two past the largest finite value, which is how IEEE defines overflow.
template <typename Value>
uint16_t nearest(double x, uint16_t lo, uint16_t hi, Value value) {
  double dl = std::fabs(x) - std::fabs(value(lo)), dh = std::fabs(value(hi)) - std::fabs(x);
  if (dl < dh) return lo;
  if (dh < dl) return hi;
  return (lo & 1) ? hi : lo;
}

void test_bf16() {
  expect_bf16(0x3F800000, 0x3F80);  // 1
  expect_bf16(0xBF800000, 0xBF80);  // -1
  expect_bf16(0x80000000, 0x8000);  // -0
  expect_bf16(0x3F808000, 0x3F80);  // tie, even below
  expect_bf16(0x3F818000, 0x3F82);  // tie, even above
  expect_bf16(0x3F808001, 0x3F81);  // just above the tie
  expect_bf16(0x3F807FFF, 0x3F80);  // just below the tie
  expect_bf16(0x7F7FFFFF, 0x7F80);  // FLT_MAX rounds to inf
  expect_bf16(0x7F7F7FFF, 0x7F7F);  // largest finite stays finite
  expect_bf16(0x7F800000, 0x7F80);  // inf
  expect_bf16(0xFF800000, 0xFF80);  // -inf
  expect_bf16(0x00000001, 0x0000);  // smallest float subnormal rounds to 0
  expect_bf16(0x00018000, 0x0002);  // subnormal tie, even above
  expect_bf16(0x00008000, 0x0000);  // subnormal tie, even below
  expect_bf16(0x7FC00000, 0x7FC0);  // quiet NaN
  expect_bf16(0xFFC00000, 0xFFC0);  // negative NaN keeps its sign
  // NaNs whose payload sits in the dropped bits must stay NaN (plain rounding would give inf or wrap).
  for (uint32_t nan : {0x7F800001u, 0x7F80FFFFu, 0x7FFFFFFFu, 0xFFFFFFFFu, 0xFF800001u}) {
    uint16_t h = fusedopt::float_to_bf16(from_bits(nan));
    EXPECT(is_nan16(h, 8) && (h >> 15) == (nan >> 31), "float_to_bf16(0x%08x) = 0x%04x is not a NaN of that sign",
           nan, h);
  }
  // Every NaN, whatever its dropped bits: sign and top payload kept, the quiet bit forced.
  for (uint32_t sign : {0u, 0x80000000u}) {
    for (uint32_t m = 1; m < (1u << 23); ++m) {
      const uint32_t nan = sign | 0x7F800000u | m;
      const uint16_t h = fusedopt::float_to_bf16(from_bits(nan));
      EXPECT(h == uint16_t((nan >> 16) | 0x0040u), "float_to_bf16(NaN 0x%08x) = 0x%04x", nan, h);
    }
  }
  // Every bf16 value converts to float exactly and back to itself (NaNs: to a NaN).
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    float f = fusedopt::bf16_to_float(uint16_t(h));
    EXPECT(bits(f) == h << 16, "bf16_to_float(0x%04x)", h);
    uint16_t back = fusedopt::float_to_bf16(f);
    EXPECT(is_nan16(uint16_t(h), 8) ? is_nan16(back, 8) : back == h, "bf16 round trip 0x%04x -> 0x%04x", h, back);
  }
  // Many floats against the oracle.
  Lcg rng{3};
  auto value = [](uint16_t h) {
    return (h & 0x7FFF) == 0x7F80 ? std::ldexp(1.0, 128) : double(fusedopt::bf16_to_float(h));
  };
  for (int k = 0; k < 2000000; ++k) {
    uint32_t u = rng.next();
    if ((u & 0x7F800000u) == 0x7F800000u) continue;  // inf/NaN covered above
    uint16_t lo = uint16_t(u >> 16), hi = uint16_t(lo + 1);
    uint16_t want = nearest(double(from_bits(u)), lo, hi, value);
    expect_bf16(u, want);
  }
}

void test_fp16() {
  expect_fp16(0x3F800000, 0x3C00);  // 1
  expect_fp16(0x80000000, 0x8000);  // -0
  expect_fp16(0x477FE000, 0x7BFF);  // 65504, largest finite
  expect_fp16(0x477FEFFF, 0x7BFF);  // just below the overflow threshold
  expect_fp16(0x477FF000, 0x7C00);  // 65520: the tie rounds to inf
  expect_fp16(0x7F7FFFFF, 0x7C00);  // FLT_MAX
  expect_fp16(0xC77FF000, 0xFC00);  // -65520
  expect_fp16(0x7F800000, 0x7C00);  // inf
  expect_fp16(0xFF800000, 0xFC00);  // -inf
  expect_fp16(0x3F801000, 0x3C00);  // 1 + 2^-11: tie, even below
  expect_fp16(0x3F803000, 0x3C02);  // 1 + 3 * 2^-11: tie, even above
  expect_fp16(0x3F801001, 0x3C01);  // just above the tie
  expect_fp16(0x33800000, 0x0001);  // 2^-24, smallest subnormal
  expect_fp16(0x33000000, 0x0000);  // 2^-25: tie with 0, even below
  expect_fp16(0x33000001, 0x0001);  // just above
  expect_fp16(0x33C00000, 0x0002);  // 3 * 2^-25: tie, even above
  expect_fp16(0x387FC000, 0x03FF);  // 1023 * 2^-24, largest subnormal
  expect_fp16(0x387FE000, 0x0400);  // tie between largest subnormal and smallest normal
  expect_fp16(0x38800000, 0x0400);  // 2^-14, smallest normal
  expect_fp16(0x2EDBE6FF, 0x0000);  // 1e-10
  expect_fp16(0x00000001, 0x0000);  // float subnormal
  expect_fp16(0x7FC00000, 0x7E00);  // quiet NaN
  expect_fp16(0xFFC00000, 0xFE00);  // negative NaN keeps its sign
  expect_fp16(0x7FA00000, 0x7F00);  // payload kept, made quiet
  for (uint32_t nan : {0x7F800001u, 0x7FFFFFFFu, 0xFF800001u}) {
    uint16_t h = fusedopt::float_to_fp16(from_bits(nan));
    EXPECT(is_nan16(h, 5) && (h >> 15) == (nan >> 31), "float_to_fp16(0x%08x) = 0x%04x is not a NaN of that sign",
           nan, h);
  }
  EXPECT(bits(fusedopt::fp16_to_float(0x0001)) == 0x33800000, "fp16 smallest subnormal");
  EXPECT(bits(fusedopt::fp16_to_float(0x03FF)) == 0x387FC000, "fp16 largest subnormal");
  EXPECT(bits(fusedopt::fp16_to_float(0x8001)) == 0xB3800000, "fp16 negative subnormal");
  EXPECT(bits(fusedopt::fp16_to_float(0x7BFF)) == 0x477FE000, "fp16 largest finite");
  EXPECT(bits(fusedopt::fp16_to_float(0x7C00)) == 0x7F800000, "fp16 inf");
  EXPECT(bits(fusedopt::fp16_to_float(0xFC00)) == 0xFF800000, "fp16 -inf");
  EXPECT(bits(fusedopt::fp16_to_float(0x7D00)) == 0x7FA00000, "fp16 NaN payload");
  EXPECT(bits(fusedopt::fp16_to_float(0x8000)) == 0x80000000, "fp16 -0");
  // Every fp16 value: to float matches the value formula exactly, and converts back to itself (NaNs: a NaN).
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    float f = fusedopt::fp16_to_float(uint16_t(h));
    uint32_t e = (h >> 10) & 0x1F, mant = h & 0x3FF;
    double want = e == 0 ? std::ldexp(double(mant), -24) : std::ldexp(1.0 + mant / 1024.0, int(e) - 15);
    if (h & 0x8000) want = -want;
    if (e != 31) EXPECT(double(f) == want && std::signbit(f) == bool(h & 0x8000), "fp16_to_float(0x%04x)", h);
    uint16_t back = fusedopt::float_to_fp16(f);
    EXPECT(is_nan16(uint16_t(h), 5) ? is_nan16(back, 5) : back == h, "fp16 round trip 0x%04x -> 0x%04x", h, back);
  }
  // Many floats across fp16's range (and beyond it) against the oracle.
  std::vector<double> finite;  // all non-negative finite fp16 values, ascending
  for (uint16_t h = 0; h < 0x7C00; ++h) finite.push_back(fusedopt::fp16_to_float(h));
  auto value = [](uint16_t h) { return h == 0x7C00 ? 65536.0 : double(fusedopt::fp16_to_float(h)); };
  Lcg rng{5};
  for (int k = 0; k < 2000000; ++k) {
    // Exponents from 2^-30 to 2^18 cover zero-rounding, subnormals, normals and overflow.
    uint32_t u = (rng.next() & 0x807FFFFFu) | ((97u + rng.next() % 49u) << 23);
    double x = std::fabs(double(from_bits(u)));
    auto it = std::upper_bound(finite.begin(), finite.end(), x);
    uint16_t lo = uint16_t(it - finite.begin() - 1), hi = uint16_t(lo + 1);
    uint16_t want = nearest(x, lo, hi, value) | uint16_t((u >> 16) & 0x8000);
    expect_fp16(u, want);
  }
}

// split_bf16/join_bf16 (master remainders): every pair joins back to its float, and hi is float_to_bf16's
// value but at the ties that round to nearest even takes down.
void expect_split(uint32_t in, uint16_t want_hi, int16_t want_lo) {
  uint16_t hi;
  int16_t lo;
  fusedopt::split_bf16(from_bits(in), hi, lo);
  EXPECT(hi == want_hi && lo == want_lo, "split_bf16(0x%08x) = (0x%04x, %d), want (0x%04x, %d)", in, hi, lo,
         want_hi, want_lo);
}

// The properties of one float: the exact round trip (a NaN comes back quiet) and hi's rounding.
void check_split(uint32_t u) {
  uint16_t hi;
  int16_t lo;
  fusedopt::split_bf16(from_bits(u), hi, lo);
  const uint32_t back = bits(fusedopt::join_bf16(hi, lo));
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  const uint32_t want = nan ? u | 0x00400000u : u;
  EXPECT(back == want, "join_bf16(split_bf16(0x%08x)) = 0x%08x (hi 0x%04x, lo %d)", u, back, hi, lo);
  const uint16_t rne = fusedopt::float_to_bf16(from_bits(u));
  const bool even_tie = (u & 0xFFFFu) == 0x8000u && ((u >> 16) & 1u) == 0u;
  const uint16_t want_hi = nan ? rne : uint16_t(even_tie ? rne + 1 : rne);
  EXPECT(hi == want_hi, "split_bf16(0x%08x): hi 0x%04x, want 0x%04x", u, hi, want_hi);
}

void test_remainder() {
  expect_split(0x3F800000, 0x3F80, 0);       // 1
  expect_split(0x3F800001, 0x3F80, 1);       // just above 1
  expect_split(0x3F807FFF, 0x3F80, 32767);   // largest round down
  expect_split(0x3F808000, 0x3F81, -32768);  // tie, truncation even: rounds up (nearest even would not)
  expect_split(0x3F818000, 0x3F82, -32768);  // tie, truncation odd: up, as nearest even
  expect_split(0x3F7FFFFF, 0x3F80, -1);      // carry into the exponent
  expect_split(0xBF7FFFFF, 0xBF80, -1);      // the same, negative: the magnitude rounds
  expect_split(0x00000000, 0x0000, 0);       // +0
  expect_split(0x80000000, 0x8000, 0);       // -0 keeps its sign
  expect_split(0x80000001, 0x8000, 1);       // the smallest negative subnormal: hi is -0
  expect_split(0x0000FFFF, 0x0001, -1);      // subnormal rounding up to a bf16 subnormal
  expect_split(0x007FFFFF, 0x0080, -1);      // largest subnormal rounds up to the smallest normal
  expect_split(0x7F7F7FFF, 0x7F7F, 32767);   // largest float with a finite hi
  expect_split(0x7F7F8000, 0x7F80, -32768);  // ... one more: hi is inf, the master finite
  expect_split(0x7F7FFFFF, 0x7F80, -1);      // FLT_MAX: hi inf, as float_to_bf16 gives
  expect_split(0xFF7FFFFF, 0xFF80, -1);      // -FLT_MAX
  expect_split(0x7F800000, 0x7F80, 0);       // inf
  expect_split(0xFF800000, 0xFF80, 0);       // -inf
  expect_split(0x7FC00000, 0x7FC0, 0);       // quiet NaN
  expect_split(0x7F800001, 0x7FC0, 1);       // a NaN whose payload is all in the low bits: no carry to inf
  expect_split(0x7FFFFFFF, 0x7FFF, -1);      // ... or into the sign
  expect_split(0xFFFF8000, 0xFFFF, -32768);  // negative NaN
  // Pairs split_bf16 never gives (a param written from outside) join to finite values near hi, not NaN.
  EXPECT(bits(fusedopt::join_bf16(0x0000, -1)) == 0x0000FFFFu, "join_bf16(+0, -1) = 0x%08x",
         bits(fusedopt::join_bf16(0x0000, -1)));
  EXPECT(bits(fusedopt::join_bf16(0x8000, -1)) == 0x8000FFFFu, "join_bf16(-0, -1) = 0x%08x",
         bits(fusedopt::join_bf16(0x8000, -1)));
  // Every bf16 pattern with edge and random low halves; every low half of a few bf16 values.
  Lcg rng{5};
  const uint32_t edges[] = {0x0000, 0x0001, 0x7FFE, 0x7FFF, 0x8000, 0x8001, 0xFFFE, 0xFFFF};
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    for (uint32_t low : edges) check_split((h << 16) | low);
    for (int k = 0; k < 24; ++k) check_split((h << 16) | (rng.next() & 0xFFFFu));
  }
  for (uint32_t h : {0x0000u, 0x0080u, 0x3F7Fu, 0x3F80u, 0x7F7Fu, 0x7F80u, 0x7FC0u, 0x8000u, 0xBF80u, 0xFF7Fu}) {
    for (uint32_t low = 0; low <= 0xFFFF; ++low) check_split((h << 16) | low);
  }
}

}  // namespace

int main() {
  const AdamCase adam_cases[] = {
      {"default", 1e-3, 0.9, 0.999, 1e-8, 0.0, false, false, false, 1.0},
      {"coupled weight decay", 1e-2, 0.9, 0.999, 1e-8, 0.1, false, false, false, 1.0},
      {"decoupled weight decay", 1e-2, 0.9, 0.999, 1e-8, 0.1, true, false, false, 1.0},
      {"amsgrad", 1e-3, 0.9, 0.99, 1e-8, 0.0, false, true, false, 1.0},
      {"amsgrad maximize decoupled", 1e-3, 0.9, 0.999, 1e-8, 0.05, true, true, true, 1.0},
      {"beta1 0.3 (lerp branch 2)", 1e-2, 0.3, 0.9, 1e-6, 0.0, false, false, false, 1.0},
      {"clipped", 1e-3, 0.9, 0.999, 1e-8, 0.01, false, false, false, 0.25},
  };
  for (const auto& c : adam_cases) test_adam(c);
  const SgdCase sgd_cases[] = {
      {"plain", 0.1, 0.0, 0.0, 0.0, false, false, 1.0},
      {"weight decay maximize", 0.1, 0.1, 0.0, 0.0, false, true, 1.0},
      {"momentum", 0.05, 0.0, 0.9, 0.0, false, false, 1.0},
      {"momentum dampening wd", 0.05, 0.01, 0.9, 0.3, false, false, 1.0},
      {"nesterov maximize clipped", 0.05, 0.01, 0.9, 0.0, true, true, 0.37},
  };
  for (const auto& c : sgd_cases) test_sgd(c);
  test_element_details();
  test_rule_interfaces();
  test_torch_roundings();
  test_bf16();
  test_fp16();
  test_remainder();
  if (failures) {
    printf("%d check(s) failed\n", failures);
    return 1;
  }
  printf("all math.h checks passed\n");
  return 0;
}
