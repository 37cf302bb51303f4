// The CUDA ops (check, update) once, for every way of running the kernels of csrc/cuda: the real ones on CUDA
// tensors (bindings_cuda.cpp) and the emulated ones on CPU tensors (csrc/tests/cuda_emu). Each op validates every
// argument with the checks the CPU op shares (validate.h) before anything is written, fills the raw-pointer
// arguments of kernels.h and calls the kernels. Nothing here reads a device value on the host: lr_tensor,
// grad_scale, clip_coef, found_inf and the scalar states (step counts) are read by the kernels. (So, unlike the CPU
// op, the CUDA op cannot refuse a negative step count: validate::check_scalar_values reads values on the host.)
//
// check_op<Runtime> and update_op<Runtime> take the ops' arguments (op contract v4, fusedopt/reference.py); a
// Runtime says what differs between the two:
//   static constexpr c10::DeviceType kDeviceType;           the tensors' device type
//   struct Guard { explicit Guard(c10::Device); };          makes the device current for the op
//   static cudaStream_t stream();                           the stream the kernels run on
//   static at::Tensor scratch(int64_t n, at::TensorOptions); n floats the kernels write before they read them
#pragma once

#include <stdint.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include "cuda/kernels.h"
#include "fusedopt/rules.h"
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

// The update of one rule (math.h), on the device of params[0].
template <typename Runtime, typename Rule>
void update_rule_op(at::TensorList params, at::TensorList grads, at::TensorList states, at::TensorList master_params,
                    at::TensorList scalars, const c10::List<bool>& is_first, c10::ArrayRef<double> hyper,
                    int64_t flags, bool maximize, const std::optional<at::Tensor>& lr_tensor,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& clip_coef,
                    const std::optional<at::Tensor>& found_inf) {
  cuda::UpdateArgs args;
  validate::fill_update<Rule>(args, params, grads, states, master_params, scalars, is_first, hyper, flags);
  if (params.empty()) return;  // nothing to update (as on the CPU)
  validate::check_device_type(params[0], Runtime::kDeviceType, "params", 0);
  const c10::Device device = params[0].device();
  const Scalars device_scalars(device, lr_tensor, grad_scale, clip_coef, found_inf);
  // The rounding step after the rule's scalars (stochastic rounding) is only read.
  bump_update_writes(params, grads, states, master_params, scalars.slice(0, size_t(Rule::kScalars) * params.size()),
                     grad_scale);
  args.maximize = maximize;
  args.dev = device_scalars.ptrs();
  const typename Runtime::Guard guard(device);
  const int64_t scratch_floats = cuda::update_scratch_floats<Rule>(int64_t(params.size()));
  at::Tensor scratch;
  if (scratch_floats > 0) scratch = Runtime::scratch(scratch_floats, params[0].options().dtype(at::kFloat));
  cuda::update<Rule>(args, scratch_floats > 0 ? scratch.data_ptr<float>() : nullptr, Runtime::stream());
}

// The names of the compiled rules (rules.h), comma-separated.
inline std::string rule_names() {
  std::string names;
  for_each_rule([&](auto rule) { names += (names.empty() ? "" : ", ") + std::string(decltype(rule)::kName); });
  return names;
}

// The generic op: the rule named `rule` of rules.h.
template <typename Runtime>
void update_op(std::string_view rule, at::TensorList params, at::TensorList grads, at::TensorList states,
               at::TensorList master_params, at::TensorList scalars, const c10::List<bool>& is_first,
               c10::ArrayRef<double> hyper, int64_t flags, bool maximize, const std::optional<at::Tensor>& lr_tensor,
               const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& clip_coef,
               const std::optional<at::Tensor>& found_inf) {
  const bool known = with_rule(rule, [&](auto r) {
    update_rule_op<Runtime, decltype(r)>(params, grads, states, master_params, scalars, is_first, hyper, flags,
                                         maximize, lr_tensor, grad_scale, clip_coef, found_inf);
  });
  TORCH_CHECK(known, "fusedopt: unknown update rule '", rule, "'; known: ", rule_names());
}

}  // namespace fusedopt::cuda_ops
