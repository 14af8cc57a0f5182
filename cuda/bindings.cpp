// pybind11 bindings of the CUDA core (mac._C_cuda). Like the CPU bindings, nothing here knows
// torch: python/mac/_cuda_core.py passes data pointers (ints), shapes and torch's current stream,
// after checking devices, dtypes, shapes and contiguity. This file re-checks the shapes and the
// chaining of every network (plan.h: check_shapes), that every pointer the program needs is given,
// and that the workspace is as large as the plan says, before anything is launched.
//
// Everything except best_of_n / imagine / kernel_info works without a GPU: launch_plan / plan
// (tiling, phases, work items, workspace layout) and emulate (the program executed on host memory).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_core.h"
#include "device_query.h"
#include "plan.h"
#include "tiling.h"

namespace py = pybind11;
namespace mc = mac::cuda;

namespace {

const char* kNetNames[mc::kNumNets] = {"actor", "critic", "dynamics", "reward", "success"};

int parse_precision(const std::string& p, bool allow_fp32) {
  if (p == "tf32") return mc::kTf32;
  if (p == "bf16") return mc::kBf16;
  if (p == "fp32" && allow_fp32) return mc::kFp32Emulated;
  throw py::value_error("precision must be 'tf32' or 'bf16'" + std::string(allow_fp32 ? " (or 'fp32' when emulating)" : "") +
                        ", got '" + p + "'");
}

uintptr_t ptr_of(const py::dict& d, const char* key) {
  if (!d.contains(key) || d[key].is_none()) return 0;
  return d[key].cast<uintptr_t>();
}

int int_of(const py::dict& d, const char* key, int dflt) {
  if (!d.contains(key) || d[key].is_none()) return dflt;
  return d[key].cast<int>();
}

template <class T>
T* as_ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// args: see python/mac/_cuda_core.py (_launch_args).
struct Call {
  mc::Shapes shapes;
  mc::Buffers buffers;
  int precision = mc::kTf32;
};

Call parse_call(const py::dict& d, bool allow_fp32) {
  Call c;
  mc::Shapes& s = c.shapes;
  mc::Buffers& b = c.buffers;
  const std::string kind = d["kind"].cast<std::string>();
  if (kind != "best_of_n" && kind != "imagine") throw py::value_error("kind must be 'best_of_n' or 'imagine'");
  s.imagine = kind == "imagine";
  s.B = int_of(d, "B", 0);
  s.N = int_of(d, "N", 0);
  s.H = int_of(d, "H", 1);
  s.S = int_of(d, "S", 0);
  s.G = int_of(d, "G", 0);
  s.C = int_of(d, "C", 0);
  s.seeded = d.contains("seed") && !d["seed"].is_none();
  if (s.seeded) b.seed = d["seed"].cast<uint64_t>();
  c.precision = parse_precision(d.contains("precision") ? d["precision"].cast<std::string>() : "tf32", allow_fp32);
  const py::dict nets = d["nets"].cast<py::dict>();
  for (int id = 0; id < mc::kNumNets; ++id) {
    if (!nets.contains(kNetNames[id]) || nets[kNetNames[id]].is_none()) continue;
    for (const py::handle& h : nets[kNetNames[id]].cast<py::list>()) {
      const py::tuple t = h.cast<py::tuple>();
      if (t.size() != 6) throw py::value_error("a layer is (weight, bias, norm_weight, norm_bias, in, out)");
      mc::LayerDesc l{};
      l.w = as_ptr<const float>(t[0].cast<uintptr_t>());
      l.b = as_ptr<const float>(t[1].cast<uintptr_t>());
      l.ln_w = t[2].is_none() ? nullptr : as_ptr<const float>(t[2].cast<uintptr_t>());
      l.ln_b = t[3].is_none() ? nullptr : as_ptr<const float>(t[3].cast<uintptr_t>());
      l.in = t[4].cast<int>();
      l.out = t[5].cast<int>();
      b.nets[id].push_back(l);
      s.nets[id].emplace_back(l.in, l.out);
    }
  }
  b.states = as_ptr<const float>(ptr_of(d, "states"));
  b.goals = as_ptr<const float>(ptr_of(d, "goals"));
  b.noise = as_ptr<const float>(ptr_of(d, "noise"));
  b.out_states = as_ptr<float>(ptr_of(d, "out_states"));
  b.out_chunks = as_ptr<float>(ptr_of(d, "out_chunks"));
  b.out_q = as_ptr<float>(ptr_of(d, "out_q"));
  b.out_index = as_ptr<int64_t>(ptr_of(d, "out_index"));
  b.out_rewards = as_ptr<float>(ptr_of(d, "out_rewards"));
  b.out_masks = as_ptr<float>(ptr_of(d, "out_masks"));
  b.workspace = as_ptr<float>(ptr_of(d, "workspace"));
  b.workspace_floats = d.contains("workspace_floats") ? d["workspace_floats"].cast<int64_t>() : 0;
  return c;
}

py::dict plan_dict(const mc::Plan& plan, const mc::Shapes& s, int num_sms, int blocks_per_sm) {
  static const char* slot_names[] = {"noise", "copy", "actor", "critic", "select", "dynamics", "reward", "success", "reward_mask"};
  py::dict d;
  d["workspace_floats"] = plan.ws.total;
  py::dict regions;
  auto reg = [&regions](const std::string& name, int64_t off, int64_t size) {
    if (off >= 0) regions[py::str(name)] = py::make_tuple(off, size);
  };
  const mc::WorkspaceLayout& L = plan.ws;
  reg("noise", L.noise, L.noise_size);
  reg("cand", L.cand, L.cand_size);
  for (int i = 0; i < 2; ++i) {
    reg("act" + std::to_string(i), L.act[i], L.act_size);
    reg("stats" + std::to_string(i), L.stats[i], L.stats_size);
    for (int m = 0; m < 3; ++m) {
      reg(std::string(kNetNames[mc::kDynamics + m]) + "_act" + std::to_string(i), L.mact[m][i], L.mact_size[m]);
      reg(std::string(kNetNames[mc::kDynamics + m]) + "_stats" + std::to_string(i), L.mstats[m][i], L.mstats_size[m]);
    }
  }
  d["regions"] = regions;
  d["prologue_phases"] = plan.prologue_phases;
  d["step_phases"] = plan.step_phases;
  d["total_phases"] = plan.total_phases;
  d["steps"] = s.imagine ? s.H : 1;
  py::list items, slots;
  for (size_t i = 0; i < plan.phase_items.size(); ++i) {
    items.append(py::cast(plan.phase_items[i]));
    py::list names;
    for (int sl : plan.phase_slots[i]) names.append(slot_names[sl]);
    slots.append(names);
  }
  d["phase_items"] = items;
  d["phase_ops"] = slots;
  d["max_items"] = plan.max_items;
  d["grid"] = num_sms > 0 ? mc::grid_size(plan.max_items, num_sms, blocks_per_sm) : 0;
  d["threads"] = mc::kThreads;
  d["smem_bytes"] = py::dict(py::arg("tf32") = mc::smem_bytes(mc::kTf32), py::arg("bf16") = mc::smem_bytes(mc::kBf16));
  d["tile"] = py::dict(py::arg("BM") = mc::kBM, py::arg("BN") = mc::kBN, py::arg("BK") = mc::kBK);
  d["program_bytes"] = plan.program_bytes;
  d["max_layers"] = mc::kMaxLayers;
  return d;
}

std::vector<std::pair<int, int>> layers_from_hidden(const py::object& hidden, int in, int out) {
  std::vector<std::pair<int, int>> layers;
  if (hidden.is_none()) return layers;
  int prev = in;
  for (const py::handle& h : hidden) {
    const int w = h.cast<int>();
    layers.emplace_back(prev, w);
    prev = w;
  }
  layers.emplace_back(prev, out);
  return layers;
}

py::dict launch_plan(int B, int N, int S, int C, int G, int H, const py::object& actor, const py::object& critic,
                     const py::object& dynamics, const py::object& reward, const py::object& success, bool imagine,
                     bool seeded, int num_sms, int blocks_per_sm) {
  mc::Shapes s;
  s.B = B;
  s.N = N;
  s.S = S;
  s.C = C;
  s.G = G;
  s.H = imagine ? H : 1;
  s.imagine = imagine;
  s.seeded = seeded;
  const int sgc = S + G + C;
  s.nets[mc::kActor] = layers_from_hidden(actor, sgc, C);
  s.nets[mc::kCritic] = layers_from_hidden(critic, sgc, 1);
  s.nets[mc::kDynamics] = layers_from_hidden(dynamics, S + C, S);
  s.nets[mc::kReward] = layers_from_hidden(reward, sgc, 1);
  s.nets[mc::kSuccess] = layers_from_hidden(success, sgc, 1);
  return plan_dict(mc::make_plan(s), s, num_sms, blocks_per_sm);
}

void add_range(std::vector<mc::Range>& v, const void* p, int64_t bytes) {
  if (p && bytes > 0) v.emplace_back(reinterpret_cast<uintptr_t>(p), reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(bytes));
}

// Address ranges of every buffer of a call, from its shapes (for the emulator's bounds checks).
void call_ranges(const Call& c, const mc::WorkspaceLayout& L, std::vector<mc::Range>& readable,
                 std::vector<mc::Range>& writable) {
  const mc::Shapes& s = c.shapes;
  const mc::Buffers& b = c.buffers;
  const int64_t steps = s.imagine ? s.H : 1;
  const int64_t B = s.B, S = s.S, G = s.G, C = s.C, N = s.N;
  add_range(readable, b.states, B * S * 4);
  add_range(readable, b.goals, B * G * 4);
  add_range(readable, b.noise, steps * N * B * C * 4);
  for (int id = 0; id < mc::kNumNets; ++id) {
    for (size_t l = 0; l < b.nets[id].size(); ++l) {
      const mc::LayerDesc& d = b.nets[id][l];
      add_range(readable, d.w, static_cast<int64_t>(d.in) * d.out * 4);
      add_range(readable, d.b, static_cast<int64_t>(d.out) * 4);
      add_range(readable, d.ln_w, static_cast<int64_t>(d.out) * 4);
      add_range(readable, d.ln_b, static_cast<int64_t>(d.out) * 4);
    }
  }
  add_range(writable, b.out_states, (steps + 1) * B * S * 4);
  add_range(writable, b.out_chunks, steps * B * C * 4);
  add_range(writable, b.out_q, steps * B * 4);
  if (!s.imagine) add_range(writable, b.out_index, B * 8);
  add_range(writable, b.out_rewards, steps * B * 4);
  add_range(writable, b.out_masks, steps * B * 4);
  add_range(writable, b.workspace, L.total * 4);
  readable.insert(readable.end(), writable.begin(), writable.end());
}

py::dict run(const py::dict& args, const char* expect_kind) {
  if (args["kind"].cast<std::string>() != expect_kind)
    throw py::value_error(std::string("this entry point runs kind='") + expect_kind + "'");
  Call c = parse_call(args, false);
  const mc::Plan plan = mc::make_plan(c.shapes);
  const mc::Program p = mc::build_program(c.shapes, c.buffers, plan.ws);
  const int device = int_of(args, "device", 0);
  const uintptr_t stream = ptr_of(args, "stream");
  mc::LaunchInfo info;
  {
    py::gil_scoped_release release;
    info = mc::launch(p, c.precision, plan.max_items, device, stream);
  }
  py::dict d;
  d["grid"] = info.grid;
  d["blocks_per_sm"] = info.blocks_per_sm;
  d["num_sms"] = info.num_sms;
  d["smem_bytes"] = info.smem_bytes;
  d["phases"] = plan.total_phases;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "mac native CUDA core";
  m.def("build_info", []() {
    py::dict d;
    d["cuda_archs"] = MAC_CUDA_ARCHS;
    d["cuda_runtime_version"] = mc::runtime_version();
    d["kernel"] = "persistent cooperative kernel, WMMA TF32 (default) / bf16, 128x128x32 tiles";
    d["max_layers_per_net"] = mc::kMaxLayers;
    return d;
  });
  m.def("device_status", []() {
    const auto s = mc::device_status();
    py::dict d;
    d["usable"] = s.usable;
    d["device_count"] = s.device_count;
    d["reason"] = s.reason;
    if (!s.devices.empty()) {
      py::list devs;
      for (const auto& dev : s.devices)
        devs.append(py::str("{}: {} (sm_{}{}, {} SMs){}").format(dev.index, dev.name, dev.major, dev.minor, dev.num_sms,
                                                               dev.usable ? "" : " - unusable: needs sm_80 or newer"));
      d["devices"] = devs;
      d["driver_version"] = mc::driver_version();
    }
    return d;
  }, "Whether a CUDA device can run these kernels now, and if not, why");

  m.def("launch_plan", &launch_plan,
        "Tiling / phases / work items / workspace layout of a call (no GPU needed). Networks are given "
        "by their hidden widths (None = absent); inputs are [s, g, z] / [s, g, c] / [s, c].",
        py::kw_only(), py::arg("B"), py::arg("N"), py::arg("S"), py::arg("C"), py::arg("G") = 0, py::arg("H") = 1,
        py::arg("actor"), py::arg("critic"), py::arg("dynamics") = py::none(), py::arg("reward") = py::none(),
        py::arg("success") = py::none(), py::arg("imagine") = false, py::arg("seeded") = false,
        py::arg("num_sms") = 0, py::arg("blocks_per_sm") = mc::kMinBlocksPerSm);
  m.def("plan", [](const py::dict& args) {
    Call c = parse_call(args, true);
    return plan_dict(mc::make_plan(c.shapes), c.shapes, 0, 0);
  }, "launch_plan for a call's argument dict (see mac._cuda_core)");
  m.def("best_of_n", [](const py::dict& args) { return run(args, "best_of_n"); },
        "Launch best-of-N on args['stream'] (asynchronous)");
  m.def("imagine", [](const py::dict& args) { return run(args, "imagine"); },
        "Launch an imagined rollout on args['stream'] (asynchronous)");
  m.def("emulate", [](const py::dict& args) {
    Call c = parse_call(args, true);
    const mc::Plan plan = mc::make_plan(c.shapes);
    const mc::Program p = mc::build_program(c.shapes, c.buffers, plan.ws);
    std::vector<mc::Range> readable, writable;
    call_ranges(c, plan.ws, readable, writable);
    py::gil_scoped_release release;
    mc::emulate(p, c.precision, readable, writable);
  }, "Run the kernel's program on HOST memory (CPU tensors): the GPU-free test path");
  m.def("kernel_info", [](int device, const std::string& precision) {
    const mc::KernelInfo k = mc::kernel_info(parse_precision(precision, false), device);
    py::dict d;
    d["num_regs"] = k.num_regs;
    d["local_bytes"] = k.local_bytes;
    d["static_smem_bytes"] = k.static_smem_bytes;
    d["dynamic_smem_bytes"] = k.dynamic_smem_bytes;
    d["max_threads"] = k.max_threads;
    d["blocks_per_sm"] = k.blocks_per_sm;
    d["num_sms"] = k.num_sms;
    d["ptx_version"] = k.ptx_version;
    d["binary_version"] = k.binary_version;
    return d;
  }, py::arg("device") = 0, py::arg("precision") = "tf32");
}
