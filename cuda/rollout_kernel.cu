// The CUDA core: ONE persistent cooperative kernel runs a whole best-of-N call or H-step imagined
// rollout (the program of cuda/program.h), with grid-wide barriers between dependent phases, so
// host launch overhead is one launch per call, independent of H and of the network depths.
//
// GEMM work items: 128 x 128 output tile, K swept in slices of 32 with a two-stage shared-memory
// pipeline (global -> registers for slice k+1 while the tensor cores work on slice k). Operands
// are transformed while staged: layer 0 gathers [s, g, z] / [s, g, c] / [s, c] straight from the
// inputs; deeper layers apply the previous layer's LayerNorm (split-row statistics, see
// program.h); both are rounded to TF32 (or bfloat16) once, on the way into shared memory.
// 8 warps in a 2 x 4 grid each own 64 x 32 of the tile as WMMA fragments (m16n16k8 TF32 or
// m16n16k16 bf16, float32 accumulation). The epilogue goes through shared memory: bias + GELU +
// partial LayerNorm statistics (hidden layers) or bias (+ clip / + residual) for heads.
// Row-dot heads (critic, reward, success: one output each) run one warp per state in float32,
// fused with the argmax / gather (best-of-N) or the reward / mask rule.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <mutex>
#include <stdexcept>
#include <string>

#include "cuda_core.h"
#include "mac/kernel_math.h"
#include "mac/philox.h"
#include "program.h"
#include "tiling.h"

