// The Python module fusedopt_cuda_emu: the CUDA ops of csrc/cuda/ops_impl.h (the same validation and kernel calls
// as the real CUDA ops) on CPU tensors, with the kernels of csrc/cuda running on the emulated grid (cuda_emu.h).
// check, sgd_update and adam_update take the op contract v2's arguments (fusedopt/reference.py); set_seed/seed and
// stats control and observe the emulation. Built by `make cuda-emu` into build/cuda-emu/; never shipped.
#include <torch/extension.h>

#include <limits>
#include <optional>
#include <vector>

#include "cuda/ops_impl.h"
#include "cuda_emu_api.h"

namespace py = pybind11;

namespace {

using OptTensor = std::optional<at::Tensor>;

struct EmuRuntime {
  static constexpr c10::DeviceType kDeviceType = c10::kCPU;
  struct Guard {
    explicit Guard(c10::Device) {}
  };
  static cudaStream_t stream() { return nullptr; }
  // NaN-filled, as fresh device memory holds garbage: a kernel that reads scratch before writing it shows.
  static at::Tensor scratch(int64_t n, const at::TensorOptions& options) {
    return at::full({n}, std::numeric_limits<float>::quiet_NaN(), options);
  }
};

c10::List<bool> to_list(const std::vector<bool>& flags) {
  c10::List<bool> list;
  list.reserve(flags.size());
  for (bool f : flags) list.push_back(f);
  return list;
}

}  // namespace

PYBIND11_MODULE(fusedopt_cuda_emu, m) {
  using namespace fusedopt::cuda_ops;
  m.doc() = "fusedopt's CUDA kernels on an emulated CUDA grid, on CPU tensors (tests only)";
  m.def("check", [](const std::vector<at::Tensor>& grads) { return check_op<EmuRuntime>(grads); }, py::arg("grads"));
  m.def(
      "sgd_update",
      [](const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
         const std::vector<at::Tensor>& momentum_buffers, const std::vector<at::Tensor>& master_params,
         const std::vector<bool>& is_first, double lr, double weight_decay, double momentum, double dampening,
         bool nesterov, bool maximize, const OptTensor& lr_tensor, const OptTensor& grad_scale,
         const OptTensor& clip_coef, const OptTensor& found_inf) {
        sgd_update_op<EmuRuntime>(params, grads, momentum_buffers, master_params, to_list(is_first), lr,
                                  weight_decay, momentum, dampening, nesterov, maximize, lr_tensor, grad_scale,
                                  clip_coef, found_inf);
      },
      py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"), py::arg("master_params"),
      py::arg("is_first"), py::arg("lr"), py::arg("weight_decay"), py::arg("momentum"), py::arg("dampening"),
      py::arg("nesterov"), py::arg("maximize"), py::arg("lr_tensor") = py::none(),
      py::arg("grad_scale") = py::none(), py::arg("clip_coef") = py::none(), py::arg("found_inf") = py::none());
  m.def(
      "adam_update",
      [](const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
         const std::vector<at::Tensor>& exp_avgs, const std::vector<at::Tensor>& exp_avg_sqs,
         const std::vector<at::Tensor>& max_exp_avg_sqs, const std::vector<at::Tensor>& master_params,
         const std::vector<at::Tensor>& steps, double lr, double beta1, double beta2, double eps,
         double weight_decay, bool amsgrad, bool maximize, bool decoupled, const OptTensor& lr_tensor,
         const OptTensor& grad_scale, const OptTensor& clip_coef, const OptTensor& found_inf) {
        adam_update_op<EmuRuntime>(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, master_params, steps,
                                   lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled, lr_tensor,
                                   grad_scale, clip_coef, found_inf);
      },
      py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"), py::arg("max_exp_avg_sqs"),
      py::arg("master_params"), py::arg("steps"), py::arg("lr"), py::arg("beta1"), py::arg("beta2"),
      py::arg("eps"), py::arg("weight_decay"), py::arg("amsgrad"), py::arg("maximize"), py::arg("decoupled"),
      py::arg("lr_tensor") = py::none(), py::arg("grad_scale") = py::none(), py::arg("clip_coef") = py::none(),
      py::arg("found_inf") = py::none());
  m.def("set_seed", &cuda_emu::set_seed, py::arg("seed"),
        "Block and warp order of the following launches: 0 = index order, else shuffled (a new order per launch).");
  m.def("seed", &cuda_emu::seed);
  m.def("stats", []() {
    const cuda_emu::Stats s = cuda_emu::stats();
    return py::dict(py::arg("launches") = s.launches, py::arg("blocks") = s.blocks, py::arg("threads") = s.threads,
                    py::arg("switches") = s.switches);
  });
  m.def("reset_stats", &cuda_emu::reset_stats);
#ifdef CUDA_EMU_SANITIZED
  m.attr("sanitized") = true;
#else
  m.attr("sanitized") = false;
#endif
}
