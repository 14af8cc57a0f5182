// Entry points of the CUDA core for the host-compiled bindings (no CUDA types in this header).
#pragma once

#include <stdint.h>

#include <string>
#include <utility>
#include <vector>

#include "program.h"

namespace mac {
namespace cuda {

struct LaunchInfo {
  int grid = 0;           // CTAs of the persistent grid
  int blocks_per_sm = 0;  // co-resident CTAs per SM (occupancy)
  int num_sms = 0;
  int smem_bytes = 0;
};

// Runs the program on `device`, asynchronously on `stream` (a cudaStream_t as an integer; 0 is the
// legacy default stream). `max_items` = most work items of any phase (plan.h). Throws
// std::runtime_error on CUDA errors, naming the failing call.
LaunchInfo launch(const Program& p, int precision, int64_t max_items, int device, uintptr_t stream);

// Registers / local memory / shared memory / occupancy of the kernel for `precision` on `device`.
struct KernelInfo {
  int num_regs = 0;
  int local_bytes = 0;
  int static_smem_bytes = 0;
  int dynamic_smem_bytes = 0;
  int max_threads = 0;
  int blocks_per_sm = 0;
  int num_sms = 0;
  int ptx_version = 0;
  int binary_version = 0;
};
KernelInfo kernel_info(int precision, int device);

// Host emulation of the same program on host memory (tests without a GPU). Precision kTf32 /
// kBf16 round the GEMM operands exactly as the kernel stages them; kFp32Emulated does not round.
// Every read and write is checked against `readable` / `writable` [begin, end) byte ranges;
// an access outside them throws std::out_of_range.
using Range = std::pair<uintptr_t, uintptr_t>;
void emulate(const Program& p, int precision, const std::vector<Range>& readable,
             const std::vector<Range>& writable);

}  // namespace cuda
}  // namespace mac
