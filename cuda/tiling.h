// Tile shape and shared-memory arithmetic of the CUDA core. Plain constexpr C++: used by the device
// kernel (cuda/rollout_kernel.cu), the host planner (cuda/plan.h), the host emulator
// (cuda/emulate.cpp) and the CPU-side tests (through mac._C_cuda.launch_plan).
#pragma once

#include <stdint.h>

namespace mac {
namespace cuda {

// One CTA = 8 warps. A GEMM work item is a kBM x kBN output tile, swept over K in kBK slices.
// The warps form a 2 (rows) x 4 (columns) grid; each warp owns a 64 x 32 sub-tile, i.e. 4 x 2 WMMA
// 16x16 accumulator fragments.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kBM = 128;
constexpr int kBN = 128;
constexpr int kBK = 32;
constexpr int kWarpsM = 2;
constexpr int kWarpsN = 4;
constexpr int kWM = kBM / kWarpsM;  // 64
constexpr int kWN = kBN / kWarpsN;  // 32
constexpr int kFragM = kWM / 16;    // 4
constexpr int kFragN = kWN / 16;    // 2
// Operand staging: thread t loads column (t % kBK) of rows (t / kBK) + j * (kThreads / kBK).
constexpr int kLoadRowStep = kThreads / kBK;       // 8
constexpr int kLoadIters = kBM / kLoadRowStep;     // 16 rows per thread per operand and k-slice
// Most layers one network may have (hidden layers + head); the whole program is a kernel argument.
constexpr int kMaxLayers = 12;
// CTAs per SM the kernel is compiled for (__launch_bounds__). 1 lets a thread use up to 255
// registers: the 64 x 32 warp tile (64 accumulators) plus the 16 prefetched A values per slice do
// not fit in 128 without spilling (checked with -Xptxas -v and cuobjdump -sass).
constexpr int kMinBlocksPerSm = 1;

enum Precision : int { kTf32 = 0, kBf16 = 1, kFp32Emulated = 2 };

static_assert(kWarpsM * kWarpsN == kWarps, "warp grid");
static_assert(kBM % kLoadRowStep == 0 && kBN % kLoadRowStep == 0, "load mapping");
static_assert(kThreads % kBK == 0, "load mapping");
static_assert(kBM == kBN, "one load loop stages both operands");
static_assert(kBN % 32 == 0, "epilogue: a warp covers a tile row in kBN / 32 steps");

constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
constexpr int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Persistent grid size: every CTA must be co-resident (cooperative launch), and CTAs beyond the
// largest phase's work-item count would only wait at the barriers.
constexpr int grid_size(int64_t max_items, int num_sms, int blocks_per_sm) {
  const int64_t resident = int64_t{num_sms} * blocks_per_sm;
  const int64_t g = max_items < resident ? max_items : resident;
  return static_cast<int>(g < 1 ? 1 : g);
}

// Shared memory layout of a GEMM work item (bytes). Operand tiles are row-major [rows][kBK + pad]
// (pad keeps WMMA fragment pointers 32-byte aligned and spreads rows over banks); two stages.
// The fp32 accumulator tile [kBM][kBN + 4] of the epilogue reuses the staging area; the per-row
// LayerNorm mean / rstd of the A tile follow it.
constexpr int operand_ld(int precision) { return precision == kBf16 ? kBK + 8 : kBK + 4; }
constexpr int operand_bytes(int precision) { return precision == kBf16 ? 2 : 4; }
constexpr int stage_bytes(int precision) {
  return 2 * (kBM + kBN) * operand_ld(precision) * operand_bytes(precision);
}
constexpr int kAccLd = kBN + 4;
constexpr int kAccBytes = kBM * kAccLd * 4;
constexpr int row_stats_offset(int precision) {
  return static_cast<int>(round_up(stage_bytes(precision) > kAccBytes ? stage_bytes(precision) : kAccBytes, 128));
}
constexpr int smem_bytes(int precision) { return row_stats_offset(precision) + 2 * kBM * 4; }

static_assert(stage_bytes(kTf32) % 128 == 0 && stage_bytes(kBf16) % 128 == 0, "stage alignment");
static_assert((16 * operand_ld(kTf32) * 4) % 32 == 0, "fragment rows 32-byte aligned (tf32)");
static_assert((16 * operand_ld(kBf16) * 2) % 32 == 0, "fragment rows 32-byte aligned (bf16)");
static_assert((16 * kAccLd * 4) % 32 == 0, "accumulator rows 32-byte aligned");
static_assert(smem_bytes(kTf32) <= 99 * 1024 && smem_bytes(kBf16) <= 99 * 1024,
              "two CTAs per SM must fit an A100 (164 KiB)");

}  // namespace cuda
}  // namespace mac
