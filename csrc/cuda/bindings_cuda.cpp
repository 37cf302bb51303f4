// CUDA implementations of the fusedopt ops (schemas in csrc/bindings.cpp): the ops of ops_impl.h (validation, then
// the kernels of csrc/cuda/*.cu) on the current stream of the params' device.
#include <optional>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/ops_impl.h"
#include "ops.h"

namespace fusedopt::cuda_ops {
namespace {

struct CudaRuntime {
  static constexpr c10::DeviceType kDeviceType = c10::kCUDA;
  using Guard = c10::cuda::CUDAGuard;
  static cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }
  static at::Tensor scratch(int64_t n, const at::TensorOptions& options) { return at::empty({n}, options); }
};

}  // namespace

at::Tensor check(at::TensorList grads) { return check_op<CudaRuntime>(grads); }

void sgd_update(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                at::TensorList master_params, c10::List<bool> is_first, double lr, double weight_decay,
                double momentum, double dampening, bool nesterov, bool maximize,
                const std::optional<at::Tensor>& lr_tensor, const std::optional<at::Tensor>& grad_scale,
                const std::optional<at::Tensor>& clip_coef, const std::optional<at::Tensor>& found_inf) {
  sgd_update_op<CudaRuntime>(params, grads, momentum_buffers, master_params, is_first, lr, weight_decay, momentum,
                             dampening, nesterov, maximize, lr_tensor, grad_scale, clip_coef, found_inf);
}

void adam_update(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                 at::TensorList max_exp_avg_sqs, at::TensorList master_params, at::TensorList steps, double lr,
                 double beta1, double beta2, double eps, double weight_decay, bool amsgrad, bool maximize,
                 bool decoupled, const std::optional<at::Tensor>& lr_tensor,
                 const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& clip_coef,
                 const std::optional<at::Tensor>& found_inf) {
  adam_update_op<CudaRuntime>(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, steps, lr,
                              beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled, lr_tensor, grad_scale,
                              clip_coef, found_inf);
}

TORCH_LIBRARY_IMPL(fusedopt, CUDA, m) {
  m.impl("check", &check);
  m.impl("sgd_update", &sgd_update);
  m.impl("adam_update", &adam_update);
}

}  // namespace fusedopt::cuda_ops
