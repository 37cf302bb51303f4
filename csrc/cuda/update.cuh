// The generic update on CUDA: one kernel template for every update rule of math.h (the rule concept: its
// hyperparameters, tensor states, scalar states, switches and per-element function), one multi-tensor pass over
// every param of a call. Everything the kernels read of a step lives on the device (lr_tensor, grad_scale,
// clip_coef, found_inf, the scalar states): no host sync, and a step can be captured in a CUDA graph.
//
// Two kernels per call:
// - per_tensor_pass (rules with scalar states only): one thread per tensor advances its scalar states in place
//   (Adam: step += 1) and writes the rule's PerTensor coefficients (Adam: the bias corrections) to scratch. A
//   launch of its own because the update's blocks run in no fixed order: each reads the coefficients the whole
//   tensor shares, and none of them may see a half-advanced count. A rule without scalar states has a pure
//   per_tensor (a function of the hyperparameters and is_first), which each block of the update computes itself.
// - update_blocks: one block per chunk (multi_tensor.cuh); per element the math.h rule, with the gradient
//   unscaled (and written back), clipped and sign-flipped first as math.h's prepare_grad says.
// A skipped step (found_inf non-zero) writes nothing in either kernel.
//
// Instantiations per rule: 3 param x 2 state storage types. The rule's switches (Rule::switches) are a template
// argument of its element function, dispatched per vector inside the kernel on a value that is the same for every
// thread (a uniform branch: free in a memory-bound kernel), so the loads and stores are compiled once per storage
// pair, not once per switch combination. Master copies (fp32, or bf16 remainders), unscaling and the states in use
// are uniform branches too.
#pragma once

#include <cuda_runtime.h>

#include <stddef.h>
#include <stdint.h>

#include <array>
#include <type_traits>
#include <utility>

#include "fusedopt/multi_tensor.cuh"
#include "fusedopt/rules.h"
#include "dispatch.cuh"
#include "kernels.h"

