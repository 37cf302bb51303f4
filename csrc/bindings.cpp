// torch.library schemas of the fusedopt ops and their CPU implementations: validate every argument up front
// (nothing is written before all checks pass; the checks are shared with the CUDA ops, validate.h), then hand raw
// pointers to the kernels in csrc/cpu.
#include <Python.h>
#include <stdint.h>

#include <algorithm>
#include <utility>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu/kernels.h"
#include "ops.h"
#include "validate.h"
#include "versions.h"

namespace fusedopt {
namespace {

using at::Tensor;
using at::TensorList;

const c10::Device kCpu(c10::kCPU);

// A one-element CPU float tensor read on the host (the op runs on CPU, so reading it costs no sync).
std::optional<float> read_scalar(const std::optional<Tensor>& t, const char* what) {
  validate::check_scalar(t, kCpu, what);
  if (!t.has_value()) return std::nullopt;
  return float(t->item().toDouble());
}

// lr_tensor: a one-element float32 tensor on the params' device (CPU here, so reading it costs no sync). Its
// value replaces the float lr.
double learning_rate(double lr, const std::optional<Tensor>& lr_tensor) {
  validate::check_lr_tensor(lr_tensor, kCpu);
  return lr_tensor.has_value() ? double(lr_tensor->item().toFloat()) : lr;
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
  // Reused across calls on this thread (no allocation in the steady state); filled from scratch by each call.
  thread_local std::vector<cpu::GradView> views;
  views.clear();
  views.reserve(grads.size());
  validate::check_device_type(grads[0], c10::kCPU, "grads", 0);
  for (size_t i = 0; i < grads.size(); ++i) {
    void* data = validate::dense_data(grads[i], kCpu, "grads", i);
    views.push_back({data, grads[i].numel(), validate::kernel_dtype<cpu::Dtype>(grads[i], "grads", i)});
  }
  cpu::CheckResult r = cpu::check(views);
  Tensor out = at::empty({2}, grads[0].options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  o[0] = float(r.sumsq);
  o[1] = r.nonfinite ? 1.0f : 0.0f;
  return out;
}

void update(std::string_view rule, TensorList params, TensorList grads, TensorList states, TensorList master_params,
            TensorList scalars, c10::List<bool> is_first, c10::ArrayRef<double> hyper, int64_t flags, bool maximize,
            const std::optional<Tensor>& lr_tensor, const std::optional<Tensor>& grad_scale,
            const std::optional<Tensor>& clip_coef, const std::optional<Tensor>& found_inf) {
  validate::with_rule(rule, [&](auto r) {
    using Rule = decltype(r);
    // Reused across calls on this thread, so the steady state allocates nothing; fill_update empties it first
    // (nothing reads it between calls: the kernels are done when update returns).
    thread_local cpu::UpdateArgs args;
    validate::fill_update<Rule>(args, params, grads, states, master_params, scalars, is_first, hyper, flags);
    if (!params.empty()) validate::check_device_type(params[0], c10::kCPU, "params", 0);
    // The op's own guard for the values of its scalar states (step counts), before anything is written (the
    // optimizer refuses such counts when a state dict is loaded).
    validate::check_scalar_values<Rule>(args);
    args.hyper[0] = learning_rate(args.hyper[0], lr_tensor);
    std::optional<cpu::GradPrep> prep = grad_prep(grad_scale, clip_coef, found_inf, maximize);
    // Bumped also for a skipped step: the op mutates its arguments (as torch's fused ops, and the CUDA op, which
    // reads found_inf on the device).
    // The rounding step after the rule's scalars (stochastic rounding) is only read.
    bump_update_writes(params, grads, states, master_params, scalars.slice(0, size_t(Rule::kScalars) * params.size()),
                       grad_scale);
    if (!prep) return;  // skipped step: nothing is written, scalar states included
    args.grad = *prep;
    cpu::update<Rule>(args);
  });
}

// The optimizer's fast-path test, for all params with grads at once (one native call instead of a Python loop):
// every grad is a valid dense grad of its param, and every param and grad is a contiguous, element-aligned real
// tensor of a supported dtype on one device, with no lazy negation bit, not an inference tensor, and no two of
// them share memory (which also excludes a param listed twice). False is not an error: the caller then validates
// in Python (clear errors, the same checks) and takes the general path (temporaries, sequential duplicates).
bool kernel_ready(TensorList params, TensorList grads) {
  if (params.empty() || params.size() != grads.size()) return false;
  const c10::Device device = params[0].device();
  // Only devices with kernels (meta tensors, say, go to the validation in Python, which names the problem).
  if (device.type() != c10::DeviceType::CPU && device.type() != c10::DeviceType::CUDA) return false;
  // [begin, end) of each non-empty param and grad; reused across calls (no allocation in the steady state).
  thread_local std::vector<std::pair<uintptr_t, uintptr_t>> spans, verified;
  spans.clear();
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    const Tensor& g = grads[i];
    if (!p.defined() || !g.defined() || p.layout() != at::kStrided || g.layout() != at::kStrided) return false;
    const at::ScalarType dtype = p.scalar_type();
    if (dtype != at::kFloat && dtype != at::kDouble && dtype != at::kBFloat16 && dtype != at::kHalf) return false;
    if (g.scalar_type() != dtype || p.device() != device || g.device() != device) return false;
    if (!g.sizes().equals(p.sizes()) || !p.is_contiguous() || !g.is_contiguous()) return false;
    if (p.is_neg() || g.is_neg() || p.is_inference()) return false;
    const int64_t numel = p.numel();
    if (numel == 0) {  // no memory to overlap, but listed twice it is still updated twice (Adam's step count)
      for (size_t j = 0; j < i; ++j) {
        if (params[j].unsafeGetTensorImpl() == p.unsafeGetTensorImpl()) return false;
      }
      continue;
    }
    const auto size = uintptr_t(p.element_size());
    const auto pb = reinterpret_cast<uintptr_t>(p.const_data_ptr());
    const auto gb = reinterpret_cast<uintptr_t>(g.const_data_ptr());
    if (pb % size != 0 || gb % size != 0) return false;
    spans.emplace_back(pb, pb + uintptr_t(numel) * size);
    spans.emplace_back(gb, gb + uintptr_t(numel) * size);
  }
  // Disjointness depends only on the spans: a step over the same tensors as the last verified one (the usual
  // steady state) compares them instead of sorting again.
  if (spans == verified) return true;
  std::vector<std::pair<uintptr_t, uintptr_t>> sorted = spans;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i].first < sorted[i - 1].second) return false;
  }
  verified.swap(spans);
  return true;
}

TORCH_LIBRARY(fusedopt, m) {
  // Device-independent (a catch-all kernel): it reads only metadata.
  m.def("kernel_ready(Tensor[] params, Tensor[] grads) -> bool", &kernel_ready);
  m.def("check(Tensor[] grads) -> Tensor");
  // Every update rule (fusedopt/rules.py; the C++ rules of fusedopt/rules.h) through one schema: op contract v4,
  // fusedopt/reference.py.
  m.def(
      "update(str rule, Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] states, Tensor(d!)[] master_params, "
      "Tensor(e!)[] scalars, bool[] is_first, float[] hyper, int flags, bool maximize, Tensor? lr_tensor, "
      "Tensor? grad_scale, Tensor? clip_coef, Tensor? found_inf) -> ()");
}

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
  m.impl("check", &check);
  m.impl("update", &update);
}

}  // namespace fusedopt
