"""Worker process of tests/test_native_fuzz.py.

Reads one JSON case per line on stdin, builds the (hostile) tensors it describes, calls the native
entry point and answers one JSON line on stdout:

* ``{"status": "ok"}``: the call returned and its result is correct (see :func:`check_*`);
* ``{"status": "error", "type", "message"}``: the entry point itself raised a clear Python error
  (TypeError / ValueError with a message);
* ``{"status": "wrong" | "unexpected", ...}``: a wrong result, or the entry point raised another
  exception (another type, or an empty message);
* ``{"status": "harness_error", "type", "message"}``: this file's own code raised, while building
  the inputs or checking the result (a bug of the harness, never a rejection).

Only an exception raised inside :func:`call_api`, the one way runners call the entry point under
test, can be a rejection; a ValueError from, say, a numpy shape mismatch in a checker or from the
float64 reference is a ``harness_error``. Answers also carry the runner's ``notes`` about the case
(e.g. ``noop``: a raw buffer "mutation" that changed nothing, so the case is valid input).

A crash or a hang in native code kills or stalls only this process; the test reports it as a
failure with the case that caused it. Not collected by pytest (no ``test_`` prefix). To replay a
case, feed its JSON line to ``python tests/_fuzz_worker.py`` (with the tree's python/ on PYTHONPATH).

"Correct" means as accurate as the PyTorch float32 reference, row by row (the rule of
tests/test_native_cpu.py, made robust to ill-conditioned tiny networks): against a float64
evaluation of the same networks and noise, the native error of each row must be at most 8x the
larger of torch float32's error and the change of the float64 result under float32-sized (2^-23
relative) perturbations of the weights, plus 1e-5 x the row's magnitude. (A width-2 LayerNorm, say,
amplifies rounding by up to 1/sqrt(eps) = 1000; the perturbed run measures that.) Argmax and
success-threshold decisions may differ only where the float64 margin is within 16x those errors (or
1e-4), and rollout rows are compared only up to such a near-tie. Rows whose float64 reference is
not finite (NaN / inf inputs) must still satisfy the invariants: indices in [0, N), chunks in
[-1, 1] or NaN, masks in {0, 1}, states[0] equal to the input states.
"""

from __future__ import annotations

import builtins
import copy
import json
import math
import os
import sys
import traceback

import numpy as np
import torch

torch.set_num_threads(1)

import mac._C as C_ext  # noqa: E402
import mac.rollout as R  # noqa: E402
from mac import _cpu_core as cc  # noqa: E402
from mac.nets import MLP  # noqa: E402
from mac.noise import philox_normal, philox_normal_numpy  # noqa: E402
from mac.reference import concat_inputs  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16, "int64": torch.int64}
CLEAR_ERRORS = (TypeError, ValueError)


class Wrong(AssertionError):
    """A checker found the entry point's result wrong."""


class Rejected(Exception):
    """The entry point under test raised ``exc`` (see :func:`call_api`)."""

    def __init__(self, exc: Exception):
        super().__init__(exc)
        self.exc = exc


def call_api(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, the call of the entry point under test. Its exceptions, and only
    those, become :class:`Rejected`: the arguments are evaluated before it is entered, so an
    exception in building them (or in checking the result) stays a harness error."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise Rejected(exc) from exc


# ------------------------------------------------------------------------------------ building

def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """``t``'s values in a hostile memory layout (same shape and values)."""
    if kind == "contig" or t.dim() == 0:
        return t
    if kind == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind == "strided":
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1] + 1, dtype=t.dtype)
        wide[..., 1::2] = t
        return wide[..., 1::2]
    if kind == "expanded" and t.shape[0] > 0:
        # overlapping memory (stride 0 along dim 0): every row aliases row 0
        return t[:1].expand(t.shape)
    return t


def poison(t: torch.Tensor, kind: str | None, where: float) -> torch.Tensor:
    if kind is None or t.numel() == 0 or not t.is_floating_point():
        return t
    t = t.clone()
    flat = t.view(-1)
    flat[int(where * flat.numel()) % flat.numel()] = {"nan": math.nan, "inf": math.inf,
                                                      "-inf": -math.inf}[kind]
    return t