namespace fusedopt::cuda {
namespace {

using namespace fusedopt::mt;

// Pointer lists of the update table: param, grad, master copy, then the rule's states in Rule order.
enum : int { kParam, kGrad, kMaster, kFirstState };

// A table of at most 1000 chunks (64M elements) and as many tensors as about 8000 bytes of pointer lists hold:
// about 14 KiB of kernel argument for any rule (SGD: 150 tensors, Adam: 115).
template <class Rule>
struct UpdateTableOf {
  static_assert(Rule::kStates > 0 && kFirstState + Rule::kStates <= 8, "TensorInfo carries 3 + 1..5 pointer lists");
  static constexpr int kDepth = kFirstState + Rule::kStates;
  static constexpr int kTensorBytes = 8 * kDepth + 8 + 8 + 4 + 1;  // ptrs, numel, extra, id, flags
  using type = Table<kDepth, 8000 / kTensorBytes, 1000>;
};
template <class Rule>
using UpdateTable = typename UpdateTableOf<Rule>::type;

// The by-value arguments both kernels share: the rule's hyperparameters as the host gave them (double), its
// switches and the optional device scalars.
template <class Rule>
struct UpdateScalars {
  double hyper[Rule::kHyper];
  uint32_t switches;  // Rule::switches(hyper, flags)
  bool maximize, master;
  bool remainder;  // master_params are int16 remainders of bf16 params (math.h's split_bf16)
  DeviceScalars dev;
  // Stochastic rounding of bf16 params (math.h): the count on the device, nullptr for rounding to nearest; the
  // seed's words (each tensor's param id is in the table).
  const int64_t* rounding_step;
  uint32_t seed_lo, seed_hi;
};

// Stores a vector of the param: rounded to nearest (math.h's storage rules), or for bf16 params with a rounding
// key stochastically, the four elements of the vector (a quad: chunks start on multiples of 4, so does every
// thread's vector) from one Philox call.
template <typename P>
__device__ __forceinline__ void store_param(void* p, const Frag& pf, int64_t i, int64_t n, bool vec,
                                            const RoundingKey* key, int64_t first) {
  if constexpr (std::is_same_v<P, BF16>) {
    static_assert(kVecElems == 4, "one Philox call rounds one vector");
    if (key != nullptr) {
      uint32_t r[4];
      rounding_bits4(*key, uint64_t(first + i) >> 2, r);
      auto* out = static_cast<uint16_t*>(p) + i;
      if (vec && i + kVecElems <= n) {
        Pack<uint16_t> pk;
        for (int k = 0; k < kVecElems; ++k) pk.v[k] = float_to_bf16_stochastic(pf[k], r[k]);
        *reinterpret_cast<Pack<uint16_t>*>(out) = pk;
      } else {
        for (int k = 0; k < kVecElems; ++k) {
          if (i + k < n) out[k] = float_to_bf16_stochastic(pf[k], r[k]);
        }
      }
      return;
    }
  }
  store<P>(p, pf, i, n, vec);
}

// The hyperparameters in double, h[0] = lr from lr_tensor when given (its float32 value, as a double: what the
// host computes for a float lr). Every block computes the same values from the same inputs.
template <class Rule>
__device__ __forceinline__ void hyper_values(const UpdateScalars<Rule>& a, double (&h)[Rule::kHyper]) {
#pragma unroll
  for (int i = 0; i < Rule::kHyper; ++i) h[i] = a.hyper[i];
  if (a.dev.lr != nullptr) h[0] = double(*a.dev.lr);
}

// f(std::integral_constant<uint32_t, SW>{}) for the SW equal to `sw`: the rule's element function takes its
// switches as a template argument.
template <typename F, uint32_t... SW>
__device__ __forceinline__ void with_switches(uint32_t sw, const F& f, std::integer_sequence<uint32_t, SW...>) {
  (void)((sw == SW ? (f(std::integral_constant<uint32_t, SW>{}), true) : false) || ...);
}

// Per-tensor inputs of the pre-pass: each tensor's scalar states and is_first. 16 KiB of pointers at most.
template <class Rule>
struct PrepTable {
  static constexpr int kScalars = Rule::kScalars > 0 ? Rule::kScalars : 1;
  static constexpr int kMaxTensors = 2048 / kScalars;
  float* scalars[kScalars][kMaxTensors];
  uint8_t first[kMaxTensors];
  int count;
};

constexpr int kPrepThreads = 128;

template <class Rule>
__global__ void __launch_bounds__(kPrepThreads) per_tensor_pass(const __grid_constant__ PrepTable<Rule> t,
                                                                const UpdateScalars<Rule> a,
                                                                typename Rule::PerTensor* out) {
  if (skipped(a.dev.found_inf)) return;
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= t.count) return;
  double h[Rule::kHyper];
  hyper_values(a, h);
  float* scalars[PrepTable<Rule>::kScalars];
#pragma unroll
  for (int j = 0; j < PrepTable<Rule>::kScalars; ++j) scalars[j] = t.scalars[j][i];
  out[i] = Rule::per_tensor(h, scalars, t.first[i] != 0);
}

template <class Rule, typename P, typename S>
__global__ void __launch_bounds__(kThreads) update_blocks(const __grid_constant__ UpdateTable<Rule> t,
                                                          const UpdateScalars<Rule> a) {
  constexpr int kStates = Rule::kStates;
  if (skipped(a.dev.found_inf)) return;
  const int b = blockIdx.x;
  const int slot = t.block_slot[b];
  const int64_t begin = t.begin(b), n = t.count(b);
  const bool vec = t.flags[slot] & kFlagVectorized;

  double h[Rule::kHyper];
  hyper_values(a, h);
  const typename Rule::Hyper hyper = Rule::hyper(h);
  typename Rule::PerTensor per_tensor;
  if constexpr (Rule::kScalars > 0) {
    per_tensor = *static_cast<const typename Rule::PerTensor*>(t.extra[slot]);  // from per_tensor_pass
  } else {
    per_tensor = Rule::per_tensor(h, nullptr, (t.flags[slot] & kFlagFirst) != 0);
  }
  RoundingKey key_storage{};
  const RoundingKey* key = nullptr;
  if (a.rounding_step != nullptr) {
    key_storage = RoundingKey{a.seed_lo, a.seed_hi, t.id[slot], uint32_t(uint64_t(*a.rounding_step))};
    key = &key_storage;
  }
  const bool unscale = a.dev.grad_scale != nullptr;
  const float grad_scale = read_or(a.dev.grad_scale, 1.0f);
  const float factor = grad_factor(a.dev.clip_coef != nullptr, read_or(a.dev.clip_coef, 1.0f), a.maximize);

  void* p = chunk_ptr<P>(t, kParam, slot, begin);
  void* g = chunk_ptr<P>(t, kGrad, slot, begin);
  // bf16 params only (validated): for other P the joins below are dead code.
  const bool remainder = std::is_same_v<P, BF16> && a.remainder;
  void* master = nullptr;
  if (remainder) {
    master = static_cast<int16_t*>(t.ptrs[kMaster][slot]) + begin;
  } else if (a.master) {
    master = chunk_ptr<F32>(t, kMaster, slot, begin);
  }
  // States not in use under these switches have no pointer (the same for every block of the launch).
  void* s[kStates];
#pragma unroll
  for (int k = 0; k < kStates; ++k) {
    s[k] = t.ptrs[kFirstState + k][slot] != nullptr ? chunk_ptr<S>(t, kFirstState + k, slot, begin) : nullptr;
  }

  for_each_vector(n, [&](int64_t i) {
    Frag pf, gf, sf[kStates];
    if (remainder) {
      load_joined(pf, p, master, i, n, vec);
    } else if (a.master) {
      load<F32>(pf, master, i, n, vec);
    } else {
      load<P>(pf, p, i, n, vec);
    }
    load<P>(gf, g, i, n, vec);
#pragma unroll
    for (int k = 0; k < kStates; ++k) {
      if (s[k] != nullptr) {
        load<S>(sf[k], s[k], i, n, vec);
      } else {
#pragma unroll
        for (int e = 0; e < kVecElems; ++e) sf[k][e] = 0.0f;  // unused by the rule's switches
      }
    }
    if (unscale) {
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) gf[e] = unscale_grad(gf[e], grad_scale);
    }
    with_switches(a.switches, [&](auto sw) {
#pragma unroll
      for (int e = 0; e < kVecElems; ++e) {
        float st[kStates];
#pragma unroll
        for (int k = 0; k < kStates; ++k) st[k] = sf[k][e];
        Rule::template element<decltype(sw)::value>(pf[e], prepare_grad(gf[e], factor), st, hyper, per_tensor);
#pragma unroll
        for (int k = 0; k < kStates; ++k) sf[k][e] = st[k];
      }
    }, std::make_integer_sequence<uint32_t, (1u << Rule::kSwitchBits)>{});
    if (remainder) {
      store_split(p, master, pf, i, n, vec);
    } else {
      store_param<P>(p, pf, i, n, vec, key, begin);
      if (a.master) store<F32>(master, pf, i, n, vec);
    }
    if (unscale) store<P>(g, gf, i, n, vec);
#pragma unroll
    for (int k = 0; k < kStates; ++k) {
      if (s[k] != nullptr) store<S>(s[k], sf[k], i, n, vec);
    }
  });
}

