// Compiled once per instruction set (MAC_ISA_NAME = generic | avx2 | avx512); see CMakeLists.txt.
// Every symbol lives in mac::cpu::MAC_ISA_NAME; csrc/cpu/dispatch.cpp picks the copy at run time.
//
// Design (see /work/shared/DESIGN.md, "Performance plan"):
//  * Activations of a tile of rows are kept FEATURE-MAJOR: element (feature f, row r) at
//    X[f * Mp + r], Mp = the tile's row count rounded up to the SIMD width. The micro-kernel then
//    vectorises over rows and broadcasts weights straight from the torch layout (out, in) row-major:
//        Y[o][r..r+R) += W[o][k] * X[k][r..r+R)
//    so the weights are read in place, never packed or copied (nothing can go stale, nothing to
//    rebuild per call), bias + GELU are applied on the accumulators, and LayerNorm (a reduction over
//    features, i.e. across rows of this layout) is a vertical, fully vectorised pass over the tile
//    while it sits in L2.
//  * Depth-first fusion: a tile goes through every layer of the actor, the clip, every layer of the
//    critic and the argmax before the next tile starts. Best-of-N tiles hold whole candidate groups
//    (state b, candidate i) -> row (b - b0) * N + i, so the argmax is tile-local, and the critic's
//    input [s, g, c] is the actor's input [s, g, z] with z overwritten by the clipped candidates.
//  * Parallelism: with enough tiles every OpenMP thread runs whole tiles (dynamic schedule, one
//    workspace per thread); with few tiles (small batches, e.g. evaluation with B = 1) all threads
//    share one tile and split each layer's output columns, with a barrier between layers.
#include <algorithm>
#include <initializer_list>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "mac/cpu_core.h"
#include "mac/kernel_math.h"
#include "mac/philox.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#ifndef MAC_ISA_NAME
#error "kernels_isa.cpp must be compiled with -DMAC_ISA_NAME=<isa>"
#endif

