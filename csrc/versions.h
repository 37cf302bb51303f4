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

// What the update op writes, for every backend and rule: params, master copies, the states in use (the op's
// flat list holds only those), the scalar states (step counts), and the grads when GradScaler's unscale writes
// them back.
inline void bump_update_writes(at::TensorList params, at::TensorList grads, at::TensorList states,
                               at::TensorList master_params, at::TensorList scalars,
                               const std::optional<at::Tensor>& grad_scale) {
  bump_versions({params, master_params, states, scalars, grad_scale.has_value() ? grads : at::TensorList()});
}

}  // namespace fusedopt