template <class Rule, typename P, typename S>
void run(const UpdateArgs& args, const UpdateScalars<Rule>& scalars, typename Rule::PerTensor* per_tensor,
         cudaStream_t stream) {
  using TableT = UpdateTable<Rule>;
  const size_t n = args.params.size();
  const int pb = elem_bytes(args.dtype), sb = elem_bytes(args.state_dtype);
  launch_tables<TableT>(
      args.numels,
      [&](int64_t i) {
        const size_t t = size_t(i);
        TensorInfo ti{};
        int bytes[TableT::kDepth];
        ti.ptrs[kParam] = args.params[t];
        ti.ptrs[kGrad] = args.grads[t];
        ti.ptrs[kMaster] = scalars.master ? args.master_params[t] : nullptr;
        bytes[kParam] = bytes[kGrad] = pb;
        bytes[kMaster] = scalars.remainder ? 2 : 4;
        for (int k = 0; k < Rule::kStates; ++k) {
          ti.ptrs[kFirstState + k] = args.states[size_t(k) * n + t];  // nullptr: not in use
          bytes[kFirstState + k] = sb;
        }
        ti.numel = args.numels[t];
        ti.extra = Rule::kScalars > 0 ? static_cast<void*>(per_tensor + t) : nullptr;
        ti.id = args.param_ids.empty() ? 0u : args.param_ids[t];
        const bool first = !args.is_first.empty() && args.is_first[t];
        ti.flags = uint8_t(vector_flag(ti.ptrs, bytes, TableT::kDepth) | (first ? kFlagFirst : 0));
        return ti;
      },
      [&](const TableT& table, int blocks) {
        launch(update_blocks<Rule, P, S>, blocks, kThreads, stream, table, scalars);
        check_launch("update_blocks");
      });
}