// ------------------------------------------------------------------------------ SIMD vector type
#if defined(__GNUC__) || defined(__clang__)
#if defined(__AVX512F__)
#define MAC_VW 16
#elif defined(__AVX2__) || defined(__AVX__)
#define MAC_VW 8
#else
#define MAC_VW 4
#endif
namespace mac {
namespace cpu {
namespace MAC_ISA_NAME {
typedef float vf __attribute__((vector_size(MAC_VW * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(MAC_VW * sizeof(float))));
}  // namespace MAC_ISA_NAME
}  // namespace cpu

inline namespace MAC_MATH_NS {
// The shared math (mac/kernel_math.h) on this copy's vector type.
template <>
struct Lanes<cpu::MAC_ISA_NAME::vf> {
  using V = cpu::MAC_ISA_NAME::vf;
  using Int = cpu::MAC_ISA_NAME::vi;
  static MAC_FORCEINLINE Int as_int(V x) {
    Int i;
    std::memcpy(&i, &x, sizeof i);
    return i;
  }
  static MAC_FORCEINLINE V as_float(Int i) {
    V x;
    std::memcpy(&x, &i, sizeof x);
    return x;
  }
  static MAC_FORCEINLINE V splat(float v) { return V{} + v; }
  static MAC_FORCEINLINE V min(V a, V b) { return a > b ? b : a; }
  static MAC_FORCEINLINE V max(V a, V b) { return a < b ? b : a; }
};
}  // namespace MAC_MATH_NS
}  // namespace mac
#else
#define MAC_VW 1
namespace mac {
namespace cpu {
namespace MAC_ISA_NAME {
using vf = float;
using vi = int32_t;
}  // namespace MAC_ISA_NAME
}  // namespace cpu
}  // namespace mac
#endif

namespace mac {
namespace cpu {
namespace MAC_ISA_NAME {
namespace {

constexpr int VW = MAC_VW;
// Micro-tile: kOR output features x (up to kRV * VW) rows, kOR * kRV accumulators.
#if MAC_VW == 16
constexpr int kOR = 8;
constexpr int kRV = 3;   // 24 zmm accumulators + 3 inputs + 1 broadcast
constexpr int kTileRows = 96;
#elif MAC_VW == 8
constexpr int kOR = 6;
constexpr int kRV = 2;   // 12 ymm accumulators + 2 inputs + 1 broadcast (16 registers)
constexpr int kTileRows = 64;
#elif MAC_VW == 4
constexpr int kOR = 4;
constexpr int kRV = 2;   // 8 xmm accumulators
constexpr int kTileRows = 48;
#else
constexpr int kOR = 4;
constexpr int kRV = 2;
constexpr int kTileRows = 32;
#endif

using L = Lanes<vf>;

MAC_FORCEINLINE vf vload(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
MAC_FORCEINLINE void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
MAC_FORCEINLINE vf vsplat(float x) { return L::splat(x); }

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// ------------------------------------------------------------------------------ aligned buffers
struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<float[], FreeDeleter>;

Buffer alloc_floats(size_t n) {
  size_t bytes = (std::max<size_t>(n, 1) * sizeof(float) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, bytes);
  return Buffer(static_cast<float*>(p));
}

// ------------------------------------------------------------------------------ teams
// A team is the set of threads working on one tile: either one thread (tile-parallel mode) or
// all threads of the parallel region (column-parallel mode).
struct Team {
  int rank = 0;
  int size = 1;
  void barrier() const {
#ifdef _OPENMP
    if (size > 1) {
#pragma omp barrier
    }
#endif
  }
  // [begin, end) of `n` items for this rank.
  int begin(int n) const { return static_cast<int>(static_cast<long long>(n) * rank / size); }
  int end(int n) const { return static_cast<int>(static_cast<long long>(n) * (rank + 1) / size); }
};

inline int thread_rank() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// ------------------------------------------------------------------------------ micro-kernel
// Y[j][r] = act(bias[j] + sum_k W[j*K + k] * X[k*ldx + r]) for j < OR, r < RV*VW.
// `prefetch` (or null): the next weight block (OR * K contiguous floats), pulled towards L2 while
// this block is computed (the hardware streamer stops at 4 KiB pages, i.e. at every weight row).
template <int OR, int RV, bool kGelu>
#if defined(__GNUC__)
__attribute__((noinline))
#endif
void micro_kernel(const float* __restrict X, size_t ldx, const float* __restrict W, int K,
                  const float* __restrict bias, float* __restrict Y, size_t ldy,
                  const float* prefetch) {
  vf acc[OR][RV];
#pragma GCC unroll 8
  for (int j = 0; j < OR; ++j) {
    const vf b = vsplat(bias[j]);
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) acc[j][v] = b;
  }
  const float* w[OR];
#pragma GCC unroll 8
  for (int j = 0; j < OR; ++j) w[j] = W + static_cast<size_t>(j) * K;
  for (int k = 0; k < K; ++k) {
#if defined(__GNUC__)
    if (prefetch) __builtin_prefetch(prefetch + static_cast<size_t>(k) * OR, 0, 2);
#endif
    const float* xk = X + static_cast<size_t>(k) * ldx;
    vf x[RV];
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) x[v] = vload(xk + v * VW);
#pragma GCC unroll 8
    for (int j = 0; j < OR; ++j) {
      const float wj = w[j][k];
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) acc[j][v] += x[v] * wj;
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < OR; ++j) {
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) {
      vf a = acc[j][v];
      if (kGelu) a = gelu_tanh(a);
      vstore(Y + j * ldy + v * VW, a);
    }
  }
}

using MicroFn = void (*)(const float*, size_t, const float*, int, const float*, float*, size_t,
                         const float*);

template <int OR, bool kGelu>
MicroFn pick_rv(int rv) {
  switch (rv) {
    case 1: return &micro_kernel<OR, 1, kGelu>;
    case 2: return &micro_kernel<OR, 2, kGelu>;
    default: break;
  }
  if constexpr (kRV >= 3) return &micro_kernel<OR, (kRV >= 3 ? 3 : 1), kGelu>;
  return &micro_kernel<OR, 1, kGelu>;
}

template <bool kGelu>
MicroFn pick_micro(int orem, int rv) {
  switch (orem) {
    case 1: return pick_rv<1, kGelu>(rv);
    case 2: return pick_rv<2, kGelu>(rv);
    case 3: return pick_rv<3, kGelu>(rv);
    case 4: return pick_rv<4, kGelu>(rv);
    default: break;
  }
  if constexpr (kOR >= 8) {
    switch (orem) {
      case 5: return pick_rv<5, kGelu>(rv);
      case 6: return pick_rv<6, kGelu>(rv);
      case 7: return pick_rv<7, kGelu>(rv);
      default: return pick_rv<(kOR >= 8 ? 8 : 4), kGelu>(rv);
    }
  } else if constexpr (kOR >= 6) {
    switch (orem) {
      case 5: return pick_rv<5, kGelu>(rv);
      default: return pick_rv<(kOR >= 6 ? 6 : 4), kGelu>(rv);
    }
  }
  return pick_rv<4, kGelu>(rv);
}

// Row-vector blocks of a tile: greedy kRV, but 4 -> 2 + 2 (one 3 + 1 split wastes a kernel).
inline int next_rv(int remaining) {
  if (remaining == 4 && kRV == 3) return 2;
  return remaining < kRV ? remaining : kRV;
}

// One dense layer on a feature-major tile: Y[o][r] = act(b[o] + sum_k W[o][k] X[k][r]).
// The team splits the output features (in kOR blocks).
void dense_layer(const Layer& layer, const float* X, float* Y, int Mp, const Team& team, bool gelu) {
  const int K = layer.in;
  const int nob = (layer.out + kOR - 1) / kOR;
  const int nv = Mp / VW;
  const int ob0 = team.begin(nob), ob1 = team.end(nob);
  for (int ob = ob0; ob < ob1; ++ob) {
    const int o0 = ob * kOR;
    const int orem = std::min(kOR, layer.out - o0);
    const float* W = layer.weight + static_cast<size_t>(o0) * K;
    const float* b = layer.bias + o0;
    float* y = Y + static_cast<size_t>(o0) * Mp;
    const float* next = ob + 1 < ob1 ? W + static_cast<size_t>(kOR) * K : nullptr;
    for (int v = 0; v < nv;) {
      const int rv = next_rv(nv - v);
      MicroFn fn = gelu ? pick_micro<true>(orem, rv) : pick_micro<false>(orem, rv);
      fn(X + v * VW, static_cast<size_t>(Mp), W, K, b, y + v * VW, static_cast<size_t>(Mp),
         v == 0 ? next : nullptr);
      v += rv;
    }
  }
}

// LayerNorm over the features of each row of a feature-major tile, in place. Team splits rows.
void layer_norm_tile(const Layer& layer, float* Y, int Mp, const Team& team) {
  const int n = layer.out;
  const int nv = Mp / VW;
  const float inv_n = 1.f / static_cast<float>(n);
  (void)inv_n;
  const float* g = layer.norm_weight;
  const float* bb = layer.norm_bias;
  for (int v = team.begin(nv); v < team.end(nv); ++v) {
    float* y = Y + v * VW;
    // Two-pass mean / variance; 4 partial sums for instruction-level parallelism.
    vf s0 = vsplat(0.f), s1 = s0, s2 = s0, s3 = s0;
    int o = 0;
    for (; o + 4 <= n; o += 4) {
      s0 += vload(y + static_cast<size_t>(o) * Mp);
      s1 += vload(y + static_cast<size_t>(o + 1) * Mp);
      s2 += vload(y + static_cast<size_t>(o + 2) * Mp);
      s3 += vload(y + static_cast<size_t>(o + 3) * Mp);
    }
    for (; o < n; ++o) s0 += vload(y + static_cast<size_t>(o) * Mp);
    const vf mean = ((s0 + s1) + (s2 + s3)) / static_cast<float>(n);
    vf q0 = vsplat(0.f), q1 = q0, q2 = q0, q3 = q0;
    o = 0;
    for (; o + 4 <= n; o += 4) {
      const vf d0 = vload(y + static_cast<size_t>(o) * Mp) - mean;
      const vf d1 = vload(y + static_cast<size_t>(o + 1) * Mp) - mean;
      const vf d2 = vload(y + static_cast<size_t>(o + 2) * Mp) - mean;
      const vf d3 = vload(y + static_cast<size_t>(o + 3) * Mp) - mean;
      q0 += d0 * d0;
      q1 += d1 * d1;
      q2 += d2 * d2;
      q3 += d3 * d3;
    }
    for (; o < n; ++o) {
      const vf d = vload(y + static_cast<size_t>(o) * Mp) - mean;
      q0 += d * d;
    }
    const vf var = ((q0 + q1) + (q2 + q3)) / static_cast<float>(n);
    float var_s[VW], rstd_s[VW];
    std::memcpy(var_s, &var, sizeof var_s);
    for (int l = 0; l < VW; ++l) rstd_s[l] = layer_norm_rstd(var_s[l]);
    vf rstd;
    std::memcpy(&rstd, rstd_s, sizeof rstd);
    for (o = 0; o < n; ++o) {
      float* p = y + static_cast<size_t>(o) * Mp;
      vstore(p, layer_norm_apply(vload(p), mean, rstd, g[o], bb[o]));
    }
  }
}

// ------------------------------------------------------------------------------ bfloat16 mode
// Opt-in (Options::bf16), AVX512-BF16 copy only: hidden-to-hidden layers (all but the first layer
// and the head) take bf16 inputs and weights and accumulate in float32 with vdpbf16ps (two
// products per lane per instruction). Weights are converted per call (round to nearest even) into
// (out, Kp) bf16 rows, Kp = in rounded up to even, so a 32-bit broadcast gives the pair
// (W[o][2p], W[o][2p+1]); activations are stored as pairs per row: Xb[(p * Mp + r) * 2 + (k & 1)].
#if defined(__AVX512BF16__) && MAC_VW == 16
#define MAC_HAVE_BF16 1
#endif

struct FreeDeleter16 {
  void operator()(uint16_t* p) const { std::free(p); }
};
using Buffer16 = std::unique_ptr<uint16_t[], FreeDeleter16>;

Buffer16 alloc_u16(size_t n) {
  size_t bytes = (std::max<size_t>(n, 1) * sizeof(uint16_t) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, bytes);
  return Buffer16(static_cast<uint16_t*>(p));
}

// float -> bfloat16, round to nearest even (NaN stays NaN).
inline uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// A network as one call runs it: the float32 layers, plus bf16 copies of the weights of the
// layers that run in bf16 (empty when the bf16 mode is off).
struct PreparedNet {
  const Net* net = nullptr;
  std::vector<Buffer16> wb;  // per layer (null if that layer runs in float32)
  std::vector<int> kp;       // per layer: in rounded up to even
  bool empty() const { return net == nullptr || net->empty(); }
  bool bf16_layer(size_t l) const { return l < wb.size() && wb[l] != nullptr; }
};

#ifdef MAC_HAVE_BF16
typedef uint32_t u32_alias __attribute__((may_alias));

void convert_rows_bf16(const float* W, int out, int in, uint16_t* Wb, int Kp, int r0, int r1) {
  for (int o = r0; o < r1; ++o) {
    const float* w = W + static_cast<size_t>(o) * in;
    uint16_t* d = Wb + static_cast<size_t>(o) * Kp;
    int k = 0;
    for (; k + 32 <= in; k += 32) {
      const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(w + k + 16), _mm512_loadu_ps(w + k));
      _mm512_storeu_si512(d + k, (__m512i)b);
    }
    for (; k < in; ++k) d[k] = to_bf16(w[k]);
    for (; k < Kp; ++k) d[k] = 0;
  }
  (void)out;
}

template <int OR, int RV, bool kGelu>
__attribute__((noinline)) void micro_kernel_bf16(const uint16_t* __restrict Xb, size_t ldx,
                                                 const uint16_t* __restrict Wb, int Kp,
                                                 const float* __restrict bias, float* __restrict Y,
                                                 size_t ldy) {
  __m512 acc[OR][RV];
#pragma GCC unroll 8
  for (int j = 0; j < OR; ++j) {
    const __m512 b = _mm512_set1_ps(bias[j]);
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) acc[j][v] = b;
  }
  const u32_alias* w[OR];
#pragma GCC unroll 8
  for (int j = 0; j < OR; ++j) w[j] = reinterpret_cast<const u32_alias*>(Wb + static_cast<size_t>(j) * Kp);
  const int np = Kp / 2;
  for (int p = 0; p < np; ++p) {
    const uint16_t* xp = Xb + static_cast<size_t>(p) * ldx;
    __m512bh x[RV];
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) x[v] = (__m512bh)_mm512_loadu_si512(xp + v * 32);
#pragma GCC unroll 8
    for (int j = 0; j < OR; ++j) {
      const __m512bh wj = (__m512bh)_mm512_set1_epi32(static_cast<int>(w[j][p]));
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) acc[j][v] = _mm512_dpbf16_ps(acc[j][v], x[v], wj);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < OR; ++j) {
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) {
      vf a;
      std::memcpy(&a, &acc[j][v], sizeof a);
      if (kGelu) a = gelu_tanh(a);
      vstore(Y + j * ldy + v * VW, a);
    }
  }
}

