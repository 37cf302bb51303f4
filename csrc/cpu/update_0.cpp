// The CPU loops of the share 0 of the rules (update.h, kUpdateParts; rules.h, RulesPart).
#include "update.h"

FUSEDOPT_CPU_UPDATE_PART(0)
