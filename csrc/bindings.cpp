// pybind11 bindings of the CPU core. Tensors arrive as numpy arrays that share torch's memory
// (zero copy, `t.detach().numpy()`); nothing here knows about torch. Every buffer is re-checked
// (dtype, C-contiguity, alignment, shape against the declared sizes, writability of outputs, no
// output overlapping another buffer) before any native code touches it, and a failed check raises
// TypeError / ValueError instead of reading or writing out of bounds. The GIL is released while
// the kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "mac/cpu_core.h"
#include "mac/isa.h"
#include "mac/kernel_math.h"
#include "mac/philox.h"

#ifdef MAC_HAVE_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using mac::cpu::Layer;
using mac::cpu::Net;

namespace {

constexpr py::ssize_t kMaxDim = INT_MAX / 2;

struct Span {
  const void* begin;
  const void* end;
  std::string name;
};

// The buffers of one call: references that keep them alive until the call returns (a sequence may
// hand out temporaries), and their address ranges, to reject outputs aliasing anything.
struct Buffers {
  std::vector<py::object> keep;
  std::vector<Span> inputs, outputs;
  void check_overlaps() const {
    auto overlap = [](const Span& a, const Span& b) { return a.begin < b.end && b.begin < a.end; };
    for (size_t i = 0; i < outputs.size(); ++i) {
      for (size_t j = i + 1; j < outputs.size(); ++j)
        if (overlap(outputs[i], outputs[j]))
          throw py::value_error("output " + outputs[i].name + " overlaps output " + outputs[j].name);
      for (const Span& in : inputs)
        if (overlap(outputs[i], in))
          throw py::value_error("output " + outputs[i].name + " overlaps input " + in.name);
    }
  }
};

std::string shape_str(const std::vector<py::ssize_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

// A checked numpy buffer: `T` dtype, exactly `shape`, C-contiguous, aligned; writable if asked.
template <class T>
T* checked(py::handle h, const std::string& name, const std::vector<py::ssize_t>& shape, bool writable,
           Buffers& bufs) {
  if (h.is_none()) throw py::type_error(name + " must be an array, got None");
  if (!py::isinstance<py::array>(h))
    throw py::type_error(name + " must be a numpy array (pass tensor.detach().numpy()), got " +
                         std::string(py::str(py::type::of(h).attr("__name__"))));
  auto arr = py::reinterpret_borrow<py::array>(h);
  if (!arr.dtype().is(py::dtype::of<T>()))
    throw py::type_error(name + " must have dtype " + std::string(py::str(py::dtype::of<T>())) + ", got " +
                         std::string(py::str(arr.dtype())));
  std::vector<py::ssize_t> got(arr.shape(), arr.shape() + arr.ndim());
  if (got != shape)
    throw py::value_error(name + " must have shape " + shape_str(shape) + ", got " + shape_str(got));
  if (!(arr.flags() & py::array::c_style))
    throw py::value_error(name + " must be C-contiguous");
  if (reinterpret_cast<uintptr_t>(arr.data()) % alignof(T) != 0)
    throw py::value_error(name + " is not aligned to its element size");
  if (writable && !arr.writeable()) throw py::value_error(name + " must be writable");
  bufs.keep.push_back(arr);
  const char* p = static_cast<const char*>(arr.data());
  Span span{p, p + arr.nbytes(), name};
  (writable ? bufs.outputs : bufs.inputs).push_back(span);
  return static_cast<T*>(const_cast<void*>(arr.data()));
}

int checked_dim(py::ssize_t v, const char* name, bool allow_zero = false) {
  if (v < (allow_zero ? 0 : 1) || v > kMaxDim)
    throw py::value_error(std::string(name) + " must be in [" + (allow_zero ? "0" : "1") + ", " +
                          std::to_string(kMaxDim) + "], got " + std::to_string(v));
  return static_cast<int>(v);
}

py::ssize_t dim_of(py::handle h, int axis, const std::string& name, int ndim) {
  if (!py::isinstance<py::array>(h)) throw py::type_error(name + " must be a numpy array");
  auto arr = py::reinterpret_borrow<py::array>(h);
  if (arr.ndim() != ndim)
    throw py::value_error(name + " must have " + std::to_string(ndim) + " dimensions, got " +
                          std::to_string(arr.ndim()));
  return arr.shape(axis);
}

// A network: a sequence of layers, each a 4-tuple (weight (out, in), bias (out,), norm_weight (out,),
// norm_bias (out,)); the last layer is the linear head and has None for both norm entries.
Net parse_net(py::handle obj, const std::string& name, int in_dim, int out_dim, Buffers& bufs) {
  if (!py::isinstance<py::sequence>(obj) || py::isinstance<py::str>(obj))
    throw py::type_error(name + " must be a sequence of layer tuples");
  auto seq = py::reinterpret_borrow<py::sequence>(obj);
  const size_t nl = seq.size();
  if (nl < 1) throw py::value_error(name + " has no layers");
  if (nl > 4096) throw py::value_error(name + " has too many layers");
  Net net;
  int prev = in_dim;
  for (size_t l = 0; l < nl; ++l) {
    const std::string lname = name + ".layer" + std::to_string(l);
    py::object item = seq[l];
    if (!py::isinstance<py::sequence>(item) || py::isinstance<py::str>(item))
      throw py::type_error(lname + " must be a tuple (weight, bias, norm_weight, norm_bias)");
    auto t = py::reinterpret_borrow<py::sequence>(item);
    if (t.size() != 4)
      throw py::value_error(lname + " must have 4 entries (weight, bias, norm_weight, norm_bias), got " +
                            std::to_string(t.size()));
    const bool head = l + 1 == nl;
    const int out = checked_dim(dim_of(t[0], 0, lname + ".weight", 2), (lname + ".weight rows").c_str());
    Layer layer;
    layer.in = prev;
    layer.out = out;
    layer.weight = checked<float>(t[0], lname + ".weight", {out, prev}, false, bufs);
    layer.bias = checked<float>(t[1], lname + ".bias", {out}, false, bufs);
    if (head) {
      if (!t[2].is_none() || !t[3].is_none())
        throw py::value_error(lname + " is the linear head: norm_weight and norm_bias must be None");
      if (out != out_dim)
        throw py::value_error(name + " must output " + std::to_string(out_dim) + " features, got " +
                              std::to_string(out));
    } else {
      layer.norm_weight = checked<float>(t[2], lname + ".norm_weight", {out}, false, bufs);
      layer.norm_bias = checked<float>(t[3], lname + ".norm_bias", {out}, false, bufs);
    }
    net.layers.push_back(layer);
    prev = out;
  }
  return net;
}

Net parse_optional_net(py::handle obj, const std::string& name, int in_dim, int out_dim, Buffers& bufs) {
  if (obj.is_none()) return Net{};
  return parse_net(obj, name, in_dim, out_dim, bufs);
}

mac::cpu::Noise parse_noise(py::handle noise, py::handle seed, const std::vector<py::ssize_t>& shape,
                            Buffers& bufs) {
  mac::cpu::Noise n;
  if (noise.is_none() == seed.is_none())
    throw py::value_error("exactly one of noise and seed must be given");
  if (!noise.is_none()) {
    n.data = checked<float>(noise, "noise", shape, false, bufs);
  } else {
    if (!py::isinstance<py::int_>(seed) || py::isinstance<py::bool_>(seed))
      throw py::type_error("seed must be an int");
    const unsigned long long v = PyLong_AsUnsignedLongLong(seed.ptr());
    if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
      PyErr_Clear();
      throw py::value_error("seed must be in [0, 2**64)");
    }
    n.seed = static_cast<uint64_t>(v);
  }
  return n;
}

mac::cpu::Options make_options(int num_threads, bool bf16, const std::string& parallel = "auto") {
  if (num_threads < 1 || num_threads > 4096)
    throw py::value_error("num_threads must be in [1, 4096], got " + std::to_string(num_threads));
  mac::cpu::Options o;
  o.num_threads = num_threads;
  o.bf16 = bf16;
  if (parallel == "auto") o.parallel = mac::cpu::Parallel::automatic;
  else if (parallel == "tiles") o.parallel = mac::cpu::Parallel::tiles;
  else if (parallel == "columns") o.parallel = mac::cpu::Parallel::columns;
  else throw py::value_error("parallel must be 'auto', 'tiles' or 'columns', got '" + parallel + "'");
  return o;
}

mac::Isa parse_isa(const std::string& isa) {
  try {
    return mac::cpu::resolve_isa(isa);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

bool bf16_available(mac::Isa isa) { return mac::cpu::isa_has_bf16(isa) && mac::cpu_has_avx512_bf16(); }

void check_bf16(const mac::cpu::Options& o, mac::Isa isa) {
  if (o.bf16 && !bf16_available(isa))
    throw py::value_error(std::string("bf16 mode needs the avx512 kernels on a CPU with AVX512-BF16 (ISA in use: ") +
                          mac::isa_name(isa) + ", avx512_bf16: " + (mac::cpu_has_avx512_bf16() ? "yes" : "no") + ")");
}

int default_threads() {
#ifdef MAC_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// ------------------------------------------------------------------------------ entry points

std::string py_best_of_n(py::handle states, py::handle goals, py::handle actor, py::handle critic,
                         int num_samples, py::handle noise, py::handle seed, py::handle out_chunks,
                         py::handle out_scores, py::handle out_indices, int num_threads,
                         const std::string& isa, bool bf16, const std::string& parallel) {
  Buffers bufs;
  mac::cpu::BestOfNArgs a;
  a.B = checked_dim(dim_of(states, 0, "states", 2), "B");
  a.S = checked_dim(dim_of(states, 1, "states", 2), "S");
  a.G = goals.is_none() ? 0 : checked_dim(dim_of(goals, 1, "goals", 2), "G");
  a.N = checked_dim(num_samples, "num_samples");
  a.states = checked<float>(states, "states", {a.B, a.S}, false, bufs);
  if (a.G) a.goals = checked<float>(goals, "goals", {a.B, a.G}, false, bufs);
  // C is the actor's output width: read it from the head before checking the rest.
  if (!py::isinstance<py::sequence>(actor) || py::len(actor) < 1)
    throw py::type_error("actor must be a non-empty sequence of layer tuples");
  {
    py::sequence seq = py::reinterpret_borrow<py::sequence>(actor);
    py::object head = seq[seq.size() - 1];
    if (!py::isinstance<py::sequence>(head) || py::len(head) != 4)
      throw py::value_error("actor head must be a 4-tuple");
    a.C = checked_dim(dim_of(py::reinterpret_borrow<py::sequence>(head)[0], 0, "actor head weight", 2), "C");
  }
  const int in_dim = a.S + a.G + a.C;
  if (static_cast<long long>(a.S) + a.G + a.C > kMaxDim) throw py::value_error("input too wide");
  a.actor = parse_net(actor, "actor", in_dim, a.C, bufs);
  a.critic = parse_net(critic, "critic", in_dim, 1, bufs);
  a.noise = parse_noise(noise, seed, {a.N, a.B, a.C}, bufs);
  a.out_chunks = checked<float>(out_chunks, "out_chunks", {a.B, a.C}, true, bufs);
  a.out_scores = checked<float>(out_scores, "out_scores", {a.B}, true, bufs);
  a.out_indices = checked<int64_t>(out_indices, "out_indices", {a.B}, true, bufs);
  bufs.check_overlaps();
  if (static_cast<long long>(a.N) * a.B > kMaxDim) throw py::value_error("num_samples * B too large");
  const auto opts = make_options(num_threads, bf16, parallel);
  const mac::Isa chosen = parse_isa(isa);
  check_bf16(opts, chosen);
  {
    py::gil_scoped_release release;
    mac::cpu::best_of_n(chosen, a, opts);
  }
  return mac::isa_name(chosen);
}

std::string py_imagine(py::handle states, py::handle goals, py::handle actor, py::handle critic,
                       py::handle dynamics, py::handle reward, py::handle success, int steps,
                       int num_samples, py::handle noise, py::handle seed, py::handle out_states,
                       py::handle out_chunks, py::handle out_rewards, py::handle out_masks,
                       py::handle out_q, int num_threads, const std::string& isa, bool bf16,
                       const std::string& parallel) {
  Buffers bufs;
  mac::cpu::ImagineArgs a;
  a.B = checked_dim(dim_of(states, 0, "states", 2), "B");
  a.S = checked_dim(dim_of(states, 1, "states", 2), "S");
  a.G = goals.is_none() ? 0 : checked_dim(dim_of(goals, 1, "goals", 2), "G");
  a.N = checked_dim(num_samples, "num_samples");
  a.H = checked_dim(steps, "steps");
  a.states = checked<float>(states, "states", {a.B, a.S}, false, bufs);
  if (a.G) a.goals = checked<float>(goals, "goals", {a.B, a.G}, false, bufs);
  a.C = checked_dim(dim_of(out_chunks, 2, "out_chunks", 3), "C");
  if (static_cast<long long>(a.S) + a.G + a.C > kMaxDim) throw py::value_error("input too wide");
  const int in_dim = a.S + a.G + a.C;
  a.actor = parse_net(actor, "actor", in_dim, a.C, bufs);
  a.critic = parse_net(critic, "critic", in_dim, 1, bufs);
  a.dynamics = parse_net(dynamics, "dynamics", a.S + a.C, a.S, bufs);
  a.reward = parse_optional_net(reward, "reward", in_dim, 1, bufs);
  a.success = parse_optional_net(success, "success", in_dim, 1, bufs);
  a.noise = parse_noise(noise, seed, {a.H, a.N, a.B, a.C}, bufs);
  a.out_states = checked<float>(out_states, "out_states", {a.H + 1, a.B, a.S}, true, bufs);
  a.out_chunks = checked<float>(out_chunks, "out_chunks", {a.H, a.B, a.C}, true, bufs);
  a.out_rewards = checked<float>(out_rewards, "out_rewards", {a.H, a.B}, true, bufs);
  a.out_masks = checked<float>(out_masks, "out_masks", {a.H, a.B}, true, bufs);
  a.out_q = checked<float>(out_q, "out_q", {a.H, a.B}, true, bufs);
  bufs.check_overlaps();
  if (static_cast<long long>(a.N) * a.B > kMaxDim) throw py::value_error("num_samples * B too large");
  const auto opts = make_options(num_threads, bf16, parallel);
  const mac::Isa chosen = parse_isa(isa);
  check_bf16(opts, chosen);
  {
    py::gil_scoped_release release;
    mac::cpu::imagine(chosen, a, opts);
  }
  return mac::isa_name(chosen);
}

void py_mlp_forward(py::handle x, py::handle net, py::handle out, int num_threads, const std::string& isa,
                    const std::string& parallel, bool bf16) {
  Buffers bufs;
  const int rows = checked_dim(dim_of(x, 0, "x", 2), "rows");
  const int in = checked_dim(dim_of(x, 1, "x", 2), "in_dim");
  const int od = checked_dim(dim_of(out, 1, "out", 2), "out_dim");
  const float* xp = checked<float>(x, "x", {rows, in}, false, bufs);
  Net n = parse_net(net, "net", in, od, bufs);
  float* yp = checked<float>(out, "out", {rows, od}, true, bufs);
  bufs.check_overlaps();
  const auto opts = make_options(num_threads, bf16, parallel);
  const mac::Isa chosen = parse_isa(isa);
  check_bf16(opts, chosen);
  py::gil_scoped_release release;
  mac::cpu::mlp_forward(chosen, n, xp, yp, rows, opts);
}

py::array_t<float> py_philox_normal(uint64_t seed, py::ssize_t n, uint64_t start) {
  if (n < 0) throw py::value_error("n must be >= 0");
  if (start != 0 && static_cast<uint64_t>(n) > UINT64_MAX - start + 1)  // i.e. start + n > 2^64
    throw py::value_error("start + n must be <= 2**64 (the length of a Philox noise stream), got start=" +
                          std::to_string(start) + ", n=" + std::to_string(n));
  py::array_t<float> out(n);
  float* p = out.mutable_data();
  {
    py::gil_scoped_release release;
    mac::philox_normal_fill(seed, start, static_cast<uint64_t>(n), p);
  }
  return out;
}

// A network given by its layer sizes only, [(in, out), ...] (the plan needs no weights).
Net shape_net(py::handle obj, const std::string& name, int in_dim, int out_dim) {
  Net net;
  if (obj.is_none()) return net;
  if (!py::isinstance<py::sequence>(obj) || py::isinstance<py::str>(obj))
    throw py::type_error(name + " must be a sequence of (in, out) layer sizes or None");
  auto seq = py::reinterpret_borrow<py::sequence>(obj);
  if (seq.size() < 1 || seq.size() > 4096) throw py::value_error(name + " must have 1..4096 layers");
  int prev = in_dim;
  for (size_t l = 0; l < seq.size(); ++l) {
    auto io = seq[l].cast<std::pair<py::ssize_t, py::ssize_t>>();
    Layer layer;
    layer.in = checked_dim(io.first, (name + " layer in").c_str());
    layer.out = checked_dim(io.second, (name + " layer out").c_str());
    if (layer.in != prev)
      throw py::value_error(name + ".layer" + std::to_string(l) + " takes " + std::to_string(layer.in) +
                            " features, expected " + std::to_string(prev));
    net.layers.push_back(layer);
    prev = layer.out;
  }
  if (prev != out_dim)
    throw py::value_error(name + " outputs " + std::to_string(prev) + " features, expected " +
                          std::to_string(out_dim));
  return net;
}

// The thread plan best_of_n / imagine would run for these sizes (what parallel="auto" decides).
py::dict py_parallel_plan(const std::string& kind, py::ssize_t B, py::ssize_t S, py::ssize_t G,
                          py::ssize_t C, py::ssize_t N, py::ssize_t H, py::dict nets, int num_threads,
                          const std::string& isa, const std::string& parallel) {
  const int b = checked_dim(B, "B"), s = checked_dim(S, "S"), g = checked_dim(G, "G", true);
  const int c = checked_dim(C, "C"), n = checked_dim(N, "num_samples"), h = checked_dim(H, "steps");
  if (static_cast<long long>(s) + g + c > kMaxDim) throw py::value_error("input too wide");
  auto get = [&](const char* k) { return nets.contains(k) ? py::object(nets[k]) : py::object(py::none()); };
  const auto opts = make_options(num_threads, false, parallel);
  const mac::Isa chosen = parse_isa(isa);
  mac::cpu::Plan plan;
  if (kind == "best_of_n") {
    mac::cpu::BestOfNArgs a;
    a.B = b; a.S = s; a.G = g; a.C = c; a.N = n;
    a.actor = shape_net(get("actor"), "actor", s + g + c, c);
    a.critic = shape_net(get("critic"), "critic", s + g + c, 1);
    if (a.actor.empty() || a.critic.empty()) throw py::value_error("actor and critic are required");
    plan = mac::cpu::plan_best_of_n(chosen, a, opts);
  } else if (kind == "imagine") {
    mac::cpu::ImagineArgs a;
    a.B = b; a.S = s; a.G = g; a.C = c; a.N = n; a.H = h;
    a.actor = shape_net(get("actor"), "actor", s + g + c, c);
    a.critic = shape_net(get("critic"), "critic", s + g + c, 1);
    a.dynamics = shape_net(get("dynamics"), "dynamics", s + c, s);
    a.reward = shape_net(get("reward"), "reward", s + g + c, 1);
    a.success = shape_net(get("success"), "success", s + g + c, 1);
    if (a.actor.empty() || a.critic.empty() || a.dynamics.empty())
      throw py::value_error("actor, critic and dynamics are required");
    plan = mac::cpu::plan_imagine(chosen, a, opts);
  } else {
    throw py::value_error("kind must be 'best_of_n' or 'imagine', got '" + kind + "'");
  }
  py::dict d;
  d["isa"] = mac::isa_name(chosen);
  d["threads"] = plan.threads;
  d["team_bon"] = plan.team_bon;
  d["team_step"] = plan.team_step;
  d["ntiles_bon"] = plan.ntiles_bon;
  d["ntiles_step"] = plan.ntiles_step;
  return d;
}

// Raw Philox4x32-10 block: isa "host" is the copy behind philox_normal (this file), otherwise the
// copy compiled into that instruction set's kernels (capped by the CPU, like every `isa`).
py::tuple py_philox4x32_10(std::vector<uint32_t> ctr, std::vector<uint32_t> key, const std::string& isa) {
  if (ctr.size() != 4 || key.size() != 2)
    throw py::value_error("counter must have 4 and key 2 unsigned 32-bit words");
  uint32_t out[4];
  if (isa == "host") {
    const mac::Philox4 r = mac::philox4x32_10(ctr[0], ctr[1], ctr[2], ctr[3], key[0], key[1]);
    for (int i = 0; i < 4; ++i) out[i] = r.v[i];
  } else {
    mac::cpu::philox_block(parse_isa(isa), ctr.data(), key.data(), out);
  }
  return py::make_tuple(out[0], out[1], out[2], out[3]);
}

py::array_t<float> py_gelu(py::handle x, const std::string& isa) {
  Buffers bufs;
  const py::ssize_t n = dim_of(x, 0, "x", 1);
  const float* xp = checked<float>(x, "x", {n}, false, bufs);
  py::array_t<float> out(n);
  mac::cpu::gelu(parse_isa(isa), xp, out.mutable_data(), n);
  return out;
}

py::array_t<float> py_gelu_scalar(py::handle x) {
  Buffers bufs;
  const py::ssize_t n = dim_of(x, 0, "x", 1);
  const float* xp = checked<float>(x, "x", {n}, false, bufs);
  py::array_t<float> out(n);
  float* y = out.mutable_data();
  for (py::ssize_t i = 0; i < n; ++i) y[i] = mac::gelu_tanh(xp[i]);
  return out;
}

py::array_t<float> py_tanh_scalar(py::handle x) {
  Buffers bufs;
  const py::ssize_t n = dim_of(x, 0, "x", 1);
  const float* xp = checked<float>(x, "x", {n}, false, bufs);
  py::array_t<float> out(n);
  float* y = out.mutable_data();
  for (py::ssize_t i = 0; i < n; ++i) y[i] = mac::fast_tanh(xp[i]);
  return out;
}

py::dict build_info() {
  py::dict d;
  d["cpu_isa"] = mac::isa_name(mac::detect_isa());
  d["cpu_isas_compiled"] = py::make_tuple("generic", "avx2", "avx512");
  d["cpu_avx512_bf16"] = mac::cpu_has_avx512_bf16();
#ifdef MAC_HAVE_OPENMP
  d["openmp"] = true;
  d["openmp_max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["openmp_max_threads"] = 1;
#endif
  d["compiler"] = __VERSION__;
  d["rollout_kernels"] = true;
  d["bf16_mode"] = bf16_available(mac::detect_isa());
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mac native CPU core";
  m.def("build_info", &build_info, "What this CPU core was compiled with and what it uses now");
  m.def("default_num_threads", &default_threads, "OpenMP's default thread count (OMP_NUM_THREADS)");
  m.def("best_of_n", &py_best_of_n, py::arg("states"), py::arg("goals"), py::arg("actor"),
        py::arg("critic"), py::arg("num_samples"), py::arg("noise"), py::arg("seed"),
        py::arg("out_chunks"), py::arg("out_scores"), py::arg("out_indices"),
        py::arg("num_threads") = 1, py::arg("isa") = "", py::arg("bf16") = false,
        py::arg("parallel") = "auto",
        "Fused best-of-N into the given outputs. Networks: sequences of (weight, bias, norm_weight, "
        "norm_bias) numpy float32 arrays (None norms for the head). Returns the ISA used.");
  m.def("imagine", &py_imagine, py::arg("states"), py::arg("goals"), py::arg("actor"), py::arg("critic"),
        py::arg("dynamics"), py::arg("reward"), py::arg("success"), py::arg("steps"),
        py::arg("num_samples"), py::arg("noise"), py::arg("seed"), py::arg("out_states"),
        py::arg("out_chunks"), py::arg("out_rewards"), py::arg("out_masks"), py::arg("out_q"),
        py::arg("num_threads") = 1, py::arg("isa") = "", py::arg("bf16") = false,
        py::arg("parallel") = "auto",
        "Fused imagined rollout into the given outputs. Returns the ISA used.");
  m.def("mlp_forward", &py_mlp_forward, py::arg("x"), py::arg("net"), py::arg("out"),
        py::arg("num_threads") = 1, py::arg("isa") = "", py::arg("parallel") = "auto",
        py::arg("bf16") = false, "One network on rows of x into out");
  m.def("philox_normal", &py_philox_normal, py::arg("seed"), py::arg("n"), py::arg("start") = 0,
        "Elements [start, start+n) of the Philox normal stream of seed (debug twin of mac.noise)");
  m.def("gelu", &py_gelu, py::arg("x"), py::arg("isa") = "", "Vectorised GELU(tanh) of the ISA copy");
  m.def("gelu_scalar", &py_gelu_scalar, py::arg("x"), "Scalar GELU(tanh) of mac/kernel_math.h");
  m.def("tanh_scalar", &py_tanh_scalar, py::arg("x"), "Scalar fast_tanh of mac/kernel_math.h");
  m.def("gemm_peak", [](int reps, int num_threads, const std::string& isa) {
          const auto opts = make_options(num_threads, false);
          if (reps < 1) throw py::value_error("reps must be >= 1");
          const mac::Isa chosen = parse_isa(isa);
          py::gil_scoped_release release;
          return mac::cpu::gemm_peak_probe(chosen, reps, opts.num_threads);
        },
        py::arg("reps") = 2000, py::arg("num_threads") = 1, py::arg("isa") = "",
        "GFLOP/s of the micro-kernel on an in-cache problem (the practical FMA peak)");
  m.def("parallel_plan", &py_parallel_plan, py::arg("kind"), py::arg("B"), py::arg("S"), py::arg("G"),
        py::arg("C"), py::arg("num_samples"), py::arg("steps"), py::arg("nets"),
        py::arg("num_threads") = 1, py::arg("isa") = "", py::arg("parallel") = "auto",
        "The thread plan best_of_n / imagine run for these sizes: threads, column (team) or tile "
        "split per phase. nets: name -> [(in, out), ...] layer sizes (or None).");
  m.def("philox4x32_10", &py_philox4x32_10, py::arg("counter"), py::arg("key"), py::arg("isa") = "host",
        "Raw Philox4x32-10 of the copy in `isa` ('host' or an ISA copy): 4 counter + 2 key words -> 4 words");
  m.def("resolve_isa", [](const std::string& isa) { return std::string(mac::isa_name(parse_isa(isa))); },
        py::arg("isa") = "", "The ISA copy a call with this `isa` argument would use");
}
