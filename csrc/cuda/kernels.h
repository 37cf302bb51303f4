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

// One entry per param in every non-empty list; numels[i] elements each. States are all state_dtype (fp32 or
// bf16); master_params (fp32) is empty or full.
struct SgdArgs {
  Dtype dtype = Dtype::Float32;
  Dtype state_dtype = Dtype::Float32;
  std::vector<void*> params, grads, momentum_buffers;
  std::vector<float*> master_params;  // empty: no master copy
  std::vector<uint8_t> is_first;
  std::vector<int64_t> numels;
  double lr = 0, weight_decay = 0, momentum = 0, dampening = 0;
  bool nesterov = false, maximize = false;
  DeviceScalars scalars;
};

void sgd_update(const SgdArgs& args, cudaStream_t stream);

struct AdamArgs {
  Dtype dtype = Dtype::Float32;
  Dtype state_dtype = Dtype::Float32;
  std::vector<void*> params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs;
  std::vector<float*> master_params;  // empty: no master copy
  std::vector<float*> steps;  // device floats, incremented on the device unless the step is skipped
  std::vector<int64_t> numels;
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
  bool amsgrad = false, maximize = false, decoupled = false;
  DeviceScalars scalars;
};

void adam_update(const AdamArgs& args, cudaStream_t stream);

}  // namespace fusedopt::cuda
