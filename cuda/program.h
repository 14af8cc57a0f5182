// The CUDA core's "program": what the single persistent kernel executes, as plain data plus
// __host__ __device__ functions, shared by the device kernel (cuda/rollout_kernel.cu), the host
// emulator (cuda/emulate.cpp, which the CPU-only tests run) and the host planner (cuda/plan.h).
//
// A call (best-of-N, or an H-step imagined rollout) is a sequence of PHASES separated by grid-wide
// barriers. A phase holds 1-4 independent OPS; an op is split into WORK ITEMS (a GEMM output tile,
// a group of 8 states, ...) that the CTAs of the persistent grid take round-robin:
//
//   prologue (once):  [noise from the Philox seed] [states[0] = start states]         (if needed)
//   per step k:       actor layer 0 .. actor head (head epilogue: clip -> candidates)
//                     critic hidden layers 0 .. Lq-1
//                     SELECT: critic head (1 output) + NaN-safe argmax over N + gather
//                     model phase j = 0 ..: dynamics layer j (head: s_{k+1} = s_k + f),
//                       reward / success hidden layer j, and in the phase after their last
//                       hidden layer REWARD_MASK (both heads + the MAC reward/mask rule)
//
// Hidden layers use the SPLIT-ROW LayerNorm scheme: a GEMM tile applies bias + GELU in its
// epilogue, stores the pre-LayerNorm activations, and per (row, column tile) the tile-local mean
// and sum of squared deviations (Chan et al. partial statistics). The consumer (the next layer's
// GEMM, or a row-dot head) merges the partials of its rows and applies LayerNorm while staging its
// input tile. So no CTA needs a whole 1024-wide row, and no extra pass over the activations exists.
//
// Rows of the best-of-N networks are r = i * B + b (candidate i of state b): the noise (N, B, C)
// and the candidates are then plain row-major (M, C) matrices, and states / goals are row r % B.
#pragma once

#include <stdint.h>

#include "mac/kernel_math.h"
#include "tiling.h"

