// Which ISA variant of the CPU loops runs (multi_tensor.h, with_isa): the best one this build has and this CPU
// runs, unless FUSEDOPT_CPU_ISA (read once, at the first call) or set_isa (tests, benchmarks) says otherwise.
#include <stdlib.h>

#include <atomic>
#include <stdexcept>
#include <string>

#include "kernels.h"
#include "multi_tensor.h"

namespace fusedopt::cpu {
namespace {

constexpr const char* kNames[kNumIsas] = {"baseline", "x86-64-v3", "x86-64-v4"};

#ifdef FUSEDOPT_ISA_VARIANTS
// What each level adds that the CPU may lack, for the error message only: the decision is GCC's own level test,
// the one a target_clones resolver makes (it also checks that the OS saves the AVX/AVX-512 registers).
struct Feature {
  const char* name;
  bool present;
};

std::string missing_features(Isa isa) {
  __builtin_cpu_init();
  const Feature v3[] = {{"avx2", bool(__builtin_cpu_supports("avx2"))}, {"fma", bool(__builtin_cpu_supports("fma"))},
                        {"f16c", bool(__builtin_cpu_supports("f16c"))}, {"bmi2", bool(__builtin_cpu_supports("bmi2"))},
                        {"movbe", bool(__builtin_cpu_supports("movbe"))}};
  const Feature v4[] = {{"avx512f", bool(__builtin_cpu_supports("avx512f"))},
                        {"avx512bw", bool(__builtin_cpu_supports("avx512bw"))},
                        {"avx512cd", bool(__builtin_cpu_supports("avx512cd"))},
                        {"avx512dq", bool(__builtin_cpu_supports("avx512dq"))},
                        {"avx512vl", bool(__builtin_cpu_supports("avx512vl"))}};
  std::string out;
  auto add = [&](const Feature* f, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      if (!f[i].present) out += (out.empty() ? "" : " ") + std::string(f[i].name);
    }
  };
  add(v3, std::size(v3));
  if (isa == Isa::V4) add(v4, std::size(v4));
  return out;
}

bool cpu_runs(Isa isa) {
  __builtin_cpu_init();
  switch (isa) {
    case Isa::Baseline: return true;
    case Isa::V3: return __builtin_cpu_supports("x86-64-v3");
    case Isa::V4: return __builtin_cpu_supports("x86-64-v4");
  }
  return false;
}
#endif

// -1 until resolved (from FUSEDOPT_CPU_ISA, or the best available), then the Isa's value.
std::atomic<int> g_isa{-1};

Isa parse(std::string_view name, const char* source) {
  for (int i = 0; i < kNumIsas; ++i) {
    if (name == kNames[i]) {
      const std::string why = isa_unavailable(Isa(i));
      if (!why.empty()) throw std::invalid_argument(std::string("fusedopt: ") + source + ": " + why);
      return Isa(i);
    }
  }
  std::string known;
  for (int i = 0; i < kNumIsas; ++i) known += std::string(i ? ", " : "") + "'" + kNames[i] + "'";
  throw std::invalid_argument(std::string("fusedopt: ") + source + ": unknown CPU ISA variant '" +
                              std::string(name) + "' (known: " + known + ")");
}

}  // namespace

const char* isa_name(Isa isa) { return kNames[int(isa)]; }

std::string isa_unavailable(Isa isa) {
  if (isa == Isa::Baseline) return "";
#ifdef FUSEDOPT_ISA_VARIANTS
  if (cpu_runs(isa)) return "";
  const std::string missing = missing_features(isa);
  return std::string("this CPU does not run the ") + kNames[int(isa)] + " variant" +
         (missing.empty() ? std::string() : " (it lacks " + missing + ")");
#else
  return std::string("this build has no ") + kNames[int(isa)] +
         " variant (built with FUSEDOPT_CPU_CLONES=0, or not for x86-64 with GCC)";
#endif
}

Isa active_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v >= 0) return Isa(v);
  const char* env = getenv("FUSEDOPT_CPU_ISA");
  Isa isa = Isa::Baseline;
  if (env != nullptr && env[0] != '\0') {
    isa = parse(env, "FUSEDOPT_CPU_ISA");  // throws, naming the problem, and leaves it unresolved
  } else {
    for (int i = kNumIsas - 1; i > 0; --i) {
      if (isa_unavailable(Isa(i)).empty()) {
        isa = Isa(i);
        break;
      }
    }
  }
  g_isa.store(int(isa), std::memory_order_relaxed);
  return isa;
}

void set_isa(std::string_view name) { g_isa.store(int(parse(name, "set_cpu_isa")), std::memory_order_relaxed); }

}  // namespace fusedopt::cpu
