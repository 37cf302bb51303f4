// The update rules the backends compile (math.h's rule structs), as one compile-time list: the CPU op, the CUDA
// op and the Python module's rule table (fusedopt._C.rules()) all iterate over it, so adding a rule is one entry
// here (plus its struct in math.h and its description in fusedopt/rules.py). No torch: the CUDA kernels and the
// native tests may include it.
#pragma once

#include <string_view>
#include <utility>

#include "fusedopt/math.h"

namespace fusedopt {

template <typename... R>
struct Rules {};

using AllRules = Rules<SgdRule, AdamRule,
                       NadamRule, RadamRule, AdadeltaRule, RpropRule, AsgdRule,
                       AdagradRule, RmspropRule, AdamaxRule, LionRule>;

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
