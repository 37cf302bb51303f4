// The CUDA kernels of the share 1 of the rules (update.cuh, kUpdateParts; rules.h, RulesPart).
#include "update.cuh"

FUSEDOPT_CUDA_UPDATE_PART(1)
