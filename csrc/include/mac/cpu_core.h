// The CPU backend's plain-C++ interface: raw pointers and sizes, no Python, no torch.
// csrc/bindings.cpp validates buffers and fills these structs; csrc/cpu/kernels_isa.cpp (one copy
// per instruction set, namespace mac::cpu::<isa>) does the work; csrc/cpu/dispatch.cpp picks the copy.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mac/isa.h"

namespace mac {
namespace cpu {

// One dense layer, (out, in) row-major weight as torch.nn.Linear stores it. norm_weight / norm_bias
// are null for the linear head; otherwise the layer is Linear -> GELU(tanh) -> LayerNorm.
struct Layer {
  const float* weight = nullptr;
  const float* bias = nullptr;
  const float* norm_weight = nullptr;
  const float* norm_bias = nullptr;
  int in = 0;
  int out = 0;
};

struct Net {
  std::vector<Layer> layers;
  bool empty() const { return layers.empty(); }
  int in_dim() const { return layers.front().in; }
  int out_dim() const { return layers.back().out; }
  int max_hidden() const {  // widest hidden layer (0 for a net with only a head)
    int m = 0;
    for (size_t i = 0; i + 1 < layers.size(); ++i) m = layers[i].out > m ? layers[i].out : m;
    return m;
  }
};

// Noise: explicit (N, B, C) / (H, N, B, C) float32 tensor, or the Philox stream of `seed`
// (row-major element index over the same shape).
struct Noise {
  const float* data = nullptr;  // explicit noise, or null
  uint64_t seed = 0;            // used when data is null
};

// How tiles are spread over threads: automatic, or forced (for tests) to whole tiles per thread
// ("tiles") or all threads on each tile, splitting each layer's outputs ("columns").
enum class Parallel : int { automatic = 0, tiles = 1, columns = 2 };

struct Options {
  int num_threads = 1;
  bool bf16 = false;  // opt-in bfloat16 dot products (AVX512-BF16 copy only)
  Parallel parallel = Parallel::automatic;
};

// How an entry point spreads its work over threads: what Parallel::automatic decided (or the forced
// mode). The entry points run exactly this plan (they call plan_* themselves); exposed for tests.
struct Plan {
  int threads = 1;         // threads of the OpenMP parallel region (auto: 1 below kParallelMinFlops)
  bool team_bon = false;   // best-of-N phase: all threads on each tile, splitting layer outputs
  bool team_step = false;  // model-step phase of a rollout (imagine only)
  int ntiles_bon = 0;      // best-of-N tiles (per step)
  int ntiles_step = 0;     // model-step tiles (per step; imagine only)
};

struct BestOfNArgs {
  int B = 0, S = 0, G = 0, C = 0, N = 0;
  const float* states = nullptr;  // (B, S)
  const float* goals = nullptr;   // (B, G) or null (G = 0)
  Net actor, critic;              // [s, g, z] -> C ; [s, g, c] -> 1
  Noise noise;                    // (N, B, C)
  float* out_chunks = nullptr;    // (B, C)
  float* out_scores = nullptr;    // (B,)
  int64_t* out_indices = nullptr; // (B,)
};

struct ImagineArgs {
  int B = 0, S = 0, G = 0, C = 0, N = 0, H = 0;
  const float* states = nullptr;  // (B, S)
  const float* goals = nullptr;   // (B, G) or null
  Net actor, critic, dynamics;    // dynamics: [s, c] -> S
  Net reward, success;            // [s, g, c] -> 1 each; either may be empty
  Noise noise;                    // (H, N, B, C)
  float* out_states = nullptr;    // (H + 1, B, S)
  float* out_chunks = nullptr;    // (H, B, C)
  float* out_rewards = nullptr;   // (H, B)
  float* out_masks = nullptr;     // (H, B)
  float* out_q = nullptr;         // (H, B)
};

// Per-ISA entry points (csrc/cpu/kernels_isa.cpp). Callers must have validated everything.
#define MAC_DECLARE_ISA(isa)                                                   \
  namespace isa {                                                              \
  void best_of_n(const BestOfNArgs& a, const Options& o);                     \
  void imagine(const ImagineArgs& a, const Options& o);                       \
  void gelu(const float* x, float* y, int64_t n);                             \
  void mlp_forward(const Net& net, const float* x, float* y, int rows,        \
                   const Options& o);                                          \
  double gemm_peak_probe(int reps, int num_threads);                          \
  bool has_bf16();                                                             \
  Plan plan_best_of_n(const BestOfNArgs& a, const Options& o);                \
  Plan plan_imagine(const ImagineArgs& a, const Options& o);                  \
  void philox_block(const uint32_t ctr[4], const uint32_t key[2],              \
                    uint32_t out[4]);                                          \
  }
MAC_DECLARE_ISA(generic)
MAC_DECLARE_ISA(avx2)
MAC_DECLARE_ISA(avx512)
#undef MAC_DECLARE_ISA

// Dispatch (csrc/cpu/dispatch.cpp) to the copy for `isa` (never above what the CPU supports).
Isa resolve_isa(const std::string& requested);  // "" / "auto" -> detect_isa()
void best_of_n(Isa isa, const BestOfNArgs& a, const Options& o);
void imagine(Isa isa, const ImagineArgs& a, const Options& o);
void gelu(Isa isa, const float* x, float* y, int64_t n);
void mlp_forward(Isa isa, const Net& net, const float* x, float* y, int rows, const Options& o);
double gemm_peak_probe(Isa isa, int reps, int num_threads);
bool isa_has_bf16(Isa isa);
Plan plan_best_of_n(Isa isa, const BestOfNArgs& a, const Options& o);
Plan plan_imagine(Isa isa, const ImagineArgs& a, const Options& o);
// Raw Philox4x32-10 of this copy's mac/philox.h (known-answer tests of every compiled copy).
void philox_block(Isa isa, const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

}  // namespace cpu
}  // namespace mac