namespace mac {
namespace cuda {
namespace {

namespace cg = cooperative_groups;

// The program is the kernel's by-value argument: stay within the classic 4 KiB parameter limit.
static_assert(sizeof(Program) <= 4000, "Program must fit the 4 KiB kernel parameter space");

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define MAC_CUDA_TENSOR_CORES 1
#endif

#if defined(MAC_CUDA_TENSOR_CORES)
using namespace nvcuda;

struct Tf32Traits {
  using Stored = float;
  using Frag = wmma::precision::tf32;
  static constexpr int kK = 8;
  static constexpr int kPrecision = kTf32;
  // Weights go global -> shared memory by cp.async as raw float32 and are rounded to TF32 in the
  // fragments (cvt.rna, the same rounding as round_tf32); activations are rounded when staged.
  static constexpr bool kAsyncB = true;
  static __device__ __forceinline__ Stored cvt(float x) { return round_tf32(x); }
};

struct Bf16Traits {
  using Stored = __nv_bfloat16;
  using Frag = __nv_bfloat16;
  static constexpr int kK = 16;
  static constexpr int kPrecision = kBf16;
  static constexpr bool kAsyncB = false;  // converted to bfloat16 on the way through registers
  static __device__ __forceinline__ Stored cvt(float x) { return __float2bfloat16_rn(x); }
};
#else
struct Tf32Traits {
  static constexpr int kPrecision = kTf32;
};
struct Bf16Traits {
  static constexpr int kPrecision = kBf16;
};
#endif

#if defined(MAC_CUDA_TENSOR_CORES)
// All 32 lanes end with the bit-identical sum (xor butterfly; a + b == b + a exactly).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ------------------------------------------------------------------------------ cp.async
// 4-byte asynchronous copy global -> shared; src_bytes = 0 writes a zero without reading.
__device__ __forceinline__ void cp_async4(void* dst, const float* src, bool valid) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// ------------------------------------------------------------------------------ GEMM work item
__device__ __forceinline__ int clamp_rows(int j) { return j < 0 ? 0 : (j > kLoadIters ? kLoadIters : j); }

// kNorm: the input is LayerNorm(previous layer) (hidden layers 1..); else gathered (layer 0).
template <class P, bool kNorm>
__device__ __noinline__ void gemm_tile(const Op& op, int item, unsigned char* smem) {
  using T = typename P::Stored;
  constexpr int LD = operand_ld(P::kPrecision);
  T* const As = reinterpret_cast<T*>(smem);
  T* const Bs = As + 2 * kBM * LD;
  float* const s_mean = reinterpret_cast<float*>(smem + row_stats_offset(P::kPrecision));
  float* const s_rstd = s_mean + kBM;
  float* const Cs = reinterpret_cast<float*>(smem);

  // The op lives in local memory; keep what the loops use in registers.
  const Src& a = op.a;
  const int M = op.M, n_out = op.n_out, tiles_n = op.tiles_n, K = a.K;
  const float* const W = op.w;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int tm = item / tiles_n, tn = item - tm * tiles_n;
  const int m0 = tm * kBM, n0 = tn * kBN;

  // LayerNorm statistics of this tile's input rows (merged from the producer's partials).
  if constexpr (kNorm) {
    for (int i = tid; i < kBM; i += kThreads) {
      float mean = 0.f, rstd = 0.f;
      if (m0 + i < M) src_row_stats(a, m0 + i, mean, rstd);
      s_mean[i] = mean;
      s_rstd[i] = rstd;
    }
    __syncthreads();
  }

  const int lk = tid % kBK, lr = tid / kBK;
  // This thread stages column lk of rows lr + j * kLoadRowStep (j < kLoadIters) of both operands;
  // rows past the matrix (j >= ja / jb) and columns past K are zero.
  const int ja = clamp_rows((M - m0 - lr + kLoadRowStep - 1) / kLoadRowStep);
  const int jb = clamp_rows((n_out - n0 - lr + kLoadRowStep - 1) / kLoadRowStep);
  const int64_t step = static_cast<int64_t>(kLoadRowStep) * K;
  const float* const xa = kNorm ? a.x + static_cast<int64_t>(m0 + lr) * K : nullptr;
  const float* const ln_w = a.ln_w;
  const float* const ln_b = a.ln_b;
  const float* const wb = W + static_cast<int64_t>(n0 + lr) * K;
  float ra[kLoadIters];
  float rb[P::kAsyncB ? 1 : kLoadIters];
  // Global -> registers, with the input transform (gather or LayerNorm).
  auto load = [&](int kt) {
    const int k = kt * kBK + lk;
    const bool kin = k < K;
    if constexpr (kNorm) {
      const float g = kin ? ln_w[k] : 0.f, be = kin ? ln_b[k] : 0.f;
      const float* px = xa + k;
#pragma unroll
      for (int j = 0; j < kLoadIters; ++j) {
        const int rl = lr + j * kLoadRowStep;
        ra[j] = (kin && j < ja) ? layer_norm_apply(*px, s_mean[rl], s_rstd[rl], g, be) : 0.f;
        px += step;
      }
    } else {
      const GatherCol c = gather_col(a, kin ? k : 0);
#pragma unroll
      for (int j = 0; j < kLoadIters; ++j) ra[j] = (kin && j < ja) ? gather_at(c, m0 + lr + j * kLoadRowStep) : 0.f;
    }
    if constexpr (!P::kAsyncB) {
      const float* pw = wb + k;
#pragma unroll
      for (int j = 0; j < kLoadIters; ++j) {
        rb[j] = (kin && j < jb) ? *pw : 0.f;
        pw += step;
      }
    }
  };
  // Weights straight into shared memory stage `stage` (TF32 path); invalid elements read nothing.
  auto load_b_async = [&](int kt, int stage) {
    if constexpr (P::kAsyncB) {
      const int k = kt * kBK + lk;
      const bool kin = k < K;
      T* const bs = Bs + stage * kBN * LD;
      const float* pw = wb + k;
#pragma unroll
      for (int j = 0; j < kLoadIters; ++j) {
        const bool valid = kin && j < jb;
        cp_async4(bs + (lr + j * kLoadRowStep) * LD + lk, valid ? pw : W, valid);
        pw += step;
      }
      cp_async_commit();
    }
  };
  // Registers -> shared memory stage, rounded to the tensor-core input type.
  auto store = [&](int stage) {
    T* const as = As + stage * kBM * LD;
    T* const bs = Bs + stage * kBN * LD;
#pragma unroll
    for (int j = 0; j < kLoadIters; ++j) {
      const int rl = lr + j * kLoadRowStep;
      as[rl * LD + lk] = P::cvt(ra[j]);
      if constexpr (!P::kAsyncB) bs[rl * LD + lk] = P::cvt(rb[j]);
    }
  };

  const int wm = warp / kWarpsN, wn = warp % kWarpsN;
  wmma::fragment<wmma::accumulator, 16, 16, P::kK, float> acc[kFragM][kFragN];
#pragma unroll
  for (int fm = 0; fm < kFragM; ++fm)
#pragma unroll
    for (int fn = 0; fn < kFragN; ++fn) wmma::fill_fragment(acc[fm][fn], 0.f);

  const int KT = (K + kBK - 1) / kBK;
  load_b_async(0, 0);
  load(0);
  store(0);
  if constexpr (P::kAsyncB) cp_async_wait_all();
  __syncthreads();
  for (int kt = 0; kt < KT; ++kt) {
    const int st = kt & 1;
    const bool more = kt + 1 < KT;
    if (more) {  // in flight while the tensor cores work on stage st
      load_b_async(kt + 1, st ^ 1);
      load(kt + 1);
    }
    const T* const as = As + st * kBM * LD + wm * kWM * LD;
    const T* const bs = Bs + st * kBN * LD + wn * kWN * LD;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += P::kK) {
      wmma::fragment<wmma::matrix_b, 16, 16, P::kK, typename P::Frag, wmma::col_major> fb[kFragN];
#pragma unroll
      for (int fn = 0; fn < kFragN; ++fn) {
        wmma::load_matrix_sync(fb[fn], bs + fn * 16 * LD + kk, LD);
        if constexpr (P::kAsyncB) {
#pragma unroll
          for (int t = 0; t < fb[fn].num_elements; ++t) fb[fn].x[t] = wmma::__float_to_tf32(fb[fn].x[t]);
        }
      }
#pragma unroll
      for (int fm = 0; fm < kFragM; ++fm) {
        wmma::fragment<wmma::matrix_a, 16, 16, P::kK, typename P::Frag, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, as + fm * 16 * LD + kk, LD);
#pragma unroll
        for (int fn = 0; fn < kFragN; ++fn) wmma::mma_sync(acc[fm][fn], fa, fb[fn], acc[fm][fn]);
      }
    }
    if (more) store(st ^ 1);  // the other stage: nobody reads it since the last barrier
    if constexpr (P::kAsyncB) cp_async_wait_all();
    __syncthreads();
  }

