// Raw-pointer interface of the CPU kernels. bindings.cpp validates the Tensors and fills these structs; the
// kernel files never see a Tensor, which keeps torch/extension.h out of them.
#pragma once

#include <stdint.h>

#include <vector>

namespace fusedopt::cpu {

enum class Dtype : uint8_t { Float32, BFloat16, Float16 };

struct GradView {
  const void* data;
  int64_t numel;
  Dtype dtype;
};

struct CheckResult {
  double sumsq;
  bool nonfinite;
};

// Sum of squares over all grads (fp32 within blocks, double across) and whether any element is inf/NaN.
CheckResult check(const std::vector<GradView>& grads);

// What happens to a gradient before the update rule (the optional arguments of the ops).
struct GradPrep {
  bool has_grad_scale;
  float grad_scale;  // grad is divided by it and the result written back
  bool has_clip;
  float clip_coef;
  bool maximize;
};

// Params and grads share `dtype`; states are all `state_dtype` (Float32 or BFloat16); every list has one entry
// per param (numels[i] elements) or is empty where unused. With master_params, the update reads and writes the
// fp32 master copy and stores its new value, rounded to `dtype`, into the param. lr is a host double (the CPU
// op reads a lr_tensor on the host: no sync on CPU).
struct SgdArgs {
  Dtype dtype;
  Dtype state_dtype = Dtype::Float32;
  std::vector<void*> params;
  std::vector<void*> grads;
  std::vector<float*> master_params;     // empty: no master copy
  std::vector<void*> momentum_buffers;   // empty when momentum == 0
  std::vector<uint8_t> is_first;
  std::vector<int64_t> numels;
  double lr, weight_decay, momentum, dampening;
  bool nesterov;
  GradPrep grad;
};

void sgd_update(const SgdArgs& args);

struct AdamArgs {
  Dtype dtype;
  Dtype state_dtype = Dtype::Float32;
  std::vector<void*> params;
  std::vector<void*> grads;
  std::vector<float*> master_params;    // empty: no master copy
  std::vector<void*> exp_avgs;
  std::vector<void*> exp_avg_sqs;
  std::vector<void*> max_exp_avg_sqs;  // empty unless amsgrad
  std::vector<float*> steps;            // one float each, incremented here
  std::vector<int64_t> numels;
  double lr, beta1, beta2, eps, weight_decay;
  bool amsgrad, decoupled;
  GradPrep grad;
};

void adam_update(const AdamArgs& args);

}  // namespace fusedopt::cpu
