// The Python module fusedopt._C. Loading it runs bindings.cpp's static registrations (torch.ops.fusedopt.*);
// it also binds the same functions directly for eager calls. The cost of a call with thousands of small
// tensors is per tensor on the host: torch.ops converts each one to an IValue (~0.25 us), and even pybind11's
// caster takes a new reference per tensor and, on release, the GIL-checked decref of its PyObject. Here the
// tensors are borrowed from the caller's lists instead (+0, as c10::MaybeOwned does): the lists keep them alive
// for the call, which never releases the GIL. Traced code (torch.compile) keeps the torch.ops path.
#include <torch/extension.h>

#include <string>
#include <vector>

#include "ops.h"

namespace py = pybind11;

namespace {

using Borrow = c10::MaybeOwnedTraits<at::Tensor>;

class BorrowedTensors {
 public:
  BorrowedTensors(py::handle list, const char* what) {
    PyObject* seq = list.ptr();
    if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
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
  void release() {
    for (at::Tensor& t : tensors_) Borrow::destroyBorrow(t);
    tensors_.clear();
  }
  std::vector<at::Tensor> tensors_;
};

c10::List<bool> to_list(const std::vector<bool>& flags) {
  c10::List<bool> list;
  list.reserve(flags.size());
  for (bool f : flags) list.push_back(f);
  return list;
}

// Binds one backend's check/sgd_update/adam_update (the CPU ops, or the CUDA ones: same signatures) as
// <prefix>check, <prefix>sgd_update and <prefix>adam_update.
template <typename Check, typename Sgd, typename Adam>
void def_ops(py::module_& m, const std::string& prefix, Check check, Sgd sgd_update, Adam adam_update) {
  using OptTensor = std::optional<at::Tensor>;
  m.def((prefix + "check").c_str(), [check](py::handle grads) { return check(BorrowedTensors(grads, "grads")); });
  m.def((prefix + "sgd_update").c_str(),
        [sgd_update](py::handle params, py::handle grads, py::handle momentum_buffers, py::handle master_params,
                     const std::vector<bool>& is_first, double lr, double weight_decay, double momentum,
                     double dampening, bool nesterov, bool maximize, const OptTensor& lr_tensor,
                     const OptTensor& grad_scale, const OptTensor& clip_coef, const OptTensor& found_inf) {
          sgd_update(BorrowedTensors(params, "params"), BorrowedTensors(grads, "grads"),
                     BorrowedTensors(momentum_buffers, "momentum_buffers"),
                     BorrowedTensors(master_params, "master_params"), to_list(is_first), lr, weight_decay, momentum,
                     dampening, nesterov, maximize, lr_tensor, grad_scale, clip_coef, found_inf);
        });
  m.def((prefix + "adam_update").c_str(),
        [adam_update](py::handle params, py::handle grads, py::handle exp_avgs, py::handle exp_avg_sqs,
                      py::handle max_exp_avg_sqs, py::handle master_params, py::handle steps, double lr,
                      double beta1, double beta2, double eps, double weight_decay, bool amsgrad, bool maximize,
                      bool decoupled, const OptTensor& lr_tensor, const OptTensor& grad_scale,
                      const OptTensor& clip_coef, const OptTensor& found_inf) {
          adam_update(BorrowedTensors(params, "params"), BorrowedTensors(grads, "grads"),
                      BorrowedTensors(exp_avgs, "exp_avgs"), BorrowedTensors(exp_avg_sqs, "exp_avg_sqs"),
                      BorrowedTensors(max_exp_avg_sqs, "max_exp_avg_sqs"),
                      BorrowedTensors(master_params, "master_params"), BorrowedTensors(steps, "steps"), lr, beta1,
                      beta2, eps, weight_decay, amsgrad, maximize, decoupled, lr_tensor, grad_scale, clip_coef,
                      found_inf);
        });
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.def("kernel_ready", [](py::handle params, py::handle grads) {
    return fusedopt::kernel_ready(BorrowedTensors(params, "params"), BorrowedTensors(grads, "grads"));
  });
  def_ops(m, "", &fusedopt::check, &fusedopt::sgd_update, &fusedopt::adam_update);
#ifdef FUSEDOPT_CUDA
  // The CUDA ops (a build with FUSEDOPT_CUDA=1): fusedopt.ops offers backend="cuda" when has_cuda is true.
  def_ops(m, "cuda_", &fusedopt::cuda_ops::check, &fusedopt::cuda_ops::sgd_update, &fusedopt::cuda_ops::adam_update);
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
}