  // Epilogue through shared memory (the staging area is free after the last barrier).
#pragma unroll
  for (int fm = 0; fm < kFragM; ++fm)
#pragma unroll
    for (int fn = 0; fn < kFragN; ++fn)
      wmma::store_matrix_sync(Cs + (wm * kWM + fm * 16) * kAccLd + wn * kWN + fn * 16, acc[fm][fn], kAccLd,
                              wmma::mem_row_major);
  __syncthreads();

  constexpr int kCols = kBN / 32;
  const int ncols = (n_out - n0) < kBN ? (n_out - n0) : kBN;
  for (int rl = warp; rl < kBM; rl += kWarps) {
    const int r = m0 + rl;
    if (r >= M) break;
    const float* const crow = Cs + rl * kAccLd;
    float* const yrow = op.y + static_cast<int64_t>(r) * op.ldy;
    if (op.kind == kOpGemmHidden) {
      float v[kCols];
      float s = 0.f;
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const int cl = lane + 32 * c;
        v[c] = 0.f;
        if (cl < ncols) {
          v[c] = epilogue_hidden(crow[cl], op.bias[n0 + cl]);
          yrow[n0 + cl] = v[c];
          s += v[c];
        }
      }
      const float mean = warp_sum(s) / static_cast<float>(ncols);
      float q = 0.f;
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        if (lane + 32 * c < ncols) {
          const float d = v[c] - mean;
          q += d * d;
        }
      }
      q = warp_sum(q);
      if (lane == 0) {
        float* const st = op.stats_out + (static_cast<int64_t>(r) * tiles_n + tn) * 2;
        st[0] = mean;
        st[1] = q;
      }
    } else {
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const int cl = lane + 32 * c;
        if (cl < ncols) yrow[n0 + cl] = epilogue_out(op, crow[cl], r, n0 + cl);
      }
    }
  }
  __syncthreads();  // shared memory is reused by this CTA's next work item
}

// ------------------------------------------------------------------------------ row-dot heads
// One output of a head layer (in float32): bias is added by the caller.
__device__ __forceinline__ float row_dot(const Src& a, int r, const float* w, int lane) {
  float mean, rstd;
  src_row_stats(a, r, mean, rstd);
  float s = 0.f;
  for (int k = lane; k < a.K; k += 32) s += src_elem(a, r, k, mean, rstd) * w[k];
  return warp_sum(s);
}

