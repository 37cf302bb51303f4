// Host side of the multi-tensor launcher (multi_tensor.cuh): which (tensor, chunk) pairs each kernel launch
// covers, and the fixed-size table that carries them to the GPU as a by-value kernel argument. Plain C++ with
// no CUDA or torch, so the chunking and index math is unit-tested on any machine (csrc/tests/test_chunk_table.cpp).
//
// Every tensor is cut into chunks of kChunkElems elements (the last one shorter); one thread block updates one
// chunk. A launch's table holds at most MAX_TENSORS tensors and MAX_BLOCKS chunks; when either fills, the
// launch goes out and the next table starts, carrying the rest of a tensor split between tables. So the launch
// count is about max(#tensors / MAX_TENSORS, #chunks / MAX_BLOCKS) + 1 per call, whatever the tensor sizes.
// Offsets are 64-bit (chunk index * kChunkElems in int64_t): tensors over 2^31 elements are indexed correctly.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "fusedopt/math.h"  // FUSEDOPT_HD

namespace fusedopt::mt {

// Elements per thread block: 64K elements keeps per-block fixed costs (reading the table, the hyperparameters,
// the reduction) small next to the bytes moved, and still gives 1000+ blocks on a 64M-element tensor.
constexpr int64_t kChunkElems = int64_t(1) << 16;
// Elements each thread moves per vector load: 4 fp32 = 16 bytes (8 bytes for bf16/fp16).
constexpr int kVecElems = 4;

// Per-tensor flag bits in a table.
constexpr uint8_t kFlagVectorized = 1;  // every pointer of the tensor is aligned to its vector width
constexpr uint8_t kFlagFirst = 2;       // is_first: the tensor's state has no history yet (SGD: buf = g)
// Bits 4..7: a per-tensor dtype code (the check pass takes grads of several dtypes in one launch).
constexpr int kDtypeShift = 4;

inline int64_t num_chunks(int64_t numel) { return numel <= 0 ? 0 : (numel + kChunkElems - 1) / kChunkElems; }

// What one launch covers: the global indices of its tensors (slot order) and, per block, the slot and the chunk.
struct LaunchPlan {
  std::vector<int64_t> tensors;
  std::vector<int32_t> block_slot;
  std::vector<int64_t> block_chunk;
  int64_t first_block = 0;  // global index of this launch's first block over the whole call
};

// The launches of one call over tensors with these element counts. Empty tensors take no slot and no block.
inline std::vector<LaunchPlan> plan_launches(const std::vector<int64_t>& numels, int max_tensors, int max_blocks) {
  std::vector<LaunchPlan> plans;
  LaunchPlan cur;
  int64_t blocks_before = 0;
  auto flush = [&]() {
    if (cur.block_slot.empty()) return;
    cur.first_block = blocks_before;
    blocks_before += int64_t(cur.block_slot.size());
    plans.push_back(std::move(cur));
    cur = LaunchPlan();
  };
  for (int64_t t = 0; t < int64_t(numels.size()); ++t) {
    const int64_t chunks = num_chunks(numels[t]);
    for (int64_t c = 0; c < chunks; ++c) {
      if (int(cur.block_slot.size()) == max_blocks) flush();
      if (cur.tensors.empty() || cur.tensors.back() != t) {
        if (int(cur.tensors.size()) == max_tensors) flush();
        cur.tensors.push_back(t);
      }
      cur.block_slot.push_back(int32_t(cur.tensors.size() - 1));
      cur.block_chunk.push_back(c);
    }
  }
  flush();
  return plans;
}

inline int64_t total_blocks(const std::vector<int64_t>& numels) {
  int64_t n = 0;
  for (int64_t numel : numels) n += num_chunks(numel);
  return n;
}

// True when `ptr` (nullptr: an unused list, no constraint) allows vector access of `vec_bytes`.
inline bool aligned_to(const void* ptr, size_t vec_bytes) {
  return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % vec_bytes == 0;
}

// The kernel argument: DEPTH pointer lists (param, grad, states, ...) of up to MAX_TENSORS tensors and up to
// MAX_BLOCKS blocks. Trivially copyable; kept under the 32 KiB kernel-parameter limit of CUDA 12.1+ (sm_70+).
template <int DEPTH, int MAX_TENSORS, int MAX_BLOCKS>
struct Table {
  static constexpr int kDepth = DEPTH;
  static constexpr int kMaxTensors = MAX_TENSORS;
  static constexpr int kMaxBlocks = MAX_BLOCKS;

  void* ptrs[DEPTH][MAX_TENSORS];
  int64_t numel[MAX_TENSORS];
  void* extra[MAX_TENSORS];  // one per-tensor pointer (the update: its coefficients in scratch), else nullptr
  uint32_t id[MAX_TENSORS];  // one per-tensor word (the update: the param id of stochastic rounding), else 0
  uint8_t flags[MAX_TENSORS];
  uint16_t block_slot[MAX_BLOCKS];
  int32_t block_chunk[MAX_BLOCKS];  // chunk index in its tensor: offsets up to 2^31 * 2^16 elements
  int64_t first_block;

  // Element range [begin, begin + n) of block b.
  FUSEDOPT_HD int64_t begin(int b) const { return int64_t(block_chunk[b]) * kChunkElems; }
  FUSEDOPT_HD int64_t count(int b) const {
    const int64_t left = numel[block_slot[b]] - begin(b);
    return left < kChunkElems ? left : kChunkElems;
  }
};

// What the table needs of the tensor with global index t.
struct TensorInfo {
  void* ptrs[8];  // DEPTH of them are read
  int64_t numel;
  void* extra;
  uint8_t flags;
  uint32_t id = 0;
};

// Fills `table` for one launch; `info(t)` describes tensor t. Returns the block count (the launch's grid).
template <typename TableT, typename InfoFn>
int fill_table(TableT& table, const LaunchPlan& plan, const InfoFn& info) {
  static_assert(TableT::kDepth <= 8, "TensorInfo carries at most 8 pointers");
  for (size_t s = 0; s < plan.tensors.size(); ++s) {
    const TensorInfo ti = info(plan.tensors[s]);
    for (int d = 0; d < TableT::kDepth; ++d) table.ptrs[d][s] = ti.ptrs[d];
    table.numel[s] = ti.numel;
    table.extra[s] = ti.extra;
    table.id[s] = ti.id;
    table.flags[s] = ti.flags;
  }
  for (size_t b = 0; b < plan.block_slot.size(); ++b) {
    table.block_slot[b] = uint16_t(plan.block_slot[b]);
    table.block_chunk[b] = int32_t(plan.block_chunk[b]);
  }
  table.first_block = plan.first_block;
  return int(plan.block_slot.size());
}

// Vector-access flag for a tensor whose pointers are ptrs[0..n) with element sizes elem_bytes[0..n): every one
// must be aligned to kVecElems of its elements (chunk starts are multiples of kVecElems, so then every vector
// in every chunk is aligned).
inline uint8_t vector_flag(const void* const* ptrs, const int* elem_bytes, int n) {
  for (int i = 0; i < n; ++i) {
    if (!aligned_to(ptrs[i], size_t(elem_bytes[i]) * kVecElems)) return 0;
  }
  return kFlagVectorized;
}

// Pointer lists of at most MAX per launch (the update's per-tensor pass): the launches of n items.
inline std::vector<std::pair<int64_t, int64_t>> batches(int64_t n, int64_t max_per_launch) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t b = 0; b < n; b += max_per_launch) out.push_back({b, std::min(n, b + max_per_launch)});
  return out;
}

}  // namespace fusedopt::mt
