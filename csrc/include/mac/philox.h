// Counter-based Gaussian noise: Philox4x32-10 + Box-Muller, host and device.
//
// The exact twin of python/mac/noise.py (see there): element e of the stream of `seed` is
//   bits = Philox4x32-10(counter = (e/4 low 32, e/4 high 32, 0, 0), key = (seed low, seed high))
//   u_j  = (bits_j + 0.5) * 2^-32                      (float64, in (0, 1))
//   z    = [r01 cos t01, r01 sin t01, r23 cos t23, r23 sin t23][e % 4],
//          r01 = sqrt(-2 log u0), t01 = 2 pi u1, r23 = sqrt(-2 log u2), t23 = 2 pi u3 (float64)
//   rounded to float32.
// The float64 transcendental functions of numpy, glibc and CUDA may differ in the last float64 bit;
// after rounding to float32 that is invisible except for a value within 1e-16 (relative) of a
// float32 rounding boundary (probability ~2^-29 per element), where the two results would differ by
// one float32 ulp. Nothing here may be compiled with -ffast-math.
#pragma once

#include <math.h>
#include <stdint.h>

#include "mac/hd.h"

namespace mac {
inline namespace MAC_MATH_NS {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
// Same double as Python's 2.0 * numpy.pi (the product is exact).
constexpr double kTwoPi = 2.0 * 3.141592653589793;
constexpr double kUint32ToUnit = 1.0 / 4294967296.0;  // 2^-32

struct Philox4 {
  uint32_t v[4];
};

MAC_HD MAC_FORCEINLINE void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  hi = __umulhi(a, b);
  lo = a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
#endif
}

// Philox4x32 with 10 rounds (Salmon et al. 2011), as in numpy's / curand's Philox.
MAC_HD MAC_FORCEINLINE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                             uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kPhiloxM0, c0, hi0, lo0);
    mulhilo32(kPhiloxM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  Philox4 r;
  r.v[0] = c0;
  r.v[1] = c1;
  r.v[2] = c2;
  r.v[3] = c3;
  return r;
}

// The four normals of counter block `block` (elements 4*block .. 4*block+3) of the stream `seed`.
MAC_HD inline void philox_normal4(uint64_t seed, uint64_t block, float out[4]) {
  const Philox4 r = philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u,
                                  0u, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const double u0 = (static_cast<double>(r.v[0]) + 0.5) * kUint32ToUnit;
  const double u1 = (static_cast<double>(r.v[1]) + 0.5) * kUint32ToUnit;
  const double u2 = (static_cast<double>(r.v[2]) + 0.5) * kUint32ToUnit;
  const double u3 = (static_cast<double>(r.v[3]) + 0.5) * kUint32ToUnit;
  const double r01 = sqrt(-2.0 * log(u0));
  const double r23 = sqrt(-2.0 * log(u2));
  const double t01 = kTwoPi * u1;
  const double t23 = kTwoPi * u3;
  out[0] = static_cast<float>(r01 * cos(t01));
  out[1] = static_cast<float>(r01 * sin(t01));
  out[2] = static_cast<float>(r23 * cos(t23));
  out[3] = static_cast<float>(r23 * sin(t23));
}

// Elements [start, start + n) of the stream of `seed` into out[0..n); the stream has 2^64 elements
// (callers keep start + n <= 2^64). Counts down n instead of comparing against start + n or the
// block's end, which overflow to 0 in the stream's last block (that loop never ended).
MAC_HD inline void philox_normal_fill(uint64_t seed, uint64_t start, uint64_t n, float* out) {
  uint64_t e = start;
  float z[4];
  while (n > 0) {
    philox_normal4(seed, e >> 2, z);
    for (unsigned j = static_cast<unsigned>(e & 3u); j < 4u && n > 0; ++j, ++e, --n) *out++ = z[j];
  }
}

}  // namespace MAC_MATH_NS
}  // namespace mac