namespace mac {
namespace cuda {

enum NetId : int { kActor = 0, kCritic = 1, kDynamics = 2, kReward = 3, kSuccess = 4, kNumNets = 5 };

// One dense layer in torch's layout: weight (out, in) row-major, bias (out,); hidden layers also
// carry their LayerNorm scale / shift (out,), null for the head.
struct LayerDesc {
  const float* w;
  const float* b;
  const float* ln_w;
  const float* ln_b;
  int in;
  int out;
};

struct NetDesc {
  int num_layers;  // hidden layers + head; 0 = network absent
  LayerDesc layer[kMaxLayers];
};

// Everything one launch needs (passed by value as the kernel argument; see plan.h for checks).
struct Program {
  int B, N, H, S, G, C;
  int imagine;  // 0: one best-of-N step on `states`; 1: H-step rollout into out_states
  int seeded;   // 1: noise drawn from `seed` into ws_noise in the prologue; 0: read from `noise`
  uint64_t seed;
  const float* states;  // (B, S)
  const float* goals;   // (B, G) or null (G == 0)
  const float* noise;   // (steps, N, B, C) explicit noise, or null when seeded
  NetDesc net[kNumNets];
  float* out_states;    // imagine: (H + 1, B, S)
  float* out_chunks;    // (steps, B, C)
  float* out_q;         // (steps, B)
  int64_t* out_index;   // best-of-N: (B,); imagine: null
  float* out_rewards;   // imagine: (H, B)
  float* out_masks;     // imagine: (H, B)
  // workspace regions (see plan.h: WorkspaceLayout)
  float* ws_noise;           // (steps, N, B, C) when seeded
  float* ws_cand;            // (N * B, C) clipped candidates of the current step
  float* ws_act[2];          // best-of-N hidden activations, ping-pong, (N * B, width)
  float* ws_stats[2];        // their partial LayerNorm statistics (N * B, tiles, 2)
  float* ws_mact[3][2];      // dynamics / reward / success hidden activations, (B, width)
  float* ws_mstats[3][2];
};

enum OpKind : int { kOpGemmHidden = 0, kOpGemmOut = 1, kOpSelect = 2, kOpRewardMask = 3, kOpNoise = 4, kOpCopy = 5 };
enum SrcKind : int { kSrcGather = 0, kSrcNorm = 1 };

// Where the A operand (the input rows of a layer) comes from.
//  gather: row r is the concatenation seg0[r % B] | seg1[r % B] | seg2[r] (widths seg_w; a width
//          may be 0) -- [s, g, z], [s, g, c], [s, c] without materialising the concatenation.
//  norm:   LayerNorm(x[r]) of a hidden layer's pre-norm output x (M, K) with the partial row
//          statistics `stats` (M, tiles, 2) and the producing layer's scale / shift.
struct Src {
  int kind;
  int K;
  const float* seg[3];
  int seg_w[3];
  int seg_mod[3];  // source row = r % seg_mod, or r when 0
  const float* x;
  const float* stats;
  const float* ln_w;
  const float* ln_b;
  int tiles;
};

struct Op {
  int kind;
  int items;  // work items of this op
  int M;      // rows
  // GEMM: y = epilogue(A W^T + bias)
  Src a;
  const float* w;
  const float* bias;
  int n_out;
  int tiles_n;
  float* y;
  int ldy;
  float* stats_out;       // hidden: (M, tiles_n, 2)
  int clip;               // head: clip to [-1, 1]
  const float* residual;  // head: y = residual + (A W^T + bias), residual row stride = ldy
  // row-dot heads (one output): SELECT uses (a, w, bias); REWARD_MASK uses (a, w, bias) for the
  // reward net and (a2, w2, bias2) for the success net
  Src a2;
  const float* w2;
  const float* bias2;
  int has_reward, has_success;
  int B, N, C;
  const float* cand;     // (N * B, C)
  float* out_chunk;      // (B, C)
  float* out_q;          // (B,)
  int64_t* out_index;    // (B,) or null
  float* out_r;          // (B,)
  float* out_m;          // (B,)
  // noise / copy
  uint64_t seed;
  int64_t count;
  const float* src;
  float* dst;
};

// Which ops a phase holds ("slots") and the layer index each works on.
enum Slot : int {
  kSlotNoise = 0, kSlotCopy, kSlotActor, kSlotCritic, kSlotSelect, kSlotDynamics, kSlotReward,
  kSlotSuccess, kSlotRewardMask
};
struct PhaseOps {
  int n;
  int k;  // rollout step (0 in the prologue)
  int slot[4];
  int layer[4];
};

inline namespace MAC_MATH_NS {

// ------------------------------------------------------------------------------ rounding
// TF32: round to nearest, ties away from zero, on the 13 low mantissa bits (cvt.rna.tf32.f32).
// The kernel stages operands already rounded, so the tensor cores see exactly these values.
MAC_HD MAC_FORCEINLINE float round_tf32(float x) {
  if (is_nan(x)) return x;
  const uint32_t u = static_cast<uint32_t>(Lanes<float>::as_int(x));
  return Lanes<float>::as_float(static_cast<int32_t>((u + 0x1000u) & 0xffffe000u));
}
// bfloat16, round to nearest even (__float2bfloat16_rn), returned as the float it represents.
MAC_HD MAC_FORCEINLINE float round_bf16(float x) {
  if (is_nan(x)) return x;
  const uint32_t u = static_cast<uint32_t>(Lanes<float>::as_int(x));
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  return Lanes<float>::as_float(static_cast<int32_t>(r));
}

// ------------------------------------------------------------------------------ schedule
MAC_HD MAC_FORCEINLINE int num_hidden(const NetDesc& n) { return n.num_layers > 0 ? n.num_layers - 1 : 0; }
MAC_HD MAC_FORCEINLINE bool has_net(const Program& p, int id) { return p.net[id].num_layers > 0; }
MAC_HD MAC_FORCEINLINE int num_steps(const Program& p) { return p.imagine ? p.H : 1; }
MAC_HD MAC_FORCEINLINE int bon_phases(const Program& p) {
  return p.net[kActor].num_layers + num_hidden(p.net[kCritic]) + 1;
}
// Model phase that holds REWARD_MASK: the one after the last reward / success hidden layer.
MAC_HD MAC_FORCEINLINE int reward_mask_phase(const Program& p) {
  const int r = has_net(p, kReward) ? num_hidden(p.net[kReward]) : 0;
  const int s = has_net(p, kSuccess) ? num_hidden(p.net[kSuccess]) : 0;
  return r > s ? r : s;
}
MAC_HD MAC_FORCEINLINE int model_phases(const Program& p) {
  if (!p.imagine) return 0;
  const int d = p.net[kDynamics].num_layers, rm = reward_mask_phase(p) + 1;
  return d > rm ? d : rm;
}
MAC_HD MAC_FORCEINLINE int step_phases(const Program& p) { return bon_phases(p) + model_phases(p); }
MAC_HD MAC_FORCEINLINE int prologue_phases(const Program& p) { return (p.seeded || p.imagine) ? 1 : 0; }
MAC_HD MAC_FORCEINLINE int total_phases(const Program& p) {
  return prologue_phases(p) + num_steps(p) * step_phases(p);
}

MAC_HD inline PhaseOps phase_ops(const Program& p, int phase) {
  PhaseOps o;
  o.n = 0;
  o.k = 0;
  for (int i = 0; i < 4; ++i) o.slot[i] = o.layer[i] = 0;
  const auto add = [&o](int slot, int layer) {
    o.slot[o.n] = slot;
    o.layer[o.n] = layer;
    ++o.n;
  };
  const int pro = prologue_phases(p);
  if (phase < pro) {
    if (p.seeded) add(kSlotNoise, 0);
    if (p.imagine) add(kSlotCopy, 0);
    return o;
  }
  const int per_step = step_phases(p);
  o.k = (phase - pro) / per_step;
  int sp = (phase - pro) % per_step;
  const int actor_phases = p.net[kActor].num_layers;
  if (sp < actor_phases) {
    add(kSlotActor, sp);
    return o;
  }
  sp -= actor_phases;
  const int lq = num_hidden(p.net[kCritic]);
  if (sp < lq) {
    add(kSlotCritic, sp);
    return o;
  }
  if (sp == lq) {
    add(kSlotSelect, lq);
    return o;
  }
  const int j = sp - lq - 1;
  if (j < p.net[kDynamics].num_layers) add(kSlotDynamics, j);
  if (has_net(p, kReward) && j < num_hidden(p.net[kReward])) add(kSlotReward, j);
  if (has_net(p, kSuccess) && j < num_hidden(p.net[kSuccess])) add(kSlotSuccess, j);
  if (j == reward_mask_phase(p)) add(kSlotRewardMask, 0);
  return o;
}

MAC_HD MAC_FORCEINLINE int slot_net(int slot) {
  return slot == kSlotActor ? kActor
       : (slot == kSlotCritic || slot == kSlotSelect) ? kCritic
       : slot == kSlotDynamics ? kDynamics
       : slot == kSlotReward ? kReward
       : kSuccess;
}
MAC_HD MAC_FORCEINLINE int64_t net_rows(const Program& p, int net) {
  return net <= kCritic ? static_cast<int64_t>(p.N) * p.B : static_cast<int64_t>(p.B);
}
MAC_HD MAC_FORCEINLINE int64_t noise_count(const Program& p) {
  return static_cast<int64_t>(num_steps(p)) * p.N * p.B * p.C;
}

// Work items of an op, from the shapes alone (no pointers): the planner and the kernel's
// round-robin both use this.
MAC_HD inline int64_t slot_items(const Program& p, int slot, int layer) {
  switch (slot) {
    case kSlotNoise: return ceil_div(ceil_div(noise_count(p), 4), kThreads);
    case kSlotCopy: return ceil_div(static_cast<int64_t>(p.B) * p.S, kThreads);
    case kSlotSelect:
    case kSlotRewardMask: return ceil_div(p.B, kWarps);
    default: {
      const int net = slot_net(slot);
      return ceil_div(net_rows(p, net), kBM) * ceil_div(p.net[net].layer[layer].out, kBN);
    }
  }
}

// ------------------------------------------------------------------------------ op construction
MAC_HD MAC_FORCEINLINE const float* step_states(const Program& p, int k) {
  return p.imagine ? p.out_states + static_cast<int64_t>(k) * p.B * p.S : p.states;
}
MAC_HD MAC_FORCEINLINE float* act_buf(const Program& p, int net, int i) {
  return net <= kCritic ? p.ws_act[i] : p.ws_mact[net - kDynamics][i];
}
MAC_HD MAC_FORCEINLINE float* stats_buf(const Program& p, int net, int i) {
  return net <= kCritic ? p.ws_stats[i] : p.ws_mstats[net - kDynamics][i];
}

MAC_HD inline Src gather_src(const float* s, int S, const float* g, int G, const float* x, int X, int mod) {
  Src a;
  a.kind = kSrcGather;
  a.K = S + G + X;
  a.seg[0] = s;
  a.seg[1] = g;
  a.seg[2] = x;
  a.seg_w[0] = S;
  a.seg_w[1] = G;
  a.seg_w[2] = X;
  a.seg_mod[0] = mod;
  a.seg_mod[1] = mod;
  a.seg_mod[2] = 0;
  a.x = nullptr;
  a.stats = nullptr;
  a.ln_w = nullptr;
  a.ln_b = nullptr;
  a.tiles = 0;
  return a;
}

// The input rows of layer `l` of network `net` at step k.
MAC_HD inline Src layer_src(const Program& p, int net, int l, int k) {
  const NetDesc& n = p.net[net];
  if (l > 0) {
    Src a = gather_src(nullptr, 0, nullptr, 0, nullptr, 0, 0);
    a.kind = kSrcNorm;
    a.K = n.layer[l].in;
    a.x = act_buf(p, net, (l - 1) & 1);
    a.stats = stats_buf(p, net, (l - 1) & 1);
    a.ln_w = n.layer[l - 1].ln_w;
    a.ln_b = n.layer[l - 1].ln_b;
    a.tiles = static_cast<int>(ceil_div(a.K, kBN));
    return a;
  }
  const float* s = step_states(p, k);
  const int64_t step_bc = static_cast<int64_t>(k) * p.B * p.C;
  switch (net) {
    case kActor: {
      const float* z = (p.seeded ? p.ws_noise : p.noise) + step_bc * p.N;
      return gather_src(s, p.S, p.goals, p.G, z, p.C, p.B);
    }
    case kCritic: return gather_src(s, p.S, p.goals, p.G, p.ws_cand, p.C, p.B);
    case kDynamics: return gather_src(s, p.S, nullptr, 0, p.out_chunks + step_bc, p.C, p.B);
    default: return gather_src(s, p.S, p.goals, p.G, p.out_chunks + step_bc, p.C, p.B);
  }
}

MAC_HD inline Op empty_op() {
  Op op;
  op.kind = kOpCopy;
  op.items = 0;
  op.M = 0;
  op.a = gather_src(nullptr, 0, nullptr, 0, nullptr, 0, 0);
  op.w = op.bias = nullptr;
  op.n_out = op.tiles_n = 0;
  op.y = nullptr;
  op.ldy = 0;
  op.stats_out = nullptr;
  op.clip = 0;
  op.residual = nullptr;
  op.a2 = op.a;
  op.w2 = op.bias2 = nullptr;
  op.has_reward = op.has_success = 0;
  op.B = op.N = op.C = 0;
  op.cand = nullptr;
  op.out_chunk = op.out_q = nullptr;
  op.out_index = nullptr;
  op.out_r = op.out_m = nullptr;
  op.seed = 0;
  op.count = 0;
  op.src = nullptr;
  op.dst = nullptr;
  return op;
}

MAC_HD inline Op make_op(const Program& p, int slot, int layer, int k) {
  Op op = empty_op();
  op.items = static_cast<int>(slot_items(p, slot, layer));
  op.B = p.B;
  op.N = p.N;
  op.C = p.C;
  const int64_t kb = static_cast<int64_t>(k) * p.B;
  switch (slot) {
    case kSlotNoise:
      op.kind = kOpNoise;
      op.seed = p.seed;
      op.count = noise_count(p);
      op.dst = p.ws_noise;
      return op;
    case kSlotCopy:
      op.kind = kOpCopy;
      op.count = static_cast<int64_t>(p.B) * p.S;
      op.src = p.states;
      op.dst = p.out_states;
      return op;
    case kSlotSelect: {
      const NetDesc& q = p.net[kCritic];
      op.kind = kOpSelect;
      op.a = layer_src(p, kCritic, layer, k);
      op.w = q.layer[layer].w;
      op.bias = q.layer[layer].b;
      op.cand = p.ws_cand;
      op.out_chunk = p.out_chunks + kb * p.C;
      op.out_q = p.out_q + kb;
      op.out_index = p.imagine ? nullptr : p.out_index;
      return op;
    }
    case kSlotRewardMask: {
      op.kind = kOpRewardMask;
      op.has_reward = has_net(p, kReward);
      op.has_success = has_net(p, kSuccess);
      if (op.has_reward) {
        const int l = num_hidden(p.net[kReward]);
        op.a = layer_src(p, kReward, l, k);
        op.w = p.net[kReward].layer[l].w;
        op.bias = p.net[kReward].layer[l].b;
      }
      if (op.has_success) {
        const int l = num_hidden(p.net[kSuccess]);
        op.a2 = layer_src(p, kSuccess, l, k);
        op.w2 = p.net[kSuccess].layer[l].w;
        op.bias2 = p.net[kSuccess].layer[l].b;
      }
      op.out_r = p.out_rewards + kb;
      op.out_m = p.out_masks + kb;
      return op;
    }
    default: break;
  }
  // GEMM layers
  const int net = slot_net(slot);
  const NetDesc& n = p.net[net];
  const LayerDesc& L = n.layer[layer];
  op.M = static_cast<int>(net_rows(p, net));
  op.a = layer_src(p, net, layer, k);
  op.w = L.w;
  op.bias = L.b;
  op.n_out = L.out;
  op.tiles_n = static_cast<int>(ceil_div(L.out, kBN));
  if (layer + 1 < n.num_layers) {
    op.kind = kOpGemmHidden;
    op.y = act_buf(p, net, layer & 1);
    op.ldy = L.out;
    op.stats_out = stats_buf(p, net, layer & 1);
  } else if (net == kActor) {
    op.kind = kOpGemmOut;
    op.y = p.ws_cand;
    op.ldy = p.C;
    op.clip = 1;
  } else {  // dynamics head: s_{k+1} = s_k + f([s_k, a_k])
    op.kind = kOpGemmOut;
    op.y = p.out_states + (kb + p.B) * p.S;
    op.ldy = p.S;
    op.residual = step_states(p, k);
  }
  return op;
}

// ------------------------------------------------------------------------------ element math
// Column k of a gathered input: which segment holds it. Element (r, k) is
// base[(mod > 0 ? r % mod : r) * width] (base already offset by the column within the segment).
struct GatherCol {
  const float* base;
  int width;
  int mod;
};
MAC_HD MAC_FORCEINLINE GatherCol gather_col(const Src& a, int k) {
  GatherCol c;
  if (k < a.seg_w[0]) {
    c.base = a.seg[0] + k;
    c.width = a.seg_w[0];
    c.mod = a.seg_mod[0];
  } else if (k < a.seg_w[0] + a.seg_w[1]) {
    c.base = a.seg[1] + (k - a.seg_w[0]);
    c.width = a.seg_w[1];
    c.mod = a.seg_mod[1];
  } else {
    c.base = a.seg[2] + (k - a.seg_w[0] - a.seg_w[1]);
    c.width = a.seg_w[2];
    c.mod = a.seg_mod[2];
  }
  return c;
}
MAC_HD MAC_FORCEINLINE float gather_at(const GatherCol& c, int r) {
  return c.base[static_cast<int64_t>(c.mod > 0 ? r % c.mod : r) * c.width];
}
// Element k (< a.K) of gathered row r.
MAC_HD MAC_FORCEINLINE float gather_elem(const Src& a, int r, int k) { return gather_at(gather_col(a, k), r); }

// Merge the partial statistics (tile mean, tile sum of squared deviations) of one row of width K
// split in tiles of kBN columns (Chan, Golub, LeVeque): the row's mean and 1 / sqrt(var + eps).
MAC_HD inline void merge_row_stats(const float* stats, int tiles, int K, float& mean, float& rstd) {
  float s = 0.f;
  for (int t = 0; t < tiles; ++t) {
    const int n = (K - t * kBN) < kBN ? (K - t * kBN) : kBN;
    s += static_cast<float>(n) * stats[2 * t];
  }
  mean = s / static_cast<float>(K);
  float m2 = 0.f;
  for (int t = 0; t < tiles; ++t) {
    const int n = (K - t * kBN) < kBN ? (K - t * kBN) : kBN;
    const float d = stats[2 * t] - mean;
    m2 += stats[2 * t + 1] + static_cast<float>(n) * d * d;
  }
  rstd = layer_norm_rstd(m2 / static_cast<float>(K));
}

MAC_HD MAC_FORCEINLINE void src_row_stats(const Src& a, int r, float& mean, float& rstd) {
  mean = 0.f;
  rstd = 0.f;
  if (a.kind == kSrcNorm) merge_row_stats(a.stats + static_cast<int64_t>(r) * a.tiles * 2, a.tiles, a.K, mean, rstd);
}

// Element k of input row r (mean / rstd from src_row_stats for norm sources).
MAC_HD MAC_FORCEINLINE float src_elem(const Src& a, int r, int k, float mean, float rstd) {
  if (a.kind == kSrcGather) return gather_elem(a, r, k);
  return layer_norm_apply(a.x[static_cast<int64_t>(r) * a.K + k], mean, rstd, a.ln_w[k], a.ln_b[k]);
}

// GEMM epilogue of one element: hidden layers GELU(acc + b); heads (acc + b), clipped for the
// actor, or added to the residual (dynamics: s + f).
MAC_HD MAC_FORCEINLINE float epilogue_hidden(float acc, float bias) { return gelu_tanh(acc + bias); }
MAC_HD MAC_FORCEINLINE float epilogue_out(const Op& op, float acc, int r, int n) {
  float v = acc + op.bias[n];
  if (op.clip) v = clip_unit(v);
  if (op.residual) v = op.residual[static_cast<int64_t>(r) * op.ldy + n] + v;
  return v;
}

}  // namespace MAC_MATH_NS
}  // namespace cuda
}  // namespace mac
