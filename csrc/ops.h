// The ops of fusedopt._C, as C++ functions: bindings.cpp registers them with torch.library (what torch.compile
// and torch.ops see) and python.cpp binds them directly for eager calls (see python.cpp for why). The CPU ops
// live in namespace fusedopt; in a build with the CUDA kernels (FUSEDOPT_CUDA), the CUDA ops, with the same
// signatures, in fusedopt::cuda_ops (csrc/cuda/bindings_cuda.cpp).
#pragma once

#include <optional>

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

// check, sgd_update and adam_update of one backend (the op contract, version 2: see fusedopt/reference.py).
#define FUSEDOPT_DECLARE_BACKEND_OPS                                                                               \
  at::Tensor check(at::TensorList grads);                                                                         \
  void sgd_update(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,                   \
                  at::TensorList master_params, c10::List<bool> is_first, double lr, double weight_decay,         \
                  double momentum, double dampening, bool nesterov, bool maximize,                                \
                  const std::optional<at::Tensor>& lr_tensor, const std::optional<at::Tensor>& grad_scale,        \
                  const std::optional<at::Tensor>& clip_coef, const std::optional<at::Tensor>& found_inf);        \
  void adam_update(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,                          \
                   at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList master_params,      \
                   at::TensorList steps, double lr, double beta1, double beta2, double eps, double weight_decay,   \
                   bool amsgrad, bool maximize, bool decoupled, const std::optional<at::Tensor>& lr_tensor,       \
                   const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& clip_coef,       \
                   const std::optional<at::Tensor>& found_inf);

namespace fusedopt {

bool kernel_ready(at::TensorList params, at::TensorList grads);

FUSEDOPT_DECLARE_BACKEND_OPS

#ifdef FUSEDOPT_CUDA
namespace cuda_ops {
FUSEDOPT_DECLARE_BACKEND_OPS
}  // namespace cuda_ops
#endif

}  // namespace fusedopt