using MicroBf16Fn = void (*)(const uint16_t*, size_t, const uint16_t*, int, const float*, float*, size_t);

template <int OR>
MicroBf16Fn pick_bf16_rv(int rv) {
  switch (rv) {
    case 1: return &micro_kernel_bf16<OR, 1, true>;
    case 2: return &micro_kernel_bf16<OR, 2, true>;
    default: return &micro_kernel_bf16<OR, 3, true>;
  }
}

MicroBf16Fn pick_bf16(int orem, int rv) {
  switch (orem) {
    case 1: return pick_bf16_rv<1>(rv);
    case 2: return pick_bf16_rv<2>(rv);
    case 3: return pick_bf16_rv<3>(rv);
    case 4: return pick_bf16_rv<4>(rv);
    case 5: return pick_bf16_rv<5>(rv);
    case 6: return pick_bf16_rv<6>(rv);
    case 7: return pick_bf16_rv<7>(rv);
    default: return pick_bf16_rv<8>(rv);
  }
}

// Hidden layer (bias + GELU) from bf16 pair-layout inputs.
void dense_layer_bf16(const Layer& layer, const uint16_t* Wb, int Kp, const uint16_t* Xb, float* Y,
                      int Mp, const Team& team) {
  const int nob = (layer.out + kOR - 1) / kOR;
  const int nv = Mp / VW;
  for (int ob = team.begin(nob); ob < team.end(nob); ++ob) {
    const int o0 = ob * kOR;
    const int orem = std::min(kOR, layer.out - o0);
    for (int v = 0; v < nv;) {
      const int rv = next_rv(nv - v);
      pick_bf16(orem, rv)(Xb + static_cast<size_t>(v) * VW * 2, static_cast<size_t>(Mp) * 2,
                          Wb + static_cast<size_t>(o0) * Kp, Kp, layer.bias + o0,
                          Y + static_cast<size_t>(o0) * Mp + v * VW, static_cast<size_t>(Mp));
      v += rv;
    }
  }
}