def hostile(t: torch.Tensor, spec: dict, name: str) -> torch.Tensor:
    """Applies the case's poison, layout, dtype and device for tensor ``name``."""
    t = poison(t, spec.get("poison", {}).get(name), spec.get("where", 0.3))
    t = layout(t, spec.get("layout", {}).get(name, "contig"))
    dt = spec.get("dtype", {}).get(name)
    if dt:
        t = t.to(DTYPES[dt])
    if spec.get("device", {}).get(name) == "meta":
        t = t.to("meta")
    return t


def make_net(spec, name, in_dim, out_dim, gen):
    net = MLP(in_dim, out_dim, spec["hidden"])
    with torch.no_grad():
        for m in net.layers:
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / math.sqrt(m.in_features))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            else:
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    target = spec.get("weights")  # hostile first-layer weight of this net
    if target == name:
        lin = net.layers[0]
        w = hostile(lin.weight.detach(), spec, "weight")
        if w.is_floating_point():
            lin.weight = torch.nn.Parameter(w, requires_grad=False)
        else:  # an integer Parameter cannot exist: a plain tensor attribute
            del lin.weight
            lin.weight = w
    return net


def build(spec):
    gen = torch.Generator().manual_seed(spec["seed"] % 2 ** 63)
    B, S, G, C, N = spec["B"], spec["S"], spec["G"], spec["C"], spec["N"]
    nets = {}
    if min(S, C) >= 1:
        nets = {
            "actor": make_net(spec, "actor", S + G + C, C, gen),
            "critic": make_net(spec, "critic", S + G + C, 1, gen),
            "dynamics": make_net(spec, "dynamics", S + C, S, gen),
            "reward": make_net(spec, "reward", S + G + C, 1, gen) if spec.get("reward", True) else None,
            "success": make_net(spec, "success", S + G + C, 1, gen) if spec.get("success", True) else None,
        }
    states = hostile(torch.randn(B, S, generator=gen), spec, "states")
    goals = hostile(torch.randn(B, G, generator=gen), spec, "goals") if G else None
    return nets, states, goals


def noise_args(spec, shape):
    mode = spec.get("noise", "seed")
    seed = spec["noise_seed"]
    if mode == "seed":
        return None, seed
    z = philox_normal(seed % 2 ** 63, shape) if all(d > 0 for d in shape) else torch.zeros(shape)
    z = hostile(z, spec, "noise")
    return (z, seed) if mode == "both" else (z, None)


# ------------------------------------------------------------------------------------ checking

def as64(net):
    return None if net is None else copy.deepcopy(net).double()


def f64(t):
    return None if t is None else t.detach().to("cpu", torch.float64).contiguous()


def f32(t):
    return None if t is None else t.detach().to("cpu", torch.float32).contiguous()


def all_q(s, g, actor, critic, z):
    return R.candidate_scores(s, g, actor, critic, z)[1]


def perturbed(net64, seed, rel=2.0 ** -23):
    """A float64 copy of ``net64`` with every parameter scaled by 1 + U(-rel, rel): float32-sized
    perturbations, whose effect on the outputs measures how ill-conditioned the network is there."""
    if net64 is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    p = copy.deepcopy(net64)
    with torch.no_grad():
        for prm in p.parameters():
            prm.mul_(1 + rel * (2 * torch.rand(prm.shape, generator=gen, dtype=torch.float64) - 1))
    return p


def decided(q64, *others):
    """Columns of (N, B) critic values whose float64 argmax is finite and clear of the float32-sized
    errors of ``others`` (the same values computed in float32 / with perturbed weights)."""
    finite = torch.isfinite(q64).all(0)
    if q64.shape[0] == 1:
        return finite
    top = q64.topk(2, dim=0).values
    err = torch.stack([(q.double() - q64).abs().nan_to_num(math.inf).amax(0) for q in others]).amax(0)
    return finite & (top[0] - top[1] > torch.clamp(16 * err, min=1e-4))


def _row_err(x, ref, rows):
    """Per row, the largest |x - ref|: 0 where both are NaN or the same infinity (poisoned inputs
    propagate), inf where only one of them is not finite."""
    x, ref = x.double(), ref.double()
    d = (x - ref).abs()
    same = (torch.isnan(x) & torch.isnan(ref)) | (x == ref)
    d = torch.where(same, torch.zeros_like(d), d.nan_to_num(nan=math.inf))
    return d.reshape(*rows.shape, -1).amax(-1)[rows]


