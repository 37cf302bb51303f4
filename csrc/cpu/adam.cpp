// Adam / AdamW update over all tensors of a group in one parallel loop; the element rule is math.h's.
#include "fusedopt/math.h"
#include "kernels.h"
#include "multi_tensor.h"

namespace fusedopt::cpu {
namespace {

// The whole kernel: a loop over fp32 arrays (restrict, scalars by value, so it vectorizes without alias checks).
template <bool UNSCALE, bool WD, bool DECOUPLED, bool AMSGRAD>
FUSEDOPT_INLINE void adam_fp32(float* __restrict__ p, float* __restrict__ g, float* __restrict__ m,
                               float* __restrict__ v, float* __restrict__ vmax, int64_t n, const AdamHyper hyper,
                               const AdamStep step, const float grad_scale, const float factor) {
  // No overlap between the arrays (bindings.cpp checks it): no runtime alias checks needed.
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    float gi = take_grad<UNSCALE>(g[i], grad_scale, factor);
    float vmax_i = AMSGRAD ? vmax[i] : 0.0f;
    adam_element(p[i], gi, m[i], v[i], vmax_i, hyper, step, WD, DECOUPLED, AMSGRAD);
    if (AMSGRAD) vmax[i] = vmax_i;
  }
}

// One segment of one tensor; bf16/fp16 params and grads, and bf16 states, go through fp32 blocks.
template <typename S, bool UNSCALE, bool WD, bool DECOUPLED, bool AMSGRAD>
FUSEDOPT_CLONES void adam_segment(const ParamSpan<3>& span, bool bf16_states, int64_t begin, int64_t end,
                                  AdamHyper hyper, AdamStep step, float grad_scale, float factor) {
  for_fp32_blocks<S, UNSCALE>(span, bf16_states, begin, end,
                              [&](float* p, float* g, const std::array<float*, 3>& st, int64_t n)
                                  FUSEDOPT_LAMBDA_INLINE {
    adam_fp32<UNSCALE, WD, DECOUPLED, AMSGRAD>(p, g, st[0], st[1], st[2], n, hyper, step, grad_scale, factor);
  });
}

template <typename S, bool UNSCALE, bool WD, bool DECOUPLED, bool AMSGRAD>
void run(const AdamArgs& a, const AdamHyper& hyper, const std::vector<AdamStep>& steps, float factor) {
  ChunkTable table(a.numels);
  const bool bf16_states = a.state_dtype == Dtype::BFloat16;
  table.parallel_for_each([&](int64_t, const Segment& s) {
    int64_t t = s.tensor;
    const ParamSpan<3> span{a.params[t], a.grads[t], a.master_params.empty() ? nullptr : a.master_params[t],
                            {a.exp_avgs[t], a.exp_avg_sqs[t], AMSGRAD ? a.max_exp_avg_sqs[t] : nullptr}};
    adam_segment<S, UNSCALE, WD, DECOUPLED, AMSGRAD>(span, bf16_states, s.begin, s.end, hyper, steps[t],
                                                     a.grad.grad_scale, factor);
  });
}

}  // namespace

void adam_update(const AdamArgs& a) {
  const AdamHyper hyper = adam_hyper(a.lr, a.beta1, a.beta2, a.eps, a.weight_decay);
  // Each step count advances, then its bias corrections use the new count (as torch.optim does).
  std::vector<AdamStep> steps(a.steps.size());
  for (size_t i = 0; i < a.steps.size(); ++i) {
    *a.steps[i] += 1.0f;
    steps[i] = adam_step(a.lr, a.beta1, a.beta2, *a.steps[i]);
  }

  float factor = grad_factor(a.grad.has_clip, a.grad.clip_coef, a.grad.maximize);
  bool wd = a.weight_decay != 0.0;
  with_dtype(a.dtype, [&](auto s) {
    using S = decltype(s);
    with_bool(a.grad.has_grad_scale, [&](auto unscale) {
      with_bool(wd, [&](auto weight_decay) {
        with_bool(a.decoupled && wd, [&](auto decoupled) {
          with_bool(a.amsgrad, [&](auto amsgrad) {
            run<S, unscale.value, weight_decay.value, decoupled.value, amsgrad.value>(a, hyper, steps, factor);
          });
        });
      });
    });
  });
}

}  // namespace fusedopt::cpu
