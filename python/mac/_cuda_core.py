"""The native CUDA backend of :mod:`mac.rollout` (``backend="cuda"``).

:mod:`mac._native` calls :func:`best_of_n` / :func:`imagine` after :mod:`mac.rollout` validated the
shapes, devices and dtypes. This module re-checks what the kernel relies on (mac.nets.MLP networks
with matching layer sizes, float32, all on the states' CUDA device, contiguous), allocates the
outputs and the workspace with torch (sizes from ``mac._C_cuda.plan``), and launches ONE
persistent kernel on torch's current stream of that device (``torch.cuda.current_stream()``). The
call is asynchronous like any torch op; every temporary belongs to torch's caching allocator and is
stream-ordered, so nothing needs to be kept alive after the call returns. Weights are read in
place from the live parameters (``MLP.dense_layers()``) on every call, so an optimiser step is seen
by the next call; nothing is cached.

Precision: TF32 tensor cores by default, bfloat16 operands opt-in (``precision="bf16"``,
:func:`set_precision`, or ``MAC_CUDA_PRECISION=bf16``); accumulation, epilogues, LayerNorm
statistics, heads and the argmax are float32 in both. See docs/CUDA.md.

:func:`emulate_best_of_n` / :func:`emulate_imagine` run the kernel's program (same phases, work
items, workspace layout and element math, with the operands rounded as the tensor cores see them)
on CPU tensors: the GPU-free tests use them.
"""

from __future__ import annotations

import os

import torch

from mac.nets import MLP
from mac.noise import check_seed
from mac.results import BestOfN, Rollout

PRECISIONS = ("tf32", "bf16")
_precision: str | None = None


def _ext():
    from mac import _native
    if _native.cuda_ext is None:
        raise RuntimeError(f"the CUDA core mac._C_cuda is not available: {_native.cuda_status()['reason']}")
    return _native.cuda_ext


def set_precision(precision: str | None) -> None:
    """Tensor-core operand precision of later calls: "tf32" (default) or "bf16"; None restores the
    default (``MAC_CUDA_PRECISION`` if set, else "tf32")."""
    global _precision
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} or None, got {precision!r}")
    _precision = precision


def get_precision() -> str:
    if _precision is not None:
        return _precision
    p = os.environ.get("MAC_CUDA_PRECISION", "tf32").strip().lower() or "tf32"
    if p not in PRECISIONS:
        raise ValueError(f"MAC_CUDA_PRECISION must be one of {PRECISIONS}, got {p!r}")
    return p


# ------------------------------------------------------------------------------------ conversion

def _check(name: str, t, device: torch.device, shape=None) -> torch.Tensor:
    """``t`` as a contiguous float32 tensor on ``device`` (a contiguous copy only if strided)."""
    from mac._native import contiguous_float32
    return contiguous_float32(name, t, device, shape, core="native CUDA")


def _net_layers(name: str, net, in_dim: int, out_dim: int, device, keep: list) -> list[tuple]:
    """(weight, bias, norm_weight, norm_bias, in, out) per layer as data pointers (None norms for the
    head), checked against the sizes this call needs; the tensors (copies, if strided) go to ``keep``."""
    from mac._native import checked_layers
    out, prev = [], in_dim
    for w, b, gw, gb in checked_layers(name, net, in_dim, out_dim, device, core="native CUDA"):
        keep += [t for t in (w, b, gw, gb) if t is not None]
        n_out = int(w.shape[0])
        out.append((w.data_ptr(), b.data_ptr(), None if gw is None else gw.data_ptr(),
                    None if gb is None else gb.data_ptr(), prev, n_out))
        prev = n_out
    return out


def _dims(states, goals, actor):
    if not isinstance(states, torch.Tensor) or states.dim() != 2:
        raise ValueError("states must be a (B, S) tensor")
    if not isinstance(actor, MLP):
        raise TypeError(f"actor must be a mac.nets.MLP, got {type(actor).__name__}")
    B, S = (int(x) for x in states.shape)
    G = 0
    if goals is not None:
        if not isinstance(goals, torch.Tensor) or goals.dim() != 2 or goals.shape[0] != B:
            raise ValueError(f"goals must be a (B={B}, G) tensor or None")
        G = int(goals.shape[1])
    return B, S, G, actor.out_dim