// Critic head for the N candidates of one state per warp, NaN-safe argmax, gather of the winner.
__device__ __forceinline__ void select_item(const Op& op, int item) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int b = item * kWarps + warp;
  if (b >= op.B) return;
  const float bias = op.bias[0];
  ArgMax best = argmax_init(row_dot(op.a, b, op.w, lane) + bias, 0);
  for (int i = 1; i < op.N; ++i) argmax_update(best, row_dot(op.a, i * op.B + b, op.w, lane) + bias, i);
  const float* const c = op.cand + (static_cast<int64_t>(best.index) * op.B + b) * op.C;
  float* const o = op.out_chunk + static_cast<int64_t>(b) * op.C;
  for (int j = lane; j < op.C; j += 32) o[j] = c[j];
  if (lane == 0) {
    op.out_q[b] = best.value;
    if (op.out_index) op.out_index[b] = best.index;
  }
}

__device__ __forceinline__ void reward_mask_item(const Op& op, int item) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int b = item * kWarps + warp;
  if (b >= op.B) return;
  float rew = 0.f, logit = 0.f;
  if (op.has_reward) rew = row_dot(op.a, b, op.w, lane) + op.bias[0];
  if (op.has_success) logit = row_dot(op.a2, b, op.w2, lane) + op.bias2[0];
  if (lane == 0) {
    float r, m;
    reward_and_mask(op.has_reward != 0, op.has_success != 0, rew, logit, r, m);
    op.out_r[b] = r;
    op.out_m[b] = m;
  }
}

__device__ __forceinline__ void noise_item(const Op& op, int item) {
  const int64_t block = static_cast<int64_t>(item) * kThreads + threadIdx.x;
  if (block >= ceil_div(op.count, 4)) return;
  float z[4];
  philox_normal4(op.seed, static_cast<uint64_t>(block), z);
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int64_t i = block * 4 + e;
    if (i < op.count) op.dst[i] = z[e];
  }
}

__device__ __forceinline__ void copy_item(const Op& op, int item) {
  const int64_t i = static_cast<int64_t>(item) * kThreads + threadIdx.x;
  if (i < op.count) op.dst[i] = op.src[i];
}

template <class P>
__device__ __forceinline__ void run_op(const Op& op, int item, unsigned char* smem) {
  switch (op.kind) {
    case kOpGemmHidden:
    case kOpGemmOut:
      if (op.a.kind == kSrcNorm) gemm_tile<P, true>(op, item, smem);
      else gemm_tile<P, false>(op, item, smem);
      break;
    case kOpSelect: select_item(op, item); break;
    case kOpRewardMask: reward_mask_item(op, item); break;
    case kOpNoise: noise_item(op, item); break;
    default: copy_item(op, item); break;
  }
}
#endif  // MAC_CUDA_TENSOR_CORES

// ------------------------------------------------------------------------------ the kernel
// CTA c takes the work items g = c, c + gridDim.x, ... of each phase (g counts across the phase's
// ops in order), then waits at the grid barrier.
template <class P>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) rollout_kernel(const __grid_constant__ Program prog) {
#if defined(MAC_CUDA_TENSOR_CORES)
  extern __shared__ __align__(128) unsigned char smem[];
  cg::grid_group grid = cg::this_grid();
  const int phases = total_phases(prog);
  const int64_t nblocks = gridDim.x;
  for (int ph = 0; ph < phases; ++ph) {
    const PhaseOps ops = phase_ops(prog, ph);
    int64_t offset = 0;
    for (int j = 0; j < ops.n; ++j) {
      const int64_t items = slot_items(prog, ops.slot[j], ops.layer[j]);
      int64_t first = (static_cast<int64_t>(blockIdx.x) - offset) % nblocks;
      if (first < 0) first += nblocks;
      if (first < items) {
        const Op op = make_op(prog, ops.slot[j], ops.layer[j], ops.k);
        for (int64_t it = first; it < items; it += nblocks) run_op<P>(op, static_cast<int>(it), smem);
      }
      offset += items;
    }
    if (ph + 1 < phases) grid.sync();
  }
#else
  (void)prog;
  __trap();  // built for an architecture without TF32 / bf16 tensor cores (launch() refuses it)
#endif
}

