// Argument validation shared by the CPU ops (bindings.cpp) and the CUDA ops (cuda/bindings_cuda.cpp): every
// check runs before anything is written, and every error names the argument and its index. The helpers are
// templates over the backends' raw-pointer argument structs (cpu::SgdArgs, cuda::AdamArgs, ...), which share
// field names, and over their Dtype enums, which share enumerator names.
#pragma once

#include <stdint.h>

#include <optional>
#include <string>
#include <vector>

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Exception.h>

namespace fusedopt::validate {

using at::Tensor;
using at::TensorList;

// The kernels' storage type of a param or grad (float32, bfloat16, float16).
template <typename Dtype>
Dtype kernel_dtype(const Tensor& t, const char* what, size_t i) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::Float32;
    case at::kBFloat16: return Dtype::BFloat16;
    case at::kHalf: return Dtype::Float16;
    default:
      TORCH_CHECK(false, "fusedopt: ", what, "[", i, "] has dtype ", t.scalar_type(), "; the ",
                  t.device().type(), " kernels take float32, bfloat16 or float16");
  }
}

// Everything a kernel assumes about a tensor it reads or writes through a raw pointer; `device` is where the
// call runs (params[0]'s device).
inline void check_dense(const Tensor& t, c10::Device device, const char* what, size_t i) {
  TORCH_CHECK(t.defined(), "fusedopt: ", what, "[", i, "] is undefined");
  TORCH_CHECK(t.layout() == at::kStrided, "fusedopt: ", what, "[", i, "] is ", t.layout(),
              "; sparse tensors are not supported");
  TORCH_CHECK(t.device() == device, "fusedopt: ", what, "[", i, "] is on ", t.device(), ", expected ", device);
  TORCH_CHECK(!t.is_complex(), "fusedopt: ", what, "[", i, "] is complex (", t.scalar_type(),
              "), which is not supported");
  TORCH_CHECK(t.is_contiguous(), "fusedopt: ", what, "[", i, "] is not contiguous");
  // The kernels read raw memory: a lazy negation would be ignored, and a pointer off its element alignment
  // (torch.frombuffer at an odd offset) is undefined behaviour on the CPU and a fault on a GPU.
  TORCH_CHECK(!t.is_neg(), "fusedopt: ", what, "[", i, "] has its negative bit set (a lazy negation view); ",
              "pass t.resolve_neg()");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.const_data_ptr()) % uintptr_t(t.element_size()) == 0, "fusedopt: ",
              what, "[", i, "] is not aligned to its element size (", t.element_size(), " bytes)");
}

inline void check_like(const Tensor& t, const Tensor& param, at::ScalarType dtype, const char* what, size_t i) {
  check_dense(t, param.device(), what, i);
  TORCH_CHECK(t.scalar_type() == dtype, "fusedopt: ", what, "[", i, "] has dtype ", t.scalar_type(), ", expected ",
              dtype);
  TORCH_CHECK(t.numel() == param.numel(), "fusedopt: ", what, "[", i, "] has ", t.numel(), " elements but params[",
              i, "] has ", param.numel());
}

inline void check_length(size_t got, size_t want, const char* what) {
  TORCH_CHECK(got == want, "fusedopt: ", what, " has ", got, " entries, expected ", want, " (one per param)");
}

// The memory of one tensor, from the pointer already taken and the size already validated.
struct Span {
  const void* data;
  int64_t bytes;
};

// The kernels read and write a param's tensors in one pass with no runtime alias checks: their memory must not
// overlap.
inline void check_disjoint(const std::vector<Span>& spans, size_t i) {
  for (auto a = spans.begin(); a != spans.end(); ++a) {
    for (auto b = a + 1; b != spans.end(); ++b) {
      auto a0 = reinterpret_cast<uintptr_t>(a->data), b0 = reinterpret_cast<uintptr_t>(b->data);
      bool overlap = a0 < b0 + b->bytes && b0 < a0 + a->bytes;
      TORCH_CHECK(!overlap, "fusedopt: the tensors of param ", i,
                  " (param, grad, master copy and states) must not share memory");
    }
  }
}