// Feature-major float32 [K][Mp] -> bf16 pairs [Kp/2][Mp][2] (the odd tail feature padded with 0).
// (GCC 12 warns about the intrinsics' own _mm512_undefined_* pass-through operands.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
void pack_pairs_bf16(const float* Y, int K, int Mp, uint16_t* Xb, const Team& team) {
  const int np = (K + 1) / 2;
  for (int p = team.begin(np); p < team.end(np); ++p) {
    const float* a = Y + static_cast<size_t>(2 * p) * Mp;
    const float* b = 2 * p + 1 < K ? a + Mp : nullptr;
    uint16_t* d = Xb + static_cast<size_t>(p) * Mp * 2;
    for (int r = 0; r < Mp; r += 16) {
      const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(a + r)));
      __m512i hi = _mm512_setzero_si512();
      if (b) hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(b + r)));
      _mm512_storeu_si512(d + static_cast<size_t>(r) * 2, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}
#pragma GCC diagnostic pop
#endif  // MAC_HAVE_BF16

// Bf16 weight copies of the hidden-to-hidden layers (parallel over all threads), or nothing.
PreparedNet prepare_net(const Net& net, bool bf16, int threads) {
  PreparedNet pn;
  pn.net = &net;
  if (!bf16 || net.empty()) return pn;
#ifdef MAC_HAVE_BF16
  const size_t nl = net.layers.size();
  pn.wb.resize(nl);
  pn.kp.assign(nl, 0);
  for (size_t l = 1; l + 1 < nl; ++l) {
    const Layer& L = net.layers[l];
    pn.kp[l] = (L.in + 1) / 2 * 2;
    pn.wb[l] = alloc_u16(static_cast<size_t>(L.out) * pn.kp[l]);
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    const Team all{thread_rank(), team_size()};
    for (size_t l = 1; l + 1 < nl; ++l) {
      const Layer& L = net.layers[l];
      convert_rows_bf16(L.weight, L.out, L.in, pn.wb[l].get(), pn.kp[l], all.begin(L.out), all.end(L.out));
    }
  }
#else
  (void)threads;
#endif
  return pn;
}

// ------------------------------------------------------------------------------ workspaces
struct Work {
  int Mp = 0;
  Buffer in, h0, h1, out;
  Buffer16 xb;  // bf16 pair-layout activations (bf16 mode)
  float* aux0 = nullptr;  // Mp floats (reward outputs)
  float* aux1 = nullptr;  // Mp floats (success logits)
  Buffer aux;
};

struct Dims {
  int max_in = 1, max_hidden = 1, max_out = 1;
  void add(const Net& n) {
    if (n.empty()) return;
    max_in = std::max(max_in, n.in_dim());
    max_hidden = std::max(max_hidden, n.max_hidden());
    max_out = std::max(max_out, n.out_dim());
  }
};

