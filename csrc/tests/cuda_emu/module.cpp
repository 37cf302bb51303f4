// The Python module fusedopt_cuda_emu: the CUDA ops of csrc/cuda/ops_impl.h (the same validation and kernel calls
// as the real CUDA ops) on CPU tensors, with the kernels of csrc/cuda running on the emulated grid (cuda_emu.h).
// check and update take the op contract v4's arguments (fusedopt/reference.py), rules() names the compiled rules
// (tests/helpers.py's load_cuda_emu adds the named entries sgd_update, adam_update); set_seed/seed and stats
// control and observe the emulation. Built by `make cuda-emu` into build/cuda-emu/; never shipped.
#include <torch/extension.h>

#include <limits>
#include <optional>
#include <string>
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
      "update",
      [](const std::string& rule, const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
         const std::vector<at::Tensor>& states, const std::vector<at::Tensor>& master_params,
         const std::vector<at::Tensor>& scalars, const std::vector<bool>& is_first, const std::vector<double>& hyper,
         int64_t flags, bool maximize, const OptTensor& lr_tensor, const OptTensor& grad_scale,
         const OptTensor& clip_coef, const OptTensor& found_inf) {
        update_op<EmuRuntime>(rule, params, grads, states, master_params, scalars, to_list(is_first), hyper, flags,
                              maximize, lr_tensor, grad_scale, clip_coef, found_inf);
      },
      py::arg("rule"), py::arg("params"), py::arg("grads"), py::arg("states"), py::arg("master_params"),
      py::arg("scalars"), py::arg("is_first"), py::arg("hyper"), py::arg("flags"), py::arg("maximize"),
      py::arg("lr_tensor") = py::none(), py::arg("grad_scale") = py::none(), py::arg("clip_coef") = py::none(),
      py::arg("found_inf") = py::none());
  m.def("rules", []() {
    std::vector<std::string> names;
    fusedopt::for_each_rule([&](auto rule) { names.push_back(decltype(rule)::kName); });
    return names;
  }, "The names of the update rules the module has kernels for (csrc/include/fusedopt/rules.h).");
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
