// Compile-time dispatch of the update kernels on their storage types (param x state dtype: 6 instantiations).
#pragma once

#include "fusedopt/multi_tensor.cuh"
#include "kernels.h"

namespace fusedopt::cuda {

inline int elem_bytes(Dtype d) { return d == Dtype::Float32 ? 4 : 2; }

// f(P{}, S{}) with P the params' storage type (F32, BF16, F16) and S the states' (F32, BF16).
template <typename F>
void with_storage(Dtype param, Dtype state, const F& f) {
  auto with_state = [&](auto p) {
    if (state == Dtype::BFloat16) {
      f(p, mt::BF16{});
    } else {
      f(p, mt::F32{});
    }
  };
  switch (param) {
    case Dtype::Float32: with_state(mt::F32{}); break;
    case Dtype::BFloat16: with_state(mt::BF16{}); break;
    case Dtype::Float16: with_state(mt::F16{}); break;
  }
}

}  // namespace fusedopt::cuda