void alloc_work(Work& w, const Dims& d, int Mp) {
  w.Mp = Mp;
  w.in = alloc_floats(static_cast<size_t>(d.max_in) * Mp);
  w.h0 = alloc_floats(static_cast<size_t>(d.max_hidden) * Mp);
  w.h1 = alloc_floats(static_cast<size_t>(d.max_hidden) * Mp);
  w.out = alloc_floats(static_cast<size_t>(d.max_out) * Mp);
  w.xb = alloc_u16(static_cast<size_t>(d.max_hidden + 1) * Mp);
  w.aux = alloc_floats(static_cast<size_t>(2) * Mp);
  w.aux0 = w.aux.get();
  w.aux1 = w.aux.get() + Mp;
}

// Whole network on a feature-major tile: X [in][Mp] -> Yout [out][Mp].
void forward_tile(const PreparedNet& pn, const float* X, float* Yout, Work& w, int Mp, const Team& team) {
  const Net& net = *pn.net;
  const float* x = X;
  const size_t nl = net.layers.size();
  for (size_t l = 0; l < nl; ++l) {
    const Layer& layer = net.layers[l];
    const bool last = l + 1 == nl;
    float* y = last ? Yout : (x == w.h0.get() ? w.h1.get() : w.h0.get());
#ifdef MAC_HAVE_BF16
    if (pn.bf16_layer(l)) {
      dense_layer_bf16(layer, pn.wb[l].get(), pn.kp[l], w.xb.get(), y, Mp, team);
    } else
#endif
      dense_layer(layer, x, y, Mp, team, !last);
    team.barrier();
    if (!last) {
      layer_norm_tile(layer, y, Mp, team);
#ifdef MAC_HAVE_BF16
      if (pn.bf16_layer(l + 1)) {
        team.barrier();
        pack_pairs_bf16(y, layer.out, Mp, w.xb.get(), team);
      }
#endif
      team.barrier();
    }
    x = y;
  }
}

// Runs f(tile, work, team) for every tile: tile-parallel with one workspace per thread, or, with
// fewer than two tiles per thread, every thread on every tile (column-parallel). Must be called
// by all threads of the parallel region; ends with all threads synchronised.
template <class F>
void for_each_tile(int ntiles, bool team_mode, std::vector<Work>& works, F&& f) {
  const int rank = thread_rank(), size = team_size();
  if (team_mode || size == 1) {
    const Team team{rank, size};
    for (int t = 0; t < ntiles; ++t) f(t, works[0], team);
    team.barrier();
  } else {
    Work& w = works[static_cast<size_t>(rank)];
    const Team solo{0, 1};
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
    for (int t = 0; t < ntiles; ++t) f(t, w, solo);
  }
}

// Matmul FLOPs of one row through `net`.
double net_flops_per_row(const Net& net) {
  double f = 0.0;
  for (const Layer& l : net.layers) f += 2.0 * l.in * l.out;
  return f;
}

// How a phase of `ntiles` tiles is parallelised. Column-parallel ("team") mode needs a barrier per
// layer, so it is only used when a layer of a tile is worth at least kTeamMinFlops (~10 us);
// otherwise threads beyond the number of tiles just idle. Small problems run on one thread.
constexpr double kTeamMinFlops = 1e6;
constexpr double kParallelMinFlops = 1e8;  // ~1 ms on one core

bool use_team_mode(const Options& o, int ntiles, int threads, double flops_per_layer_tile) {
  if (o.parallel != Parallel::automatic) return o.parallel == Parallel::columns && threads > 1;
  return threads > 1 && ntiles < 2 * threads && flops_per_layer_tile >= kTeamMinFlops;
}

int effective_threads(const Options& o, double total_flops) {
  const int threads = o.num_threads < 1 ? 1 : o.num_threads;
  if (o.parallel != Parallel::automatic) return threads;
  return total_flops < kParallelMinFlops ? 1 : threads;
}

double flops_per_layer(std::initializer_list<const Net*> nets, int rows) {
  double f = 0.0;
  size_t layers = 0;
  for (const Net* n : nets) {
    if (n->empty()) continue;
    f += net_flops_per_row(*n);
    layers += n->layers.size();
  }
  return layers ? f * rows / static_cast<double>(layers) : 0.0;
}

// ------------------------------------------------------------------------------ best-of-N tile
struct BonProblem {
  int B, S, G, C, N;
  const float* states;  // (B, S) for this step
  const float* goals;   // (B, G) or null
  const PreparedNet* actor;
  const PreparedNet* critic;
  Noise noise;
  uint64_t noise_offset;  // element offset of this step in the noise tensor / stream
  float* out_chunks;      // (B, C)
  float* out_scores;      // (B,)
  int64_t* out_indices;   // (B,) or null
};

// Fills input rows [r0, r1) of a feature-major tile X [S + G + C][Mp] with (s, g, noise) for
// row r = (b - b0) * N + i; rows >= nrows are zero padding.
void fill_actor_input(const BonProblem& p, int b0, int nrows, int Mp, float* X, int r0, int r1) {
  const int S = p.S, G = p.G, C = p.C, N = p.N;
  float z[1024];
  for (int r = r0; r < r1; ++r) {
    if (r >= nrows) {
      for (int f = 0; f < S + G + C; ++f) X[static_cast<size_t>(f) * Mp + r] = 0.f;
      continue;
    }
    const int b = b0 + r / N, i = r % N;
    const float* s = p.states + static_cast<size_t>(b) * S;
    for (int f = 0; f < S; ++f) X[static_cast<size_t>(f) * Mp + r] = s[f];
    if (G) {
      const float* g = p.goals + static_cast<size_t>(b) * G;
      for (int f = 0; f < G; ++f) X[static_cast<size_t>(S + f) * Mp + r] = g[f];
    }
    const uint64_t e0 = p.noise_offset + (static_cast<uint64_t>(i) * p.B + b) * C;
    float* xz = X + static_cast<size_t>(S + G) * Mp + r;
    if (p.noise.data) {
      const float* zs = p.noise.data + e0;
      for (int c = 0; c < C; ++c) xz[static_cast<size_t>(c) * Mp] = zs[c];
    } else {
      for (int c0 = 0; c0 < C; c0 += 1024) {
        const int cn = std::min(1024, C - c0);
        philox_normal_fill(p.noise.seed, e0 + c0, static_cast<uint64_t>(cn), z);
        for (int c = 0; c < cn; ++c) xz[static_cast<size_t>(c0 + c) * Mp] = z[c];
      }
    }
  }
}

