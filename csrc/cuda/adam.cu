// Adam / AdamW on CUDA: one multi-tensor pass over every param of a call; the element rule is math.h's
// adam_element. Step counts, lr_tensor, grad_scale, clip_coef and found_inf are read on the device, so a step
// needs no host sync and can be captured in a CUDA graph.
#include <cuda_runtime.h>

#include "fusedopt/multi_tensor.cuh"
#include "dispatch.cuh"
#include "kernels.h"

namespace fusedopt::cuda {
namespace {

using namespace fusedopt::mt;

// Lists: param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, master; extra: the step count. About 13 KiB.
using AdamTable = Table<6, 110, 1000>;
enum : int { kParam, kGrad, kExpAvg, kExpAvgSq, kMaxExpAvgSq, kMaster };

// Step counts incremented per launch; 2000 pointers = 16 KiB of kernel argument.
constexpr int kMaxSteps = 2000;
struct StepTable {
  float* steps[kMaxSteps];
  int count;
};

// Hyperparameters as the Python layer gave them (double), and the runtime switches. Dtypes are template
// arguments; the switches are uniform branches (the same for every thread), which cost nothing in a
// memory-bound kernel and keep the instantiations at 3 param x 2 state dtypes.
struct AdamScalars {
  double lr, beta1, beta2, eps, weight_decay;
  bool has_weight_decay, decoupled, amsgrad, maximize, master;
  DeviceScalars dev;
};

// Before the update: every step count advances (unless the step is skipped), so the update's blocks all read
// the new count. A separate launch because blocks of one tensor run in no fixed order.
__global__ void increment_steps(const __grid_constant__ StepTable t, const float* found_inf) {
  if (skipped(found_inf)) return;
  for (int i = threadIdx.x; i < t.count; i += blockDim.x) *t.steps[i] += 1.0f;
}

template <typename P, typename S>
__global__ void __launch_bounds__(kThreads) adam_blocks(const __grid_constant__ AdamTable t, const AdamScalars a) {
  if (skipped(a.dev.found_inf)) return;
  const int b = blockIdx.x;
  const int slot = t.block_slot[b];
  const int64_t begin = t.begin(b), n = t.count(b);
  const bool vec = t.flags[slot] & kFlagVectorized;

  // The hyperparameters in double from the device values, as the host computes them for a float lr.
  const double lr = a.dev.lr != nullptr ? double(*a.dev.lr) : a.lr;
  const AdamHyper hyper = adam_hyper(lr, a.beta1, a.beta2, a.eps, a.weight_decay);
  const AdamStep step = adam_step(lr, a.beta1, a.beta2, double(*static_cast<const float*>(t.extra[slot])));
  const bool unscale = a.dev.grad_scale != nullptr;
  const float grad_scale = read_or(a.dev.grad_scale, 1.0f);
  const float factor = grad_factor(a.dev.clip_coef != nullptr, read_or(a.dev.clip_coef, 1.0f), a.maximize);

  void* p = chunk_ptr<P>(t, kParam, slot, begin);
  void* g = chunk_ptr<P>(t, kGrad, slot, begin);
  void* m = chunk_ptr<S>(t, kExpAvg, slot, begin);
  void* v = chunk_ptr<S>(t, kExpAvgSq, slot, begin);
  void* vmax = a.amsgrad ? chunk_ptr<S>(t, kMaxExpAvgSq, slot, begin) : nullptr;
  void* master = a.master ? chunk_ptr<F32>(t, kMaster, slot, begin) : nullptr;

  for_each_vector(n, [&](int64_t i) {
    Frag pf, gf, mf, vf, xf = {};
    if (a.master) {
      load<F32>(pf, master, i, n, vec);
    } else {
      load<P>(pf, p, i, n, vec);
    }
    load<P>(gf, g, i, n, vec);
    load<S>(mf, m, i, n, vec);
    load<S>(vf, v, i, n, vec);
    if (a.amsgrad) load<S>(xf, vmax, i, n, vec);
#pragma unroll
    for (int k = 0; k < kVecElems; ++k) {
      float gk = gf[k];
      if (unscale) {
        gk = unscale_grad(gk, grad_scale);
        gf[k] = gk;
      }
      adam_element(pf[k], prepare_grad(gk, factor), mf[k], vf[k], xf[k], hyper, step, a.has_weight_decay,
                   a.decoupled, a.amsgrad);
    }
    store<P>(p, pf, i, n, vec);
    if (a.master) store<F32>(master, pf, i, n, vec);
    if (unscale) store<P>(g, gf, i, n, vec);
    store<S>(m, mf, i, n, vec);
    store<S>(v, vf, i, n, vec);
    if (a.amsgrad) store<S>(vmax, xf, i, n, vec);
  });
}

template <typename P, typename S>
void run(const AdamArgs& args, const AdamScalars& scalars, cudaStream_t stream) {
  const int pb = elem_bytes(args.dtype), sb = elem_bytes(args.state_dtype);
  launch_tables<AdamTable>(
      args.numels,
      [&](int64_t i) {
        const size_t t = size_t(i);
        TensorInfo ti{};
        ti.ptrs[kParam] = args.params[t];
        ti.ptrs[kGrad] = args.grads[t];
        ti.ptrs[kExpAvg] = args.exp_avgs[t];
        ti.ptrs[kExpAvgSq] = args.exp_avg_sqs[t];
        ti.ptrs[kMaxExpAvgSq] = scalars.amsgrad ? args.max_exp_avg_sqs[t] : nullptr;
        ti.ptrs[kMaster] = scalars.master ? args.master_params[t] : nullptr;
        ti.numel = args.numels[t];
        ti.extra = args.steps[t];
        const int bytes[] = {pb, pb, sb, sb, sb, 4};
        ti.flags = vector_flag(ti.ptrs, bytes, 6);
        return ti;
      },
      [&](const AdamTable& table, int blocks) {
        launch(adam_blocks<P, S>, blocks, kThreads, stream, table, scalars);
        check_launch("adam_blocks");
      });
}

}  // namespace

void adam_update(const AdamArgs& args, cudaStream_t stream) {
  // Every step count advances first, also those of empty params (as on the CPU), then the update reads them.
  for (const auto& [lo, hi] : batches(int64_t(args.steps.size()), kMaxSteps)) {
    StepTable table;
    table.count = int(hi - lo);
    for (int64_t i = lo; i < hi; ++i) table.steps[i - lo] = args.steps[size_t(i)];
    launch(increment_steps, 1, 256, stream, table, args.scalars.found_inf);
    check_launch("increment_steps");
  }
  const AdamScalars scalars{args.lr,          args.beta1,     args.beta2,         args.eps,
                            args.weight_decay, args.weight_decay != 0.0, args.decoupled, args.amsgrad,
                            args.maximize,    !args.master_params.empty(), args.scalars};
  with_storage(args.dtype, args.state_dtype, [&](auto p, auto s) {
    run<decltype(p), decltype(s)>(args, scalars, stream);
  });
}

}  // namespace fusedopt::cuda
