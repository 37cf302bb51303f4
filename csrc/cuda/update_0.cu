// The CUDA kernels of the share 0 of the rules (update.cuh, kUpdateParts; rules.h, RulesPart).
#include "update.cuh"

FUSEDOPT_CUDA_UPDATE_PART(0)
