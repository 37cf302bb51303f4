// Raw-pointer interface of the CUDA kernels. csrc/cuda/bindings_cuda.cpp validates the Tensors (the checks the
// CPU ops share, csrc/validate.h) and fills these structs; the .cu files never see a Tensor, which keeps
// torch/extension.h out of them (each TU with it costs about a minute to compile). Everything runs on the
// caller's stream; nothing here synchronizes with the host.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include <vector>

namespace fusedopt::cuda {

enum class Dtype : uint8_t { Float32, BFloat16, Float16 };

// Optional 1-element float32 device tensors (nullptr when absent), read by the kernels on the device.
struct DeviceScalars {
  const float* lr = nullptr;          // lr_tensor: replaces the float lr
  const float* grad_scale = nullptr;  // grads are divided by it, and the result written back
  const float* clip_coef = nullptr;   // grads are multiplied by it (not written back)
  const float* found_inf = nullptr;   // non-zero: the kernels write nothing, step counts included
};

struct GradView {
  const void* data;
  int64_t numel;
  Dtype dtype;
};

// Floats of device workspace check() needs for these grads (2 per thread block; at least 2).
int64_t check_workspace_floats(const std::vector<GradView>& grads);

// out[0] = sum of squares of all grads (fp32 per block, double across blocks, in a fixed order: deterministic),
// out[1] = 1 if any element is inf/NaN else 0. `workspace` holds check_workspace_floats(grads) floats.
void check(const std::vector<GradView>& grads, float* workspace, float* out, cudaStream_t stream);

// The generic update (update.cuh) of a rule of math.h (`Rule`, e.g. AdamRule), filled by validate::fill_update
// (the CPU op's fields, op contract v4: fusedopt/reference.py). With n params (numels[i] elements each):
// states[k * n + i] is the rule's state k of param i (nullptr where the rule does not use state k under
// `switches`), scalars[j * n + i] its j-th scalar state (a device float, advanced on the device unless the step
// is skipped), is_first is empty or one entry per param. States are all state_dtype (fp32 or bf16);
// master_params is empty or full: fp32 masters, or (master_remainder, bf16 params) int16 remainders, the master
// being join_bf16(param, remainder) (math.h).
struct UpdateArgs {
  Dtype dtype = Dtype::Float32;
  Dtype state_dtype = Dtype::Float32;
  std::vector<void*> params, grads;
  std::vector<void*> master_params;  // empty: no master copy; float* masters, or int16_t* remainders
  bool master_remainder = false;
  std::vector<void*> states;
  std::vector<float*> scalars;
  std::vector<uint8_t> is_first;
  std::vector<int64_t> numels;
  std::vector<double> hyper;  // Rule::kHyper host doubles; hyper[0] = lr, replaced by dev.lr when given
  uint32_t flags = 0;         // bit i: the rule's switch kFlagNames[i]
  uint32_t switches = 0;      // Rule::switches(hyper, flags)
  bool maximize = false;
  DeviceScalars dev;
  // Stochastic rounding of the (bf16) params (math.h, kFlagStochasticRounding): rounding_step non-null (the
  // int64 count, read on the device), the seed's words and one id per param; else the params round to nearest.
  const int64_t* rounding_step = nullptr;
  uint32_t seed_lo = 0, seed_hi = 0;
  std::vector<uint32_t> param_ids;
};

// Floats of device scratch update<Rule> needs for `tensors` params: the rule's per-tensor coefficients, written
// by the kernels before they read them; none for a rule without scalar states (each block computes its own).
template <class Rule>
int64_t update_scratch_floats(int64_t tensors) {
  static_assert(alignof(typename Rule::PerTensor) <= 16, "PerTensor lives in float scratch memory");
  return Rule::kScalars == 0 ? 0 : (tensors * int64_t(sizeof(typename Rule::PerTensor)) + 3) / 4;
}

// One update of every param of a call on `stream` (update.cuh, instantiated in update_*.cu for every rule of rules.h).
template <class Rule>
void update(const UpdateArgs& args, float* scratch, cudaStream_t stream);

}  // namespace fusedopt::cuda
