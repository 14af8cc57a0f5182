// Host-only launch planning of the CUDA core: shape checks, workspace layout, phases, work items,
// and the assembly of the kernel's Program (grid_size is in tiling.h). Plain C++ (no CUDA
// headers), so the CPU-only tests exercise it through mac._C_cuda.launch_plan / emulate.
// Include it from host-compiled C++ only (cuda/bindings.cpp, cuda/emulate.cpp): the .cu
// launcher receives a finished Program.
#pragma once

#include <stdint.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "program.h"
#include "tiling.h"

namespace mac {
namespace cuda {

constexpr int64_t kRegionAlign = 32;  // floats (128 bytes) between workspace regions
constexpr int64_t kMaxRows = (int64_t{1} << 31) - 1;

// Shapes of one call. `nets[i]` lists the layers' (in, out) in forward order; empty = absent.
struct Shapes {
  int B = 0, N = 0, H = 1, S = 0, G = 0, C = 0;
  bool imagine = false;
  bool seeded = false;
  std::vector<std::pair<int, int>> nets[kNumNets];
};

// Offsets (in floats) of the workspace regions; a region of size 0 has offset -1.
struct WorkspaceLayout {
  int64_t noise = -1, cand = -1, act[2] = {-1, -1}, stats[2] = {-1, -1};
  int64_t mact[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}}, mstats[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}};
  int64_t noise_size = 0, cand_size = 0, act_size = 0, stats_size = 0;
  int64_t mact_size[3] = {0, 0, 0}, mstats_size[3] = {0, 0, 0};
  int64_t total = 0;  // floats
};

struct Plan {
  WorkspaceLayout ws;
  int prologue_phases = 0, step_phases = 0, total_phases = 0;
  // work items of every op of the prologue and of one step (the same for every step):
  // phase_items[i] = items of the phase's ops, in order
  std::vector<std::vector<int64_t>> phase_items;
  std::vector<std::vector<int>> phase_slots;
  int64_t max_items = 0;  // most work items of any phase (bounds the useful grid size)
  int threads = kThreads;
  int smem_tf32 = smem_bytes(kTf32), smem_bf16 = smem_bytes(kBf16);
  int64_t program_bytes = sizeof(Program);
};

inline const char* net_name(int id) {
  static const char* names[kNumNets] = {"actor", "critic", "dynamics", "reward", "success"};
  return names[id];
}

inline int max_hidden_width(const std::vector<std::pair<int, int>>& layers) {
  int w = 0;
  for (size_t i = 0; i + 1 < layers.size(); ++i) w = layers[i].second > w ? layers[i].second : w;
  return w;
}

// Checks dims and the chaining of every network against the inputs this call gives it; throws
// std::invalid_argument with a message naming the problem.
inline void check_shapes(const Shapes& s) {
  auto fail = [](const std::string& m) { throw std::invalid_argument(m); };
  if (s.B < 1 || s.N < 1 || s.S < 1 || s.C < 1 || s.G < 0)
    fail("B, N, S, C must be >= 1 and G >= 0");
  if (s.imagine && s.H < 1) fail("steps must be >= 1");
  if (!s.imagine && s.H != 1) fail("best-of-N runs one step (H must be 1)");
  const int64_t rows = static_cast<int64_t>(s.N) * s.B;
  if (rows > kMaxRows) fail("N * B = " + std::to_string(rows) + " rows exceed the kernel's 2^31 - 1");
  const int sgc = s.S + s.G + s.C;
  struct Want { int id; int in; int out; bool required; };
  const Want wants[kNumNets] = {{kActor, sgc, s.C, true}, {kCritic, sgc, 1, true},
                                {kDynamics, s.S + s.C, s.S, s.imagine}, {kReward, sgc, 1, false},
                                {kSuccess, sgc, 1, false}};
  for (const Want& w : wants) {
    const auto& layers = s.nets[w.id];
    const std::string name = net_name(w.id);
    if (layers.empty()) {
      if (w.required) fail(name + " network is required");
      continue;
    }
    if (!s.imagine && w.id >= kDynamics) fail(name + " network is only used by imagine");
    if (layers.size() > static_cast<size_t>(kMaxLayers))
      fail(name + " has " + std::to_string(layers.size()) + " layers; the CUDA core supports at most " +
           std::to_string(kMaxLayers) + " (hidden layers + head)");
    int prev = w.in;
    for (size_t l = 0; l < layers.size(); ++l) {
      if (layers[l].first != prev || layers[l].second < 1)
        fail(name + " layer " + std::to_string(l) + " maps " + std::to_string(layers[l].first) + " -> " +
             std::to_string(layers[l].second) + " but its input has " + std::to_string(prev) + " features");
      prev = layers[l].second;
    }
    if (prev != w.out)
      fail(name + " outputs " + std::to_string(prev) + " features, expected " + std::to_string(w.out));
  }
}

