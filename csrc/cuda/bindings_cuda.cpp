// CUDA implementations of the fusedopt ops (schemas in csrc/bindings.cpp): the ops of ops_impl.h (validation, then
// the kernels of csrc/cuda/*.cu) on the current stream of the params' device.
#include <optional>
#include <string_view>

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

void update(std::string_view rule, at::TensorList params, at::TensorList grads, at::TensorList states,
            at::TensorList master_params, at::TensorList scalars, c10::List<bool> is_first,
            c10::ArrayRef<double> hyper, int64_t flags, bool maximize, const std::optional<at::Tensor>& lr_tensor,
            const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& clip_coef,
            const std::optional<at::Tensor>& found_inf) {
  update_op<CudaRuntime>(rule, params, grads, states, master_params, scalars, is_first, hyper, flags, maximize,
                         lr_tensor, grad_scale, clip_coef, found_inf);
}

TORCH_LIBRARY_IMPL(fusedopt, CUDA, m) {
  m.impl("check", &check);
  m.impl("update", &update);
}

}  // namespace fusedopt::cuda_ops
