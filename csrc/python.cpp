// The Python module fusedopt._C. Loading it runs bindings.cpp's static registrations (torch.ops.fusedopt.*);
// it also binds the same functions directly for eager calls. The cost of a call with thousands of small
// tensors is per tensor on the host: torch.ops converts each one to an IValue (~0.25 us), and even pybind11's
// caster takes a new reference per tensor and, on release, the GIL-checked decref of its PyObject. Here the
// tensors are borrowed from the caller's lists instead (+0, as c10::MaybeOwned does): the lists keep them alive
// for the call, which never releases the GIL. Traced code (torch.compile) keeps the torch.ops path.
#include <torch/extension.h>

#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "cpu/kernels.h"
#include "fusedopt/rules.h"
#include "ops.h"

namespace py = pybind11;

namespace {

using Borrow = c10::MaybeOwnedTraits<at::Tensor>;

// The tensors of one list argument, borrowed. Their vector comes from a per-thread pool and goes back to it with
// its capacity, so a call allocates nothing in the steady state (a pool rather than one vector per argument:
// correct however many lists are alive at once).
class BorrowedTensors {
 public:
  BorrowedTensors(py::handle list, const char* what) : tensors_(acquire()) {
    PyObject* seq = list.ptr();
    if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
      release();
      throw py::type_error(std::string("fusedopt: ") + what + " must be a list of tensors, got " +
                           std::string(py::str(py::type::handle_of(list))));
    }
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject** items = PySequence_Fast_ITEMS(seq);
    tensors_.reserve(size_t(n));
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (!THPVariable_Check(items[i])) {
        release();
        throw py::type_error(std::string("fusedopt: ") + what + "[" + std::to_string(i) + "] is not a tensor");
      }
      tensors_.push_back(Borrow::createBorrow(THPVariable_Unpack(items[i])));
    }
  }
  BorrowedTensors(const BorrowedTensors&) = delete;
  BorrowedTensors& operator=(const BorrowedTensors&) = delete;
  ~BorrowedTensors() { release(); }

  operator at::TensorList() const { return tensors_; }

 private:
  static std::vector<std::vector<at::Tensor>>& pool() {
    thread_local std::vector<std::vector<at::Tensor>> vectors;
    return vectors;
  }

  static std::vector<at::Tensor> acquire() {
    auto& vectors = pool();
    if (vectors.empty()) return {};
    std::vector<at::Tensor> v = std::move(vectors.back());
    vectors.pop_back();
    return v;
  }

  // Ends the borrows (no decref: they were never counted) and returns the vector to the pool, once.
  void release() {
    if (released_) return;
    released_ = true;
    for (at::Tensor& t : tensors_) Borrow::destroyBorrow(t);
    tensors_.clear();
    pool().push_back(std::move(tensors_));
  }

  std::vector<at::Tensor> tensors_;
  bool released_ = false;
};

// is_first as the op takes it (a bool[] list), from a list or tuple of bools without an intermediate
// std::vector<bool>; other sequences, and items other than True/False (None, ints: what pybind11's bool caster
// converts), go through pybind11's casters. The list is reused across calls on this thread: update never calls
// back into Python, so it is never in use twice at once.
const c10::List<bool>& bool_list(py::handle flags) {
  thread_local c10::List<bool> list;
  list.clear();
  PyObject* seq = flags.ptr();
  if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
    for (bool f : py::cast<std::vector<bool>>(flags)) list.push_back(f);
    return list;
  }
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** items = PySequence_Fast_ITEMS(seq);
  list.reserve(size_t(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = items[i];
    list.push_back(item == Py_True ? true : item == Py_False ? false : py::cast<bool>(py::handle(item)));
  }
  return list;
}

// Binds one backend's check and update (the CPU ops, or the CUDA ones: same signatures) as <prefix>check and
// <prefix>update.
template <typename Check, typename Update>
void def_ops(py::module_& m, const std::string& prefix, Check check, Update update) {
  using OptTensor = std::optional<at::Tensor>;
  m.def((prefix + "check").c_str(), [check](py::handle grads) { return check(BorrowedTensors(grads, "grads")); });
  m.def((prefix + "update").c_str(),
        [update](std::string_view rule, py::handle params, py::handle grads, py::handle states,
                 py::handle master_params, py::handle scalars, py::handle is_first,
                 const std::vector<double>& hyper, int64_t flags, bool maximize, const OptTensor& lr_tensor,
                 const OptTensor& grad_scale, const OptTensor& clip_coef, const OptTensor& found_inf) {
          update(rule, BorrowedTensors(params, "params"), BorrowedTensors(grads, "grads"),
                 BorrowedTensors(states, "states"), BorrowedTensors(master_params, "master_params"),
                 BorrowedTensors(scalars, "scalars"), bool_list(is_first), hyper, flags, maximize, lr_tensor,
                 grad_scale, clip_coef, found_inf);
        });
}

// The names in one of a rule's name lists (math.h).
template <size_t N>
py::tuple names(const std::array<const char*, N>& list) {
  py::tuple out(N);
  for (size_t i = 0; i < N; ++i) out[i] = py::str(list[i]);
  return out;
}

// What the C++ rule says about itself, for tests/test_rules.py to compare with fusedopt/rules.py.
template <typename Rule>
py::dict rule_info() {
  py::dict info;
  info["hyper"] = names(Rule::kHyperNames);
  info["flags"] = names(Rule::kFlagNames);
  info["states"] = names(Rule::kStateNames);
  info["scalars"] = names(Rule::kScalarNames);
  info["takes_is_first"] = Rule::kTakesIsFirst;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.def("kernel_ready", [](py::handle params, py::handle grads) {
    return fusedopt::kernel_ready(BorrowedTensors(params, "params"), BorrowedTensors(grads, "grads"));
  });
  def_ops(m, "", &fusedopt::check, &fusedopt::update);
  // The rules the compiled backends have kernels for (fusedopt/rules.h), by name, and each one's names.
  m.def("rules", [] {
    py::list out;
    fusedopt::for_each_rule([&](auto rule) { out.append(py::str(decltype(rule)::kName)); });
    return out;
  });
  m.def("rule_info", [](std::string_view name) {
    py::dict info;
    if (!fusedopt::with_rule(name, [&](auto rule) { info = rule_info<decltype(rule)>(); })) {
      throw py::key_error("fusedopt: unknown update rule '" + std::string(name) + "'");
    }
    return info;
  });
  // The ISA variants of the CPU loops (cpu/kernels.h): {name: None if it runs here, else why not}, the active
  // one, and a switch for tests and benchmarks (FUSEDOPT_CPU_ISA picks one for a whole process).
  m.def("cpu_isas", [] {
    py::dict out;
    for (int i = 0; i < fusedopt::cpu::kNumIsas; ++i) {
      const auto isa = fusedopt::cpu::Isa(i);
      const std::string why = fusedopt::cpu::isa_unavailable(isa);
      out[py::str(fusedopt::cpu::isa_name(isa))] = why.empty() ? py::object(py::none()) : py::object(py::str(why));
    }
    return out;
  });
  m.def("cpu_isa", [] { return fusedopt::cpu::isa_name(fusedopt::cpu::active_isa()); });
  m.def("set_cpu_isa", &fusedopt::cpu::set_isa);
#ifdef FUSEDOPT_CUDA
  // The CUDA ops (a build with FUSEDOPT_CUDA=1): fusedopt.ops offers backend="cuda" when has_cuda is true.
  def_ops(m, "cuda_", &fusedopt::cuda_ops::check, &fusedopt::cuda_ops::update);
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
}