inline WorkspaceLayout workspace_layout(const Shapes& s) {
  WorkspaceLayout L;
  int64_t at = 0;
  auto region = [&at](int64_t size) -> int64_t {
    if (size <= 0) return -1;
    const int64_t off = at;
    at = round_up(at + size, kRegionAlign);
    return off;
  };
  const int64_t steps = s.imagine ? s.H : 1;
  const int64_t rows = static_cast<int64_t>(s.N) * s.B;
  L.noise_size = s.seeded ? steps * rows * s.C : 0;
  L.noise = region(L.noise_size);
  L.cand_size = rows * s.C;
  L.cand = region(L.cand_size);
  int wb = max_hidden_width(s.nets[kActor]);
  const int wq = max_hidden_width(s.nets[kCritic]);
  wb = wq > wb ? wq : wb;
  L.act_size = rows * wb;
  L.stats_size = rows * ceil_div(wb, kBN) * 2;
  for (int i = 0; i < 2; ++i) {
    L.act[i] = region(L.act_size);
    L.stats[i] = region(L.stats_size);
  }
  if (s.imagine) {
    for (int m = 0; m < 3; ++m) {
      const int w = max_hidden_width(s.nets[kDynamics + m]);
      L.mact_size[m] = static_cast<int64_t>(s.B) * w;
      L.mstats_size[m] = static_cast<int64_t>(s.B) * ceil_div(w, kBN) * 2;
      for (int i = 0; i < 2; ++i) {
        L.mact[m][i] = region(L.mact_size[m]);
        L.mstats[m][i] = region(L.mstats_size[m]);
      }
    }
  }
  L.total = at;
  return L;
}

// A Program with the shapes of `s` and no pointers (enough for phase_ops / slot_items).
inline Program shape_program(const Shapes& s) {
  Program p{};
  p.B = s.B;
  p.N = s.N;
  p.H = s.H;
  p.S = s.S;
  p.G = s.G;
  p.C = s.C;
  p.imagine = s.imagine ? 1 : 0;
  p.seeded = s.seeded ? 1 : 0;
  for (int id = 0; id < kNumNets; ++id) {
    p.net[id].num_layers = static_cast<int>(s.nets[id].size());
    for (size_t l = 0; l < s.nets[id].size(); ++l) {
      p.net[id].layer[l].in = s.nets[id][l].first;
      p.net[id].layer[l].out = s.nets[id][l].second;
    }
  }
  return p;
}

inline Plan make_plan(const Shapes& s) {
  check_shapes(s);
  Plan plan;
  plan.ws = workspace_layout(s);
  const Program p = shape_program(s);
  plan.prologue_phases = prologue_phases(p);
  plan.step_phases = step_phases(p);
  plan.total_phases = total_phases(p);
  // The prologue and step 0 cover every distinct phase (later steps repeat step 0's items).
  const int distinct = plan.prologue_phases + plan.step_phases;
  for (int ph = 0; ph < distinct; ++ph) {
    const PhaseOps ops = phase_ops(p, ph);
    std::vector<int64_t> items;
    std::vector<int> slots;
    int64_t total = 0;
    for (int j = 0; j < ops.n; ++j) {
      const int64_t n = slot_items(p, ops.slot[j], ops.layer[j]);
      if (n > kMaxRows) throw std::invalid_argument("problem too large: an op has more than 2^31 - 1 work items");
      items.push_back(n);
      slots.push_back(ops.slot[j]);
      total += n;
    }
    if (total > kMaxRows) throw std::invalid_argument("problem too large: a phase has more than 2^31 - 1 work items");
    plan.max_items = total > plan.max_items ? total : plan.max_items;
    plan.phase_items.push_back(items);
    plan.phase_slots.push_back(slots);
  }
  return plan;
}

