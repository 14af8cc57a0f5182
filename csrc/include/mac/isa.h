// Instruction sets the CPU kernels are compiled for; the best one the running CPU supports is
// chosen at run time (csrc/cpu/dispatch.cpp).
#pragma once

namespace mac {

enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(Isa isa);
// Best instruction set usable on this CPU (and OS), capped by MAC_CPU_ISA if set.
Isa detect_isa();
// Whether this CPU has AVX512-BF16 dot products (used by the opt-in bfloat16 mode).
bool cpu_has_avx512_bf16();

}  // namespace mac
