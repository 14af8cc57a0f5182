// Host emulation of the CUDA core's program (cuda/program.h), for tests on machines without a GPU.
//
// It executes the SAME phases, ops, work items, workspace regions and element functions
// (gather_col / src_row_stats / src_elem / epilogue_* / merge_row_stats / argmax / reward_and_mask /
// philox_normal4) as the kernel, with the GEMM operands rounded exactly as the kernel stages them
// (round_tf32 / round_bf16). What it does not reproduce is the order of the float32 additions
// inside a tensor-core GEMM and inside a warp reduction (sequential here), i.e. only rounding-level
// differences. Every memory access is bounds-checked against the caller's ranges.
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_core.h"
#include "mac/kernel_math.h"
#include "mac/philox.h"
#include "program.h"
#include "tiling.h"

namespace mac {
namespace cuda {
namespace {

class Checker {
 public:
  Checker(const std::vector<Range>& readable, const std::vector<Range>& writable)
      : readable_(readable), writable_(writable) {}
  void read(const void* p, int64_t n, const char* what) const { check(readable_, p, n, what, "read"); }
  void write(const void* p, int64_t n, const char* what) const { check(writable_, p, n, what, "write"); }

 private:
  static void check(const std::vector<Range>& ranges, const void* p, int64_t n, const char* what, const char* how) {
    if (n <= 0) return;
    const uintptr_t lo = reinterpret_cast<uintptr_t>(p);
    const uintptr_t hi = lo + static_cast<uintptr_t>(n) * 4;  // every buffer holds 4-byte elements
    for (const Range& r : ranges)
      if (lo >= r.first && hi <= r.second) return;
    throw std::out_of_range(std::string("emulated kernel would ") + how + " out of bounds: " + what);
  }
  const std::vector<Range>& readable_;
  const std::vector<Range>& writable_;
};

float round_operand(float x, int precision) {
  if (precision == kTf32) return round_tf32(x);
  if (precision == kBf16) return round_bf16(x);
  return x;
}

void check_src_row(const Src& a, int r, const Checker& ck) {
  if (a.kind == kSrcNorm) {
    ck.read(a.stats + static_cast<int64_t>(r) * a.tiles * 2, static_cast<int64_t>(a.tiles) * 2, "LayerNorm statistics");
    ck.read(a.x + static_cast<int64_t>(r) * a.K, a.K, "hidden activations");
    ck.read(a.ln_w, a.K, "LayerNorm weight");
    ck.read(a.ln_b, a.K, "LayerNorm bias");
    return;
  }
  for (int s = 0; s < 3; ++s) {
    if (a.seg_w[s] == 0) continue;
    const int row = a.seg_mod[s] > 0 ? r % a.seg_mod[s] : r;
    ck.read(a.seg[s] + static_cast<int64_t>(row) * a.seg_w[s], a.seg_w[s], "gathered input");
  }
}

void gemm_item(const Op& op, int item, int precision, const Checker& ck) {
  const int tm = item / op.tiles_n, tn = item - tm * op.tiles_n;
  const int m0 = tm * kBM, n0 = tn * kBN;
  const int K = op.a.K;
  const int ncols = (op.n_out - n0) < kBN ? (op.n_out - n0) : kBN;
  std::vector<float> wt(static_cast<size_t>(ncols) * K), arow(static_cast<size_t>(K)), v(static_cast<size_t>(ncols));
  for (int c = 0; c < ncols; ++c) {
    const float* w = op.w + static_cast<int64_t>(n0 + c) * K;
    ck.read(w, K, "weight");
    for (int k = 0; k < K; ++k) wt[static_cast<size_t>(c) * K + k] = round_operand(w[k], precision);
  }
  ck.read(op.bias + n0, ncols, "bias");
  const int m1 = (op.M - m0) < kBM ? op.M : m0 + kBM;
  for (int r = m0; r < m1; ++r) {
    check_src_row(op.a, r, ck);
    float mean, rstd;
    src_row_stats(op.a, r, mean, rstd);
    for (int k = 0; k < K; ++k) arow[static_cast<size_t>(k)] = round_operand(src_elem(op.a, r, k, mean, rstd), precision);
    float* const yrow = op.y + static_cast<int64_t>(r) * op.ldy;
    ck.write(yrow + n0, ncols, "layer output");
    if (op.residual) ck.read(op.residual + static_cast<int64_t>(r) * op.ldy + n0, ncols, "residual");
    for (int c = 0; c < ncols; ++c) {
      float acc = 0.f;
      const float* w = &wt[static_cast<size_t>(c) * K];
      for (int k = 0; k < K; ++k) acc += arow[static_cast<size_t>(k)] * w[k];
      if (op.kind == kOpGemmHidden) {
        v[static_cast<size_t>(c)] = epilogue_hidden(acc, op.bias[n0 + c]);
        yrow[n0 + c] = v[static_cast<size_t>(c)];
      } else {
        yrow[n0 + c] = epilogue_out(op, acc, r, n0 + c);
      }
    }
    if (op.kind == kOpGemmHidden) {
      float s = 0.f;
      for (int c = 0; c < ncols; ++c) s += v[static_cast<size_t>(c)];
      const float mu = s / static_cast<float>(ncols);
      float q = 0.f;
      for (int c = 0; c < ncols; ++c) {
        const float d = v[static_cast<size_t>(c)] - mu;
        q += d * d;
      }
      float* const st = op.stats_out + (static_cast<int64_t>(r) * op.tiles_n + tn) * 2;
      ck.write(st, 2, "LayerNorm statistics");
      st[0] = mu;
      st[1] = q;
    }
  }
}

float row_dot(const Src& a, int r, const float* w, const Checker& ck) {
  check_src_row(a, r, ck);
  ck.read(w, a.K, "head weight");
  float mean, rstd;
  src_row_stats(a, r, mean, rstd);
  float s = 0.f;
  for (int k = 0; k < a.K; ++k) s += src_elem(a, r, k, mean, rstd) * w[k];
  return s;
}

void select_item(const Op& op, int item, const Checker& ck) {
  ck.read(op.bias, 1, "critic head bias");
  for (int warp = 0; warp < kWarps; ++warp) {
    const int b = item * kWarps + warp;
    if (b >= op.B) return;
    ArgMax best = argmax_init(row_dot(op.a, b, op.w, ck) + op.bias[0], 0);
    for (int i = 1; i < op.N; ++i) argmax_update(best, row_dot(op.a, i * op.B + b, op.w, ck) + op.bias[0], i);
    const float* c = op.cand + (static_cast<int64_t>(best.index) * op.B + b) * op.C;
    float* o = op.out_chunk + static_cast<int64_t>(b) * op.C;
    ck.read(c, op.C, "candidates");
    ck.write(o, op.C, "chosen chunks");
    for (int j = 0; j < op.C; ++j) o[j] = c[j];
    ck.write(op.out_q + b, 1, "chosen q");
    op.out_q[b] = best.value;
    if (op.out_index) {
      ck.write(op.out_index + b, 2, "chosen index");  // int64: two 4-byte units
      op.out_index[b] = best.index;
    }
  }
}

void reward_mask_item(const Op& op, int item, const Checker& ck) {
  for (int warp = 0; warp < kWarps; ++warp) {
    const int b = item * kWarps + warp;
    if (b >= op.B) return;
    float rew = 0.f, logit = 0.f;
    if (op.has_reward) {
      ck.read(op.bias, 1, "reward head bias");
      rew = row_dot(op.a, b, op.w, ck) + op.bias[0];
    }
    if (op.has_success) {
      ck.read(op.bias2, 1, "success head bias");
      logit = row_dot(op.a2, b, op.w2, ck) + op.bias2[0];
    }
    float r, m;
    reward_and_mask(op.has_reward != 0, op.has_success != 0, rew, logit, r, m);
    ck.write(op.out_r + b, 1, "rewards");
    ck.write(op.out_m + b, 1, "masks");
    op.out_r[b] = r;
    op.out_m[b] = m;
  }
}

void noise_item(const Op& op, int item, const Checker& ck) {
  for (int t = 0; t < kThreads; ++t) {
    const int64_t block = static_cast<int64_t>(item) * kThreads + t;
    if (block >= ceil_div(op.count, 4)) return;
    float z[4];
    philox_normal4(op.seed, static_cast<uint64_t>(block), z);
    for (int e = 0; e < 4; ++e) {
      const int64_t i = block * 4 + e;
      if (i < op.count) {
        ck.write(op.dst + i, 1, "noise");
        op.dst[i] = z[e];
      }
    }
  }
}

void copy_item(const Op& op, int item, const Checker& ck) {
  for (int t = 0; t < kThreads; ++t) {
    const int64_t i = static_cast<int64_t>(item) * kThreads + t;
    if (i >= op.count) return;
    ck.read(op.src + i, 1, "copy source");
    ck.write(op.dst + i, 1, "copy destination");
    op.dst[i] = op.src[i];
  }
}

}  // namespace

void emulate(const Program& p, int precision, const std::vector<Range>& readable, const std::vector<Range>& writable) {
  if (precision != kTf32 && precision != kBf16 && precision != kFp32Emulated)
    throw std::invalid_argument("precision must be tf32, bf16 or fp32");
  const Checker ck(readable, writable);
  const int phases = total_phases(p);
  for (int ph = 0; ph < phases; ++ph) {
    const PhaseOps ops = phase_ops(p, ph);
    for (int j = 0; j < ops.n; ++j) {
      const Op op = make_op(p, ops.slot[j], ops.layer[j], ops.k);
      for (int it = 0; it < op.items; ++it) {
        switch (op.kind) {
          case kOpGemmHidden:
          case kOpGemmOut: gemm_item(op, it, precision, ck); break;
          case kOpSelect: select_item(op, it, ck); break;
          case kOpRewardMask: reward_mask_item(op, it, ck); break;
          case kOpNoise: noise_item(op, it, ck); break;
          default: copy_item(op, it, ck); break;
        }
      }
    }
  }
}

}  // namespace cuda
}  // namespace mac