void best_of_n_tile(const BonProblem& p, int tile, int states_per_tile, Work& w, const Team& team) {
  const int b0 = tile * states_per_tile;
  const int nb = std::min(states_per_tile, p.B - b0);
  const int nrows = nb * p.N;
  const int Mp = round_up(nrows, VW);
  const int SG = p.S + p.G, C = p.C;
  float* X = w.in.get();
  // 1. actor input
  fill_actor_input(p, b0, nrows, Mp, X, team.begin(Mp), team.end(Mp));
  team.barrier();
  // 2. actor
  forward_tile(*p.actor, X, w.out.get(), w, Mp, team);
  // 3. candidates = clip(actor); they replace z in the input, giving the critic's [s, g, c]
  for (int c = team.begin(C); c < team.end(C); ++c) {
    const float* a = w.out.get() + static_cast<size_t>(c) * Mp;
    float* xc = X + static_cast<size_t>(SG + c) * Mp;
    for (int r = 0; r < Mp; r += VW) vstore(xc + r, clip_unit(vload(a + r)));
  }
  team.barrier();
  // 4. critic
  forward_tile(*p.critic, X, w.out.get(), w, Mp, team);
  // 5. argmax per state, gather the winner
  const float* q = w.out.get();
  for (int bl = team.begin(nb); bl < team.end(nb); ++bl) {
    const int r0 = bl * p.N;
    ArgMax am = argmax_init(q[r0], 0);
    for (int i = 1; i < p.N; ++i) argmax_update(am, q[r0 + i], i);
    const int b = b0 + bl;
    const int r = r0 + am.index;
    float* chunk = p.out_chunks + static_cast<size_t>(b) * C;
    for (int c = 0; c < C; ++c) chunk[c] = X[static_cast<size_t>(SG + c) * Mp + r];
    p.out_scores[b] = am.value;
    if (p.out_indices) p.out_indices[b] = am.index;
  }
  team.barrier();  // the next tile overwrites the workspace
}

int bon_states_per_tile(int N) { return std::max(1, kTileRows / N); }

// ------------------------------------------------------------------------------ model step tile
struct StepProblem {
  int B, S, G, C;
  const float* states;  // (B, S) s_k
  const float* goals;
  const float* chunks;  // (B, C) a_k
  const PreparedNet* dynamics;
  const PreparedNet* reward;    // may be empty
  const PreparedNet* success;   // may be empty
  float* next_states;   // (B, S) s_{k+1}
  float* rewards;       // (B,)
  float* masks;         // (B,)
};

// X [S (+ G) + C][Mp] = [s, (g,) a] for rows [r0, r1) of the tile starting at state b0.
void fill_state_input(const StepProblem& p, bool with_goal, int b0, int nrows, int Mp, float* X,
                      int r0, int r1) {
  const int S = p.S, G = with_goal ? p.G : 0, C = p.C;
  for (int r = r0; r < r1; ++r) {
    if (r >= nrows) {
      for (int f = 0; f < S + G + C; ++f) X[static_cast<size_t>(f) * Mp + r] = 0.f;
      continue;
    }
    const int b = b0 + r;
    const float* s = p.states + static_cast<size_t>(b) * S;
    for (int f = 0; f < S; ++f) X[static_cast<size_t>(f) * Mp + r] = s[f];
    if (G) {
      const float* g = p.goals + static_cast<size_t>(b) * G;
      for (int f = 0; f < G; ++f) X[static_cast<size_t>(S + f) * Mp + r] = g[f];
    }
    const float* a = p.chunks + static_cast<size_t>(b) * C;
    for (int c = 0; c < C; ++c) X[static_cast<size_t>(S + G + c) * Mp + r] = a[c];
  }
}

void model_step_tile(const StepProblem& p, int tile, Work& w, const Team& team) {
  const int b0 = tile * kTileRows;
  const int nrows = std::min(kTileRows, p.B - b0);
  const int Mp = round_up(nrows, VW);
  float* X = w.in.get();
  const bool has_reward = !p.reward->empty(), has_success = !p.success->empty();
  if (has_reward || has_success) {
    fill_state_input(p, true, b0, nrows, Mp, X, team.begin(Mp), team.end(Mp));
    team.barrier();
    if (has_reward) {
      forward_tile(*p.reward, X, w.out.get(), w, Mp, team);
      if (team.rank == 0) std::memcpy(w.aux0, w.out.get(), sizeof(float) * nrows);
      team.barrier();
    }
    if (has_success) {
      forward_tile(*p.success, X, w.out.get(), w, Mp, team);
      if (team.rank == 0) std::memcpy(w.aux1, w.out.get(), sizeof(float) * nrows);
      team.barrier();
    }
  }
  if (team.rank == 0) {
    for (int r = 0; r < nrows; ++r) {
      float rew, mask;
      reward_and_mask(has_reward, has_success, has_reward ? w.aux0[r] : 0.f,
                      has_success ? w.aux1[r] : 0.f, rew, mask);
      p.rewards[b0 + r] = rew;
      p.masks[b0 + r] = mask;
    }
  }
  // dynamics on [s, a]
  fill_state_input(p, false, b0, nrows, Mp, X, team.begin(Mp), team.end(Mp));
  team.barrier();
  forward_tile(*p.dynamics, X, w.out.get(), w, Mp, team);
  const float* d = w.out.get();
  for (int r = team.begin(nrows); r < team.end(nrows); ++r) {
    const float* s = p.states + static_cast<size_t>(b0 + r) * p.S;
    float* sn = p.next_states + static_cast<size_t>(b0 + r) * p.S;
    for (int j = 0; j < p.S; ++j) sn[j] = s[j] + d[static_cast<size_t>(j) * Mp + r];
  }
  team.barrier();
}

