// The scheduler behind cuda_emu.h: blocks in a seeded order, each block's threads as fibers switched only at
// barriers and warp primitives (x86-64: a few instructions of our own, no system call; elsewhere ucontext), with
// AddressSanitizer's fiber annotations so that an ASan build follows the switches.
#include "cuda_emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define CUDA_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUDA_EMU_ASAN 1
#endif
#endif
#ifdef CUDA_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace cuda_emu {
namespace detail {
struct Thread;
}
}  // namespace cuda_emu

// Entry of every fiber (called from the trampoline with the thread's record).
extern "C" __attribute__((visibility("hidden"))) void cuda_emu_fiber_main(cuda_emu::detail::Thread* t);

#if defined(__x86_64__)
// cuda_emu_switch(save, load): saves the callee-saved registers, the SSE and x87 control words and the stack
// pointer (into *save), then resumes the context whose stack pointer is `load`. The trampoline starts a fiber:
// its record comes in rbx (set up by fresh_context).
extern "C" __attribute__((visibility("hidden"))) void cuda_emu_switch(void** save, void* load);
extern "C" __attribute__((visibility("hidden"))) void cuda_emu_trampoline();
asm(R"(
  .text
  .p2align 4
  .globl cuda_emu_switch
  .hidden cuda_emu_switch
  .type cuda_emu_switch, @function
cuda_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_emu_switch, .-cuda_emu_switch

  .p2align 4
  .globl cuda_emu_trampoline
  .hidden cuda_emu_trampoline
  .type cuda_emu_trampoline, @function
cuda_emu_trampoline:
  movq %rbx, %rdi
  call cuda_emu_fiber_main
  ud2
  .size cuda_emu_trampoline, .-cuda_emu_trampoline
)");
#endif

