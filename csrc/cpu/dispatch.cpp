#include "mac/isa.h"

#include <cstdlib>
#include <cstring>

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

Isa detect_isa() {
  Isa best = hardware_isa();
  // MAC_CPU_ISA=generic|avx2|avx512 lowers (never raises) the choice: for tests and comparisons.
  if (const char* forced = std::getenv("MAC_CPU_ISA")) {
    Isa want = best;
    if (!std::strcmp(forced, "generic")) want = Isa::generic;
    else if (!std::strcmp(forced, "avx2")) want = Isa::avx2;
    else if (!std::strcmp(forced, "avx512")) want = Isa::avx512;
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
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

}  // namespace mac
