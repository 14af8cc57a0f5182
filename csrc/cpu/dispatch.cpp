#include "mac/isa.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "mac/cpu_core.h"

namespace mac {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

static Isa hardware_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::generic;
}

static bool parse_isa(const char* s, Isa& out) {
  if (!std::strcmp(s, "generic")) out = Isa::generic;
  else if (!std::strcmp(s, "avx2")) out = Isa::avx2;
  else if (!std::strcmp(s, "avx512")) out = Isa::avx512;
  else return false;
  return true;
}

Isa detect_isa() {
  Isa best = hardware_isa();
  // MAC_CPU_ISA=generic|avx2|avx512 lowers (never raises) the choice: for tests and comparisons.
  if (const char* forced = std::getenv("MAC_CPU_ISA")) {
    Isa want = best;
    if (parse_isa(forced, want) && static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
}

bool cpu_has_avx512_bf16() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

namespace cpu {

Isa resolve_isa(const std::string& requested) {
  if (requested.empty() || requested == "auto") return detect_isa();
  Isa want;
  if (!parse_isa(requested.c_str(), want))
    throw std::invalid_argument("isa must be 'auto', 'generic', 'avx2' or 'avx512', got '" + requested + "'");
  // An explicit request is capped by the hardware only (not by MAC_CPU_ISA).
  const Isa hw = hardware_isa();
  return static_cast<int>(want) < static_cast<int>(hw) ? want : hw;
}

#define MAC_DISPATCH(isa_value, call)               \
  switch (isa_value) {                              \
    case Isa::avx512: return avx512::call;          \
    case Isa::avx2: return avx2::call;              \
    default: return generic::call;                  \
  }

void best_of_n(Isa isa, const BestOfNArgs& a, const Options& o) { MAC_DISPATCH(isa, best_of_n(a, o)) }
void imagine(Isa isa, const ImagineArgs& a, const Options& o) { MAC_DISPATCH(isa, imagine(a, o)) }
void gelu(Isa isa, const float* x, float* y, int64_t n) { MAC_DISPATCH(isa, gelu(x, y, n)) }
void mlp_forward(Isa isa, const Net& net, const float* x, float* y, int rows, const Options& o) {
  MAC_DISPATCH(isa, mlp_forward(net, x, y, rows, o))
}
double gemm_peak_probe(Isa isa, int reps, int num_threads) {
  MAC_DISPATCH(isa, gemm_peak_probe(reps, num_threads))
}
bool isa_has_bf16(Isa isa) { MAC_DISPATCH(isa, has_bf16()) }
Plan plan_best_of_n(Isa isa, const BestOfNArgs& a, const Options& o) {
  MAC_DISPATCH(isa, plan_best_of_n(a, o))
}
Plan plan_imagine(Isa isa, const ImagineArgs& a, const Options& o) { MAC_DISPATCH(isa, plan_imagine(a, o)) }
void philox_block(Isa isa, const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  MAC_DISPATCH(isa, philox_block(ctr, key, out))
}

#undef MAC_DISPATCH

}  // namespace cpu
}  // namespace mac