// Pointers of one call (device pointers for the kernel, host pointers for the emulator).
struct Buffers {
  const float* states = nullptr;
  const float* goals = nullptr;
  const float* noise = nullptr;
  uint64_t seed = 0;
  std::vector<LayerDesc> nets[kNumNets];  // pointers only; sizes come from Shapes
  float* out_states = nullptr;
  float* out_chunks = nullptr;
  float* out_q = nullptr;
  int64_t* out_index = nullptr;
  float* out_rewards = nullptr;
  float* out_masks = nullptr;
  float* workspace = nullptr;
  int64_t workspace_floats = 0;
};

inline Program build_program(const Shapes& s, const Buffers& b, const WorkspaceLayout& L) {
  auto fail = [](const std::string& m) { throw std::invalid_argument(m); };
  Program p = shape_program(s);
  p.seed = b.seed;
  if (!b.states) fail("states pointer is null");
  if ((s.G > 0) != (b.goals != nullptr)) fail("goals pointer must be given exactly when G > 0");
  if (s.seeded == (b.noise != nullptr)) fail("give explicit noise or a seed, not both or neither");
  if (!b.out_chunks || !b.out_q) fail("chunk / q output pointers are null");
  if (s.imagine && (!b.out_states || !b.out_rewards || !b.out_masks)) fail("rollout output pointers are null");
  if (!s.imagine && !b.out_index) fail("index output pointer is null");
  if (b.workspace_floats < L.total) {
    fail("workspace has " + std::to_string(b.workspace_floats) + " floats, the plan needs " + std::to_string(L.total));
  }
  if (L.total > 0 && !b.workspace) fail("workspace pointer is null");
  p.states = b.states;
  p.goals = b.goals;
  p.noise = b.noise;
  for (int id = 0; id < kNumNets; ++id) {
    if (b.nets[id].size() != s.nets[id].size()) fail(std::string(net_name(id)) + ": layer pointers do not match its shapes");
    for (size_t l = 0; l < b.nets[id].size(); ++l) {
      const LayerDesc& d = b.nets[id][l];
      const bool head = l + 1 == b.nets[id].size();
      if (!d.w || !d.b || (!head && (!d.ln_w || !d.ln_b)))
        fail(std::string(net_name(id)) + " layer " + std::to_string(l) + ": null parameter pointer");
      p.net[id].layer[l].w = d.w;
      p.net[id].layer[l].b = d.b;
      p.net[id].layer[l].ln_w = head ? nullptr : d.ln_w;
      p.net[id].layer[l].ln_b = head ? nullptr : d.ln_b;
    }
  }
  p.out_states = b.out_states;
  p.out_chunks = b.out_chunks;
  p.out_q = b.out_q;
  p.out_index = s.imagine ? nullptr : b.out_index;
  p.out_rewards = b.out_rewards;
  p.out_masks = b.out_masks;
  auto at = [&b](int64_t off) -> float* { return off < 0 ? nullptr : b.workspace + off; };
  p.ws_noise = at(L.noise);
  p.ws_cand = at(L.cand);
  for (int i = 0; i < 2; ++i) {
    p.ws_act[i] = at(L.act[i]);
    p.ws_stats[i] = at(L.stats[i]);
    for (int m = 0; m < 3; ++m) {
      p.ws_mact[m][i] = at(L.mact[m][i]);
      p.ws_mstats[m][i] = at(L.mstats[m][i]);
    }
  }
  return p;
}

}  // namespace cuda
}  // namespace mac
