// The ops of fusedopt._C, as C++ functions: bindings.cpp registers them with torch.library (what torch.compile
// and torch.ops see) and python.cpp binds them directly for eager calls (see python.cpp for why). The CPU ops
// live in namespace fusedopt; in a build with the CUDA kernels (FUSEDOPT_CUDA), the CUDA ops, with the same
// signatures, in fusedopt::cuda_ops (csrc/cuda/bindings_cuda.cpp).
#pragma once

#include <stdint.h>

#include <optional>
#include <string_view>

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

// check and update of one backend (the op contract, version 3: see fusedopt/reference.py; `rule` names one of
// fusedopt/rules.h's rules).
#define FUSEDOPT_DECLARE_BACKEND_OPS                                                                               \
  at::Tensor check(at::TensorList grads);                                                                          \
  void update(std::string_view rule, at::TensorList params, at::TensorList grads, at::TensorList states,           \
              at::TensorList master_params, at::TensorList scalars, c10::List<bool> is_first,                      \
              c10::ArrayRef<double> hyper, int64_t flags, bool maximize,                                           \
              const std::optional<at::Tensor>& lr_tensor, const std::optional<at::Tensor>& grad_scale,             \
              const std::optional<at::Tensor>& clip_coef, const std::optional<at::Tensor>& found_inf);

namespace fusedopt {

bool kernel_ready(at::TensorList params, at::TensorList grads);

FUSEDOPT_DECLARE_BACKEND_OPS

#ifdef FUSEDOPT_CUDA
namespace cuda_ops {
FUSEDOPT_DECLARE_BACKEND_OPS
}  // namespace cuda_ops
#endif

}  // namespace fusedopt