// A tensor on a device of the backend's type (kCPU, kCUDA): the eager binding calls a backend's function
// directly, without the dispatcher's choice by device, so each backend refuses tensors it cannot address. Checked
// after the rest (which only reads metadata and pointers), so that the other checks can be tested on any machine.
inline void check_device_type(const Tensor& t, c10::DeviceType type, const char* what, size_t i) {
  TORCH_CHECK(t.defined(), "fusedopt: ", what, "[", i, "] is undefined");
  TORCH_CHECK(t.device().type() == type, "fusedopt: ", what, "[", i, "] is on ", t.device(), ", expected ",
              c10::DeviceTypeName(type, /*lower_case=*/true));
}

// Validates params and grads (one dtype, one device: params[0]'s) and fills the fields every update shares.
template <typename Args>
void fill_params(Args& args, TensorList params, TensorList grads) {
  using Dtype = decltype(args.dtype);
  check_length(grads.size(), params.size(), "grads");
  args.dtype = Dtype::Float32;
  for (size_t i = 0; i < params.size(); ++i) {
    check_dense(params[i], params[0].device(), "params", i);
    args.dtype = kernel_dtype<Dtype>(params[i], "params", i);
    TORCH_CHECK(params[i].scalar_type() == params[0].scalar_type(), "fusedopt: params[", i, "] has dtype ",
                params[i].scalar_type(), " but params[0] has ", params[0].scalar_type(),
                "; one call takes one param dtype");
    check_like(grads[i], params[i], params[i].scalar_type(), "grads", i);
    args.params.push_back(params[i].data_ptr());
    args.grads.push_back(grads[i].data_ptr());
    args.numels.push_back(params[i].numel());
  }
}

// The master copies: none, or one float32 tensor per param with its numel, on its device.
template <typename Args>
void fill_master_params(Args& args, TensorList params, TensorList master_params) {
  if (master_params.empty()) return;
  check_length(master_params.size(), params.size(), "master_params");
  for (size_t i = 0; i < params.size(); ++i) {
    check_like(master_params[i], params[i], at::kFloat, "master_params", i);
    args.master_params.push_back(static_cast<float*>(master_params[i].data_ptr()));
  }
}

// The dtype every state tensor of one call shares (float32 or bfloat16), taken from the first state given.
struct StateDtype {
  std::optional<at::ScalarType> dtype;

  // Validates state tensor `t` of param i and returns its data.
  void* data(const Tensor& t, const Tensor& param, const char* what, size_t i) {
    check_dense(t, param.device(), what, i);
    if (!dtype) {
      TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, "fusedopt: ", what, "[", i,
                  "] has dtype ", t.scalar_type(), "; optimizer states are float32 or bfloat16");
      dtype = t.scalar_type();
    }
    TORCH_CHECK(t.scalar_type() == *dtype, "fusedopt: ", what, "[", i, "] has dtype ", t.scalar_type(),
                " but the other states of this call have ", *dtype, "; one call takes one state dtype");
    check_like(t, param, *dtype, what, i);
    return t.data_ptr();
  }

  template <typename Dtype>
  Dtype kernel_dtype() const {
    return dtype == at::kBFloat16 ? Dtype::BFloat16 : Dtype::Float32;
  }
};

// The memory of param i besides its states: param, grad and (when given) master copy.
template <typename Args>
std::vector<Span> param_spans(const Args& args, const Tensor& param, size_t i) {
  const int64_t p_bytes = args.numels[i] * param.element_size();
  std::vector<Span> spans{{args.params[i], p_bytes}, {args.grads[i], p_bytes}};
  if (!args.master_params.empty()) spans.push_back({args.master_params[i], args.numels[i] * 4});
  return spans;
}