def close_rows(name, nat, ref64, rows, *others):
    """Per row: native error vs float64 <= 8 x the largest error of ``others`` (torch float32, the
    float64 reference with float32-sized weight perturbations) + 1e-5 x the row's magnitude."""
    if not bool(rows.any()):
        return
    e_nat = _row_err(nat, ref64, rows)
    e_ref = torch.stack([_row_err(o, ref64, rows).nan_to_num(math.inf) for o in others]).amax(0)
    finite = ref64.double().abs().nan_to_num(nan=0.0, posinf=0.0)      # the magnitude of finite values
    scale = torch.clamp(finite.reshape(*rows.shape, -1).amax(-1)[rows], min=1.0)
    bad = ~(e_nat <= 8 * e_ref + 1e-5 * scale)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise Wrong(f"{name}: native error {float(e_nat[i]):.3g} vs float64, reference errors "
                    f"{float(e_ref[i]):.3g}, magnitude {float(scale[i]):.3g}")


def invariants(out, N, states=None):
    if hasattr(out, "indices") and out.indices is not None and out.indices.numel():
        if not bool(((out.indices >= 0) & (out.indices < N)).all()):
            raise Wrong(f"indices outside [0, {N}): {out.indices}")
    ch = out.chunks
    if not bool((ch.isnan() | (ch.abs() <= 1)).all()):
        raise Wrong("chunks outside [-1, 1]")
    if hasattr(out, "masks") and not bool(((out.masks == 0) | (out.masks == 1)).all()):
        raise Wrong("masks outside {0, 1}")
    if states is not None and not torch.equal(out.states[0].nan_to_num(7.0), states.nan_to_num(7.0)):
        raise Wrong("states[0] differs from the start states")


def check_best_of_n(out, nets, s, g, z):
    a32, c32 = nets["actor"], nets["critic"]
    a64, c64 = as64(a32), as64(c32)
    ap, cp = perturbed(a64, 1), perturbed(c64, 2)
    B = s.shape[0]
    invariants(out, z.shape[0])
    if tuple(out.chunks.shape) != (B, a32.out_dim) or out.indices.dtype != torch.int64:
        raise Wrong(f"bad output shapes {tuple(out.chunks.shape)}")
    s64, g64, z64 = f64(s), f64(g), f64(z)
    q64 = all_q(s64, g64, a64, c64, z64)
    ok = decided(q64, all_q(f32(s), f32(g), a32, c32, f32(z)), all_q(s64, g64, ap, cp, z64))
    ref64 = R.best_of_n_reference(s64, g64, a64, c64, z64)
    ref32 = R.best_of_n_reference(f32(s), f32(g), a32, c32, f32(z))
    refp = R.best_of_n_reference(s64, g64, ap, cp, z64)
    if not torch.equal(out.indices[ok], ref64.indices[ok]):
        raise Wrong(f"argmax differs from float64 where clear: {out.indices[ok]} vs {ref64.indices[ok]}")
    ok &= (ref32.indices == ref64.indices) & (refp.indices == ref64.indices)
    close_rows("chunks", out.chunks, ref64.chunks, ok, ref32.chunks, refp.chunks)
    close_rows("scores", out.scores, ref64.scores, ok, ref32.scores, refp.scores)


