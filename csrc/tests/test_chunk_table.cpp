// Native test of the multi-tensor launcher's host side (csrc/include/fusedopt/chunk_table.h): every element of
// every tensor is covered by exactly one block, tables respect their capacities, tensors split between launches
// keep their chunk numbering, empty tensors take nothing, offsets past 2^31 elements are exact, and the
// vector-access flag follows every pointer's alignment. No GPU needed: this is the index math the kernels use.
#include <stdint.h>
#include <stdio.h>

#include <map>
#include <vector>

#include "expect.h"
#include "fusedopt/chunk_table.h"

namespace {

using namespace fusedopt::mt;


using SmallTable = Table<3, 5, 7>;

// Checks a plan against its numels and capacities: exact cover, in order, consistent first_block.
void check_plan(const std::vector<int64_t>& numels, int max_tensors, int max_blocks) {
  const std::vector<LaunchPlan> plans = plan_launches(numels, max_tensors, max_blocks);
  std::map<int64_t, int64_t> next_chunk;  // tensor -> next chunk expected
  int64_t blocks = 0;
  int64_t tensors_in_use = 0;
  for (const LaunchPlan& p : plans) {
    EXPECT(!p.block_slot.empty(), "launch without blocks");
    EXPECT(int(p.tensors.size()) <= max_tensors, "%zu tensors > %d", p.tensors.size(), max_tensors);
    EXPECT(int(p.block_slot.size()) <= max_blocks, "%zu blocks > %d", p.block_slot.size(), max_blocks);
    EXPECT(p.first_block == blocks, "first_block %lld, expected %lld", (long long)p.first_block, (long long)blocks);
    EXPECT(p.block_slot.size() == p.block_chunk.size(), "slot/chunk lists differ");
    for (size_t b = 0; b < p.block_slot.size(); ++b) {
      const int32_t slot = p.block_slot[b];
      EXPECT(slot >= 0 && slot < int32_t(p.tensors.size()), "slot %d out of range", slot);
      const int64_t t = p.tensors[size_t(slot)];
      EXPECT(numels[size_t(t)] > 0, "empty tensor %lld got a block", (long long)t);
      EXPECT(p.block_chunk[b] == next_chunk[t], "tensor %lld: chunk %lld, expected %lld", (long long)t,
             (long long)p.block_chunk[b], (long long)next_chunk[t]);
      ++next_chunk[t];
    }
    // Every slot is used by some block (no wasted table entries).
    std::vector<bool> used(p.tensors.size(), false);
    for (int32_t s : p.block_slot) used[size_t(s)] = true;
    for (size_t s = 0; s < used.size(); ++s) EXPECT(used[s], "slot %zu unused", s);
    blocks += int64_t(p.block_slot.size());
    tensors_in_use += int64_t(p.tensors.size());
  }
  EXPECT(blocks == total_blocks(numels), "%lld blocks, expected %lld", (long long)blocks,
         (long long)total_blocks(numels));
  for (size_t t = 0; t < numels.size(); ++t) {
    EXPECT(next_chunk[int64_t(t)] == num_chunks(numels[t]), "tensor %zu covered by %lld chunks, expected %lld", t,
           (long long)next_chunk[int64_t(t)], (long long)num_chunks(numels[t]));
  }
  // Minimal launch count: a launch ends only because a capacity filled.
  for (size_t i = 0; i + 1 < plans.size(); ++i) {
    const bool blocks_full = int(plans[i].block_slot.size()) == max_blocks;
    const bool tensors_full = int(plans[i].tensors.size()) == max_tensors;
    EXPECT(blocks_full || tensors_full, "launch %zu ended early (%zu tensors, %zu blocks)", i,
           plans[i].tensors.size(), plans[i].block_slot.size());
  }
}

void test_num_chunks() {
  EXPECT(num_chunks(0) == 0, "0");
  EXPECT(num_chunks(1) == 1, "1");
  EXPECT(num_chunks(kChunkElems) == 1, "exact");
  EXPECT(num_chunks(kChunkElems + 1) == 2, "one over");
  EXPECT(num_chunks(4097) == 1, "4097");
}

void test_plans() {
  check_plan({}, 5, 7);
  check_plan({0, 0, 0}, 5, 7);
  check_plan({1}, 5, 7);
  check_plan({4097, 0, 1, 0, 4097}, 5, 7);
  // Many small tensors: the tensor capacity fills first.
  check_plan(std::vector<int64_t>(23, 3), 5, 7);
  // Big tensors: the block capacity fills first; tensors split across launches.
  check_plan({kChunkElems * 10 + 1, kChunkElems * 3, 5, kChunkElems * 20}, 5, 7);
  check_plan({kChunkElems * 7, kChunkElems * 7}, 5, 7);
  // Mixed, with capacities of one.
  check_plan({kChunkElems * 3 + 2, 0, 9, kChunkElems}, 1, 1);
  check_plan({kChunkElems * 3 + 2, 0, 9, kChunkElems}, 2, 1000);
  // Launch counts for the real capacities stay O(#tensors / capacity + #chunks / capacity).
  std::vector<int64_t> gpt2(148, 768 * 768);
  const auto plans = plan_launches(gpt2, 110, 1000);
  const int64_t chunks = total_blocks(gpt2);
  EXPECT(int64_t(plans.size()) <= 148 / 110 + chunks / 1000 + 2, "%zu launches for GPT-2-like", plans.size());
  check_plan(gpt2, 110, 1000);
}

void test_two_tensors_split_at_a_full_table() {
  // 5 + 4 chunks with 7 blocks per table: tensor 1 continues in launch 2 from chunk 2, in slot 0.
  const auto plans = plan_launches({kChunkElems * 5, kChunkElems * 4}, 5, 7);
  EXPECT(plans.size() == 2, "%zu launches", plans.size());
  if (plans.size() == 2) {
    EXPECT(plans[1].tensors.size() == 1 && plans[1].tensors[0] == 1, "second launch holds tensor 1");
    EXPECT(plans[1].block_chunk[0] == 2, "continues at chunk %lld", (long long)plans[1].block_chunk[0]);
    EXPECT(plans[1].first_block == 7, "first_block %lld", (long long)plans[1].first_block);
  }
}

void test_large_offsets() {
  // A tensor of 2^33 + 5 elements (never allocated: only its index math).
  const int64_t numel = (int64_t(1) << 33) + 5;
  const int64_t chunks = num_chunks(numel);
  EXPECT(chunks == (int64_t(1) << 17) + 1, "%lld chunks", (long long)chunks);
  const auto plans = plan_launches({numel}, 110, 1000);
  const LaunchPlan& last = plans.back();
  SmallTable unused{};
  (void)unused;
  Table<1, 4, 1000> table{};
  char dummy;
  const int blocks = fill_table(table, last, [&](int64_t) {
    return TensorInfo{{&dummy}, numel, nullptr, 0};
  });
  EXPECT(blocks == int(last.block_slot.size()), "fill_table returned %d", blocks);
  const int b = blocks - 1;
  EXPECT(table.begin(b) == (int64_t(1) << 33), "last chunk begins at %lld", (long long)table.begin(b));
  EXPECT(table.count(b) == 5, "last chunk has %lld elements", (long long)table.count(b));
  EXPECT(table.count(0) == kChunkElems, "full chunk has %lld", (long long)table.count(0));
  EXPECT(table.begin(b) + table.count(b) == numel, "end");
  // Offsets past 2^31 (the point of 64-bit indexing): the block at chunk 2^15 starts exactly at 2^31.
  Table<1, 4, 4> t2{};
  LaunchPlan p;
  p.tensors = {0};
  p.block_slot = {0};
  p.block_chunk = {int64_t(1) << 15};
  fill_table(t2, p, [&](int64_t) { return TensorInfo{{&dummy}, numel, nullptr, 0}; });
  EXPECT(t2.begin(0) == (int64_t(1) << 31), "begin %lld", (long long)t2.begin(0));
}

void test_fill_table() {
  std::vector<float> a(10), b(10), c(10);
  float step = 0.0f;
  LaunchPlan p;
  p.tensors = {3, 8};
  p.block_slot = {0, 1, 1};
  p.block_chunk = {0, 0, 1};
  p.first_block = 12;
  SmallTable table{};
  const int blocks = fill_table(table, p, [&](int64_t t) {
    TensorInfo ti{};
    ti.ptrs[0] = a.data() + t;
    ti.ptrs[1] = b.data();
    ti.ptrs[2] = c.data();
    ti.numel = t == 3 ? 7 : kChunkElems + 1;
    ti.extra = t == 8 ? &step : nullptr;
    ti.flags = uint8_t(t);
    return ti;
  });
  EXPECT(blocks == 3, "%d blocks", blocks);
  EXPECT(table.ptrs[0][0] == a.data() + 3 && table.ptrs[0][1] == a.data() + 8, "param pointers");
  EXPECT(table.ptrs[2][1] == c.data(), "third list");
  EXPECT(table.numel[0] == 7 && table.numel[1] == kChunkElems + 1, "numels");
  EXPECT(table.extra[0] == nullptr && table.extra[1] == &step, "extras");
  EXPECT(table.flags[0] == 3 && table.flags[1] == 8, "flags");
  EXPECT(table.first_block == 12, "first_block");
  EXPECT(table.count(0) == 7 && table.count(1) == kChunkElems && table.count(2) == 1, "counts %lld %lld %lld",
         (long long)table.count(0), (long long)table.count(1), (long long)table.count(2));
  EXPECT(table.begin(2) == kChunkElems, "begin");
}

void test_vector_flag() {
  alignas(16) float f[16];
  alignas(16) uint16_t h[16];
  {
    const void* ptrs[] = {f, h, nullptr};
    const int sizes[] = {4, 2, 4};
    EXPECT(vector_flag(ptrs, sizes, 3) == kFlagVectorized, "aligned pointers (nullptr ignored)");
  }
  {
    const void* ptrs[] = {f + 1, h};  // a slice at an odd offset
    const int sizes[] = {4, 2};
    EXPECT(vector_flag(ptrs, sizes, 2) == 0, "misaligned fp32");
  }
  {
    const void* ptrs[] = {f, h + 4};  // 8 bytes: enough for 4 bf16
    const int sizes[] = {4, 2};
    EXPECT(vector_flag(ptrs, sizes, 2) == kFlagVectorized, "bf16 at 8 bytes");
  }
  {
    const void* ptrs[] = {f, h + 2};
    const int sizes[] = {4, 2};
    EXPECT(vector_flag(ptrs, sizes, 2) == 0, "bf16 at 4 bytes");
  }
  {
    const void* ptrs[] = {f + 4};
    const int sizes[] = {4};
    EXPECT(vector_flag(ptrs, sizes, 1) == kFlagVectorized, "fp32 at 16 bytes");
  }
}

void test_batches() {
  const auto b = batches(2500, 1000);
  EXPECT(b.size() == 3 && b[0].first == 0 && b[0].second == 1000 && b[2].first == 2000 && b[2].second == 2500,
         "batches of 2500");
  EXPECT(batches(0, 1000).empty(), "no batch for nothing");
  EXPECT(batches(1000, 1000).size() == 1, "exactly one");
}

}  // namespace

int main() {
  test_num_chunks();
  test_plans();
  test_two_tensors_split_at_a_full_table();
  test_large_offsets();
  test_fill_table();
  test_vector_flag();
  test_batches();
  if (failures) {
    printf("%d failures\n", failures);
    return 1;
  }
  printf("test_chunk_table: all checks passed\n");
  return 0;
}
