// Tiny kernels for tests/test_sass.py: one meets every expectation of mac.sass.EXPECTATIONS, each of
// the others breaks exactly one, so the SASS checks are seen to tell them apart. Compiled to a cubin
// with `nvcc -cubin -arch=sm_80`; never launched.
#include <mma.h>
#include <cuda_fp16.h>

using namespace nvcuda;

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// The good loop: tiles staged in shared memory, fragments loaded with ldmatrix (LDSM), HMMA.
extern "C" __global__ void wmma_shared_loop(const half* a, const half* b, float* c, int k_tiles) {
  __shared__ half sa[256], sb[256];
  FragA fa;
  FragB fb;
  FragC acc;
  wmma::fill_fragment(acc, 0.f);
  for (int k = 0; k < k_tiles; ++k) {
    for (int i = threadIdx.x; i < 256; i += 32) {
      sa[i] = a[k * 256 + i];
      sb[i] = b[k * 256 + i];
    }
    __syncwarp();
    wmma::load_matrix_sync(fa, sa, 16);
    wmma::load_matrix_sync(fb, sb, 16);
    wmma::mma_sync(acc, fa, fb, acc);
    __syncwarp();
  }
  wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
}

// No tensor cores: a loop of scalar FMAs.
extern "C" __global__ void fma_loop(const float* a, float* out, int n) {
  float acc = 0.f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) acc = fmaf(a[i], acc, 1.f);
  out[threadIdx.x] = acc;
}

// Tensor cores, but fragments straight from global memory: no LDSM.
extern "C" __global__ void wmma_global_loop(const half* a, const half* b, float* c, int k_tiles) {
  FragA fa;
  FragB fb;
  FragC acc;
  wmma::fill_fragment(acc, 0.f);
  for (int k = 0; k < k_tiles; ++k) {
    wmma::load_matrix_sync(fa, a + k * 256, 16);
    wmma::load_matrix_sync(fb, b + k * 256, 16);
    wmma::mma_sync(acc, fa, fb, acc);
  }
  wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
}

// The good loop, except that each tile's offset comes from a dynamically indexed array: the array
// lives on the stack and the loop reads it with LDL.
extern "C" __global__ void wmma_local_array_loop(const half* a, const half* b, float* c, const int* order,
                                                 int k_tiles) {
  __shared__ half sa[256], sb[256];
  int offsets[32];
  for (int i = 0; i < 32; ++i) offsets[i] = order[i] * 256;
  FragA fa;
  FragB fb;
  FragC acc;
  wmma::fill_fragment(acc, 0.f);
  for (int k = 0; k < k_tiles; ++k) {
    const int offset = offsets[order[32 + k] & 31];
    for (int i = threadIdx.x; i < 256; i += 32) {
      sa[i] = a[offset + i];
      sb[i] = b[offset + i];
    }
    __syncwarp();
    wmma::load_matrix_sync(fa, sa, 16);
    wmma::load_matrix_sync(fb, sb, 16);
    wmma::mma_sync(acc, fa, fb, acc);
    __syncwarp();
  }
  wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
}