def check_imagine(out, nets, s, g, z):
    n64 = {k: as64(v) for k, v in nets.items()}
    npt = {k: perturbed(v, i) for i, (k, v) in enumerate(n64.items())}
    H, N, B, _ = z.shape
    invariants(out, N, f32(s))
    s64, g64, z64 = f64(s), f64(g), f64(z)
    order = ("actor", "critic", "dynamics", "reward", "success")
    ref64 = R.imagine_reference(s64, g64, *(n64[k] for k in order), z64)
    ref32 = R.imagine_reference(f32(s), f32(g), *(nets[k] for k in order), f32(z))
    refp = R.imagine_reference(s64, g64, *(npt[k] for k in order), z64)
    # Rows stay comparable while no decision (argmax, success threshold) was within float32-sized
    # error of flipping, and the float64 trajectory is finite.
    valid = torch.ones(H + 1, B, dtype=torch.bool)
    valid[0] = torch.isfinite(s64).all(1)
    for k in range(H):
        sk = ref64.states[k]
        q64 = all_q(sk, g64, n64["actor"], n64["critic"], z64[k])
        ok = decided(q64, all_q(sk.float(), f32(g), nets["actor"], nets["critic"], f32(z[k])),
                     all_q(sk, g64, npt["actor"], npt["critic"], z64[k]))
        ok &= torch.isfinite(ref64.states[k + 1]).all(1)
        if nets["success"] is not None:
            x64 = concat_inputs(sk, g64, ref64.chunks[k])
            l64 = n64["success"](x64).squeeze(-1)
            err = torch.maximum((nets["success"](x64.float()).squeeze(-1).double() - l64).abs(),
                                (npt["success"](x64).squeeze(-1) - l64).abs()).nan_to_num(math.inf)
            ok &= l64.abs() > torch.clamp(16 * err, min=1e-4)
        valid[k + 1] = valid[k] & ok
    step = valid[1:]
    for name in ("chunks", "rewards", "masks", "q"):
        close_rows(name, getattr(out, name), getattr(ref64, name), step, getattr(ref32, name),
                   getattr(refp, name))
    close_rows("states", out.states, ref64.states, valid, ref32.states, refp.states)


# ------------------------------------------------------------------------------------ entry points
# A runner builds its case's inputs, calls the entry point under test through call_api and checks
# the result (raising Wrong if it is wrong). ``notes`` takes what the test must know about the case
# whatever the outcome; run() sends it with every answer.

def noise_used(noise, seed, shape):
    """The noise the entry point drew its samples from: the explicit tensor, else seed's stream."""
    return noise if noise is not None else philox_normal(seed, shape)


def run_best_of_n(spec, notes):
    nets, s, g = build(spec)
    shape = (spec["N"], spec["B"], spec["C"])
    noise, seed = noise_args(spec, shape)
    out = call_api(R.best_of_n, s, g, actor=nets.get("actor"), critic=nets.get("critic"),
                   num_samples=spec["N"], noise=noise, seed=seed, backend="cpu")
    check_best_of_n(out, nets, s, g, noise_used(noise, seed, shape))


def run_imagine(spec, notes):
    nets, s, g = build(spec)
    shape = (spec["H"], spec["N"], spec["B"], spec["C"])
    noise, seed = noise_args(spec, shape)
    out = call_api(R.imagine, s, g, actor=nets.get("actor"), critic=nets.get("critic"),
                   dynamics=nets.get("dynamics"), reward=nets.get("reward"),
                   success=nets.get("success"), steps=spec["H"], num_samples=spec["N"], noise=noise,
                   seed=seed, backend="cpu")
    check_imagine(out, nets, s, g, noise_used(noise, seed, shape))


def run_cc(spec, notes):
    """mac._cpu_core's entry points directly, with its threading / ISA / parallel options."""
    nets, s, g = build(spec)
    kw = dict(num_threads=spec.get("threads", 1), isa=spec.get("isa") or None,
              parallel=spec.get("parallel", "auto"))
    B, S, G, C, N, H = (spec[k] for k in "BSGCNH")
    if spec["kind"] == "mlp_forward":
        x = hostile(torch.randn(B, S + G + C), spec, "states")
        y = call_api(cc.mlp_forward, nets.get("critic"), x, **kw)
        critic64 = as64(nets["critic"])
        r32, r64, rp = nets["critic"](f32(x)), critic64(f64(x)), perturbed(critic64, 3)(f64(x))
        if tuple(y.shape) != tuple(r64.shape):
            raise Wrong("bad output shape")
        close_rows("mlp", y, r64, torch.isfinite(r64).all(1), r32, rp)
    elif spec["kind"] == "cc_best_of_n":
        shape = (N, B, C)
        noise, seed = noise_args(spec, shape)
        out = call_api(cc.best_of_n, s, g, nets.get("actor"), nets.get("critic"), N, noise, seed, **kw)
        check_best_of_n(out, nets, s, g, noise_used(noise, seed, shape))
    else:
        shape = (H, N, B, C)
        noise, seed = noise_args(spec, shape)
        out = call_api(cc.imagine, s, g, nets.get("actor"), nets.get("critic"), nets.get("dynamics"),
                       nets.get("reward"), nets.get("success"), H, N, noise, seed, **kw)
        check_imagine(out, nets, s, g, noise_used(noise, seed, shape))