int clamp_threads(int t) { return t < 1 ? 1 : t; }

}  // namespace

// ================================================================================ entry points

Plan plan_best_of_n(const BestOfNArgs& a, const Options& o) {
  Plan plan;
  const int spt = bon_states_per_tile(a.N);
  plan.ntiles_bon = (a.B + spt - 1) / spt;
  const int Mp = round_up(std::min(spt, a.B) * a.N, VW);
  const double per_row = net_flops_per_row(a.actor) + net_flops_per_row(a.critic);
  plan.threads = effective_threads(o, per_row * a.B * a.N);
  plan.team_bon = use_team_mode(o, plan.ntiles_bon, plan.threads, flops_per_layer({&a.actor, &a.critic}, Mp));
  return plan;
}

void best_of_n(const BestOfNArgs& a, const Options& o) {
  const Plan plan = plan_best_of_n(a, o);
  const int spt = bon_states_per_tile(a.N);
  const int ntiles = plan.ntiles_bon;
  const int Mp = round_up(std::min(spt, a.B) * a.N, VW);
  const int threads = plan.threads;
  const bool team_mode = plan.team_bon;
  Dims dims;
  dims.add(a.actor);
  dims.add(a.critic);
  std::vector<Work> works(team_mode ? 1 : static_cast<size_t>(threads));
  for (Work& w : works) alloc_work(w, dims, Mp);
  const PreparedNet actor = prepare_net(a.actor, o.bf16, threads);
  const PreparedNet critic = prepare_net(a.critic, o.bf16, threads);
  BonProblem p{a.B, a.S, a.G, a.C, a.N, a.states, a.goals, &actor, &critic, a.noise, 0,
               a.out_chunks, a.out_scores, a.out_indices};
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    for_each_tile(ntiles, team_mode, works,
                  [&](int t, Work& w, const Team& team) { best_of_n_tile(p, t, spt, w, team); });
  }
}

Plan plan_imagine(const ImagineArgs& a, const Options& o) {
  Plan plan;
  const int spt = bon_states_per_tile(a.N);
  plan.ntiles_bon = (a.B + spt - 1) / spt;
  plan.ntiles_step = (a.B + kTileRows - 1) / kTileRows;
  const int mp_bon = round_up(std::min(spt, a.B) * a.N, VW);
  const int mp_step = round_up(std::min(kTileRows, a.B), VW);
  const double per_state = a.N * (net_flops_per_row(a.actor) + net_flops_per_row(a.critic)) +
                           net_flops_per_row(a.dynamics) + net_flops_per_row(a.reward) +
                           net_flops_per_row(a.success);
  plan.threads = effective_threads(o, per_state * a.B * a.H);
  plan.team_bon = use_team_mode(o, plan.ntiles_bon, plan.threads,
                                flops_per_layer({&a.actor, &a.critic}, mp_bon));
  plan.team_step = use_team_mode(o, plan.ntiles_step, plan.threads,
                                 flops_per_layer({&a.dynamics, &a.reward, &a.success}, mp_step));
  return plan;
}

void imagine(const ImagineArgs& a, const Options& o) {
  const Plan plan = plan_imagine(a, o);
  const int spt = bon_states_per_tile(a.N);
  const int ntiles_bon = plan.ntiles_bon;
  const int ntiles_step = plan.ntiles_step;
  const int mp_bon = round_up(std::min(spt, a.B) * a.N, VW);
  const int mp_step = round_up(std::min(kTileRows, a.B), VW);
  const int threads = plan.threads;
  const bool team_bon = plan.team_bon;
  const bool team_step = plan.team_step;
  Dims dims;
  dims.add(a.actor);
  dims.add(a.critic);
  dims.add(a.dynamics);
  dims.add(a.reward);
  dims.add(a.success);
  const int Mp = std::max(mp_bon, mp_step);
  std::vector<Work> works((team_bon && team_step) ? 1 : static_cast<size_t>(threads));
  for (Work& w : works) alloc_work(w, dims, Mp);
  const PreparedNet actor = prepare_net(a.actor, o.bf16, threads);
  const PreparedNet critic = prepare_net(a.critic, o.bf16, threads);
  const PreparedNet dynamics = prepare_net(a.dynamics, o.bf16, threads);
  const PreparedNet reward = prepare_net(a.reward, o.bf16, threads);
  const PreparedNet success = prepare_net(a.success, o.bf16, threads);
  const size_t BS = static_cast<size_t>(a.B) * a.S, BC = static_cast<size_t>(a.B) * a.C;
  std::memcpy(a.out_states, a.states, sizeof(float) * BS);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    for (int k = 0; k < a.H; ++k) {
      const float* s = a.out_states + k * BS;
      BonProblem p{a.B, a.S, a.G, a.C, a.N, s, a.goals, &actor, &critic, a.noise,
                   static_cast<uint64_t>(k) * a.N * BC, a.out_chunks + k * BC,
                   a.out_q + static_cast<size_t>(k) * a.B, nullptr};
      for_each_tile(ntiles_bon, team_bon, works,
                    [&](int t, Work& w, const Team& team) { best_of_n_tile(p, t, spt, w, team); });
      StepProblem sp{a.B, a.S, a.G, a.C, s, a.goals, a.out_chunks + k * BC, &dynamics,
                     &reward, &success, a.out_states + (k + 1) * BS,
                     a.out_rewards + static_cast<size_t>(k) * a.B,
                     a.out_masks + static_cast<size_t>(k) * a.B};
      for_each_tile(ntiles_step, team_step, works,
                    [&](int t, Work& w, const Team& team) { model_step_tile(sp, t, w, team); });
    }
  }
}

