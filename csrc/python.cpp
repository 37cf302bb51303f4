// The Python module fusedopt._C. Loading it runs bindings.cpp's static registrations (torch.ops.fusedopt.*);
// it also binds the same functions directly. torch.ops converts every tensor of a list argument to an IValue
// (about 0.25 us each, measured): with thousands of small params and five lists per update that is several
// milliseconds a step, more than the kernel time. pybind11's tensor casters cost a fraction of that, so eager
// steps call these; traced code (torch.compile) keeps the torch.ops path and its fake implementations.
#include <torch/extension.h>

#include <vector>

#include "ops.h"

namespace {

using Tensors = std::vector<at::Tensor>;

c10::List<bool> to_list(const std::vector<bool>& flags) {
  c10::List<bool> list;
  list.reserve(flags.size());
  for (bool f : flags) list.push_back(f);
  return list;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.def("kernel_ready", [](const Tensors& params, const Tensors& grads) {
    return fusedopt::kernel_ready(params, grads);
  });
  m.def("check", [](const Tensors& grads) { return fusedopt::check(grads); });
  m.def("sgd_update", [](const Tensors& params, const Tensors& grads, const Tensors& momentum_buffers,
                         const std::vector<bool>& is_first, double lr, double weight_decay, double momentum,
                         double dampening, bool nesterov, bool maximize, const std::optional<at::Tensor>& grad_scale,
                         const std::optional<at::Tensor>& clip_coef, const std::optional<at::Tensor>& found_inf) {
    fusedopt::sgd_update(params, grads, momentum_buffers, to_list(is_first), lr, weight_decay, momentum, dampening,
                         nesterov, maximize, grad_scale, clip_coef, found_inf);
  });
  m.def("adam_update", [](const Tensors& params, const Tensors& grads, const Tensors& exp_avgs,
                          const Tensors& exp_avg_sqs, const Tensors& max_exp_avg_sqs, const Tensors& steps, double lr,
                          double beta1, double beta2, double eps, double weight_decay, bool amsgrad, bool maximize,
                          bool decoupled, const std::optional<at::Tensor>& grad_scale,
                          const std::optional<at::Tensor>& clip_coef, const std::optional<at::Tensor>& found_inf) {
    fusedopt::adam_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps,
                          weight_decay, amsgrad, maximize, decoupled, grad_scale, clip_coef, found_inf);
  });
}
