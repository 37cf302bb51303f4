// The update rules the backends compile (math.h's rule structs), as one compile-time list: the CPU op, the CUDA
// op and the Python module's rule table (fusedopt._C.rules()) all iterate over it, so adding a rule is one entry
// here (plus its struct in math.h and its description in fusedopt/rules.py). No torch: the CUDA kernels and the
// native tests may include it.
#pragma once

#include <stddef.h>

#include <string_view>
#include <type_traits>
#include <utility>

#include "fusedopt/math.h"

namespace fusedopt {

template <typename... R>
struct Rules {};

using AllRules = Rules<SgdRule, AdamRule,
                       NadamRule, RadamRule, AdadeltaRule, RpropRule, AsgdRule,
                       AdagradRule, RmspropRule, AdamaxRule, LionRule>;

// The share PART of PARTS of a rule list: the rules at the positions i with i % PARTS == PART. The CPU loops and
// the CUDA kernels instantiate their rules in PARTS translation units, one share each (csrc/cpu/update_*.cpp,
// csrc/cuda/update_*.cu), so that a parallel build (ninja -j) compiles them side by side; together they
// instantiate every rule once. A rule added to AllRules falls into some share by itself.
template <size_t PART, size_t PARTS, size_t I, typename Out, typename... In>
struct RulesPartOf {
  using type = Out;
};

template <size_t PART, size_t PARTS, size_t I, typename... Out, typename R, typename... In>
struct RulesPartOf<PART, PARTS, I, Rules<Out...>, R, In...>
    : RulesPartOf<PART, PARTS, I + 1, std::conditional_t<I % PARTS == PART, Rules<Out..., R>, Rules<Out...>>, In...> {
};

template <size_t PART, size_t PARTS, typename... R>
constexpr typename RulesPartOf<PART, PARTS, 0, Rules<>, R...>::type rules_part(Rules<R...>) {
  return {};
}

template <size_t PART, size_t PARTS>
using RulesPart = decltype(rules_part<PART, PARTS>(AllRules{}));

// In namespace scope of the unit of share PART of PARTS: FN(RulesPart<PART, PARTS>{}) (a table of the share's
// instantiations, e.g. function pointers) as a constant with external linkage, so that every instantiation it
// names is emitted for other translation units to link against.
#define FUSEDOPT_RULES_PART_TABLE(FN, PART, PARTS)                                           \
  extern const decltype(FN(::fusedopt::RulesPart<PART, PARTS>{})) kRulesPart##PART;          \
  const decltype(FN(::fusedopt::RulesPart<PART, PARTS>{})) kRulesPart##PART = FN(::fusedopt::RulesPart<PART, PARTS>{});

// f(Rule{}) for every rule of the list, in order.
template <typename F, typename... R>
void for_each_rule(Rules<R...>, F&& f) {
  (f(R{}), ...);
}

template <typename F>
void for_each_rule(F&& f) {
  for_each_rule(AllRules{}, std::forward<F>(f));
}

// f(Rule{}) for the rule named `name`; false (and f not called) when no rule has that name.
template <typename F>
bool with_rule(std::string_view name, F&& f) {
  bool found = false;
  for_each_rule([&](auto rule) {
    if (!found && name == decltype(rule)::kName) {
      found = true;
      f(rule);
    }
  });
  return found;
}

}  // namespace fusedopt
