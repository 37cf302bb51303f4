// SGD (momentum, dampening, Nesterov) over all tensors of a group in one parallel loop; the element rule is
// math.h's.
#include "fusedopt/math.h"
#include "kernels.h"
#include "multi_tensor.h"

namespace fusedopt::cpu {
namespace {

// The whole kernel: a loop over fp32 arrays (restrict, scalars by value, so it vectorizes without alias checks).
template <bool UNSCALE, bool WD, bool MOMENTUM, bool NESTEROV>
FUSEDOPT_INLINE void sgd_fp32(float* __restrict__ p, float* __restrict__ g, float* __restrict__ buf, int64_t n,
                              const bool first, const SgdHyper hyper, const float grad_scale, const float factor) {
  // No overlap between the arrays (bindings.cpp checks it): no runtime alias checks needed.
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    float gi = take_grad<UNSCALE>(g[i], grad_scale, factor);
    float buf_i = MOMENTUM ? buf[i] : 0.0f;
    sgd_element(p[i], gi, buf_i, first, hyper, WD, MOMENTUM, NESTEROV);
    if (MOMENTUM) buf[i] = buf_i;
  }
}

// One segment of one tensor; bf16/fp16 params and grads, and bf16 buffers, go through fp32 blocks.
template <typename S, bool UNSCALE, bool WD, bool MOMENTUM, bool NESTEROV>
FUSEDOPT_CLONES void sgd_segment(const ParamSpan<1>& span, bool bf16_states, bool first, int64_t begin, int64_t end,
                                 SgdHyper hyper, float grad_scale, float factor) {
  for_fp32_blocks<S, UNSCALE>(span, bf16_states, begin, end,
                              [&](float* p, float* g, const std::array<float*, 1>& buf, int64_t n)
                                  FUSEDOPT_LAMBDA_INLINE {
    sgd_fp32<UNSCALE, WD, MOMENTUM, NESTEROV>(p, g, buf[0], n, first, hyper, grad_scale, factor);
  });
}

template <typename S, bool UNSCALE, bool WD, bool MOMENTUM, bool NESTEROV>
void run(const SgdArgs& a, const SgdHyper& hyper, float factor) {
  ChunkTable table(a.numels);
  const bool bf16_states = a.state_dtype == Dtype::BFloat16;
  table.parallel_for_each([&](int64_t, const Segment& s) {
    int64_t t = s.tensor;
    const ParamSpan<1> span{a.params[t], a.grads[t], a.master_params.empty() ? nullptr : a.master_params[t],
                            {MOMENTUM ? a.momentum_buffers[t] : nullptr}};
    sgd_segment<S, UNSCALE, WD, MOMENTUM, NESTEROV>(span, bf16_states, MOMENTUM && a.is_first[t], s.begin, s.end,
                                                    hyper, a.grad.grad_scale, factor);
  });
}

}  // namespace

void sgd_update(const SgdArgs& a) {
  const SgdHyper hyper = sgd_hyper(a.lr, a.weight_decay, a.momentum, a.dampening);
  float factor = grad_factor(a.grad.has_clip, a.grad.clip_coef, a.grad.maximize);
  bool momentum = a.momentum != 0.0;
  with_dtype(a.dtype, [&](auto s) {
    using S = decltype(s);
    with_bool(a.grad.has_grad_scale, [&](auto unscale) {
      with_bool(a.weight_decay != 0.0, [&](auto weight_decay) {
        with_bool(momentum, [&](auto use_momentum) {
          with_bool(momentum && a.nesterov, [&](auto nesterov) {
            run<S, unscale.value, weight_decay.value, use_momentum.value, nesterov.value>(a, hyper, factor);
          });
        });
      });
    });
  });
}

}  // namespace fusedopt::cpu
