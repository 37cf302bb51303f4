// The CUDA ops (check, sgd_update, adam_update) once, for every way of running the kernels of csrc/cuda: the real
// ones on CUDA tensors (bindings_cuda.cpp) and the emulated ones on CPU tensors (csrc/tests/cuda_emu). Each op
// validates every argument with the checks the CPU ops share (validate.h) before anything is written, fills the
// raw-pointer arguments of kernels.h and calls the kernels. Nothing here reads a device value on the host:
// lr_tensor, grad_scale, clip_coef, found_inf and the step counts are read by the kernels.
//
// check_op<Runtime>, sgd_update_op<Runtime> and adam_update_op<Runtime> take the ops' arguments; a Runtime says
// what differs between the two:
//   static constexpr c10::DeviceType kDeviceType;           the tensors' device type
//   struct Guard { explicit Guard(c10::Device); };          makes the device current for the op
//   static cudaStream_t stream();                           the stream the kernels run on
//   static at::Tensor scratch(int64_t n, at::TensorOptions); n floats the kernels write before they read them
#pragma once

#include <stdint.h>

#include <optional>
#include <vector>

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include "cuda/kernels.h"
#include "validate.h"
#include "versions.h"

namespace fusedopt::cuda_ops {

// The optional scalar arguments as float32 device pointers. A float tensor of another dtype is converted on the
// device (an asynchronous copy, no sync); the converted tensors live as long as this object, and the caching
// allocator orders their reuse after the kernels on the same stream.
class Scalars {
 public:
  Scalars(c10::Device device, const std::optional<at::Tensor>& lr_tensor, const std::optional<at::Tensor>& grad_scale,
          const std::optional<at::Tensor>& clip_coef, const std::optional<at::Tensor>& found_inf) {
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
  const float* take(const std::optional<at::Tensor>& t) {
    if (!t.has_value()) return nullptr;
    keep_.push_back(t->scalar_type() == at::kFloat ? *t : t->to(at::kFloat));
    return keep_.back().data_ptr<float>();
  }

  std::vector<at::Tensor> keep_;
  cuda::DeviceScalars ptrs_;
};

template <typename Runtime>
at::Tensor check_op(at::TensorList grads) {
  TORCH_CHECK(!grads.empty(), "fusedopt: check needs at least one grad");
  const c10::Device device = grads[0].device();
  std::vector<cuda::GradView> views;
  views.reserve(grads.size());
  for (size_t i = 0; i < grads.size(); ++i) {
    validate::check_dense(grads[i], device, "grads", i);
    views.push_back({grads[i].data_ptr(), grads[i].numel(), validate::kernel_dtype<cuda::Dtype>(grads[i], "grads", i)});
  }
  validate::check_device_type(grads[0], Runtime::kDeviceType, "grads", 0);
  const typename Runtime::Guard guard(device);
  const auto options = grads[0].options().dtype(at::kFloat);
  at::Tensor workspace = Runtime::scratch(cuda::check_workspace_floats(views), options);
  at::Tensor out = Runtime::scratch(2, options);
  cuda::check(views, workspace.data_ptr<float>(), out.data_ptr<float>(), Runtime::stream());
  return out;
}

template <typename Runtime>
void sgd_update_op(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                   at::TensorList master_params, const c10::List<bool>& is_first, double lr, double weight_decay,
                   double momentum, double dampening, bool nesterov, bool maximize,
                   const std::optional<at::Tensor>& lr_tensor, const std::optional<at::Tensor>& grad_scale,
                   const std::optional<at::Tensor>& clip_coef, const std::optional<at::Tensor>& found_inf) {
  cuda::SgdArgs args;
  validate::fill_params(args, params, grads);
  validate::fill_master_params(args, params, master_params);
  validate::fill_sgd_states(args, params, momentum_buffers, is_first, momentum != 0.0);
  if (params.empty()) return;  // nothing to update (as on the CPU)
  validate::check_device_type(params[0], Runtime::kDeviceType, "params", 0);
  const c10::Device device = params[0].device();
  const Scalars scalars(device, lr_tensor, grad_scale, clip_coef, found_inf);
  bump_sgd_writes(params, grads, momentum_buffers, master_params, grad_scale);
  args.lr = lr;
  args.weight_decay = weight_decay;
  args.momentum = momentum;
  args.dampening = dampening;
  args.nesterov = nesterov;
  args.maximize = maximize;
  args.scalars = scalars.ptrs();
  const typename Runtime::Guard guard(device);
  cuda::sgd_update(args, Runtime::stream());
}

template <typename Runtime>
void adam_update_op(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList master_params,
                    at::TensorList steps, double lr, double beta1, double beta2, double eps, double weight_decay,
                    bool amsgrad, bool maximize, bool decoupled, const std::optional<at::Tensor>& lr_tensor,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& clip_coef,
                    const std::optional<at::Tensor>& found_inf) {
  cuda::AdamArgs args;
  validate::fill_params(args, params, grads);
  validate::fill_master_params(args, params, master_params);
  validate::fill_adam_states(args, params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, amsgrad);
  if (params.empty()) return;  // nothing to update (as on the CPU)
  validate::check_device_type(params[0], Runtime::kDeviceType, "params", 0);
  const c10::Device device = params[0].device();
  const Scalars scalars(device, lr_tensor, grad_scale, clip_coef, found_inf);
  bump_adam_writes(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, amsgrad, master_params, steps, grad_scale);
  args.lr = lr;
  args.beta1 = beta1;
  args.beta2 = beta2;
  args.eps = eps;
  args.weight_decay = weight_decay;
  args.amsgrad = amsgrad;
  args.maximize = maximize;
  args.decoupled = decoupled;
  args.scalars = scalars.ptrs();
  const typename Runtime::Guard guard(device);
  cuda::adam_update(args, Runtime::stream());
}

}  // namespace fusedopt::cuda_ops