def hostile_buffer(arrs: dict, key: str, how: str) -> np.ndarray | None:
    """The numpy buffer ``arrs[key]`` made hostile in way ``how`` (itself where that does not apply)."""
    a = arrs[key]
    if a is None:
        return a
    if how == "strided":
        return np.repeat(a, 2, axis=-1)[..., ::2]
    if how == "fortran":
        return np.asfortranarray(a)
    if how in ("float64", "float16", "int32"):
        return a.astype(how)
    if how == "alias_states" and key.startswith("out_"):  # an output over an input
        states = arrs["states"]
        return states.reshape(-1)[:a.size].reshape(a.shape) if states.size >= a.size else a
    if how == "alias_chunks" and key != "out_chunks":  # over another output / an input
        flat = arrs["out_chunks"].reshape(-1)
        return flat[:a.size] if a.dtype == np.float32 and flat.size >= a.size else a
    if how == "readonly":
        a = a.copy()
        a.setflags(write=False)
        return a
    if how == "zero_dim":
        return np.zeros((0,) + a.shape[1:], a.dtype)
    return a


def changes_nothing(key: str, old, new, how: str) -> bool:
    """Whether buffer ``new`` in place of ``old`` is as valid for the binding as ``old`` (e.g. Fortran
    order of a vector, a read-only input, the goals of a task without goals)."""
    if new is old:
        return True
    return (new.dtype == old.dtype and new.shape == old.shape and new.flags.c_contiguous
            and (new.flags.writeable or not key.startswith("out_")) and not how.startswith("alias"))


def run_raw_best_of_n(spec, notes):
    """The pybind11 binding itself with numpy buffers: strided, aliased, wrong dtypes. Whatever it
    accepts must give bitwise the result of the same call through mac._cpu_core."""
    nets, s, g = build(dict(spec, layout={}, dtype={}, device={}, poison={}, weights=None))
    B, S, G, C, N = spec["B"], spec["S"], spec["G"], spec["C"], spec["N"]
    ref = cc.best_of_n(s, g, nets["actor"], nets["critic"], N, None, spec["noise_seed"])
    arrs = {"states": s.numpy(), "goals": None if g is None else g.numpy(),
            "out_chunks": np.zeros((B, C), np.float32), "out_scores": np.zeros(B, np.float32),
            "out_indices": np.zeros(B, np.int64)}
    if spec.get("raw"):
        key, how = spec["raw"]
        old, arrs[key] = arrs[key], hostile_buffer(arrs, key, how)
        notes["noop"] = changes_nothing(key, old, arrs[key], how)
    call_api(C_ext.best_of_n, arrs["states"], arrs["goals"],
             cc.net_arrays("actor", nets["actor"], S + G + C, C),
             cc.net_arrays("critic", nets["critic"], S + G + C, 1), N, None, spec["noise_seed"],
             arrs["out_chunks"], arrs["out_scores"], arrs["out_indices"],
             num_threads=spec.get("threads", 1))
    for a, b in ((arrs["out_chunks"], ref.chunks), (arrs["out_scores"], ref.scores),
                 (arrs["out_indices"], ref.indices)):
        if not np.array_equal(np.asarray(a, dtype=b.numpy().dtype), b.numpy(), equal_nan=True):
            raise Wrong("the binding accepted these buffers but wrote a different result")


def run_philox_normal(spec, notes):
    seed, n, start = spec["noise_seed"], spec["n"], spec["start"]
    got = call_api(C_ext.philox_normal, seed, n, start)
    twin = philox_normal_numpy(seed, n, start)
    if got.shape != (n,) or not np.array_equal(got, twin):
        raise Wrong(f"philox_normal({seed}, {n}, {start}) differs from mac.noise's twin")