namespace cuda_emu {
namespace detail {

namespace {

constexpr size_t kStackBytes = size_t(256) << 10;  // per fiber (virtual; ASan's frames and reports need room)

enum class State : uint8_t { Ready, Running, AtBarrier, AtWarp, Done };

const char* barrier_name(int kind) {
  switch (kind) {
    case kSync: return "__syncthreads()";
    case kSyncOr: return "__syncthreads_or()";
    case kSyncAnd: return "__syncthreads_and()";
    default: return "__syncthreads_count()";
  }
}

const char* warp_op_name(int op) {
  switch (op) {
    case kShflDown: return "__shfl_down_sync";
    case kShflUp: return "__shfl_up_sync";
    case kShflXor: return "__shfl_xor_sync";
    case kShflIdx: return "__shfl_sync";
    case kBallot: return "__ballot_sync";
    case kAny: return "__any_sync";
    case kAll: return "__all_sync";
    default: return "__syncwarp";
  }
}

}  // namespace

struct Thread {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
  char* stack = nullptr;  // lowest usable byte (a guard page lies below); taken when the thread starts
  State state = State::Done;
  bool started = false;
  unsigned tid = 0, warp = 0, lane = 0;
  Index idx{0, 0, 0};
  uint64_t value = 0;  // a warp primitive's operand, then its result
  int arg = 0;
  int result = 0;  // a barrier's result
};

namespace {

struct Warp {
  uint32_t ready = 0;    // lanes that can run
  uint32_t arrived = 0;  // lanes waiting at the warp primitive below
  int op = 0, width = 32;
  unsigned mask = 0;
};

// The one running block (emulated launches are serialized by g_lock).
struct Scheduler {
  std::vector<Thread> threads = std::vector<Thread>(kMaxThreadsPerBlock);
  std::vector<Warp> warps = std::vector<Warp>(kMaxThreadsPerBlock / kWarpSize);
  std::vector<unsigned> warp_order;
  unsigned nthreads = 0, nwarps = 0, done = 0, at_barrier = 0;
  int barrier_kind = 0, barrier_acc = 0;
  Thread* current = nullptr;
  Body body = nullptr;
  void* ctx = nullptr;
  bool failed = false;
  std::string error;
#if defined(__x86_64__)
  void* sp = nullptr;  // the scheduler's context while a fiber runs
#else
  ucontext_t uc;
#endif
  const void* stack_bottom = nullptr;  // the scheduler's stack, for ASan's fiber switches
  size_t stack_size = 0;
  Stats stats;
};

std::mutex g_lock;
Scheduler g_sched;
uint64_t g_seed = 0;
bool g_seed_set = false;
uint64_t g_launch_index = 0;
cudaError_t g_error = cudaSuccess;
std::string g_error_message;

uint64_t current_seed() {
  if (!g_seed_set) {
    const char* env = std::getenv("FUSEDOPT_CUDA_EMU_SEED");
    g_seed = env != nullptr && *env != '\0' ? std::strtoull(env, nullptr, 0) : 1;
    g_seed_set = true;
  }
  return g_seed;
}

std::string where(const Thread& t) {
  std::ostringstream s;
  s << "block (" << g_block_idx.x << "," << g_block_idx.y << "," << g_block_idx.z << ") thread (" << t.idx.x << ","
    << t.idx.y << "," << t.idx.z << ")";
  return s.str();
}

// Fiber stacks, reused last in, first out: a thread that runs straight through (no barrier) hands its stack,
// still in cache, to the next one, so a block of an update kernel runs on one stack. Each comes with the lowest
// address whose ASan shadow may be stale (frames of an exited fiber never return from its last switch, and an
// abandoned one from none: their redzones stay poisoned), cleared when the stack is taken again.
struct FreeStack {
  char* stack;
  const char* dirty_from;
};
std::vector<FreeStack> g_free_stacks;

char* take_stack() {
  if (!g_free_stacks.empty()) {
    const FreeStack f = g_free_stacks.back();
    g_free_stacks.pop_back();
#ifdef CUDA_EMU_ASAN
    const char* from = std::max<const char*>(f.stack, f.dirty_from);
    __asan_unpoison_memory_region(from, size_t(f.stack + kStackBytes - from));
#endif
    return f.stack;
  }
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  void* base =
      mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) throw std::runtime_error("cuda_emu: cannot map a fiber stack");
  mprotect(base, page, PROT_NONE);  // a stack overflow faults instead of corrupting its neighbour
  return static_cast<char*>(base) + page;
}

void release_stack(char* stack, const char* dirty_from) { g_free_stacks.push_back({stack, dirty_from}); }

void fresh_context(Thread& t) {
  t.stack = take_stack();
#if defined(__x86_64__)
  // The frame cuda_emu_switch pops: control words, r15..r12, rbx (the record), rbp, return into the trampoline.
  // After that return rsp is 16-byte aligned, as the trampoline's call expects.
  auto top = (reinterpret_cast<uintptr_t>(t.stack + kStackBytes) & ~uintptr_t(15)) - 16;
  auto* sp = reinterpret_cast<uint64_t*>(top);
  sp[-1] = reinterpret_cast<uint64_t>(&cuda_emu_trampoline);
  sp[-2] = 0;  // rbp: ends frame-pointer walks (ASan's stack traces) here
  sp[-3] = reinterpret_cast<uint64_t>(&t);
  sp[-4] = sp[-5] = sp[-6] = sp[-7] = 0;
  uint32_t control[2];
  asm volatile("stmxcsr %0" : "=m"(control[0]));  // the caller's rounding and denormal modes
  asm volatile("fnstcw %0" : "=m"(control[1]));
  memcpy(&sp[-8], control, sizeof control);
  t.sp = &sp[-8];
#else
  getcontext(&t.uc);
  t.uc.uc_stack.ss_sp = t.stack;
  t.uc.uc_stack.ss_size = kStackBytes;
  t.uc.uc_link = nullptr;
  makecontext(&t.uc, reinterpret_cast<void (*)()>(&cuda_emu_fiber_main), 1, &t);
#endif
}

// Scheduler -> thread t, until t waits or exits.
void resume(Thread& t) {
  Scheduler& s = g_sched;
  if (!t.started) {
    fresh_context(t);
    t.started = true;
  }
  s.warps[t.warp].ready &= ~(1u << t.lane);
  t.state = State::Running;
  s.current = &t;
  g_thread_idx = t.idx;
  ++s.stats.switches;
#ifdef CUDA_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, t.stack, kStackBytes);
#endif
#if defined(__x86_64__)
  cuda_emu_switch(&s.sp, t.sp);
#else
  swapcontext(&s.uc, &t.uc);
#endif
#ifdef CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  s.current = nullptr;
}

// Thread t -> scheduler; returns when t is resumed (never when it exits).
void suspend(Thread& t, bool exiting) {
  Scheduler& s = g_sched;
  ++s.stats.switches;
#ifdef CUDA_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, s.stack_bottom, s.stack_size);
#else
  (void)exiting;
#endif
#if defined(__x86_64__)
  cuda_emu_switch(&t.sp, s.sp);
#else
  swapcontext(&t.uc, &s.uc);
#endif
#ifdef CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, &s.stack_bottom, &s.stack_size);
#endif
}

void make_ready(Thread& t) {
  t.state = State::Ready;
  g_sched.warps[t.warp].ready |= 1u << t.lane;
}

Thread& running(const char* what) {
  Thread* t = g_sched.current;
  if (t == nullptr) throw std::logic_error(std::string("cuda_emu: ") + what + " called outside an emulated kernel");
  return *t;
}

// The first runnable thread: warps in the block's (seeded) order, lanes in order. A warp runs as far as it can
// before the next one gets a turn.
Thread* pick() {
  Scheduler& s = g_sched;
  for (unsigned w : s.warp_order) {
    if (s.warps[w].ready != 0) return &s.threads[w * kWarpSize + unsigned(__builtin_ctz(s.warps[w].ready))];
  }
  return nullptr;
}

std::string deadlock_report() {
  Scheduler& s = g_sched;
  std::ostringstream m;
  m << "deadlock in block (" << g_block_idx.x << "," << g_block_idx.y << "," << g_block_idx.z << "): no thread of "
    << s.nthreads << " can go on; ";
  if (s.at_barrier > 0) m << s.at_barrier << " wait at " << barrier_name(s.barrier_kind) << "; ";
  for (unsigned w = 0; w < s.nwarps; ++w) {
    const Warp& wp = s.warps[w];
    if (wp.arrived != 0) {
      m << "warp " << w << ": lanes 0x" << std::hex << wp.arrived << " wait at " << warp_op_name(wp.op)
        << " for lanes 0x" << (wp.mask & ~wp.arrived) << std::dec << "; ";
    }
  }
  m << s.done << " exited";
  return m.str();
}

void run_block(Body body, void* ctx, std::mt19937_64& rng, bool shuffle) {
  Scheduler& s = g_sched;
  const unsigned bx = g_block_dim.x, by = g_block_dim.y;
  s.nthreads = g_block_dim.x * g_block_dim.y * g_block_dim.z;
  s.nwarps = (s.nthreads + kWarpSize - 1) / kWarpSize;
  s.done = s.at_barrier = 0;
  s.failed = false;
  s.error.clear();
  for (unsigned w = 0; w < s.nwarps; ++w) s.warps[w] = Warp{};
  for (unsigned i = 0; i < s.nthreads; ++i) {
    Thread& t = s.threads[i];
    t.tid = i;
    t.warp = i / kWarpSize;
    t.lane = i % kWarpSize;
    t.idx = Index{i % bx, (i / bx) % by, i / (bx * by)};
    t.started = false;
    make_ready(t);
  }
  s.warp_order.resize(s.nwarps);
  std::iota(s.warp_order.begin(), s.warp_order.end(), 0u);
  if (shuffle) std::shuffle(s.warp_order.begin(), s.warp_order.end(), rng);
  s.body = body;
  s.ctx = ctx;
  while (s.done < s.nthreads && !s.failed) {
    Thread* t = pick();
    if (t == nullptr) {
      s.failed = true;
      s.error = deadlock_report();
      break;
    }
    resume(*t);
  }
  s.stats.threads += s.nthreads;
  ++s.stats.blocks;
  if (s.failed) {  // the stacks of the threads left waiting
    for (unsigned i = 0; i < s.nthreads; ++i) {
      Thread& t = s.threads[i];
      if (t.started && t.state != State::Done) release_stack(t.stack, t.stack);
    }
  }
}


// A fault inside the running thread ends the block; the message says where.
void fail(Thread& t, const std::string& what) {
  Scheduler& s = g_sched;
  if (!s.failed) {
    s.failed = true;
    s.error = what + " (" + where(t) + ")";
  }
}

}  // namespace

int barrier(int kind, int pred) {
  Scheduler& s = g_sched;
  Thread& t = running(barrier_name(kind));
  if (s.done > 0) {
    std::ostringstream m;
    m << "deadlock: " << barrier_name(kind) << " reached after " << s.done << " of the block's " << s.nthreads
      << " threads exited without reaching it (a barrier in divergent code)";
    throw Fault(m.str());
  }
  if (s.at_barrier == 0) {
    s.barrier_kind = kind;
    s.barrier_acc = kind == kSyncAnd ? 1 : 0;
  } else if (s.barrier_kind != kind) {
    throw Fault(std::string("threads of one block wait at different barriers: ") + barrier_name(kind) + " and " +
                barrier_name(s.barrier_kind));
  }
  switch (kind) {
    case kSyncOr: s.barrier_acc |= pred != 0; break;
    case kSyncAnd: s.barrier_acc &= pred != 0; break;
    case kSyncCount: s.barrier_acc += pred != 0; break;
    default: break;
  }
  t.state = State::AtBarrier;
  if (++s.at_barrier == s.nthreads) {  // the last to arrive releases the others and goes on
    for (unsigned i = 0; i < s.nthreads; ++i) {
      Thread& o = s.threads[i];
      o.result = s.barrier_acc;
      if (&o != &t) make_ready(o);
    }
    s.at_barrier = 0;
    t.state = State::Running;
    return t.result;
  }
  suspend(t, false);
  return t.result;
}

uint64_t warp_op(int op, unsigned mask, uint64_t value, int arg, int width) {
  Scheduler& s = g_sched;
  Thread& t = running(warp_op_name(op));
  Warp& w = s.warps[t.warp];
  const unsigned lanes = std::min<unsigned>(kWarpSize, s.nthreads - t.warp * kWarpSize);
  const uint32_t existing = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
  // The report of a misuse (built only then: this is the hot path of every shuffle).
  auto fault = [&](const auto& describe) {
    std::ostringstream m;
    m << warp_op_name(op) << " in warp " << t.warp << ", lane " << t.lane << ": ";
    describe(m);
    throw Fault(m.str());
  };
  if ((mask >> t.lane & 1u) == 0) {
    fault([&](std::ostream& m) { m << "mask 0x" << std::hex << mask << " leaves out the calling lane"; });
  }
  if ((mask & ~existing) != 0) {
    fault([&](std::ostream& m) {
      m << "mask 0x" << std::hex << mask << " names lanes that do not exist (block of " << std::dec << s.nthreads
        << " threads)";
    });
  }
  if (width < 1 || width > kWarpSize || (width & (width - 1)) != 0) {
    fault([&](std::ostream& m) { m << "width " << width << " is not a power of 2 up to 32"; });
  }
  if (w.arrived == 0) {
    w.op = op;
    w.mask = mask;
    w.width = width;
  } else if (w.op != op || w.mask != mask || w.width != width) {
    fault([&](std::ostream& m) {
      m << "meets lanes waiting at " << warp_op_name(w.op) << " with mask 0x" << std::hex << w.mask
        << " (a warp primitive in divergent code)";
    });
  }
  if (s.done > 0) {
    for (unsigned l = 0; l < lanes; ++l) {
      if ((mask >> l & 1u) && s.threads[t.warp * kWarpSize + l].state == State::Done) {
        fault([&](std::ostream& m) { m << "lane " << l << " of the mask has exited (deadlock)"; });
      }
    }
  }
  t.value = value;
  t.arg = arg;
  t.state = State::AtWarp;
  w.arrived |= 1u << t.lane;
  if (w.arrived != mask) {
    suspend(t, false);
    return t.value;
  }
  // The last lane computes every lane's result (sources read before any result is written).
  Thread* lane_of = &s.threads[t.warp * kWarpSize];
  uint64_t in[kWarpSize], out[kWarpSize];
  uint64_t ballot = 0;
  for (unsigned l = 0; l < lanes; ++l) {
    in[l] = lane_of[l].value;
    if ((mask >> l & 1u) && in[l] != 0) ballot |= uint64_t(1) << l;
  }
  for (unsigned l = 0; l < lanes; ++l) {
    if ((mask >> l & 1u) == 0) continue;
    const int a = lane_of[l].arg;
    const unsigned seg = l / unsigned(width) * unsigned(width);
    int src = int(l);
    switch (op) {
      case kShflDown: src = int(l - seg) + a < width ? int(l) + a : int(l); break;
      case kShflUp: src = int(l - seg) >= a ? int(l) - a : int(l); break;
      case kShflXor: src = (int(l) ^ a) < int(seg) + width ? int(l) ^ a : int(l); break;
      case kShflIdx: src = int(seg) + ((a % width) + width) % width; break;
      default: break;
    }
    if (op <= kShflIdx) {
      if (src < 0 || src >= int(lanes) || (mask >> src & 1u) == 0) {
        fault([&](std::ostream& m) {
          m << "lane " << l << " reads lane " << src << ", which is not in the mask 0x" << std::hex << mask;
        });
      }
      out[l] = in[src];
    } else if (op == kBallot) {
      out[l] = ballot;
    } else if (op == kAny) {
      out[l] = ballot != 0;
    } else if (op == kAll) {
      out[l] = ballot == mask;
    } else {
      out[l] = 0;
    }
  }
  for (unsigned l = 0; l < lanes; ++l) {
    if ((mask >> l & 1u) == 0) continue;
    lane_of[l].value = out[l];
    if (&lane_of[l] != &t) make_ready(lane_of[l]);
  }
  w.arrived = 0;
  t.state = State::Running;
  return t.value;
}

void misaligned(const void* p, size_t bytes) {
  std::ostringstream m;
  m << "misaligned " << bytes << "-byte vector access at " << p << " (address % " << bytes << " = "
    << reinterpret_cast<uintptr_t>(p) % bytes << "): a GPU faults here";
  throw Fault(m.str());
}

void run_grid(const LaunchConfig& c, Body body, void* ctx) {
  std::lock_guard<std::mutex> lock(g_lock);
  std::ostringstream m;
  const uint64_t threads = uint64_t(c.block.x) * c.block.y * c.block.z;
  const uint64_t blocks = uint64_t(c.grid.x) * c.grid.y * c.grid.z;
  if (threads == 0 || threads > kMaxThreadsPerBlock || c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64) {
    m << "invalid configuration argument: block (" << c.block.x << "," << c.block.y << "," << c.block.z
      << ") (at most 1024 threads, dims 1024 x 1024 x 64)";
    set_error(cudaErrorInvalidConfiguration, m.str());
    return;
  }
  if (blocks == 0 || c.grid.x > 0x7fffffffu || c.grid.y > 65535 || c.grid.z > 65535) {
    m << "invalid configuration argument: grid (" << c.grid.x << "," << c.grid.y << "," << c.grid.z << ")";
    set_error(cudaErrorInvalidConfiguration, m.str());
    return;
  }
  if (blocks > (uint64_t(1) << 26)) {
    m << "grid of " << blocks << " blocks: more than the emulator runs";
    set_error(cudaErrorInvalidConfiguration, m.str());
    return;
  }
  if (c.param_bytes > kMaxParamBytes) {
    m << "kernel arguments of " << c.param_bytes << " bytes exceed CUDA's limit of " << kMaxParamBytes << " bytes";
    set_error(cudaErrorInvalidValue, m.str());
    return;
  }
  const uint64_t seed = current_seed();
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + ++g_launch_index);
  std::vector<uint32_t> order(blocks);
  std::iota(order.begin(), order.end(), 0u);
  if (seed != 0) std::shuffle(order.begin(), order.end(), rng);
  g_grid_dim = Index{c.grid.x, c.grid.y, c.grid.z};
  g_block_dim = Index{c.block.x, c.block.y, c.block.z};
  for (uint32_t b : order) {
    g_block_idx = Index{b % c.grid.x, (b / c.grid.x) % c.grid.y, b / (c.grid.x * c.grid.y)};
    run_block(body, ctx, rng, seed != 0);
    if (g_sched.failed) {
      set_error(cudaErrorLaunchFailure, "emulated kernel fault: " + g_sched.error);
      return;
    }
  }
  ++g_sched.stats.launches;
}

}  // namespace detail

