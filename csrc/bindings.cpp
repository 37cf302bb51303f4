// torch.library schemas of the fusedopt ops and their CPU implementations: validate every argument up front
// (nothing is written before all checks pass), then hand raw pointers to the kernels in csrc/cpu.
#include <Python.h>
#include <stdint.h>

#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu/kernels.h"
#include "ops.h"

namespace fusedopt {
namespace {

using at::Tensor;
using at::TensorList;

cpu::Dtype kernel_dtype(const Tensor& t, const char* what, size_t i) {
  switch (t.scalar_type()) {
    case at::kFloat: return cpu::Dtype::Float32;
    case at::kBFloat16: return cpu::Dtype::BFloat16;
    case at::kHalf: return cpu::Dtype::Float16;
    default:
      TORCH_CHECK(false, "fusedopt: ", what, "[", i, "] has dtype ", t.scalar_type(),
                  "; the CPU kernels take float32, bfloat16 or float16");
  }
}

// Everything a kernel assumes about a tensor it reads or writes through a raw pointer.
void check_dense(const Tensor& t, const char* what, size_t i) {
  TORCH_CHECK(t.defined(), "fusedopt: ", what, "[", i, "] is undefined");
  TORCH_CHECK(t.layout() == at::kStrided, "fusedopt: ", what, "[", i, "] is ", t.layout(),
              "; sparse tensors are not supported");
  TORCH_CHECK(t.device().is_cpu(), "fusedopt: ", what, "[", i, "] is on ", t.device(), ", expected cpu");
  TORCH_CHECK(!t.is_complex(), "fusedopt: ", what, "[", i, "] is complex (", t.scalar_type(),
              "), which is not supported");
  TORCH_CHECK(t.is_contiguous(), "fusedopt: ", what, "[", i, "] is not contiguous");
}

void check_like(const Tensor& t, const Tensor& param, at::ScalarType dtype, const char* what, size_t i) {
  check_dense(t, what, i);
  TORCH_CHECK(t.scalar_type() == dtype, "fusedopt: ", what, "[", i, "] has dtype ", t.scalar_type(), ", expected ",
              dtype);
  TORCH_CHECK(t.numel() == param.numel(), "fusedopt: ", what, "[", i, "] has ", t.numel(), " elements but params[",
              i, "] has ", param.numel());
}

void check_length(size_t got, size_t want, const char* what) {
  TORCH_CHECK(got == want, "fusedopt: ", what, " has ", got, " entries, expected ", want, " (one per param)");
}

// The memory of one tensor, from the pointer already taken and the size already validated.
struct Span {
  const void* data;
  int64_t bytes;
};

// The kernels read and write a param's tensors in one pass with no runtime alias checks: their memory must not
// overlap.
void check_disjoint(const std::vector<Span>& spans, size_t i) {
  for (auto a = spans.begin(); a != spans.end(); ++a) {
    for (auto b = a + 1; b != spans.end(); ++b) {
      auto a0 = reinterpret_cast<uintptr_t>(a->data), b0 = reinterpret_cast<uintptr_t>(b->data);
      bool overlap = a0 < b0 + b->bytes && b0 < a0 + a->bytes;
      TORCH_CHECK(!overlap, "fusedopt: the tensors of param ", i,
                  " (param, grad, master copy and states) must not share memory");
    }
  }
}

// A one-element CPU float tensor read on the host (the op runs on CPU, so reading it costs no sync).
std::optional<float> read_scalar(const std::optional<Tensor>& t, const char* what) {
  if (!t.has_value()) return std::nullopt;
  TORCH_CHECK(t->device().is_cpu(), "fusedopt: ", what, " is on ", t->device(), ", expected cpu");
  TORCH_CHECK(t->numel() == 1, "fusedopt: ", what, " must have one element, got ", t->numel());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), "fusedopt: ", what, " must be a floating tensor, got ",
              t->scalar_type());
  return float(t->item().toDouble());
}

// lr_tensor: a one-element float32 tensor on the params' device (CPU here, so reading it costs no sync). Its
// value replaces the float lr.
double learning_rate(double lr, const std::optional<Tensor>& lr_tensor) {
  if (!lr_tensor.has_value()) return lr;
  TORCH_CHECK(lr_tensor->scalar_type() == at::kFloat, "fusedopt: lr_tensor must be float32, got ",
              lr_tensor->scalar_type());
  return double(*read_scalar(lr_tensor, "lr_tensor"));
}

