// Version counters of the tensors an op writes. The kernels write through raw pointers, which autograd cannot
// see; torch's in-place ops bump the version counter of every tensor they modify, and so does every fusedopt op
// (the CPU ops in bindings.cpp; the CUDA ops, real and emulated, in cuda/ops_impl.h), so that backward through a
// graph that saved one of them raises "modified by an inplace operation" as after torch.optim's step. Called
// after validation and before the kernels: an inference tensor outside InferenceMode then raises torch's own
// error before any write. The cost is one atomic increment per tensor.
#pragma once

#include <initializer_list>

#include <ATen/core/Tensor.h>

namespace fusedopt {

inline void bump_versions(std::initializer_list<at::TensorList> written) {
  for (at::TensorList list : written) {
    for (const at::Tensor& t : list) t.unsafeGetTensorImpl()->bump_version();
  }
}

}  // namespace fusedopt
