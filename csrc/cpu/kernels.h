// Raw-pointer interface of the CPU kernels. bindings.cpp validates the Tensors and fills these structs; the
// kernel files never see a Tensor, which keeps torch/extension.h out of them.
#pragma once

#include <stdint.h>

#include <string>
#include <string_view>
#include <vector>

// The ISA variants of the CPU loops (multi_tensor.h, with_isa): baseline (the build's own target) always; with
// GCC on x86-64 also x86-64-v3 (AVX2/FMA/F16C) and x86-64-v4 (AVX-512 F/BW/CD/DQ/VL), unless FUSEDOPT_NO_CLONES
// (setup.py: FUSEDOPT_CPU_CLONES=0). Every variant rounds the same (math.h): they differ in speed only.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FUSEDOPT_NO_CLONES)
#define FUSEDOPT_ISA_VARIANTS 1
#endif

namespace fusedopt::cpu {

enum class Isa : uint8_t { Baseline, V3, V4 };
constexpr int kNumIsas = 3;

// "baseline", "x86-64-v3", "x86-64-v4".
const char* isa_name(Isa isa);
// Empty when this build has the variant and this CPU runs it; else why not.
std::string isa_unavailable(Isa isa);
// The variant the loops run: the best available one, or FUSEDOPT_CPU_ISA's (read at the first call; an unknown
// or unavailable name throws std::invalid_argument), or set_isa's.
Isa active_isa();
// Picks the variant by name for every later call (tests and benchmarks compare them); throws as above.
void set_isa(std::string_view name);

enum class Dtype : uint8_t { Float32, BFloat16, Float16 };

struct GradView {
  const void* data;
  int64_t numel;
  Dtype dtype;
};

struct CheckResult {
  double sumsq;
  bool nonfinite;
};

// Sum of squares over all grads (exact squares added in double) and whether any element is inf/NaN.
CheckResult check(const std::vector<GradView>& grads);

// What happens to a gradient before the update rule (the optional arguments of the ops).
struct GradPrep {
  bool has_grad_scale;
  float grad_scale;  // grad is divided by it and the result written back
  bool has_clip;
  float clip_coef;
  bool maximize;
};

// One update call of a rule (math.h; op contract v4, fusedopt/reference.py), filled by validate::fill_update.
// Params and grads share `dtype`; states are all `state_dtype` (Float32 or BFloat16). With n params (numels[i]
// elements each): states[k * n + i] is the rule's state k of param i (nullptr where the rule does not use state
// k under `switches`), scalars[j * n + i] its j-th scalar state (a host float: the CPU op reads it on the host,
// no sync), is_first is empty or one entry per param. With master_params, the update reads and writes the fp32
// master copy and stores its new value, rounded to `dtype`, into the param; with master_remainder (bf16 params
// only), master_params are int16 remainders instead: the master is join_bf16(param, remainder) and split_bf16
// stores it back into both (math.h). hyper[0] is the learning rate (lr_tensor's value when given, read on the
// host).
struct UpdateArgs {
  Dtype dtype = Dtype::Float32;
  Dtype state_dtype = Dtype::Float32;
  std::vector<void*> params;
  std::vector<void*> grads;
  std::vector<void*> master_params;    // empty: no master copy; float* masters, or int16_t* remainders
  bool master_remainder = false;      // master_params are bf16 master remainders
  std::vector<void*> states;
  std::vector<float*> scalars;         // advanced here (Rule::per_tensor)
  std::vector<uint8_t> is_first;
  std::vector<int64_t> numels;
  std::vector<double> hyper;
  uint32_t flags = 0;
  uint32_t switches = 0;               // Rule::switches(hyper, flags)
  GradPrep grad;
  // Stochastic rounding of the (bf16) params (math.h, kFlagStochasticRounding): rounding_step non-null (the
  // int64 count, read on the host), the seed's words and one id per param; else the params round to nearest.
  const int64_t* rounding_step = nullptr;
  uint32_t seed_lo = 0, seed_hi = 0;
  std::vector<uint32_t> param_ids;
};

// Instantiated for every rule of fusedopt/rules.h's list (csrc/cpu/update.h, in the files update_*.cpp).
template <typename Rule>
void update(const UpdateArgs& args);

}  // namespace fusedopt::cpu