// Validates params and grads and fills the fields every update shares.
template <typename Args>
void fill_params(Args& args, TensorList params, TensorList grads) {
  check_length(grads.size(), params.size(), "grads");
  args.dtype = cpu::Dtype::Float32;
  for (size_t i = 0; i < params.size(); ++i) {
    check_dense(params[i], "params", i);
    args.dtype = kernel_dtype(params[i], "params", i);
    TORCH_CHECK(params[i].scalar_type() == params[0].scalar_type(), "fusedopt: params[", i, "] has dtype ",
                params[i].scalar_type(), " but params[0] has ", params[0].scalar_type(),
                "; one call takes one param dtype");
    check_like(grads[i], params[i], params[i].scalar_type(), "grads", i);
    args.params.push_back(params[i].data_ptr());
    args.grads.push_back(grads[i].data_ptr());
    args.numels.push_back(params[i].numel());
  }
}

// The dtype every state tensor of one call shares (float32 or bfloat16), taken from the first state given.
struct StateDtype {
  std::optional<at::ScalarType> dtype;

  // Validates state tensor `t` of param i and returns its data.
  void* data(const Tensor& t, const Tensor& param, const char* what, size_t i) {
    check_dense(t, what, i);
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

  cpu::Dtype kernel_dtype() const {
    return dtype == at::kBFloat16 ? cpu::Dtype::BFloat16 : cpu::Dtype::Float32;
  }
};

// The master copies: none, or one float32 tensor per param with its numel.
template <typename Args>
void fill_master_params(Args& args, TensorList params, TensorList master_params) {
  if (master_params.empty()) return;
  check_length(master_params.size(), params.size(), "master_params");
  for (size_t i = 0; i < params.size(); ++i) {
    check_like(master_params[i], params[i], at::kFloat, "master_params", i);
    args.master_params.push_back(static_cast<float*>(master_params[i].data_ptr()));
  }
}

// The memory of param i besides its states: param, grad and (when given) master copy.
template <typename Args>
std::vector<Span> param_spans(const Args& args, const Tensor& param, size_t i) {
  const int64_t p_bytes = args.numels[i] * param.element_size();
  std::vector<Span> spans{{args.params[i], p_bytes}, {args.grads[i], p_bytes}};
  if (!args.master_params.empty()) spans.push_back({args.master_params[i], args.numels[i] * 4});
  return spans;
}

// The optional tensor arguments, read on the host; nullopt when found_inf says to skip the step.
std::optional<cpu::GradPrep> grad_prep(const std::optional<Tensor>& grad_scale, const std::optional<Tensor>& clip_coef,
                                       const std::optional<Tensor>& found_inf, bool maximize) {
  std::optional<float> scale = read_scalar(grad_scale, "grad_scale");
  std::optional<float> clip = read_scalar(clip_coef, "clip_coef");
  std::optional<float> inf = read_scalar(found_inf, "found_inf");
  if (inf.has_value() && *inf != 0.0f) return std::nullopt;
  return cpu::GradPrep{scale.has_value(), scale.value_or(1.0f), clip.has_value(), clip.value_or(1.0f), maximize};
}

}  // namespace