void set_error(cudaError_t code, const std::string& message) {
  if (detail::g_error != cudaSuccess) return;  // the first error is the one reported
  detail::g_error = code;
  detail::g_error_message = message;
}

cudaError_t take_error() {
  const cudaError_t e = detail::g_error;
  detail::g_error = cudaSuccess;
  return e;
}

cudaError_t peek_error() { return detail::g_error; }

const char* error_string(cudaError_t code) {
  // The report of the last error (kept after cudaGetLastError clears the code, as its message is read next).
  if (code != cudaSuccess && !detail::g_error_message.empty()) return detail::g_error_message.c_str();
  return code == cudaSuccess ? "no error" : "unknown error";
}

void set_seed(uint64_t seed) {
  std::lock_guard<std::mutex> lock(detail::g_lock);
  detail::g_seed = seed;
  detail::g_seed_set = true;
  detail::g_launch_index = 0;
}

uint64_t seed() {
  std::lock_guard<std::mutex> lock(detail::g_lock);
  return detail::current_seed();
}

Stats stats() {
  std::lock_guard<std::mutex> lock(detail::g_lock);
  return detail::g_sched.stats;
}

void reset_stats() {
  std::lock_guard<std::mutex> lock(detail::g_lock);
  detail::g_sched.stats = Stats{};
}

}  // namespace cuda_emu

