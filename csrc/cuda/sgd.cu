// SGD (with momentum, dampening, Nesterov) on CUDA: one multi-tensor pass over every param of a call; the
// element rule is math.h's sgd_element. lr_tensor, grad_scale, clip_coef and found_inf are read on the device.
#include <cuda_runtime.h>

#include "fusedopt/multi_tensor.cuh"
#include "dispatch.cuh"
#include "kernels.h"

namespace fusedopt::cuda {
namespace {

using namespace fusedopt::mt;

// Lists: param, grad, momentum buffer, master. About 14 KiB of kernel argument.
using SgdTable = Table<4, 160, 1000>;
enum : int { kParam, kGrad, kBuf, kMaster };

// See adam.cu's AdamScalars: dtypes are template arguments, the switches uniform runtime branches.
struct SgdScalars {
  double lr, weight_decay, momentum, dampening;
  bool has_weight_decay, has_momentum, nesterov, maximize, master;
  DeviceScalars dev;
};

template <typename P, typename S>
__global__ void __launch_bounds__(kThreads) sgd_blocks(const __grid_constant__ SgdTable t, const SgdScalars a) {
  if (skipped(a.dev.found_inf)) return;
  const int b = blockIdx.x;
  const int slot = t.block_slot[b];
  const int64_t begin = t.begin(b), n = t.count(b);
  const bool vec = t.flags[slot] & kFlagVectorized;
  const bool first = t.flags[slot] & kFlagFirst;

  const double lr = a.dev.lr != nullptr ? double(*a.dev.lr) : a.lr;
  const SgdHyper hyper = sgd_hyper(lr, a.weight_decay, a.momentum, a.dampening);
  const bool unscale = a.dev.grad_scale != nullptr;
  const float grad_scale = read_or(a.dev.grad_scale, 1.0f);
  const float factor = grad_factor(a.dev.clip_coef != nullptr, read_or(a.dev.clip_coef, 1.0f), a.maximize);

  void* p = chunk_ptr<P>(t, kParam, slot, begin);
  void* g = chunk_ptr<P>(t, kGrad, slot, begin);
  void* buf = a.has_momentum ? chunk_ptr<S>(t, kBuf, slot, begin) : nullptr;
  void* master = a.master ? chunk_ptr<F32>(t, kMaster, slot, begin) : nullptr;

  for_each_vector(n, [&](int64_t i) {
    Frag pf, gf, bf = {};
    if (a.master) {
      load<F32>(pf, master, i, n, vec);
    } else {
      load<P>(pf, p, i, n, vec);
    }
    load<P>(gf, g, i, n, vec);
    if (a.has_momentum && !first) load<S>(bf, buf, i, n, vec);  // a first step has no history to read
#pragma unroll
    for (int k = 0; k < kVecElems; ++k) {
      float gk = gf[k];
      if (unscale) {
        gk = unscale_grad(gk, grad_scale);
        gf[k] = gk;
      }
      sgd_element(pf[k], prepare_grad(gk, factor), bf[k], first, hyper, a.has_weight_decay, a.has_momentum,
                  a.nesterov);
    }
    store<P>(p, pf, i, n, vec);
    if (a.master) store<F32>(master, pf, i, n, vec);
    if (unscale) store<P>(g, gf, i, n, vec);
    if (a.has_momentum) store<S>(buf, bf, i, n, vec);
  });
}

template <typename P, typename S>
void run(const SgdArgs& args, const SgdScalars& scalars, cudaStream_t stream) {
  const int pb = elem_bytes(args.dtype), sb = elem_bytes(args.state_dtype);
  launch_tables<SgdTable>(
      args.numels,
      [&](int64_t i) {
        const size_t t = size_t(i);
        TensorInfo ti{};
        ti.ptrs[kParam] = args.params[t];
        ti.ptrs[kGrad] = args.grads[t];
        ti.ptrs[kBuf] = scalars.has_momentum ? args.momentum_buffers[t] : nullptr;
        ti.ptrs[kMaster] = scalars.master ? args.master_params[t] : nullptr;
        ti.numel = args.numels[t];
        const int bytes[] = {pb, pb, sb, 4};
        ti.flags = uint8_t(vector_flag(ti.ptrs, bytes, 4) |
                           (scalars.has_momentum && args.is_first[t] ? kFlagFirst : 0));
        return ti;
      },
      [&](const SgdTable& table, int blocks) {
        launch(sgd_blocks<P, S>, blocks, kThreads, stream, table, scalars);
        check_launch("sgd_blocks");
      });
}

}  // namespace

void sgd_update(const SgdArgs& args, cudaStream_t stream) {
  const SgdScalars scalars{args.lr,       args.weight_decay,  args.momentum,
                           args.dampening, args.weight_decay != 0.0, args.momentum != 0.0,
                           args.nesterov, args.maximize,      !args.master_params.empty(),
                           args.scalars};
  with_storage(args.dtype, args.state_dtype, [&](auto p, auto s) {
    run<decltype(p), decltype(s)>(args, scalars, stream);
  });
}

}  // namespace fusedopt::cuda
