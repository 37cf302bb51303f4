// Argument validation shared by the CPU ops (bindings.cpp) and the CUDA ops (cuda/ops_impl.h): every check runs
// before anything is written, and every error names the argument and its index. The helpers are templates over
// the update rule (math.h) and over the backends' raw-pointer argument structs (cpu::UpdateArgs and the CUDA
// one), which share field names, and over their Dtype enums, which share enumerator names.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include "fusedopt/rules.h"

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

// A list name of the op's flat arguments: the state key + "s" (fusedopt/rules.py's list_name), e.g. exp_avgs.
// Streamed into a message only when a check fails (a std::string built per call would allocate).
struct ListName {
  const char* key;
};

inline std::ostream& operator<<(std::ostream& out, const ListName& name) { return out << name.key << "s"; }

inline ListName list_name(const char* key) { return {key}; }

// Everything a kernel assumes about a tensor it reads or writes through a raw pointer; `device` is where the
// call runs (params[0]'s device). Returns the tensor's data pointer, taken once for the alignment check and the
// kernels. `what` is the list's name (a string, or a ListName).
template <typename What>
void* dense_data(const Tensor& t, c10::Device device, const What& what, size_t i) {
  TORCH_CHECK(t.defined(), "fusedopt: ", what, "[", i, "] is undefined");
  const c10::TensorImpl& impl = *t.unsafeGetTensorImpl();
  TORCH_CHECK(impl.layout() == at::kStrided, "fusedopt: ", what, "[", i, "] is ", impl.layout(),
              "; sparse tensors are not supported");
  TORCH_CHECK(impl.device() == device, "fusedopt: ", what, "[", i, "] is on ", impl.device(), ", expected ", device);
  TORCH_CHECK(!t.is_complex(), "fusedopt: ", what, "[", i, "] is complex (", t.scalar_type(),
              "), which is not supported");
  TORCH_CHECK(impl.is_contiguous(), "fusedopt: ", what, "[", i, "] is not contiguous");
  // The kernels read raw memory: a lazy negation would be ignored, and a pointer off its element alignment
  // (torch.frombuffer at an odd offset) is undefined behaviour on the CPU and a fault on a GPU.
  TORCH_CHECK(!impl.is_neg(), "fusedopt: ", what, "[", i, "] has its negative bit set (a lazy negation view); ",
              "pass t.resolve_neg()");
  void* data = t.data_ptr();
  const size_t size = impl.itemsize();
  TORCH_CHECK(reinterpret_cast<uintptr_t>(data) % uintptr_t(size) == 0, "fusedopt: ", what, "[", i,
              "] is not aligned to its element size (", size, " bytes)");
  return data;
}

template <typename What>
void check_dense(const Tensor& t, c10::Device device, const What& what, size_t i) {
  dense_data(t, device, what, i);
}

// A tensor of param i's call besides the param itself (its grad, master copy, a state): dense_data's checks, the
// dtype `dtype` and the param's numel. Returns the data pointer.
template <typename What>
void* like_data(const Tensor& t, const Tensor& param, at::ScalarType dtype, const What& what, size_t i) {
  void* data = dense_data(t, param.device(), what, i);
  TORCH_CHECK(t.scalar_type() == dtype, "fusedopt: ", what, "[", i, "] has dtype ", t.scalar_type(), ", expected ",
              dtype);
  TORCH_CHECK(t.numel() == param.numel(), "fusedopt: ", what, "[", i, "] has ", t.numel(), " elements but params[",
              i, "] has ", param.numel());
  return data;
}

template <typename What>
void check_like(const Tensor& t, const Tensor& param, at::ScalarType dtype, const What& what, size_t i) {
  like_data(t, param, dtype, what, i);
}

inline void check_length(size_t got, size_t want, const char* what) {
  TORCH_CHECK(got == want, "fusedopt: ", what, " has ", got, " entries, expected ", want, " (one per param)");
}

// The memory of one tensor, from the pointer already taken and the size already validated.
struct Span {
  const void* data;
  int64_t bytes;
};