void gelu(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + VW <= n; i += VW) vstore(y + i, gelu_tanh(vload(x + i)));
  if (i < n) {
    float tmp[VW] = {};
    std::memcpy(tmp, x + i, sizeof(float) * (n - i));
    vstore(tmp, gelu_tanh(vload(tmp)));
    std::memcpy(y + i, tmp, sizeof(float) * (n - i));
  }
}

// x (rows, in) row-major -> y (rows, out) row-major.
void mlp_forward(const Net& net, const float* x, float* y, int rows, const Options& o) {
  const int ntiles = (rows + kTileRows - 1) / kTileRows;
  const int Mp = round_up(std::min(rows, kTileRows), VW);
  const int threads = effective_threads(o, net_flops_per_row(net) * rows);
  const bool team_mode = use_team_mode(o, ntiles, threads, flops_per_layer({&net}, Mp));
  Dims dims;
  dims.add(net);
  std::vector<Work> works(team_mode ? 1 : static_cast<size_t>(threads));
  for (Work& w : works) alloc_work(w, dims, Mp);
  const int in = net.in_dim(), out = net.out_dim();
  const PreparedNet pn = prepare_net(net, o.bf16, threads);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    for_each_tile(ntiles, team_mode, works, [&](int t, Work& w, const Team& team) {
      const int r0 = t * kTileRows, nr = std::min(kTileRows, rows - r0);
      const int mp = round_up(nr, VW);
      float* X = w.in.get();
      for (int r = team.begin(mp); r < team.end(mp); ++r)
        for (int f = 0; f < in; ++f)
          X[static_cast<size_t>(f) * mp + r] = r < nr ? x[static_cast<size_t>(r0 + r) * in + f] : 0.f;
      team.barrier();
      forward_tile(pn, X, w.out.get(), w, mp, team);
      for (int r = team.begin(nr); r < team.end(nr); ++r)
        for (int f = 0; f < out; ++f)
          y[static_cast<size_t>(r0 + r) * out + f] = w.out.get()[static_cast<size_t>(f) * mp + r];
      team.barrier();
    });
  }
}

// GFLOP/s of the micro-kernel on an in-cache problem (K = 256, 64 outputs x one tile of rows per
// thread, all in L1/L2): the machine's practical FMA peak for this code.
double gemm_peak_probe(int reps, int num_threads) {
  const int threads = clamp_threads(num_threads);
  const int K = 256, O = 8 * kOR, Mp = round_up(kTileRows, VW);
  struct Bufs {
    Buffer X, W, Y, bias;
  };
  std::vector<Bufs> bufs(static_cast<size_t>(threads));  // allocated outside the parallel region
  for (Bufs& b : bufs) {
    b.X = alloc_floats(static_cast<size_t>(K) * Mp);
    b.W = alloc_floats(static_cast<size_t>(O) * K);
    b.Y = alloc_floats(static_cast<size_t>(O) * Mp);
    b.bias = alloc_floats(O);
    for (int i = 0; i < K * Mp; ++i) b.X[i] = 1e-3f * static_cast<float>(i % 97);
    for (int i = 0; i < O * K; ++i) b.W[i] = 1e-3f * static_cast<float>(i % 89);
  }
  double seconds = 0.0;
  int used = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(max : seconds)
#endif
  {
    Bufs& b = bufs[static_cast<size_t>(thread_rank())];
#ifdef _OPENMP
#pragma omp single
    used = team_size();
#endif
    Layer layer;
    layer.weight = b.W.get();
    layer.bias = b.bias.get();
    layer.in = K;
    layer.out = O;
    const Team solo{0, 1};
    dense_layer(layer, b.X.get(), b.Y.get(), Mp, solo, false);  // warm-up
#ifdef _OPENMP
#pragma omp barrier
#endif
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) dense_layer(layer, b.X.get(), b.Y.get(), Mp, solo, false);
    const auto t1 = std::chrono::steady_clock::now();
    seconds = std::chrono::duration<double>(t1 - t0).count();
  }
  const double flops = 2.0 * K * O * Mp * static_cast<double>(reps) * used;
  return flops / seconds * 1e-9;
}

void philox_block(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  const Philox4 r = philox4x32_10(ctr[0], ctr[1], ctr[2], ctr[3], key[0], key[1]);
  for (int i = 0; i < 4; ++i) out[i] = r.v[i];
}

bool has_bf16() {
#ifdef MAC_HAVE_BF16
  return true;
#else
  return false;
#endif
}

}  // namespace MAC_ISA_NAME
}  // namespace cpu
}  // namespace mac
