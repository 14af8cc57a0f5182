// The per-element / per-row arithmetic of MAC's fused kernels, written once for the CPU backend
// (scalars and SIMD vectors) and the CUDA kernels (__host__ __device__ scalars).
//
//  * gelu_tanh: GELU with the tanh approximation, 0.5 x (1 + tanh(y)), y = sqrt(2/pi)(x + 0.044715 x^3),
//    evaluated through the identity 0.5 (1 + tanh(y)) = 1 / (1 + exp(-2y)), so there is no
//    cancellation in 1 + tanh(y) for y << 0; exp is a Cephes-style polynomial (about 2 ulp).
//  * fast_tanh: tanh(y) = 1 - 2 / (1 + exp(2y)), absolute error below 1e-6 (used where a tanh is
//    wanted on its own; GELU does not need it).
//  * LayerNorm (eps 1e-6, affine): two-pass mean / variance in float32, then
//    y = (x - mean) * rstd * weight + bias with rstd = 1 / sqrt(var + eps).
//  * clip to [-1, 1] (NaN stays NaN, as torch.clamp).
//  * NaN-safe argmax: NaN ranks as -inf; the lowest index wins ties; all-NaN gives index 0.
//  * MAC's reward / mask rule.
//
// Templates are instantiated with T = float (host and device) and, on the CPU, with GCC vector
// types; the type-specific operations (bit casts, select) come from Lanes<T>, which the CPU
// backend specialises for its vector type.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "mac/hd.h"

