// CUDA implementations of the fusedopt ops (schemas in csrc/bindings.cpp): validate every argument with the
// checks the CPU ops share (csrc/validate.h) before anything is written, then hand raw pointers to the kernels
// (csrc/cuda/*.cu) on the current stream of the params' device. Nothing here reads a device value on the host:
// lr_tensor, grad_scale, clip_coef, found_inf and the step counts are read by the kernels.
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/kernels.h"
#include "ops.h"
#include "validate.h"
#include "versions.h"

namespace fusedopt::cuda_ops {
namespace {

using at::Tensor;
using at::TensorList;

// The optional scalar arguments as float32 device pointers. A float tensor of another dtype is converted on the
// device (an asynchronous copy, no sync); the converted tensors live as long as this object, and the caching
// allocator orders their reuse after the kernels on the same stream.
class Scalars {
 public:
  Scalars(c10::Device device, const std::optional<Tensor>& lr_tensor, const std::optional<Tensor>& grad_scale,
          const std::optional<Tensor>& clip_coef, const std::optional<Tensor>& found_inf) {
    validate::check_lr_tensor(lr_tensor, device);
    validate::check_scalar(grad_scale, device, "grad_scale");
    validate::check_scalar(clip_coef, device, "clip_coef");
    validate::check_scalar(found_inf, device, "found_inf");
    ptrs_.lr = take(lr_tensor);
    ptrs_.grad_scale = take(grad_scale);
    ptrs_.clip_coef = take(clip_coef);
    ptrs_.found_inf = take(found_inf);
  }

  const cuda::DeviceScalars& ptrs() const { return ptrs_; }

 private:
  const float* take(const std::optional<Tensor>& t) {
    if (!t.has_value()) return nullptr;
    keep_.push_back(t->scalar_type() == at::kFloat ? *t : t->to(at::kFloat));
    return keep_.back().data_ptr<float>();
  }

  std::vector<Tensor> keep_;
  cuda::DeviceScalars ptrs_;
};

}  // namespace

Tensor check(TensorList grads) {
  TORCH_CHECK(!grads.empty(), "fusedopt: check needs at least one grad");
  const c10::Device device = grads[0].device();
  std::vector<cuda::GradView> views;
  views.reserve(grads.size());
  for (size_t i = 0; i < grads.size(); ++i) {
    validate::check_dense(grads[i], device, "grads", i);
    views.push_back({grads[i].data_ptr(), grads[i].numel(), validate::kernel_dtype<cuda::Dtype>(grads[i], "grads", i)});
  }
  validate::check_device_type(grads[0], c10::kCUDA, "grads", 0);
  const c10::cuda::CUDAGuard guard(device);
  const auto options = grads[0].options().dtype(at::kFloat);
  Tensor workspace = at::empty({cuda::check_workspace_floats(views)}, options);
  Tensor out = at::empty({2}, options);
  cuda::check(views, workspace.data_ptr<float>(), out.data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
  return out;
}

void sgd_update(TensorList params, TensorList grads, TensorList momentum_buffers, TensorList master_params,
                c10::List<bool> is_first, double lr, double weight_decay, double momentum, double dampening,
                bool nesterov, bool maximize, const std::optional<Tensor>& lr_tensor,
                const std::optional<Tensor>& grad_scale, const std::optional<Tensor>& clip_coef,
                const std::optional<Tensor>& found_inf) {
  cuda::SgdArgs args;
  validate::fill_params(args, params, grads);
  validate::fill_master_params(args, params, master_params);
  validate::fill_sgd_states(args, params, momentum_buffers, is_first, momentum != 0.0);
  if (params.empty()) return;  // nothing to update (as on the CPU)
  validate::check_device_type(params[0], c10::kCUDA, "params", 0);
  const c10::Device device = params[0].device();
  const Scalars scalars(device, lr_tensor, grad_scale, clip_coef, found_inf);
  bump_versions({params, master_params, momentum_buffers, grad_scale.has_value() ? grads : TensorList()});
  args.lr = lr;
  args.weight_decay = weight_decay;
  args.momentum = momentum;
  args.dampening = dampening;
  args.nesterov = nesterov;
  args.maximize = maximize;
  args.scalars = scalars.ptrs();
  const c10::cuda::CUDAGuard guard(device);
  cuda::sgd_update(args, c10::cuda::getCurrentCUDAStream());
}

void adam_update(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                 TensorList max_exp_avg_sqs, TensorList master_params, TensorList steps, double lr, double beta1,
                 double beta2, double eps, double weight_decay, bool amsgrad, bool maximize, bool decoupled,
                 const std::optional<Tensor>& lr_tensor, const std::optional<Tensor>& grad_scale,
                 const std::optional<Tensor>& clip_coef, const std::optional<Tensor>& found_inf) {
  cuda::AdamArgs args;
  validate::fill_params(args, params, grads);
  validate::fill_master_params(args, params, master_params);
  validate::fill_adam_states(args, params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, amsgrad);
  if (params.empty()) return;  // nothing to update (as on the CPU)
  validate::check_device_type(params[0], c10::kCUDA, "params", 0);
  const c10::Device device = params[0].device();
  const Scalars scalars(device, lr_tensor, grad_scale, clip_coef, found_inf);
  bump_versions({params, master_params, exp_avgs, exp_avg_sqs, amsgrad ? max_exp_avg_sqs : TensorList(), steps,
                 grad_scale.has_value() ? grads : TensorList()});
  args.lr = lr;
  args.beta1 = beta1;
  args.beta2 = beta2;
  args.eps = eps;
  args.weight_decay = weight_decay;
  args.amsgrad = amsgrad;
  args.maximize = maximize;
  args.decoupled = decoupled;
  args.scalars = scalars.ptrs();
  const c10::cuda::CUDAGuard guard(device);
  cuda::adam_update(args, c10::cuda::getCurrentCUDAStream());
}

TORCH_LIBRARY_IMPL(fusedopt, CUDA, m) {
  m.impl("check", &check);
  m.impl("sgd_update", &sgd_update);
  m.impl("adam_update", &adam_update);
}

}  // namespace fusedopt::cuda_ops