extern "C" void cuda_emu_fiber_main(cuda_emu::detail::Thread* t) {
  using namespace cuda_emu::detail;
  Scheduler& s = g_sched;
#ifdef CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &s.stack_bottom, &s.stack_size);
#endif
  try {
    s.body(s.ctx);
  } catch (const std::exception& e) {
    fail(*t, e.what());
  } catch (...) {
    fail(*t, "unknown exception");
  }
  t->state = State::Done;
  ++s.done;
  if (!s.failed && s.at_barrier > 0) {
    std::ostringstream m;
    m << "deadlock: a thread exited while " << s.at_barrier << " of the block's " << s.nthreads << " threads wait at "
      << barrier_name(s.barrier_kind) << " (a barrier in divergent code)";
    fail(*t, m.str());
  }
  const Warp& w = s.warps[t->warp];
  if (!s.failed && w.arrived != 0 && (w.mask >> t->lane & 1u)) {
    fail(*t, std::string("deadlock: a lane exited while its warp waits for it at ") + warp_op_name(w.op));
  }
  // Nothing runs on this stack before the scheduler starts another thread; the frames below this one (the last
  // switch) stay behind.
  release_stack(t->stack, static_cast<const char*>(__builtin_frame_address(0)) - 8192);
  suspend(*t, true);
  __builtin_unreachable();
}