// SGD's states: momentum buffers and is_first when momentum != 0 (empty lists by convention otherwise).
template <typename Args>
void fill_sgd_states(Args& args, TensorList params, TensorList momentum_buffers, const c10::List<bool>& is_first,
                     bool has_momentum) {
  StateDtype state;
  if (has_momentum) {
    check_length(momentum_buffers.size(), params.size(), "momentum_buffers");
    check_length(is_first.size(), params.size(), "is_first");
  }
  for (size_t i = 0; i < params.size(); ++i) {
    std::vector<Span> spans = param_spans(args, params[i], i);
    if (has_momentum) {
      void* buf = state.data(momentum_buffers[i], params[i], "momentum_buffers", i);
      spans.push_back({buf, args.numels[i] * momentum_buffers[i].element_size()});
      args.momentum_buffers.push_back(buf);
      args.is_first.push_back(is_first.get(i) ? 1 : 0);
    }
    check_disjoint(spans, i);
  }
  args.state_dtype = state.kernel_dtype<decltype(args.state_dtype)>();
}

// Adam's states and step counts (one-element float32 tensors on the params' device).
template <typename Args>
void fill_adam_states(Args& args, TensorList params, TensorList exp_avgs, TensorList exp_avg_sqs,
                      TensorList max_exp_avg_sqs, TensorList steps, bool amsgrad) {
  check_length(exp_avgs.size(), params.size(), "exp_avgs");
  check_length(exp_avg_sqs.size(), params.size(), "exp_avg_sqs");
  check_length(steps.size(), params.size(), "steps");
  // Without amsgrad max_exp_avg_sqs is unused (empty, by convention).
  if (amsgrad) check_length(max_exp_avg_sqs.size(), params.size(), "max_exp_avg_sqs");
  StateDtype state;
  for (size_t i = 0; i < params.size(); ++i) {
    std::vector<Span> spans = param_spans(args, params[i], i);
    void* m = state.data(exp_avgs[i], params[i], "exp_avgs", i);
    void* v = state.data(exp_avg_sqs[i], params[i], "exp_avg_sqs", i);
    const int64_t s_bytes = args.numels[i] * exp_avgs[i].element_size();
    spans.insert(spans.end(), {{m, s_bytes}, {v, s_bytes}});
    if (amsgrad) {
      void* vmax = state.data(max_exp_avg_sqs[i], params[i], "max_exp_avg_sqs", i);
      spans.push_back({vmax, s_bytes});
      args.max_exp_avg_sqs.push_back(vmax);
    }
    check_disjoint(spans, i);
    args.exp_avgs.push_back(m);
    args.exp_avg_sqs.push_back(v);
    const Tensor& s = steps[i];
    const c10::Device device = params[i].device();
    TORCH_CHECK(s.defined() && s.device() == device && s.layout() == at::kStrided && s.scalar_type() == at::kFloat &&
                    s.numel() == 1,
                "fusedopt: steps[", i, "] must be a one-element float32 ", c10::DeviceTypeName(device.type()),
                " tensor on ", device, ", got ", s.defined() ? s.toString() : std::string("undefined"), " with ",
                s.defined() ? s.numel() : 0, " elements", s.defined() ? " on " + s.device().str() : std::string());
    args.steps.push_back(static_cast<float*>(s.data_ptr()));
  }
  args.state_dtype = state.kernel_dtype<decltype(args.state_dtype)>();
}

// An optional one-element float tensor argument (lr_tensor, grad_scale, clip_coef, found_inf) on `device`.
inline void check_scalar(const std::optional<Tensor>& t, c10::Device device, const char* what) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->defined(), "fusedopt: ", what, " is undefined");
  TORCH_CHECK(t->device() == device, "fusedopt: ", what, " is on ", t->device(), ", expected ", device);
  TORCH_CHECK(t->numel() == 1, "fusedopt: ", what, " must have one element, got ", t->numel());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), "fusedopt: ", what, " must be a floating tensor, got ",
              t->scalar_type());
}

// lr_tensor is float32 by contract (its value is the learning rate, read as a double from float32).
inline void check_lr_tensor(const std::optional<Tensor>& lr_tensor, c10::Device device) {
  check_scalar(lr_tensor, device, "lr_tensor");
  TORCH_CHECK(!lr_tensor.has_value() || lr_tensor->scalar_type() == at::kFloat,
              "fusedopt: lr_tensor must be float32, got ", lr_tensor->scalar_type());
}

}  // namespace fusedopt::validate