template <class Rule>
void run_update(const UpdateArgs& args, float* scratch, cudaStream_t stream) {
  const size_t n = args.params.size();
  UpdateScalars<Rule> scalars{};
  for (int i = 0; i < Rule::kHyper; ++i) scalars.hyper[i] = args.hyper[size_t(i)];
  scalars.switches = args.switches;
  scalars.maximize = args.maximize;
  scalars.master = !args.master_params.empty();
  scalars.remainder = scalars.master && args.master_remainder;
  scalars.dev = args.dev;
  scalars.rounding_step = args.rounding_step;
  scalars.seed_lo = args.seed_lo;
  scalars.seed_hi = args.seed_hi;
  auto* per_tensor = reinterpret_cast<typename Rule::PerTensor*>(scratch);
  if constexpr (Rule::kScalars > 0) {
    // Every tensor's scalar states advance first, also those of empty params (as on the CPU).
    for (const auto& [lo, hi] : batches(int64_t(n), PrepTable<Rule>::kMaxTensors)) {
      PrepTable<Rule> table;
      table.count = int(hi - lo);
      for (int64_t i = lo; i < hi; ++i) {
        for (int j = 0; j < Rule::kScalars; ++j) table.scalars[j][i - lo] = args.scalars[size_t(j) * n + size_t(i)];
        table.first[i - lo] = !args.is_first.empty() && args.is_first[size_t(i)];
      }
      launch(per_tensor_pass<Rule>, (table.count + kPrepThreads - 1) / kPrepThreads, kPrepThreads, stream, table,
             scalars, per_tensor + lo);
      check_launch("per_tensor_pass");
    }
  }
  with_storage(args.dtype, args.state_dtype, [&](auto p, auto s) {
    run<Rule, decltype(p), decltype(s)>(args, scalars, per_tensor, stream);
  });
}

}  // namespace

// The exported entry point; the work is in the unnamed namespace (its lambdas capture the kernels' argument types).
template <class Rule>
void update(const UpdateArgs& args, float* scratch, cudaStream_t stream) {
  run_update<Rule>(args, scratch, stream);
}

// The kernels are compiled in kUpdateParts translation units, update_0.cu ... update_<kUpdateParts - 1>.cu (and
// so, for the emulated grid, csrc/tests/cuda_emu/kernels_update_*.cpp), each instantiating update<Rule> for its
// share of the rules (rules.h, RulesPart), so that a parallel build compiles them side by side. Each rule is in
// exactly one share: no update<Rule> (nor its kernels in the unnamed namespace) is compiled twice.
constexpr size_t kUpdateParts = 2;

// update<R> for every rule of a list, in a table with external linkage, so that each is emitted for the ops
// (cuda/ops_impl.h) to link against.
template <typename... R>
constexpr auto entry_points(Rules<R...>) {
  return std::array<void (*)(const UpdateArgs&, float*, cudaStream_t), sizeof...(R)>{&update<R>...};
}

}  // namespace fusedopt::cuda

// The body of update_PART.cu: the share PART of the rules.
#define FUSEDOPT_CUDA_UPDATE_PART(PART)                                                                  \
  namespace fusedopt::cuda {                                                                            \
  static_assert(PART < kUpdateParts, "update_" #PART ".cu: no such share (kUpdateParts, update.cuh)");  \
  FUSEDOPT_RULES_PART_TABLE(entry_points, PART, kUpdateParts)                                           \
  }