// The memory of one param's tensors (param, grad, master copy and states), in a fixed-size array: at most
// 3 + kStates of them, so no allocation per param or per call.
template <size_t N>
struct Spans {
  std::array<Span, N> spans;
  size_t count = 0;

  void add(const void* data, int64_t bytes) { spans[count++] = {data, bytes}; }
};

// The kernels read and write a param's tensors in one pass with no runtime alias checks: their memory must not
// overlap.
template <size_t N>
void check_disjoint(const Spans<N>& s, size_t i) {
  for (size_t a = 0; a < s.count; ++a) {
    const auto a0 = reinterpret_cast<uintptr_t>(s.spans[a].data);
    for (size_t b = a + 1; b < s.count; ++b) {
      const auto b0 = reinterpret_cast<uintptr_t>(s.spans[b].data);
      const bool overlap = a0 < b0 + s.spans[b].bytes && b0 < a0 + s.spans[a].bytes;
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

// Empties the vectors of a backend's Args struct, keeping their capacity: a caller that keeps one Args across
// calls (the CPU op, per thread) fills it without allocating in the steady state.
template <typename Args>
void reset(Args& args, size_t n) {
  for (auto* v : {&args.params, &args.grads}) {
    v->clear();
    v->reserve(n);
  }
  args.numels.clear();
  args.numels.reserve(n);
  args.master_params.clear();
  args.states.clear();
  args.scalars.clear();
  args.is_first.clear();
  args.hyper.clear();
  args.param_ids.clear();
  args.rounding_step = nullptr;
}

// Validates params and grads (one dtype, one device: params[0]'s) and fills the fields every update shares
// (appended to args' vectors, which reset() emptied).
template <typename Args>
void fill_params(Args& args, TensorList params, TensorList grads) {
  using Dtype = decltype(args.dtype);
  check_length(grads.size(), params.size(), "grads");
  args.dtype = Dtype::Float32;
  if (params.empty()) return;
  const c10::Device device = params[0].device();
  const at::ScalarType dtype = params[0].scalar_type();
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    void* data = dense_data(p, device, "params", i);
    args.dtype = kernel_dtype<Dtype>(p, "params", i);
    TORCH_CHECK(p.scalar_type() == dtype, "fusedopt: params[", i, "] has dtype ", p.scalar_type(),
                " but params[0] has ", dtype, "; one call takes one param dtype");
    args.grads.push_back(like_data(grads[i], p, dtype, "grads", i));
    args.params.push_back(data);
    args.numels.push_back(p.numel());
  }
}

// The master copies: none, or one tensor per param with its numel, on its device: all float32 (fp32 masters), or
// all int16 for bfloat16 params (master remainders, master_weights="remainder": math.h's split_bf16/join_bf16).
// The kind is master_params[0]'s dtype.
template <typename Args>
void fill_master_params(Args& args, TensorList params, TensorList master_params) {
  args.master_remainder = false;
  if (master_params.empty()) return;
  check_length(master_params.size(), params.size(), "master_params");
  const bool remainder = master_params[0].defined() && master_params[0].scalar_type() == at::kShort;
  if (remainder && !params.empty()) {
    TORCH_CHECK(params[0].scalar_type() == at::kBFloat16, "fusedopt: master_params[0] is int16 (a master remainder)",
                " but params[0] has dtype ", params[0].scalar_type(),
                "; remainders hold the low 16 bits of an fp32 master of a bfloat16 param");
  }
  args.master_remainder = remainder;
  args.master_params.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    args.master_params.push_back(like_data(master_params[i], params[i], remainder ? at::kShort : at::kFloat,
                                           "master_params", i));
  }
}

// The dtype every state tensor of one call shares (float32 or bfloat16), taken from the first state given.
struct StateDtype {
  std::optional<at::ScalarType> dtype;

  // Validates state tensor `t` of param i and returns its data.
  template <typename What>
  void* data(const Tensor& t, const Tensor& param, const What& what, size_t i) {
    void* data = dense_data(t, param.device(), what, i);
    const at::ScalarType type = t.scalar_type();
    if (!dtype) {
      TORCH_CHECK(type == at::kFloat || type == at::kBFloat16, "fusedopt: ", what, "[", i, "] has dtype ", type,
                  "; optimizer states are float32 or bfloat16");
      dtype = type;
    }
    TORCH_CHECK(type == *dtype, "fusedopt: ", what, "[", i, "] has dtype ", type,
                " but the other states of this call have ", *dtype, "; one call takes one state dtype");
    TORCH_CHECK(t.numel() == param.numel(), "fusedopt: ", what, "[", i, "] has ", t.numel(), " elements but params[",
                i, "] has ", param.numel());
    return data;
  }

  template <typename Dtype>
  Dtype kernel_dtype() const {
    return dtype == at::kBFloat16 ? Dtype::BFloat16 : Dtype::Float32;
  }
};

// f(Rule{}) for the update rule named `name` (fusedopt/rules.h's list), or an error naming the known rules, as
// fusedopt/rules.py's get() words it.
template <typename F>
void with_rule(std::string_view name, F&& f) {
  if (fusedopt::with_rule(name, std::forward<F>(f))) return;
  std::vector<std::string> known;
  for_each_rule([&](auto rule) { known.emplace_back(decltype(rule)::kName); });
  std::sort(known.begin(), known.end());
  std::string list;
  for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
  TORCH_CHECK(false, "fusedopt: unknown update rule '", name, "'; known: ", list);
}

// A rule's names (math.h's name lists), comma-separated, for errors; "none" for an empty list.
template <size_t N>
std::string joined(const std::array<const char*, N>& names) {
  std::string out;
  for (size_t i = 0; i < N; ++i) out += (i > 0 ? ", " : "") + std::string(names[i]);
  return N > 0 ? out : "none";
}

// Stochastic rounding (math.h's kFlagStochasticRounding): `hyper` holds the rule's kHyper doubles, then the
// seed's low and high words, then one id per param, each an integer in [0, 2^32) (exact as a double).
template <typename Rule>
void check_rounding_hyper(c10::ArrayRef<double> hyper, size_t n) {
  TORCH_CHECK(hyper.size() == size_t(Rule::kHyper) + 2 + n, "fusedopt: rule '", Rule::kName, "' with stochastic ",
              "rounding takes ", Rule::kHyper, " hyperparameters (", joined(Rule::kHyperNames),
              "), the seed's two 32-bit words and one id per param (", size_t(Rule::kHyper) + 2 + n, " values for ",
              n, " params), got ", hyper.size());
  for (size_t k = size_t(Rule::kHyper); k < hyper.size(); ++k) {
    const double v = hyper[k];
    const size_t j = k - size_t(Rule::kHyper);
    TORCH_CHECK(v >= 0.0 && v < 4294967296.0 && v == double(uint64_t(v)), "fusedopt: hyper[", k, "] (",
                j == 0 ? "the seed's low word" : j == 1 ? "the seed's high word" : "the id of params[",
                j >= 2 ? c10::str(j - 2, "]") : std::string(), ") is ", v, "; expected an integer in [0, 2^32)");
  }
}

// The rest of stochastic rounding's arguments, after fill_params (the params' dtype) and check_rounding_hyper:
// bf16 params without master copies (a master copy keeps the exact value; fp32 and fp16 params are not rounded to
// bf16), and the rounding step, the entry of `scalars` after the rule's: a one-element int64 tensor on the
// params' device.
template <typename Rule, typename Args>
void fill_rounding(Args& args, TensorList params, TensorList master_params, TensorList scalars,
                   c10::ArrayRef<double> hyper) {
  using Dtype = decltype(args.dtype);
  const size_t n = params.size();
  TORCH_CHECK(n == 0 || args.dtype == Dtype::BFloat16, "fusedopt: stochastic rounding (flags bit 16) rounds ",
              "bfloat16 params; params[0] has dtype ", params[0].scalar_type());
  TORCH_CHECK(master_params.empty(), "fusedopt: stochastic rounding (flags bit 16) is for params without a master ",
              "copy, but master_params has ", master_params.size(), " entries");
  args.seed_lo = uint32_t(hyper[Rule::kHyper]);
  args.seed_hi = uint32_t(hyper[Rule::kHyper + 1]);
  args.param_ids.resize(n);
  for (size_t i = 0; i < n; ++i) args.param_ids[i] = uint32_t(hyper[Rule::kHyper + 2 + i]);
  const size_t at = size_t(Rule::kScalars) * n;
  if (scalars.size() != at + 1) return;  // fill_update's length check names the problem
  const Tensor& s = scalars[at];
  const bool ok = s.defined() && s.layout() == at::kStrided && s.scalar_type() == at::kLong && s.numel() == 1 &&
                  (n == 0 || s.device() == params[0].device());
  TORCH_CHECK(ok, "fusedopt: the rounding step (scalars[", at, "]) must be a one-element int64 tensor",
              n > 0 ? " on " + params[0].device().str() : std::string(), ", got ",
              s.defined() ? c10::str(s.scalar_type(), " with ", s.numel(), " elements on ", s.device())
                          : std::string("undefined"));
  args.rounding_step = static_cast<const int64_t*>(s.const_data_ptr());
}

// The op's flat arguments for update rule `Rule` (see fusedopt/reference.py, op contract v4), validated and
// filled into a backend's raw-pointer struct `Args` (cpu::UpdateArgs, the CUDA one), which has the fields
//   dtype, state_dtype, params, grads, master_params, master_remainder, numels
//             (fill_params, fill_master_params)
//   states    Rule::kStates * n pointers: states[k * n + i] is state k of param i, nullptr where the rule does
//             not use state k under these switches (the op's list holds only the states in use, in order)
//   scalars   Rule::kScalars * n float pointers (one-element float32 tensors on the params' device)
//   is_first  empty, or one 0/1 per param
//   hyper     the Rule::kHyper doubles; flags, switches (Rule::switches of them)
// Nothing is written to a tensor here; every error names the list and the index ("exp_avgs[3] has dtype ...").
template <typename Rule, typename Args>
void fill_update(Args& args, TensorList params, TensorList grads, TensorList states, TensorList master_params,
                 TensorList scalars, const c10::List<bool>& is_first, c10::ArrayRef<double> hyper, int64_t flags) {
  const bool stochastic = flags >= 0 && (flags & int64_t(kFlagStochasticRounding)) != 0;
  const int64_t rule_flags = stochastic ? flags & ~int64_t(kFlagStochasticRounding) : flags;
  const size_t n = params.size();
  if (!stochastic) {
    TORCH_CHECK(hyper.size() == size_t(Rule::kHyper), "fusedopt: rule '", Rule::kName, "' takes ", Rule::kHyper,
                " hyperparameters (", joined(Rule::kHyperNames), "), got ", hyper.size());
  }
  TORCH_CHECK(rule_flags >= 0 && rule_flags < (int64_t(1) << Rule::kFlags), "fusedopt: flags is ", flags, "; rule '",
              Rule::kName, "' has ", Rule::kFlags, " flag bits (", joined(Rule::kFlagNames),
              ") and bit 16 (stochastic rounding)");
  if (stochastic) check_rounding_hyper<Rule>(hyper, n);
  reset(args, n);
  args.hyper.assign(hyper.begin(), hyper.begin() + Rule::kHyper);
  args.flags = uint32_t(rule_flags);
  args.switches = Rule::switches(args.hyper.data(), args.flags);
  fill_params(args, params, grads);
  fill_master_params(args, params, master_params);
  if (stochastic) fill_rounding<Rule>(args, params, master_params, scalars, hyper);

  // The states in use, in the rule's order: the op's list u holds state used[u].
  std::array<int, Rule::kStates> used{};
  size_t num_used = 0;
  for (int k = 0; k < Rule::kStates; ++k) {
    if (Rule::uses_state(k, args.switches)) used[num_used++] = k;
  }
  if (states.size() != num_used * n) {
    std::string lists;
    for (size_t u = 0; u < num_used; ++u) lists += c10::str(u > 0 ? ", " : "", list_name(Rule::kStateNames[used[u]]));
    TORCH_CHECK(false, "fusedopt: states has ", states.size(), " entries, expected ", num_used * n, " (", num_used,
                " state lists (", num_used > 0 ? lists : std::string("none"), ") of ", n, " params)");
  }
  const size_t rounding_scalars = stochastic ? 1 : 0;
  TORCH_CHECK(scalars.size() == size_t(Rule::kScalars) * n + rounding_scalars, "fusedopt: scalars has ",
              scalars.size(), " entries, expected ", size_t(Rule::kScalars) * n + rounding_scalars, " (",
              Rule::kScalars, " scalar lists (", joined(Rule::kScalarNames), ") of ", n, " params",
              stochastic ? ", then the rounding step)" : ")");
  if (!is_first.empty()) check_length(is_first.size(), n, "is_first");

  args.states.assign(size_t(Rule::kStates) * n, nullptr);
  args.scalars.assign(size_t(Rule::kScalars) * n, nullptr);
  if (!is_first.empty()) args.is_first.resize(n);
  const bool masters = !args.master_params.empty();
  StateDtype state;
  for (size_t i = 0; i < n; ++i) {
    const Tensor& param = params[i];
    const int64_t numel = args.numels[i];
    const int64_t p_bytes = numel * int64_t(param.element_size());
    Spans<3 + Rule::kStates> spans;
    spans.add(args.params[i], p_bytes);
    spans.add(args.grads[i], p_bytes);
    if (masters) spans.add(args.master_params[i], numel * (args.master_remainder ? 2 : 4));
    for (size_t u = 0; u < num_used; ++u) {
      const int k = used[u];
      const Tensor& t = states[u * n + i];
      void* data = state.data(t, param, list_name(Rule::kStateNames[k]), i);
      spans.add(data, numel * int64_t(t.element_size()));
      args.states[size_t(k) * n + i] = data;
    }
    check_disjoint(spans, i);
    for (int j = 0; j < Rule::kScalars; ++j) {
      const Tensor& s = scalars[size_t(j) * n + i];
      const c10::Device device = param.device();
      TORCH_CHECK(s.defined() && s.device() == device && s.layout() == at::kStrided &&
                      s.scalar_type() == at::kFloat && s.numel() == 1,
                  "fusedopt: ", list_name(Rule::kScalarNames[j]), "[", i, "] must be a one-element float32 ",
                  c10::DeviceTypeName(device.type()), " tensor on ", device, ", got ",
                  s.defined() ? s.toString() : std::string("undefined"), " with ", s.defined() ? s.numel() : 0,
                  " elements", s.defined() ? " on " + s.device().str() : std::string());
      args.scalars[size_t(j) * n + i] = static_cast<float*>(s.data_ptr());
    }
    if (!is_first.empty()) args.is_first[i] = is_first.get(i) ? 1 : 0;
  }
  args.state_dtype = state.kernel_dtype<decltype(args.state_dtype)>();
}

// The scalar states' values, for a backend that reads them on the host (the CPU op: no sync): the rule's
// kScalarNonNegative ones must be >= 0 (not NaN). Run after fill_update, before anything is written.
template <typename Rule, typename Args>
void check_scalar_values(const Args& args) {
  const size_t n = args.numels.size();
  for (int j = 0; j < Rule::kScalars; ++j) {
    if (!Rule::kScalarNonNegative[j]) continue;
    for (size_t i = 0; i < n; ++i) {
      const float v = *args.scalars[size_t(j) * n + i];
      TORCH_CHECK(v >= 0.0f, "fusedopt: ", list_name(Rule::kScalarNames[j]), "[", i, "] is ", v, "; ",
                  Rule::kScalarNames[j], " counts must be non-negative");
    }
  }
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
