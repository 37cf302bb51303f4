// The update of every rule (math.h) over all tensors of a group in one parallel loop: one loop, generic over the
// rule, the storage type, GradScaler's unscale and the rule's switches, all template arguments, so that each
// instantiation is a branch-free fp32 loop the compiler vectorizes. Included by update_*.cpp only, each of which
// instantiates a share of the rules (the end of this file).
#pragma once

#include <stddef.h>

#include <array>
#include <cstring>
#include <utility>

#include "fusedopt/math.h"
#include "fusedopt/rules.h"
#include "kernels.h"
#include "multi_tensor.h"

namespace fusedopt::cpu {
namespace loop {  // not an unnamed namespace: this header is in several translation units

// The element's state values from the state arrays, and back; states the rule does not use under SW have no
// array (nullptr), are passed as 0 and not stored. Folds over the state indices, so no loop is left for the
// vectorizer to trip over.
template <typename Rule, uint32_t SW, int... K>
FUSEDOPT_INLINE void load_states(float (&v)[Rule::kStates], float* const (&s)[Rule::kStates], int64_t i,
                                 std::integer_sequence<int, K...>) {
  ((v[K] = Rule::uses_state(K, SW) ? s[K][i] : 0.0f), ...);
}

template <typename Rule, uint32_t SW, int... K>
FUSEDOPT_INLINE void store_states(const float (&v)[Rule::kStates], float* const (&s)[Rule::kStates], int64_t i,
                                  std::integer_sequence<int, K...>) {
  ((Rule::uses_state(K, SW) ? void(s[K][i] = v[K]) : void()), ...);
}

// The whole kernel: a loop over fp32 arrays (scalars by value, so it vectorizes without alias checks).
template <typename Rule, bool UNSCALE, uint32_t SW>
FUSEDOPT_INLINE void update_fp32(float* __restrict__ p, float* __restrict__ g,
                                 const std::array<float*, Rule::kStates>& states, int64_t n,
                                 const typename Rule::Hyper hyper, const typename Rule::PerTensor pt,
                                 const float grad_scale, const float factor) {
  constexpr auto kIndices = std::make_integer_sequence<int, Rule::kStates>{};
  float* s[Rule::kStates];
  for (int k = 0; k < Rule::kStates; ++k) s[k] = states[k];
  // No overlap between the arrays (validate.h checks it): no runtime alias checks needed.
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    float gi = take_grad<UNSCALE>(g[i], grad_scale, factor);
    float v[Rule::kStates];
    load_states<Rule, SW>(v, s, i, kIndices);
    Rule::template element<SW>(p[i], gi, v, hyper, pt);
    store_states<Rule, SW>(v, s, i, kIndices);
  }
}

// One segment of one tensor; bf16/fp16 params and grads, and bf16 states, go through fp32 blocks.
template <typename Rule, typename S, bool UNSCALE, uint32_t SW>
FUSEDOPT_INLINE void update_segment(const ParamSpan<Rule::kStates>& span, bool bf16_states, int64_t begin,
                                    int64_t end, typename Rule::Hyper hyper, typename Rule::PerTensor pt,
                                    float grad_scale, float factor) {
  for_fp32_blocks<S, UNSCALE>(span, bf16_states, begin, end,
                              [&](float* p, float* g, const std::array<float*, Rule::kStates>& st, int64_t n)
                                  FUSEDOPT_LAMBDA_INLINE {
    update_fp32<Rule, UNSCALE, SW>(p, g, st, n, hyper, pt, grad_scale, factor);
  });
}

template <typename Rule, typename S, bool UNSCALE, uint32_t SW>
void run(Isa isa, const UpdateArgs& a, const typename Rule::Hyper& hyper,
         const std::vector<typename Rule::PerTensor>& pts, const std::vector<RoundingKey>& keys, float factor) {
  ChunkTable table(a.numels);
  const size_t n = a.numels.size();
  const bool bf16_states = a.state_dtype == Dtype::BFloat16;
  table.parallel_for_each([&](int64_t, const Segment& s) {
    const size_t t = size_t(s.tensor);
    void* master = a.master_params.empty() ? nullptr : a.master_params[t];
    ParamSpan<Rule::kStates> span{a.params[t], a.grads[t], a.master_remainder ? nullptr : static_cast<float*>(master),
                                  a.master_remainder ? static_cast<int16_t*>(master) : nullptr, {},
                                  keys.empty() ? nullptr : &keys[t]};
    for (int k = 0; k < Rule::kStates; ++k) span.states[k] = a.states[size_t(k) * n + t];
    with_isa(isa, [&]() FUSEDOPT_LAMBDA_INLINE {
      update_segment<Rule, S, UNSCALE, SW>(span, bf16_states, s.begin, s.end, hyper, pts[t], a.grad.grad_scale,
                                           factor);
    });
  });
}

}  // namespace loop