namespace mac {
inline namespace MAC_MATH_NS {

constexpr float kLayerNormEps = 1e-6f;
constexpr float kGeluBeta = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluKappa = 0.044715f;

// Type-specific primitives. Specialised for float here and for SIMD vectors by the CPU backend.
template <class T>
struct Lanes;

template <>
struct Lanes<float> {
  using Int = int32_t;
  MAC_HD static MAC_FORCEINLINE Int as_int(float x) {
#if defined(__CUDA_ARCH__)
    return __float_as_int(x);
#else
    Int i;
    memcpy(&i, &x, sizeof i);
    return i;
#endif
  }
  MAC_HD static MAC_FORCEINLINE float as_float(Int i) {
#if defined(__CUDA_ARCH__)
    return __int_as_float(i);
#else
    float x;
    memcpy(&x, &i, sizeof x);
    return x;
#endif
  }
  MAC_HD static MAC_FORCEINLINE float splat(float v) { return v; }
  // min / max keep a NaN in the first argument (so fast_exp and friends propagate NaN).
  MAC_HD static MAC_FORCEINLINE float min(float a, float b) { return a > b ? b : a; }
  MAC_HD static MAC_FORCEINLINE float max(float a, float b) { return a < b ? b : a; }
};

MAC_HD MAC_FORCEINLINE float neg_inf() { return Lanes<float>::as_float(static_cast<int32_t>(0xff800000u)); }
MAC_HD MAC_FORCEINLINE bool is_nan(float x) { return x != x; }

// exp(x) for float lanes. Inputs are clamped to [-87, 88] (results 1.6e-38 .. 1.65e38, never
// inf/denormal); relative error about 2 ulp inside that range. Cephes expf polynomial.
template <class T>
MAC_HD MAC_FORCEINLINE T fast_exp(T x) {
  using L = Lanes<T>;
  x = L::max(L::min(x, L::splat(88.f)), L::splat(-87.f));
  // n = round(x / ln 2) by the 1.5 * 2^23 trick; its integer value sits in the low mantissa bits.
  const T t = x * 1.44269504088896341f + 12582912.f;
  const T n = t - 12582912.f;
  T r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  T p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.f;
  // 2^n: n in [-126, 127] after the clamp.
  const typename L::Int ni = L::as_int(t) - 0x4B400000;
  const T scale = L::as_float((ni + 127) << 23);
  return p * scale;
}

// tanh(y) = 1 - 2 / (1 + exp(2y)); absolute error < 1e-6 everywhere (it saturates to +-1).
template <class T>
MAC_HD MAC_FORCEINLINE T fast_tanh(T y) {
  return 1.f - 2.f / (fast_exp(y * 2.f) + 1.f);
}

// GELU, tanh approximation: x * 0.5 * (1 + tanh(y)) = x / (1 + exp(-2 y)).
template <class T>
MAC_HD MAC_FORCEINLINE T gelu_tanh(T x) {
  const T y = x * (x * x * (kGeluBeta * kGeluKappa) + kGeluBeta);
  return x / (fast_exp(y * -2.f) + 1.f);
}

// Candidates are clipped to [-1, 1]; NaN stays NaN (both comparisons are false), as torch.clamp.
template <class T>
MAC_HD MAC_FORCEINLINE T clip_unit(T x) {
  using L = Lanes<T>;
  const T hi = L::splat(1.f), lo = L::splat(-1.f);
  const T y = (x > hi) ? hi : x;  // NaN > 1 is false: NaN is kept
  return (y < lo) ? lo : y;
}

// LayerNorm: 1 / sqrt(var + eps) for one row.
MAC_HD MAC_FORCEINLINE float layer_norm_rstd(float var, float eps = kLayerNormEps) {
  return 1.f / sqrtf((var > 0.f ? var : 0.f) + eps);
}

// y = (x - mean) * rstd * weight + bias
template <class T>
MAC_HD MAC_FORCEINLINE T layer_norm_apply(T x, T mean, T rstd, float weight, float bias) {
  return (x - mean) * (rstd * weight) + bias;
}

// Reference (one row, contiguous) LayerNorm in place, used by scalar / device code.
MAC_HD inline void layer_norm_row(float* x, int n, const float* weight, const float* bias,
                                  float eps = kLayerNormEps) {
  float s = 0.f;
  for (int i = 0; i < n; ++i) s += x[i];
  const float mean = s / static_cast<float>(n);
  float v = 0.f;
  for (int i = 0; i < n; ++i) {
    const float d = x[i] - mean;
    v += d * d;
  }
  const float rstd = layer_norm_rstd(v / static_cast<float>(n), eps);
  for (int i = 0; i < n; ++i) x[i] = layer_norm_apply(x[i], mean, rstd, weight[i], bias[i]);
}

// ---------------------------------------------------------------------------- NaN-safe argmax
// Semantics of torch.argmax(where(isnan(q), -inf, q)): NaN ranks as -inf, the first (lowest)
// index among equal keys wins, so an all-NaN (or all -inf) set picks index 0.
struct ArgMax {
  float key;    // q with NaN replaced by -inf
  float value;  // the raw q of the winner (may be NaN when everything was NaN)
  int index;
};

MAC_HD MAC_FORCEINLINE float argmax_key(float q) { return is_nan(q) ? neg_inf() : q; }

MAC_HD MAC_FORCEINLINE ArgMax argmax_init(float q0, int index0 = 0) {
  ArgMax a;
  a.key = argmax_key(q0);
  a.value = q0;
  a.index = index0;
  return a;
}

// Visit candidates in increasing index order: a later one wins only if strictly better.
MAC_HD MAC_FORCEINLINE void argmax_update(ArgMax& a, float q, int index) {
  const float k = argmax_key(q);
  if (k > a.key) {
    a.key = k;
    a.value = q;
    a.index = index;
  }
}

// Order-independent combination (for tree / warp reductions): the larger key, then the lower index.
MAC_HD MAC_FORCEINLINE ArgMax argmax_combine(const ArgMax& a, const ArgMax& b) {
  if (b.key > a.key || (b.key == a.key && b.index < a.index)) return b;
  return a;
}

// ---------------------------------------------------------------------------- reward and mask
// success = logit > 0 (NaN is no success). Goal tasks (no reward net): r = success - 1;
// reward tasks: r = reward output. m = 1 - success; without a success net success = 0.
MAC_HD MAC_FORCEINLINE void reward_and_mask(bool has_reward, bool has_success, float reward_out,
                                            float success_logit, float& r, float& m) {
  const float succ = (has_success && success_logit > 0.f) ? 1.f : 0.f;
  r = has_reward ? reward_out : succ - 1.f;
  m = 1.f - succ;
}

}  // namespace MAC_MATH_NS
}  // namespace mac