Tensor check(TensorList grads) {
  TORCH_CHECK(!grads.empty(), "fusedopt: check needs at least one grad");
  std::vector<cpu::GradView> views;
  views.reserve(grads.size());
  for (size_t i = 0; i < grads.size(); ++i) {
    check_dense(grads[i], "grads", i);
    views.push_back({grads[i].data_ptr(), grads[i].numel(), kernel_dtype(grads[i], "grads", i)});
  }
  cpu::CheckResult r = cpu::check(views);
  Tensor out = at::empty({2}, grads[0].options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  o[0] = float(r.sumsq);
  o[1] = r.nonfinite ? 1.0f : 0.0f;
  return out;
}

void sgd_update(TensorList params, TensorList grads, TensorList momentum_buffers, TensorList master_params,
                c10::List<bool> is_first, double lr, double weight_decay, double momentum, double dampening,
                bool nesterov, bool maximize, const std::optional<Tensor>& lr_tensor,
                const std::optional<Tensor>& grad_scale, const std::optional<Tensor>& clip_coef,
                const std::optional<Tensor>& found_inf) {
  cpu::SgdArgs args;
  fill_params(args, params, grads);
  fill_master_params(args, params, master_params);
  StateDtype state;
  // Without momentum the buffers and is_first are unused (empty, by convention).
  if (momentum != 0.0) {
    check_length(momentum_buffers.size(), params.size(), "momentum_buffers");
    check_length(is_first.size(), params.size(), "is_first");
  }
  for (size_t i = 0; i < params.size(); ++i) {
    std::vector<Span> spans = param_spans(args, params[i], i);
    if (momentum != 0.0) {
      void* buf = state.data(momentum_buffers[i], params[i], "momentum_buffers", i);
      spans.push_back({buf, args.numels[i] * momentum_buffers[i].element_size()});
      args.momentum_buffers.push_back(buf);
      args.is_first.push_back(is_first.get(i) ? 1 : 0);
    }
    check_disjoint(spans, i);
  }
  args.lr = learning_rate(lr, lr_tensor);
  std::optional<cpu::GradPrep> prep = grad_prep(grad_scale, clip_coef, found_inf, maximize);
  if (!prep) return;  // skipped step: nothing is written
  args.state_dtype = state.kernel_dtype();
  args.grad = *prep;
  args.weight_decay = weight_decay;
  args.momentum = momentum;
  args.dampening = dampening;
  args.nesterov = nesterov;
  cpu::sgd_update(args);
}

void adam_update(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
                 TensorList max_exp_avg_sqs, TensorList master_params, TensorList steps, double lr, double beta1,
                 double beta2, double eps, double weight_decay, bool amsgrad, bool maximize, bool decoupled,
                 const std::optional<Tensor>& lr_tensor, const std::optional<Tensor>& grad_scale,
                 const std::optional<Tensor>& clip_coef, const std::optional<Tensor>& found_inf) {
  cpu::AdamArgs args;
  fill_params(args, params, grads);
  fill_master_params(args, params, master_params);
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
    TORCH_CHECK(s.defined() && s.device().is_cpu() && s.layout() == at::kStrided && s.scalar_type() == at::kFloat &&
                    s.numel() == 1,
                "fusedopt: steps[", i, "] must be a one-element float32 CPU tensor, got ",
                s.defined() ? s.toString() : std::string("undefined"), " with ", s.defined() ? s.numel() : 0,
                " elements");
    args.steps.push_back(static_cast<float*>(s.data_ptr()));
  }
  args.lr = learning_rate(lr, lr_tensor);
  std::optional<cpu::GradPrep> prep = grad_prep(grad_scale, clip_coef, found_inf, maximize);
  if (!prep) return;  // skipped step: nothing is written
  args.state_dtype = state.kernel_dtype();
  args.grad = *prep;
  args.beta1 = beta1;
  args.beta2 = beta2;
  args.eps = eps;
  args.weight_decay = weight_decay;
  args.amsgrad = amsgrad;
  args.decoupled = decoupled;
  cpu::adam_update(args);
}

// The optimizer's fast-path test, for all params with grads at once (one native call instead of a Python loop):
// every grad is a valid dense grad of its param, and every param and grad is a contiguous real tensor of a
// supported dtype on one device. False is not an error: the caller then validates in Python and converts layouts.
bool kernel_ready(TensorList params, TensorList grads) {
  if (params.empty() || params.size() != grads.size()) return false;
  const c10::Device device = params[0].device();
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    const Tensor& g = grads[i];
    if (!p.defined() || !g.defined() || p.layout() != at::kStrided || g.layout() != at::kStrided) return false;
    const at::ScalarType dtype = p.scalar_type();
    if (dtype != at::kFloat && dtype != at::kDouble && dtype != at::kBFloat16 && dtype != at::kHalf) return false;
    if (g.scalar_type() != dtype || p.device() != device || g.device() != device) return false;
    if (!g.sizes().equals(p.sizes()) || !p.is_contiguous() || !g.is_contiguous()) return false;
  }
  return true;
}

TORCH_LIBRARY(fusedopt, m) {
  // Device-independent (a catch-all kernel): it reads only metadata.
  m.def("kernel_ready(Tensor[] params, Tensor[] grads) -> bool", &kernel_ready);
  m.def("check(Tensor[] grads) -> Tensor");
  m.def(
      "sgd_update(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, "
      "Tensor(d!)[] master_params, bool[] is_first, float lr, float weight_decay, float momentum, "
      "float dampening, bool nesterov, bool maximize, Tensor? lr_tensor, Tensor? grad_scale, Tensor? clip_coef, "
      "Tensor? found_inf) -> ()");
  m.def(
      "adam_update(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, Tensor(d!)[] exp_avg_sqs, "
      "Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] master_params, Tensor(g!)[] steps, float lr, float beta1, "
      "float beta2, float eps, float weight_decay, bool amsgrad, bool maximize, bool decoupled, "
      "Tensor? lr_tensor, Tensor? grad_scale, Tensor? clip_coef, Tensor? found_inf) -> ()");
}

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("check", &check);
  m.impl("sgd_update", &sgd_update);
  m.impl("adam_update", &adam_update);
}

}  // namespace fusedopt