template <typename Rule>
void update(const UpdateArgs& a) {
  const Isa isa = active_isa();  // first: it may throw (FUSEDOPT_CPU_ISA), before anything has changed
  const typename Rule::Hyper hyper = Rule::hyper(a.hyper.data());
  // Per tensor on the host (its scalar states are host floats): advance them, then its coefficients.
  // per_tensor is a function of the hyperparameters, the scalar states and `first` alone (math.h), and the
  // params of a group nearly always share their step counts: a tensor whose scalar states and `first` have the
  // previous one's bits gets the previous one's results (the same bits per_tensor would give it) without the
  // pows (Adam's three per tensor were a visible part of a step over many small params).
  const size_t n = a.numels.size();
  std::vector<typename Rule::PerTensor> pts(n);
  std::array<float*, Rule::kScalars> scalars{};
  std::array<uint32_t, Rule::kScalars> before{}, prev_before{}, prev_after{};
  bool prev_first = false;
  for (size_t i = 0; i < n; ++i) {
    const bool first = !a.is_first.empty() && a.is_first[i] != 0;
    for (int j = 0; j < Rule::kScalars; ++j) {
      scalars[j] = a.scalars[size_t(j) * n + i];
      std::memcpy(&before[j], scalars[j], sizeof(float));
    }
    if (i > 0 && first == prev_first && before == prev_before) {
      pts[i] = pts[i - 1];
      for (int j = 0; j < Rule::kScalars; ++j) std::memcpy(scalars[j], &prev_after[j], sizeof(float));
      continue;
    }
    pts[i] = Rule::per_tensor(a.hyper.data(), scalars.data(), first);
    prev_first = first;
    prev_before = before;
    for (int j = 0; j < Rule::kScalars; ++j) std::memcpy(&prev_after[j], scalars[j], sizeof(float));
  }

  // Stochastic rounding: each param's key, with the rounding step read here on the host (its low 32 bits).
  std::vector<RoundingKey> keys;
  if (a.rounding_step != nullptr) {
    const auto step = uint32_t(uint64_t(*a.rounding_step));
    keys.resize(n);
    for (size_t i = 0; i < n; ++i) keys[i] = RoundingKey{a.seed_lo, a.seed_hi, a.param_ids[i], step};
  }

  const float factor = grad_factor(a.grad.has_clip, a.grad.clip_coef, a.grad.maximize);
  with_dtype(a.dtype, [&](auto s) {
    using S = decltype(s);
    with_bool(a.grad.has_grad_scale, [&](auto unscale) {
      with_switches<Rule::kSwitchBits>(a.switches, [&](auto sw) {
        loop::run<Rule, S, unscale.value, sw.value>(isa, a, hyper, pts, keys, factor);
      });
    });
  });
}

// The CPU loops are compiled in kUpdateParts translation units, update_0.cpp ... update_<kUpdateParts - 1>.cpp, each
// instantiating update<Rule> for its share of the rules (rules.h, RulesPart): one file with every rule's three ISA
// variants took minutes on one core while the build's other core sat idle.
constexpr size_t kUpdateParts = 3;

// update<R> for every rule of a list, in a table with external linkage, so that each is emitted for the ops in
// bindings.cpp to link against (adding a rule to fusedopt/rules.h is all it takes).
template <typename... R>
constexpr std::array<void (*)(const UpdateArgs&), sizeof...(R)> update_instances(Rules<R...>) {
  return {&update<R>...};
}

}  // namespace fusedopt::cpu

// The body of update_PART.cpp: the share PART of the rules.
#define FUSEDOPT_CPU_UPDATE_PART(PART)                                                                   \
  namespace fusedopt::cpu {                                                                             \
  static_assert(PART < kUpdateParts, "update_" #PART ".cpp: no such share (kUpdateParts, update.h)");   \
  FUSEDOPT_RULES_PART_TABLE(update_instances, PART, kUpdateParts)                                       \
  }
