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

// One update call of a rule (math.h; op contract v3, fusedopt/reference.py), filled by validate::fill_update.
// Params and grads share `dtype`; states are all `state_dtype` (Float32 or BFloat16). With n params (numels[i]
// elements each): states[k * n + i] is the rule's state k of param i (nullptr where the rule does not use state
// k under `switches`), scalars[j * n + i] its j-th scalar state (a host float: the CPU op reads it on the host,
// no sync), is_first is empty or one entry per param. With master_params, the update reads and writes the fp32
// master copy and stores its new value, rounded to `dtype`, into the param. hyper[0] is the learning rate
// (lr_tensor's value when given, read on the host).
struct UpdateArgs {
  Dtype dtype = Dtype::Float32;
  Dtype state_dtype = Dtype::Float32;
  std::vector<void*> params;
  std::vector<void*> grads;
  std::vector<float*> master_params;  // empty: no master copy
  std::vector<void*> states;
  std::vector<float*> scalars;         // advanced here (Rule::per_tensor)
  std::vector<uint8_t> is_first;
  std::vector<int64_t> numels;
  std::vector<double> hyper;
  uint32_t flags = 0;
  uint32_t switches = 0;               // Rule::switches(hyper, flags)
  GradPrep grad;
};

// Instantiated for every rule of fusedopt/rules.h's list (csrc/cpu/update.cpp).
template <typename Rule>
void update(const UpdateArgs& args);

}  // namespace fusedopt::cpu
