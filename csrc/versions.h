// Version counters of the tensors an op writes. The kernels write through raw pointers, which autograd cannot
// see; torch's in-place ops bump the version counter of every tensor they modify, and so does every fusedopt op
// (the CPU ops in bindings.cpp; the CUDA ops, real and emulated, in cuda/ops_impl.h), so that backward through a
// graph that saved one of them raises "modified by an inplace operation" as after torch.optim's step. Called
// after validation and before the kernels: an inference tensor outside InferenceMode then raises torch's own
// error before any write. The cost is one atomic increment per tensor.
#pragma once

#include <initializer_list>
#include <optional>

#include <ATen/core/Tensor.h>

namespace fusedopt {

inline void bump_versions(std::initializer_list<at::TensorList> written) {
  for (at::TensorList list : written) {
    for (const at::Tensor& t : list) t.unsafeGetTensorImpl()->bump_version();
  }
}

// What each update op writes, for every backend's op (one list per algorithm): params, master copies, states,
// step counts, and the grads when GradScaler's unscale writes them back.
inline void bump_sgd_writes(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                            at::TensorList master_params, const std::optional<at::Tensor>& grad_scale) {
  bump_versions({params, master_params, momentum_buffers, grad_scale.has_value() ? grads : at::TensorList()});
}

inline void bump_adam_writes(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                             at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, bool amsgrad,
                             at::TensorList master_params, at::TensorList steps,
                             const std::optional<at::Tensor>& grad_scale) {
  bump_versions({params, master_params, exp_avgs, exp_avg_sqs, amsgrad ? max_exp_avg_sqs : at::TensorList(), steps,
                 grad_scale.has_value() ? grads : at::TensorList()});
}

}  // namespace fusedopt
