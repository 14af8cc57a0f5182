// Portability macros for the math shared by the CPU backend and the CUDA kernels.
//
// MAC_HD marks a function usable from host and device code: `__host__ __device__` under nvcc,
// nothing for a plain C++ compiler.
//
// Everything in the shared math headers lives in the inline namespace MAC_MATH_NS, which is
// different in every instruction-set copy of csrc/cpu/kernels_isa.cpp (MAC_ISA_NAME). Without it,
// an out-of-line copy of e.g. gelu_tanh<float> compiled with -mavx512f could be picked by the
// linker for the portable copy (one-definition rule), and the portable path would then execute
// AVX-512 instructions on a CPU without them.
#pragma once

#if defined(__CUDACC__)
#define MAC_HD __host__ __device__
#else
#define MAC_HD
#endif

#if defined(__GNUC__) || defined(__clang__)
#define MAC_FORCEINLINE inline __attribute__((always_inline))
#else
#define MAC_FORCEINLINE inline
#endif

#define MAC_CAT_(a, b) a##b
#define MAC_CAT(a, b) MAC_CAT_(a, b)
#if defined(MAC_ISA_NAME)
#define MAC_MATH_NS MAC_CAT(math_, MAC_ISA_NAME)
#elif defined(__CUDACC__)
#define MAC_MATH_NS math_cuda
#else
#define MAC_MATH_NS math_host
#endif