// ------------------------------------------------------------------------------ host side
void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("mac CUDA core: ") + what + " failed: " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
}

const void* kernel_for(int precision) {
  if (precision == kBf16) return reinterpret_cast<const void*>(&rollout_kernel<Bf16Traits>);
  return reinterpret_cast<const void*>(&rollout_kernel<Tf32Traits>);
}

// Per device and precision: SM count and occupancy (queried once; needs the smem attribute set).
struct DeviceCache {
  bool ready[2] = {false, false};
  int num_sms = 0;
  int blocks_per_sm[2] = {0, 0};
};
constexpr int kMaxDevices = 64;
std::mutex g_cache_mutex;
DeviceCache g_cache[kMaxDevices];

// Makes `device` current for this thread. Not restored afterwards: the Python caller runs inside
// `with torch.cuda.device(device)`, whose exit restores torch's device (restoring from this
// separately linked runtime's point of view could fight torch's).
void use_device(int device) {
  int cur = -1;
  check(cudaGetDevice(&cur), "cudaGetDevice");
  if (cur != device) check(cudaSetDevice(device), "cudaSetDevice");
}

const DeviceCache& device_cache(int device, int precision) {
  if (device < 0 || device >= kMaxDevices) throw std::runtime_error("mac CUDA core: bad device index");
  const int pi = precision == kBf16 ? 1 : 0;
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  DeviceCache& c = g_cache[device];
  if (c.ready[pi]) return c;
  int major = 0, minor = 0, coop = 0;
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&c.num_sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  if (major < 8)
    throw std::runtime_error("mac CUDA core: device " + std::to_string(device) + " has compute capability " +
                             std::to_string(major) + "." + std::to_string(minor) +
                             "; the kernels need TF32/bf16 tensor cores (8.0 or newer)");
  if (!coop) throw std::runtime_error("mac CUDA core: device does not support cooperative launches");
  const void* fn = kernel_for(precision);
  check(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes(precision)),
        "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&c.blocks_per_sm[pi], fn, kThreads, smem_bytes(precision)),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  if (c.blocks_per_sm[pi] < 1) throw std::runtime_error("mac CUDA core: the kernel does not fit on an SM of this device");
  c.ready[pi] = true;
  return c;
}

}  // namespace

LaunchInfo launch(const Program& p, int precision, int64_t max_items, int device, uintptr_t stream) {
  if (precision != kTf32 && precision != kBf16) throw std::invalid_argument("precision must be tf32 or bf16");
  use_device(device);
  const DeviceCache& c = device_cache(device, precision);
  LaunchInfo info;
  info.num_sms = c.num_sms;
  info.blocks_per_sm = c.blocks_per_sm[precision == kBf16 ? 1 : 0];
  info.grid = grid_size(max_items, info.num_sms, info.blocks_per_sm);
  info.smem_bytes = smem_bytes(precision);
  Program arg = p;
  void* args[] = {&arg};
  check(cudaLaunchCooperativeKernel(kernel_for(precision), dim3(static_cast<unsigned>(info.grid)), dim3(kThreads), args,
                                    static_cast<size_t>(info.smem_bytes), reinterpret_cast<cudaStream_t>(stream)),
        "cudaLaunchCooperativeKernel");
  return info;
}

KernelInfo kernel_info(int precision, int device) {
  if (precision != kTf32 && precision != kBf16) throw std::invalid_argument("precision must be tf32 or bf16");
  use_device(device);
  const DeviceCache& c = device_cache(device, precision);
  cudaFuncAttributes attr{};
  check(cudaFuncGetAttributes(&attr, kernel_for(precision)), "cudaFuncGetAttributes");
  KernelInfo k;
  k.num_regs = attr.numRegs;
  k.local_bytes = static_cast<int>(attr.localSizeBytes);
  k.static_smem_bytes = static_cast<int>(attr.sharedSizeBytes);
  k.dynamic_smem_bytes = smem_bytes(precision);
  k.max_threads = attr.maxThreadsPerBlock;
  k.blocks_per_sm = c.blocks_per_sm[precision == kBf16 ? 1 : 0];
  k.num_sms = c.num_sms;
  k.ptx_version = attr.ptxVersion;
  k.binary_version = attr.binaryVersion;
  return k;
}

}  // namespace cuda
}  // namespace mac