def _positive(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def _prepare(kind, states, goals, nets: dict, steps, num_samples, noise, seed, precision, device_type):
    """Checked inputs, outputs and the argument dict of mac._C_cuda (pointers as ints)."""
    B, S, G, C = _dims(states, goals, nets["actor"])
    N = _positive("num_samples", num_samples)
    H = _positive("steps", steps)
    device = states.device
    if device.type != device_type:
        raise ValueError(f"states must be on a {device_type} device here, got {device}")
    precision = get_precision() if precision is None else precision
    keep: list = []
    s = _check("states", states, device)
    g = _check("goals", goals, device) if goals is not None else None
    keep += [s] + ([g] if g is not None else [])
    sgc = S + G + C
    want = {"actor": (sgc, C), "critic": (sgc, 1), "dynamics": (S + C, S), "reward": (sgc, 1), "success": (sgc, 1)}
    layers = {name: (_net_layers(name, net, *want[name], device, keep) if net is not None else None)
              for name, net in nets.items()}
    noise_shape = (H, N, B, C) if kind == "imagine" else (N, B, C)
    if (noise is None) == (seed is None):
        raise ValueError("exactly one of noise and seed must be given")
    z = None
    if noise is not None:
        z = _check("noise", noise, device, noise_shape)
        keep.append(z)
    else:
        seed = check_seed(seed)
    args = dict(kind=kind, B=B, N=N, H=H if kind == "imagine" else 1, S=S, G=G, C=C, precision=precision,
                seed=seed, nets=layers, states=s.data_ptr(), goals=None if g is None else g.data_ptr(),
                noise=None if z is None else z.data_ptr())
    f32 = dict(dtype=torch.float32, device=device)
    if kind == "imagine":
        out = Rollout(torch.empty(H + 1, B, S, **f32), torch.empty(H, B, C, **f32), torch.empty(H, B, **f32),
                      torch.empty(H, B, **f32), torch.empty(H, B, **f32))
        args.update(out_states=out.states.data_ptr(), out_chunks=out.chunks.data_ptr(),
                    out_rewards=out.rewards.data_ptr(), out_masks=out.masks.data_ptr(), out_q=out.q.data_ptr())
    else:
        out = BestOfN(torch.empty(B, C, **f32), torch.empty(B, **f32), torch.empty(B, dtype=torch.int64, device=device))
        args.update(out_chunks=out.chunks.data_ptr(), out_q=out.scores.data_ptr(), out_index=out.indices.data_ptr())
    plan = _ext().plan(args)
    ws = torch.empty(max(1, int(plan["workspace_floats"])), **f32)
    keep.append(ws)
    args.update(workspace=ws.data_ptr(), workspace_floats=ws.numel())
    return args, out, keep


def _launch(args, device: torch.device):
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(index):
        args.update(device=index, stream=int(torch.cuda.current_stream(index).cuda_stream))
        fn = _ext().imagine if args["kind"] == "imagine" else _ext().best_of_n
        return fn(args)


# ------------------------------------------------------------------------------------ entry points

def best_of_n(states, goals, actor, critic, num_samples, noise, seed, *, precision=None) -> BestOfN:
    """Native best-of-N on CUDA tensors; same semantics as :func:`mac.reference.best_of_n_reference`."""
    args, out, _keep = _prepare("best_of_n", states, goals, dict(actor=actor, critic=critic), 1, num_samples,
                                noise, seed, precision, "cuda")
    _launch(args, states.device)
    return out


def imagine(states, goals, actor, critic, dynamics, reward, success, steps, num_samples, noise, seed, *,
            precision=None) -> Rollout:
    """Native imagined rollout on CUDA tensors; same semantics as :func:`mac.reference.imagine_reference`."""
    nets = dict(actor=actor, critic=critic, dynamics=dynamics, reward=reward, success=success)
    if dynamics is None:
        raise ValueError("imagine needs a dynamics network")
    args, out, _keep = _prepare("imagine", states, goals, nets, steps, num_samples, noise, seed, precision, "cuda")
    _launch(args, states.device)
    return out


def emulate_best_of_n(states, goals, actor, critic, num_samples, noise=None, seed=None, *,
                      precision="tf32") -> BestOfN:
    """The CUDA kernel's best-of-N program executed on the HOST (CPU tensors, no GPU needed).
    precision: "tf32" / "bf16" (operands rounded as the tensor cores see them) or "fp32" (no
    rounding: checks the program's semantics against the float32 reference)."""
    args, out, _keep = _prepare("best_of_n", states, goals, dict(actor=actor, critic=critic), 1, num_samples,
                                noise, seed, precision, "cpu")
    _ext().emulate(args)
    return out


def emulate_imagine(states, goals, actor, critic, dynamics, reward, success, steps, num_samples, noise=None,
                    seed=None, *, precision="tf32") -> Rollout:
    """The CUDA kernel's rollout program executed on the HOST (see :func:`emulate_best_of_n`)."""
    nets = dict(actor=actor, critic=critic, dynamics=dynamics, reward=reward, success=success)
    args, out, _keep = _prepare("imagine", states, goals, nets, steps, num_samples, noise, seed, precision, "cpu")
    _ext().emulate(args)
    return out


def launch_plan(**kwargs) -> dict:
    """mac._C_cuda.launch_plan: tiling, phases, work items and workspace layout (no GPU needed)."""
    return dict(_ext().launch_plan(**kwargs))


def kernel_info(device=None, precision=None) -> dict:
    """Registers, shared memory and occupancy of the kernel on a CUDA device."""
    index = torch.device(device).index if device is not None else torch.cuda.current_device()
    return dict(_ext().kernel_info(0 if index is None else index, precision or get_precision()))


# ------------------------------------------------------------------------------------ verification
# Tolerance-aware comparison with the float32 PyTorch reference, used by tests/test_cuda*.py and by
# mac.bench_cuda before it times anything. TF32 / bf16 change every GEMM by a relative ~1e-3 /
# ~4e-3, so exact agreement of an argmax is only expected where the reference's best and
# second-best scores differ by more than the score tolerance; elsewhere the pick must be one of the
# (near-)best. Each step of a rollout is checked from the native states of that step, so one
# near-tie does not make all later steps incomparable.

TOLERANCES = {"fp32": 1e-4, "tf32": 2e-2, "bf16": 1e-1}  # absolute, on O(1) outputs; see docs/CUDA.md


def _cat(*xs):
    return torch.cat([x for x in xs if x is not None], dim=-1)


@torch.no_grad()
def _reference_candidates(states, goals, actor, critic, noise):
    N = noise.shape[0]
    s = states.unsqueeze(0).expand(N, -1, -1)
    g = goals.unsqueeze(0).expand(N, -1, -1) if goals is not None else None
    cands = actor(_cat(s, g, noise)).clamp(-1.0, 1.0)
    q = critic(_cat(s, g, cands)).squeeze(-1)
    return cands, q


def _near_best(q, idx, tol):
    """Per row: the reference score of the chosen index is within 2 tol of the best finite score."""
    ranked = torch.where(torch.isnan(q), torch.full_like(q, float("-inf")), q)
    best = ranked.max(0).values
    chosen = ranked.gather(0, idx.view(1, -1)).squeeze(0)
    ok = (chosen >= best - 2 * tol * (1 + best.abs())) | torch.isinf(best)
    return ok, ranked


@torch.no_grad()
def check_best_of_n(result: BestOfN, states, goals, actor, critic, noise, tol: float) -> dict:
    """Raises AssertionError unless ``result`` agrees with the float32 reference on ``noise`` (N, B, C)
    within ``tol``; returns the observed errors."""
    cands, q = _reference_candidates(states, goals, actor, critic, noise)
    B = states.shape[0]
    idx = result.indices.to(states.device)
    assert bool(((idx >= 0) & (idx < noise.shape[0])).all()), "index out of range"
    ok, ranked = _near_best(q, idx, tol)
    assert bool(ok.all()), f"chosen candidate is not (near-)best for rows {torch.nonzero(~ok).flatten().tolist()}"
    top = ranked.topk(min(2, ranked.shape[0]), dim=0).values
    clear = (top[0] - top[-1] > 2 * tol * (1 + top[0].abs())) if ranked.shape[0] > 1 else torch.ones_like(top[0], dtype=torch.bool)
    ref_idx = ranked.argmax(0)
    mismatch = clear & (ref_idx != idx)
    assert not bool(mismatch.any()), f"index differs where the reference is not near a tie: rows {torch.nonzero(mismatch).flatten().tolist()}"
    rows = torch.arange(B, device=states.device)
    chunk_err = (result.chunks - cands[idx, rows]).abs().max().item()
    q_ref = q[idx, rows]
    finite = ~torch.isnan(q_ref)
    q_err = (result.scores[finite] - q_ref[finite]).abs().div(1 + q_ref[finite].abs()).max().item() if bool(finite.any()) else 0.0
    assert bool((torch.isnan(result.scores) == ~finite).all()), "NaN scores differ"
    assert chunk_err <= tol, f"chunk error {chunk_err} > {tol}"
    assert q_err <= tol, f"score error {q_err} > {tol}"
    return {"chunk_err": chunk_err, "q_err": q_err, "index_agree": float((ref_idx == idx).float().mean())}


@torch.no_grad()
def check_rollout(result: Rollout, states, goals, actor, critic, dynamics, reward, success, noise, tol: float) -> dict:
    """Step-wise check of a native rollout against the float32 reference on ``noise`` (H, N, B, C):
    for each step k, from the NATIVE s_k: the chosen chunk is a (near-)best reference candidate,
    q, reward, mask (where the success logit is not within tol of 0) and s_{k+1} match within tol.
    Raises AssertionError; returns the largest observed errors."""
    H, N, B, C = noise.shape
    errs = {"chunk": 0.0, "q": 0.0, "state": 0.0, "reward": 0.0}
    torch.testing.assert_close(result.states[0], states, rtol=0, atol=0)
    for k in range(H):
        s = result.states[k]
        cands, q = _reference_candidates(s, goals, actor, critic, noise[k])
        a = result.chunks[k]
        dist = (cands - a.unsqueeze(0)).abs().amax(-1)                  # (N, B)
        idx = dist.argmin(0)
        rows = torch.arange(B, device=s.device)
        errs["chunk"] = max(errs["chunk"], dist[idx, rows].max().item())
        ok, _ = _near_best(q, idx, tol)
        assert bool(ok.all()), f"step {k}: chosen chunk is not a (near-)best candidate for rows {torch.nonzero(~ok).flatten().tolist()}"
        q_ref = q[idx, rows]
        errs["q"] = max(errs["q"], (result.q[k] - q_ref).abs().div(1 + q_ref.abs()).max().item())
        nxt = s + dynamics(_cat(s, a))
        errs["state"] = max(errs["state"], (result.states[k + 1] - nxt).abs().div(1 + nxt.abs()).max().item())
        logit = success(_cat(s, goals, a)).squeeze(-1) if success is not None else None
        decided = torch.ones(B, dtype=torch.bool, device=s.device) if logit is None else logit.abs() > tol
        succ = (logit > 0).to(s.dtype) if logit is not None else torch.zeros(B, dtype=s.dtype, device=s.device)
        assert bool((result.masks[k][decided] == (1 - succ)[decided]).all()), f"step {k}: masks differ"
        if reward is None:
            assert bool((result.rewards[k][decided] == (succ - 1)[decided]).all()), f"step {k}: goal rewards differ"
        else:
            r = reward(_cat(s, goals, a)).squeeze(-1)
            errs["reward"] = max(errs["reward"], (result.rewards[k] - r).abs().div(1 + r.abs()).max().item())
    for name, e in errs.items():
        assert e <= tol, f"{name} error {e} > {tol}"
    return errs