def run_gelu(spec, notes):
    rng = np.random.default_rng(spec["seed"] % 2 ** 32)
    x = (rng.normal(size=spec["n"]) * 10).astype(np.float32)
    if spec.get("poison", {}).get("states") and x.size:
        x[0] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[spec["poison"]["states"]]
    outs = (call_api(C_ext.gelu, x, spec.get("isa") or ""), call_api(C_ext.gelu_scalar, x))
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        exact = 0.5 * x64 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
    fin = np.isfinite(x)
    for out in outs:
        bound = 1e-6 * np.maximum(1, np.abs(x[fin]))  # as tests/test_native_cpu.py's GELU test
        if out.shape != x.shape or not np.all(np.abs(out[fin] - exact[fin]) <= bound):
            raise Wrong("gelu inaccurate")
        if np.isnan(x).any() and not np.isnan(out[np.isnan(x)]).all():
            raise Wrong("gelu(NaN) is not NaN")


# The harness's own tests (tests/test_native_fuzz.py::test_worker_*).

def _segfault(spec, notes):
    import ctypes
    ctypes.string_at(0)


def _hang(spec, notes):
    import time
    time.sleep(3600)


def _raises(spec, notes):
    """Raises ``spec["type"](spec["message"])`` in phase ``spec["phase"]`` of a case: while building
    the inputs, inside the entry point ("api") or while checking the result; ``spec["notes"]`` are
    the notes of the case."""
    notes.update(spec.get("notes", {}))

    def raise_in(phase):
        if spec["phase"] == phase:
            raise getattr(builtins, spec["type"])(spec["message"])
    raise_in("build")
    call_api(raise_in, "api")
    raise_in("check")


def _planted_rejection(fn):
    raise ValueError(f"planted rejection by {_name(fn)}")


def _name(fn) -> str:
    return f"{fn.__module__}.{fn.__name__}"


def _sabotaged(spec, notes):
    """Runs the real case ``spec["case"]`` with call_api sabotaged: "reject" makes the entry point
    raise a clear ValueError naming it (so the answer names the entry point each runner calls
    through call_api); "raise_after" makes the harness raise a ValueError as soon as the entry point
    has returned (the answer must be a harness_error, never a rejection)."""
    global call_api
    real_call_api = call_api

    def reject(fn, *args, **kwargs):
        return real_call_api(_planted_rejection, fn)

    def raise_after(fn, *args, **kwargs):
        real_call_api(fn, *args, **kwargs)
        raise ValueError(f"planted harness bug after {_name(fn)} returned")

    call_api = {"reject": reject, "raise_after": raise_after}[spec["how"]]
    try:
        RUNNERS[spec["case"]["kind"]](spec["case"], notes)
    finally:
        call_api = real_call_api


RUNNERS = {"_segfault": _segfault, "_hang": _hang, "_raises": _raises, "_sabotaged": _sabotaged,
           "best_of_n": run_best_of_n, "imagine": run_imagine, "cc_best_of_n": run_cc,
           "cc_imagine": run_cc, "mlp_forward": run_cc, "raw_best_of_n": run_raw_best_of_n,
           "philox_normal": run_philox_normal, "gelu": run_gelu}


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))[-2000:]


def outcome(spec: dict, notes: dict) -> dict:
    """Runs the case: its status (see the module docstring), type and message."""
    try:
        with torch.no_grad():
            RUNNERS[spec["kind"]](spec, notes)
    except Rejected as rejected:
        exc = rejected.exc
        if isinstance(exc, CLEAR_ERRORS) and str(exc).strip():
            return {"status": "error", "type": type(exc).__name__, "message": str(exc)[:300]}
        return {"status": "unexpected", "type": type(exc).__name__,
                "message": ("" if str(exc).strip() else "(empty message)\n") + _traceback(exc)}
    except Wrong as exc:
        return {"status": "wrong", "message": str(exc)}
    except BaseException as exc:  # noqa: BLE001 (the harness's own code raised: never a rejection)
        return {"status": "harness_error", "type": type(exc).__name__,
                "message": "the fuzz harness itself raised (building the inputs or checking the "
                           "result):\n" + _traceback(exc)}
    return {"status": "ok"}


def run(spec) -> dict:
    notes = {}
    answer = outcome(spec, notes)
    return {**notes, **answer}


def main():
    channel = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not corrupt the protocol
    mac_root = os.path.dirname(os.path.dirname(os.path.abspath(C_ext.__file__)))
    channel.write(json.dumps({"status": "ready", "pid": os.getpid(), "mac_root": mac_root}) + "\n")
    channel.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        channel.write(json.dumps(run(json.loads(line))) + "\n")
        channel.flush()


if __name__ == "__main__":
    main()
