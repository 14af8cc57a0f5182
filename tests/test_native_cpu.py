"""The native CPU core (mac._C via mac._cpu_core) against the PyTorch reference of mac.rollout.

Tolerances (all shapes here are small, values O(1)):

* Float32 outputs (chunks, q, states, rewards) are compared with a float64 run of the same
  reference: the native error must be of the same order as float32 torch's own error,
  ``err_native <= ERR_FACTOR * err_torch32 + ERR_FLOOR``. Both compute the same float32 math with
  float32 accumulation in different orders (torch's GEMM blocking vs our feature-major micro-kernel,
  our GELU via exp instead of Sleef tanh, two-pass LayerNorm vs torch's Welford), so neither is
  more exact than the other; a factor of 8 absorbs the luck of the draw on a handful of rows, and
  the floor, 4e-6 relative to the largest |value| (at least 1), i.e. ~32 float32 ulps, covers
  draws where torch happens to be exact to ~1e-8 (measured: 2.4e-6 on an Intel Xeon with GCC 13.3
  for a single-row case, B = N = 1, where torch's float32 error was that small).
* Chosen indices must equal the reference's except where the float64 top-two critic values are
  within GAP_TOL = 1e-4: two float32 evaluations of an MLP of depth <= 3 and width <= 70 differ by
  ~1e-6 (relative) on O(1) values, so only a near-tie can flip the argmax. The same rule applies to
  the success test (logit > 0): a mask may differ only where |logit| < GAP_TOL.
* GELU: the vectorised and scalar GELU(tanh) must be within 1e-6 * max(1, |x|) of the float64
  formula (measured: 1.2e-7 for every ISA copy, torch's own float32 GELU: 1.1e-7); fast_tanh
  within 1e-6 absolute (measured 1.8e-7).
  That is 1e-6 relative to float32 rounding of O(1) activations, below what a 1024-term float32
  dot product accumulates anyway (~1e-6 relative), so it cannot change results beyond the above.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import mac.rollout as R
from mac import _cpu_core as cc
from mac.nets import MLP
from mac.noise import philox_normal, philox_normal_numpy
from mac.reference import concat_inputs

from conftest import cpu_has_bf16, isa_params

C_ext = pytest.importorskip("mac._C")

ERR_FACTOR = 8.0
ERR_FLOOR = 4e-6
GAP_TOL = 1e-4

HAS_HYPOTHESIS = True
try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    HAS_HYPOTHESIS = False


@pytest.fixture(autouse=True, scope="module")
def _torch_single_thread():
    """The torch reference runs single-threaded here (tiny ops; on a shared 2-core machine a
    2-thread torch pool can be 300x slower). Native calls choose their thread count explicitly."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ------------------------------------------------------------------------------------ helpers

def _randomise(net: MLP, gen: torch.Generator, scale: float = 1.0) -> MLP:
    """Non-trivial parameters (LayerNorm affine and biases not at their defaults)."""
    with torch.no_grad():
        for m in net.layers:
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(scale)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            else:
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return net


def make_nets(S, G, C, hidden, seed=0, goal_task=False, with_success=True):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    nets = {
        "actor": _randomise(MLP(S + G + C, C, hidden), gen, 1.5),
        "critic": _randomise(MLP(S + G + C, 1, hidden), gen, 2.0),
        "dynamics": _randomise(MLP(S + C, S, hidden), gen, 0.5),
        "reward": None if goal_task else _randomise(MLP(S + G + C, 1, hidden), gen),
        "success": _randomise(MLP(S + G + C, 1, hidden), gen) if with_success else None,
    }
    return nets


def as64(net):
    return None if net is None else copy.deepcopy(net).double()


def all_q(states, goals, actor, critic, noise):
    """Critic values of every candidate, (N, B), in the dtype of the inputs."""
    return R.candidate_scores(states, goals, actor, critic, noise)[1]


def top_gap(q):
    """Top-1 minus top-2 of each column of q (N, B); inf for N == 1."""
    if q.shape[0] == 1:
        return torch.full((q.shape[1],), float("inf"), dtype=q.dtype)
    top = q.topk(2, dim=0).values
    return top[0] - top[1]


def max_err(a, b, mask=None):
    d = (a.double() - b.double()).abs()
    if mask is not None:
        d = d[mask]
    return float(d.max()) if d.numel() else 0.0


def assert_same_order(name, native, ref32, ref64, mask=None):
    e_nat = max_err(native, ref64, mask)
    e_t32 = max_err(ref32, ref64, mask)
    r = ref64.double() if mask is None else ref64.double()[mask]
    scale = max(1.0, float(r.abs().max())) if r.numel() else 1.0
    assert e_nat <= ERR_FACTOR * e_t32 + ERR_FLOOR * scale, (
        f"{name}: native error {e_nat:.3g} vs float64, torch float32 error {e_t32:.3g}, "
        f"magnitude {scale:.3g}")


def inputs(B, S, G, seed=1):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(B, S, generator=gen)
    g = torch.randn(B, G, generator=gen) if G else None
    return s, g


@torch.no_grad()
def check_best_of_n(nets, s, g, N, *, noise=None, seed=None, num_threads=None, isa=None,
                    min_comparable=0.9, parallel="auto"):
    actor, critic = nets["actor"], nets["critic"]
    B, C = s.shape[0], actor.out_dim
    if noise is None:
        z = philox_normal(seed, (N, B, C))
    else:
        z = noise
    nat = cc.best_of_n(s, g, actor, critic, N, noise, seed, num_threads=num_threads, isa=isa,
                       parallel=parallel)
    ref = R.best_of_n_reference(s, g, actor, critic, z)
    a64, c64 = as64(actor), as64(critic)
    g64 = g.double() if g is not None else None
    ref64 = R.best_of_n_reference(s.double(), g64, a64, c64, z.double())
    q64 = all_q(s.double(), g64, a64, c64, z.double())
    gap = top_gap(q64)
    differ = nat.indices != ref.indices
    assert bool((gap[differ] <= GAP_TOL).all()), (
        f"indices differ where the top-two gap is {gap[differ].min().item():.3g} > {GAP_TOL}")
    same = (~differ) & (ref.indices == ref64.indices)
    assert same.float().mean() >= min_comparable or B < 10, "too many near-ties for a test"
    assert_same_order("chunks", nat.chunks, ref.chunks, ref64.chunks, same)
    assert_same_order("scores", nat.scores, ref.scores, ref64.scores, same)
    assert nat.indices.dtype == torch.int64 and nat.chunks.dtype == torch.float32
    assert float(nat.chunks.abs().max()) <= 1.0
    return nat


@torch.no_grad()
def check_imagine(nets, s, g, H, N, *, noise=None, seed=None, num_threads=None, isa=None,
                  min_comparable=0.7, parallel="auto"):
    actor, critic, dyn, rew, suc = (nets[k] for k in ("actor", "critic", "dynamics", "reward", "success"))
    B, C = s.shape[0], actor.out_dim
    z = philox_normal(seed, (H, N, B, C)) if noise is None else noise
    nat = cc.imagine(s, g, actor, critic, dyn, rew, suc, H, N, noise, seed, num_threads=num_threads,
                     isa=isa, parallel=parallel)
    ref = R.imagine_reference(s, g, actor, critic, dyn, rew, suc, z)
    n64 = {k: as64(v) for k, v in nets.items()}
    g64 = g.double() if g is not None else None
    ref64 = R.imagine_reference(s.double(), g64, n64["actor"], n64["critic"], n64["dynamics"],
                                n64["reward"], n64["success"], z.double())
    # Rows stay comparable while no near-tie (argmax or success threshold) occurred along the way.
    valid = torch.ones(H + 1, B, dtype=torch.bool)
    for k in range(H):
        sk = ref64.states[k]
        gap = top_gap(all_q(sk, g64, n64["actor"], n64["critic"], z[k].double()))
        ok = gap > GAP_TOL
        if n64["success"] is not None:
            logit = n64["success"](concat_inputs(sk, g64, ref64.chunks[k])).squeeze(-1)
            ok &= logit.abs() > GAP_TOL
        valid[k + 1] = valid[k] & ok
    step_valid = valid[1:]
    assert step_valid[-1].float().mean() >= min_comparable or B < 10, "too many near-ties for a test"
    for name in ("chunks", "rewards", "masks", "q"):
        assert_same_order(name, getattr(nat, name), getattr(ref, name), getattr(ref64, name), step_valid)
    assert_same_order("states", nat.states, ref.states, ref64.states, valid)
    assert torch.equal(nat.states[0], s)
    assert bool(((nat.masks == 0) | (nat.masks == 1)).all())
    return nat


# ------------------------------------------------------------------------------------ noise

@pytest.mark.parametrize("seed", [0, 1, 12345, 2 ** 32 + 7, 2 ** 63 + 11, 2 ** 64 - 1])
@pytest.mark.parametrize("start", [0, 1, 3, 4097])
def test_philox_matches_numpy_bitwise(seed, start):
    n = 20011
    native = C_ext.philox_normal(seed, n, start)
    ref = philox_normal_numpy(seed, n, start)
    assert native.dtype == np.float32
    np.testing.assert_array_equal(native, ref)


def test_philox_large_sample_bitwise():
    # ~10^6 elements: float64 libm differences (glibc vs numpy's SIMD log/sin/cos) would show here
    # as rare 1-ulp float32 differences; none are expected (see csrc/include/mac/philox.h).
    n = 1 << 20
    np.testing.assert_array_equal(C_ext.philox_normal(99, n, 0), philox_normal_numpy(99, n, 0))


@pytest.mark.parametrize("isa", isa_params())
def test_in_kernel_noise_is_the_shared_stream(isa):
    """Seeded calls draw exactly mac.noise's stream inside every ISA copy: a seeded call and a call
    with that noise given explicitly run the same arithmetic, so they agree bitwise."""
    nets = make_nets(6, 2, 5, (20,), seed=1)
    s, g = inputs(13, 6, 2)
    seed = 2 ** 40 + 3
    a = cc.best_of_n(s, g, nets["actor"], nets["critic"], 7, None, seed, isa=isa)
    b = cc.best_of_n(s, g, nets["actor"], nets["critic"], 7, philox_normal(seed, (7, 13, 5)), None,
                     isa=isa)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    kw = (nets["actor"], nets["critic"], nets["dynamics"], nets["reward"], nets["success"], 3, 4)
    a = cc.imagine(s, g, *kw, None, seed, isa=isa)
    b = cc.imagine(s, g, *kw, philox_normal(seed, (3, 4, 13, 5)), None, isa=isa)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_rollout_step0_is_best_of_n():
    """Step 0 of a seeded rollout uses the (N, B, C) head of the stream: the same choice, bitwise,
    as one best-of-N call with that seed."""
    nets = make_nets(7, 3, 4, (30, 20), seed=6)
    s, g = inputs(29, 7, 3)
    r = cc.imagine(s, g, nets["actor"], nets["critic"], nets["dynamics"], nets["reward"],
                   nets["success"], 3, 6, None, 99, num_threads=2, parallel="tiles")
    b = cc.best_of_n(s, g, nets["actor"], nets["critic"], 6, None, 99, num_threads=1)
    assert torch.equal(r.chunks[0], b.chunks) and torch.equal(r.q[0], b.scores)


# ------------------------------------------------------------------------------------ math

def _gelu64(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


@pytest.mark.parametrize("isa", isa_params())
def test_gelu_accuracy(isa):
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-12, 12, 20001), rng.normal(0, 3, 20000),
                        [0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 1e4, -1e4]]).astype(np.float32)
    exact = _gelu64(x)
    bound = 1e-6 * np.maximum(1.0, np.abs(x))
    for y in (C_ext.gelu(x, isa), C_ext.gelu_scalar(x)):
        assert y.dtype == np.float32
        assert np.all(np.abs(y - exact) <= bound)
    torch_err = np.abs(torch.nn.functional.gelu(torch.from_numpy(x), approximate="tanh").numpy() - exact)
    ours = np.abs(C_ext.gelu(x, isa) - exact)
    assert ours.max() <= 4 * torch_err.max() + 1e-7
    nan = C_ext.gelu(np.array([np.nan] * 17, np.float32), isa)
    assert np.isnan(nan).all()


def test_fast_tanh_accuracy():
    x = np.linspace(-20, 20, 40001).astype(np.float32)
    err = np.abs(C_ext.tanh_scalar(x) - np.tanh(x.astype(np.float64)))
    assert err.max() < 1e-6


@pytest.mark.parametrize("rows", [1, 5, 33, 200])
@pytest.mark.parametrize("hidden", [(), (19,), (40, 23), (70, 17, 33)])
def test_mlp_forward(rows, hidden):
    gen = torch.Generator().manual_seed(rows)
    net = _randomise(MLP(13, 7, hidden), gen)
    x = torch.randn(rows, 13, generator=gen)
    with torch.no_grad():
        ref32, ref64 = net(x), as64(net)(x.double())
    ys = []
    for nt, par in THREADINGS:
        ys.append(cc.mlp_forward(net, x, num_threads=nt, parallel=par))
        assert_same_order("mlp", ys[-1], ref32, ref64)
    assert all(torch.equal(ys[0], y) for y in ys)


# ------------------------------------------------------------------------------------ best-of-N grid

SHAPES = [  # S, G, C, hidden
    (5, 0, 3, (19,)),
    (7, 3, 6, (37, 29)),
    (11, 0, 10, (21, 45, 13)),
    (4, 6, 2, (50, 31)),
]


# Thread configurations: 1 thread; 2 threads automatic (small problems fall back to 1 thread);
# 2 threads forced to whole tiles per thread; 2 threads forced to split every layer's outputs.
THREADINGS = [(1, "auto"), (2, "auto"), (2, "tiles"), (2, "columns")]


@pytest.mark.parametrize("B", [1, 3, 17, 64])
@pytest.mark.parametrize("N", [1, 4, 8])
def test_best_of_n_grid(B, N):
    S, G, C, hidden = SHAPES[(B + N) % len(SHAPES)]
    nets = make_nets(S, G, C, hidden, seed=B * 10 + N)
    s, g = inputs(B, S, G, seed=B + N)
    z = torch.randn(N, B, C, generator=torch.Generator().manual_seed(7))
    first = None
    for nt, par in THREADINGS:
        a = check_best_of_n(nets, s, g, N, noise=z, num_threads=nt, parallel=par)
        b = check_best_of_n(nets, s, g, N, seed=1234 + B, num_threads=nt, parallel=par)
        if first is None:
            first = (a, b)
        else:  # results do not depend on the threading (same tiles, same arithmetic)
            for x, y in zip(first, (a, b)):
                for u, v in zip(x, y):
                    assert torch.equal(u, v)


def test_best_of_n_public_api_auto_uses_native(monkeypatch):
    nets = make_nets(6, 2, 4, (24, 18), seed=3)
    s, g = inputs(9, 6, 2)
    assert R._resolve_backend("auto", s) == "cpu"
    calls = []
    real = cc.best_of_n

    def spy(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(cc, "best_of_n", spy)
    out = R.best_of_n(s, g, actor=nets["actor"], critic=nets["critic"], num_samples=5, seed=11)
    assert calls, "backend='auto' did not use the native CPU core"
    ref = R.best_of_n(s, g, actor=nets["actor"], critic=nets["critic"], num_samples=5, seed=11,
                      backend="torch")
    assert torch.equal(out.indices, ref.indices)
    torch.testing.assert_close(out.chunks, ref.chunks, atol=1e-5, rtol=1e-5)
    # float64 inputs fall back to the reference under "auto"
    assert R._resolve_backend("auto", s.double()) == "torch"


def test_imagine_public_api_seed_and_default_noise():
    nets = make_nets(5, 0, 3, (16,), seed=4)
    s, _ = inputs(10, 5, 0)
    kw = dict(actor=nets["actor"], critic=nets["critic"], dynamics=nets["dynamics"],
              reward=nets["reward"], success=nets["success"], steps=3, num_samples=4)
    nat = R.imagine(s, **kw, seed=5, backend="cpu")
    ref = R.imagine(s, **kw, seed=5, backend="torch")
    torch.testing.assert_close(nat.states, ref.states, atol=1e-5, rtol=1e-5)
    torch.manual_seed(3)
    a = R.imagine(s, **kw, backend="cpu")
    torch.manual_seed(3)
    b = R.imagine(s, **kw, backend="cpu")
    assert torch.equal(a.states, b.states)


# ------------------------------------------------------------------------------------ rollout grid

ROLLOUT_CASES = [  # B, N, S, G, C, hidden, goal_task, with_success
    (1, 4, 5, 0, 3, (19,), False, True),
    (3, 1, 6, 4, 2, (22, 17), True, True),
    (17, 8, 9, 0, 10, (33, 21), False, False),
    (64, 4, 7, 5, 6, (18,), True, True),
    (20, 8, 4, 0, 5, (29, 15, 23), False, True),
    (5, 3, 3, 2, 4, (10,), True, False),  # goal task without a success net: r = -1, m = 1
]


@pytest.mark.parametrize("case", ROLLOUT_CASES, ids=lambda c: f"B{c[0]}N{c[1]}S{c[2]}G{c[3]}C{c[4]}")
def test_imagine_grid(case):
    B, N, S, G, C, hidden, goal_task, with_success = case
    nets = make_nets(S, G, C, hidden, seed=B + N, goal_task=goal_task, with_success=with_success)
    s, g = inputs(B, S, G, seed=B)
    H = 4
    z = torch.randn(H, N, B, C, generator=torch.Generator().manual_seed(2))
    outs = []
    for nt, par in THREADINGS:
        outs.append(check_imagine(nets, s, g, H, N, noise=z, num_threads=nt, parallel=par))
        check_imagine(nets, s, g, H, N, seed=77, num_threads=nt, parallel=par)
    for out in outs[1:]:
        for u, v in zip(outs[0], out):
            assert torch.equal(u, v)
    if goal_task and not with_success:
        assert bool((outs[0].rewards == -1).all()) and bool((outs[0].masks == 1).all())


# ------------------------------------------------------------------------------------ "auto" threading

# Shapes above the core's threshold for threads (kParallelMinFlops = 1e8 matmul FLOPs per call, in
# csrc/cpu/kernels_isa.cpp): "auto" then runs 2 threads, whole tiles per thread when there are at
# least 2 tiles per thread, else all threads on each tile splitting layer outputs when a layer of a
# tile is worth >= 1e6 FLOPs. A rollout decides this per phase, so it can mix the two modes, which
# the forced modes ("tiles", "columns") never do. Sized so that every ISA copy (48, 64 or 96 rows per
# tile) takes the same decisions; a few ms of native work each.
AUTO_CASES = [  # kind, B, N, H, S, C, hidden, (team_bon, team_step)
    ("best_of_n", 96, 8, 1, 16, 4, (256, 256), (False, False)),
    ("best_of_n", 3, 48, 1, 16, 4, (512, 512), (True, False)),
    ("imagine", 96, 8, 1, 16, 4, (256, 256), (False, True)),   # tiles for best-of-N, team for the step
    ("imagine", 3, 48, 2, 16, 4, (512, 512), (True, False)),   # and the other way round (small
]                                                              # model-step networks, see below)


@pytest.mark.parametrize("case", AUTO_CASES, ids=lambda c: f"{c[0]}-B{c[1]}N{c[2]}")
def test_auto_threading_above_the_threshold(case):
    kind, B, N, H, S, C, hidden, (team_bon, team_step) = case
    nets = make_nets(S, 0, C, hidden, seed=B + N)
    if team_bon and not team_step:  # model-step layers too small for a team on any ISA copy
        nets.update({k: v for k, v in make_nets(S, 0, C, (16,), seed=1).items()
                     if k in ("dynamics", "reward", "success")})
    s, _ = inputs(B, S, 0, seed=B)
    plan = cc.parallel_plan(kind, B, S, 0, C, N, nets, H, num_threads=2)
    assert plan["threads"] == 2, f"not above the threshold: {plan}"
    assert (plan["team_bon"], plan["team_step"]) == (team_bon, team_step), plan
    small = cc.parallel_plan(kind, 4, S, 0, C, 2, make_nets(S, 0, C, (8,)), H, num_threads=2)
    assert small["threads"] == 1  # below the threshold "auto" stays on one thread
    if kind == "best_of_n":
        auto = check_best_of_n(nets, s, None, N, seed=5, num_threads=2, parallel="auto")
        forced = cc.best_of_n(s, None, nets["actor"], nets["critic"], N, None, 5, num_threads=2,
                              parallel="columns" if team_bon else "tiles")
    else:
        auto = check_imagine(nets, s, None, H, N, seed=5, num_threads=2, parallel="auto")
        forced = cc.imagine(s, None, nets["actor"], nets["critic"], nets["dynamics"], nets["reward"],
                            nets["success"], H, N, None, 5, num_threads=2, parallel="tiles")
    for u, v in zip(auto, forced):  # the split never changes the arithmetic
        assert torch.equal(u, v)


# ------------------------------------------------------------------------------------ tie / NaN rules

def test_tie_goes_to_lowest_index():
    nets = make_nets(5, 2, 3, (12,), seed=1)
    with torch.no_grad():  # constant critic: every candidate ties
        nets["critic"].layers[-1].weight.zero_()
        nets["critic"].layers[-1].bias.fill_(0.25)
    s, g = inputs(13, 5, 2)
    out = cc.best_of_n(s, g, nets["actor"], nets["critic"], 6, None, 3)
    assert bool((out.indices == 0).all()) and bool((out.scores == 0.25).all())
    # duplicated best candidate: candidate 0 is a copy of the winner (now at index winner + 1),
    # both get bitwise the same score, and the first copy wins
    z = torch.randn(6, 13, 3, generator=torch.Generator().manual_seed(0))
    nets = make_nets(5, 2, 3, (12,), seed=2)
    ref = R.best_of_n_reference(s, g, nets["actor"], nets["critic"], z)
    z2 = torch.cat([z[ref.indices, torch.arange(13)].unsqueeze(0), z], 0)
    out = cc.best_of_n(s, g, nets["actor"], nets["critic"], 7, z2, None)
    assert bool((out.indices == 0).all())


def test_nan_never_wins():
    nets = make_nets(5, 0, 3, (12,), seed=1)
    s, _ = inputs(11, 5, 0)
    with torch.no_grad():
        nets["critic"].layers[-1].bias.fill_(float("nan"))
    out = cc.best_of_n(s, None, nets["actor"], nets["critic"], 4, None, 1)
    assert bool((out.indices == 0).all()) and bool(torch.isnan(out.scores).all())
    # NaN for some candidates only (NaN noise -> NaN candidate -> NaN score)
    nets = make_nets(5, 0, 3, (12,), seed=1)
    z = torch.randn(5, 11, 3, generator=torch.Generator().manual_seed(1))
    z[0] = float("nan")
    z[3, ::2] = float("nan")
    nat = cc.best_of_n(s, None, nets["actor"], nets["critic"], 5, z, None)
    ref = R.best_of_n_reference(s, None, nets["actor"], nets["critic"], z)
    assert torch.equal(nat.indices, ref.indices)
    assert bool((nat.indices != 0).all()) and not bool(torch.isnan(nat.scores).any())
    # every candidate NaN except candidate 2 -> candidate 2 wins
    z[:] = float("nan")
    z[2] = 0.1
    nat = cc.best_of_n(s, None, nets["actor"], nets["critic"], 5, z, None)
    assert bool((nat.indices == 2).all())


# ------------------------------------------------------------------------------------ ISA copies

def test_isa_copies_agree():
    nets = make_nets(9, 4, 7, (45, 27), seed=5)
    s, g = inputs(23, 9, 4)
    results = {}
    for isa in ("generic", "avx2", "avx512"):
        used = cc.active_isa(isa)
        results[used] = check_best_of_n(nets, s, g, 8, seed=3, isa=isa)
        check_imagine(nets, s, g, 2, 4, seed=4, isa=isa)
    base = results.pop("generic")
    for out in results.values():
        torch.testing.assert_close(out.chunks, base.chunks, atol=1e-5, rtol=1e-5)


def test_isa_forced_by_environment():
    code = ("import mac._C as C, json; print(json.dumps([C.build_info()['cpu_isa'], C.resolve_isa('')]))")
    for isa in ("generic", "avx2"):
        env = dict(os.environ, MAC_CPU_ISA=isa)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        best = C_ext.resolve_isa("")
        order = ["generic", "avx2", "avx512"]
        expect = order[min(order.index(isa), order.index(best))]
        assert got == [expect, expect]


_ENV_SCRIPT = r"""
import torch, sys
sys.path.insert(0, %r)
from test_native_cpu import make_nets, inputs
from mac import _cpu_core as cc
import mac._C as C
nets = make_nets(6, 0, 4, (20, 14), seed=9)
s, _ = inputs(12, 6, 0)
out = cc.imagine(s, None, nets["actor"], nets["critic"], nets["dynamics"], nets["reward"],
                 nets["success"], 3, 5, None, 21)
torch.save((C.resolve_isa(""), tuple(out)), sys.argv[1])
""" % os.path.dirname(os.path.abspath(__file__))


def _run_with_env_isa(isa, tmp_path):
    path = str(tmp_path / f"{isa}.pt")
    subprocess.run([sys.executable, "-c", _ENV_SCRIPT, path], env=dict(os.environ, MAC_CPU_ISA=isa),
                   check=True)
    used, out = torch.load(path)
    assert used == isa, f"MAC_CPU_ISA={isa} ran the {used} copy"
    return out


@pytest.fixture(scope="module")
def generic_env_result(tmp_path_factory):
    return _run_with_env_isa("generic", tmp_path_factory.mktemp("isa"))


@pytest.mark.parametrize("isa", isa_params(("avx2", "avx512")))
def test_isa_env_subprocess_results_match(isa, generic_env_result, tmp_path):
    """A process started with MAC_CPU_ISA=<isa> runs that copy and agrees with the generic one."""
    for a, b in zip(generic_env_result, _run_with_env_isa(isa, tmp_path)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ liveness, threads

def test_weights_are_read_live():
    nets = make_nets(5, 0, 3, (16,), seed=8)
    s, _ = inputs(7, 5, 0)
    a = cc.best_of_n(s, None, nets["actor"], nets["critic"], 4, None, 2)
    opt = torch.optim.SGD(list(nets["actor"].parameters()) + list(nets["critic"].parameters()), lr=0.5)
    x = torch.randn(3, 5 + 3)
    (nets["actor"](x).sum() + nets["critic"](x).sum()).backward()
    opt.step()
    b = cc.best_of_n(s, None, nets["actor"], nets["critic"], 4, None, 2)
    ref = R.best_of_n(s, None, actor=nets["actor"], critic=nets["critic"], num_samples=4, seed=2,
                      backend="torch")
    assert not torch.equal(a.chunks, b.chunks)
    torch.testing.assert_close(b.chunks, ref.chunks, atol=1e-5, rtol=1e-5)


def test_empty_goals_are_no_goals():
    nets = make_nets(5, 0, 3, (12,), seed=2)
    s, _ = inputs(6, 5, 0)
    empty = torch.zeros(6, 0)
    a = cc.best_of_n(s, empty, nets["actor"], nets["critic"], 3, None, 4)
    b = R.best_of_n(s, empty, actor=nets["actor"], critic=nets["critic"], num_samples=3, seed=4,
                    backend="torch")
    assert torch.equal(a.indices, b.indices)


def test_non_contiguous_inputs():
    nets = make_nets(6, 3, 4, (20,), seed=2)
    s = torch.randn(12, 6)[::2]      # (6, 6) with row stride 12
    g = torch.randn(3, 6).t()        # (6, 3) transposed view
    assert not s.is_contiguous() and not g.is_contiguous()
    z = torch.randn(4, 6, 8)[..., ::2]  # (4, 6, 4) strided noise
    nat = cc.best_of_n(s, g, nets["actor"], nets["critic"], 4, z, None)
    ref = R.best_of_n_reference(s, g, nets["actor"], nets["critic"], z)
    assert torch.equal(nat.indices, ref.indices)
    torch.testing.assert_close(nat.chunks, ref.chunks, atol=1e-5, rtol=1e-5)


def test_num_threads_setting():
    old = cc.get_num_threads()
    try:
        cc.set_num_threads(1)
        assert cc.get_num_threads() == 1
        cc.set_num_threads(None)
        assert cc.get_num_threads() == torch.get_num_threads()
        with pytest.raises(ValueError):
            cc.set_num_threads(0)
    finally:
        cc.set_num_threads(None if old == torch.get_num_threads() else old)


def _main_thread_progress(call):
    """Runs ``call()`` in another thread while this one spins, recording the time of each of its
    loop iterations. Returns (duration of the call, longest stretch of it in which this thread made
    no iteration). A call that holds the GIL throughout freezes this thread for all of it."""
    marks, ticks = {}, []
    done = threading.Event()

    def work():
        marks["t0"] = time.perf_counter()
        call()
        marks["t1"] = time.perf_counter()
        done.set()

    worker = threading.Thread(target=work)
    tick, clock = ticks.append, time.perf_counter
    worker.start()
    while not done.is_set():
        tick(clock())
    worker.join()
    t0, t1 = marks["t0"], marks["t1"]
    points = [t0] + [t for t in ticks if t0 < t < t1] + [t1]
    return t1 - t0, max(b - a for a, b in zip(points, points[1:]))


def _long_enough(make_call, size, min_s=0.08, doublings=8):
    """A call of ``make_call(size)`` taking at least ``min_s`` (doubling size, at most ``doublings``
    times), so that a GIL held throughout would be an unmistakable freeze of the spinning thread
    (the GIL switch interval is 5 ms)."""
    for _ in range(doublings):
        call = make_call(size)
        t0 = time.perf_counter()
        call()
        if time.perf_counter() - t0 >= min_s:
            break
        size *= 2
    return call


def _gil_entry_points():
    nets = make_nets(20, 0, 10, (256, 256), seed=1)
    a, q, f, r, c = (nets[k] for k in ("actor", "critic", "dynamics", "reward", "success"))
    return {
        "best_of_n": (lambda B: (lambda s=inputs(B, 20, 0)[0]: cc.best_of_n(s, None, a, q, 8, None, 1,
                                                                           num_threads=1)), 256),
        "imagine": (lambda B: (lambda s=inputs(B, 20, 0)[0]: cc.imagine(s, None, a, q, f, r, c, 2, 8,
                                                                       None, 1, num_threads=1)), 128),
        "mlp_forward": (lambda R_: (lambda x=torch.randn(R_, 30): cc.mlp_forward(q, x, num_threads=1)),
                        4096),
        "philox_normal": (lambda n: (lambda: C_ext.philox_normal(5, n, 0)), 1 << 20),
        "gemm_peak": (lambda reps: (lambda: C_ext.gemm_peak(reps, 1, "")), 100),
    }


def _gil_holding_sleep():
    """A stand-in for a kernel that forgets to release the GIL: usleep through ctypes.PyDLL, whose
    foreign calls keep the GIL (ctypes.CDLL releases it)."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.PyDLL(ctypes.util.find_library("c") or None)
        usleep = libc.usleep
    except (OSError, AttributeError):
        return None
    return lambda seconds: usleep(int(seconds * 1e6))


@pytest.mark.parametrize("entry", ["best_of_n", "imagine", "mlp_forward", "philox_normal", "gemm_peak"])
def test_gil_released(entry):
    """While a native call runs (>= 80 ms), the calling Python thread's siblings keep running: the
    longest freeze of a spinning thread is under half the call. The detector is checked on the
    spot: a call of the same length that holds the GIL freezes the spinner for (nearly) all of it."""
    make_call, size = _gil_entry_points()[entry]
    call = _long_enough(make_call, size)
    duration, freeze = _main_thread_progress(call)
    assert duration >= 0.05, f"{entry}: could not make a call last 50 ms ({duration * 1e3:.0f} ms)"
    assert freeze < 0.5 * duration, (
        f"{entry}: a spinning Python thread was frozen for {freeze * 1e3:.0f} ms of the "
        f"{duration * 1e3:.0f} ms call: the GIL is held while the kernel runs")
    held = _gil_holding_sleep()
    if held is not None:
        d, f = _main_thread_progress(lambda: held(duration))
        # > 0.75, not ~1: between the worker's t0 and the stand-in taking over, the GIL may switch
        # back to the spinner once (5 ms interval, longer on a loaded machine: 12 ms of 116 seen in CI).
        assert f > 0.75 * d, f"the GIL-holding stand-in froze the spinner for only {f:.3f} of {d:.3f} s"


# ------------------------------------------------------------------------------------ Python errors

def test_python_side_errors():
    nets = make_nets(5, 0, 3, (8,), seed=0)
    s, _ = inputs(4, 5, 0)
    a, q = nets["actor"], nets["critic"]
    with pytest.raises(TypeError):
        cc.best_of_n(s, None, torch.nn.Linear(8, 3), q, 2, None, 1)
    with pytest.raises(ValueError):
        cc.best_of_n(s, None, a, MLP(9, 1, (4,)), 2, None, 1)
    with pytest.raises(TypeError):
        cc.best_of_n(s.double(), None, a, q, 2, None, 1)
    with pytest.raises(ValueError):
        cc.best_of_n(s, None, a, q, 2, torch.zeros(2, 4, 3), 1)
    with pytest.raises(ValueError):
        cc.best_of_n(s, None, a, q, 2, None, None)
    with pytest.raises(ValueError):
        cc.best_of_n(s, None, a, q, 2, torch.zeros(3, 4, 3), None)
    with pytest.raises(ValueError):
        cc.best_of_n(s, None, a, q, 0, None, 1)
    with pytest.raises(ValueError):
        cc.best_of_n(s, None, a, q, 2, None, -1)
    with pytest.raises(ValueError):
        cc.best_of_n(s, None, a, q, 2, None, 1, num_threads=0)
    with pytest.raises(ValueError):
        cc.best_of_n(s, None, a, q, 2, None, 1, isa="sse9")
    bad = make_nets(5, 0, 3, (8,), seed=0)["critic"]
    with torch.no_grad():
        bad.layers[0].weight = torch.nn.Parameter(torch.zeros(8, 9))  # layer sizes no longer chain
    with pytest.raises(ValueError):
        cc.best_of_n(s, None, a, bad, 2, None, 1)
    with pytest.raises(ValueError):
        cc.imagine(s, None, a, q, MLP(8, 4, (3,)), None, None, 2, 2, None, 1)


# ------------------------------------------------------------------------------------ binding fuzz

def _valid_bon_args(B=5, S=4, G=2, C=3, N=3, hidden=(6,)):
    nets = make_nets(S, G, C, hidden, seed=0)
    s, g = inputs(B, S, G)
    args = dict(
        states=s.numpy(), goals=g.numpy(),
        actor=cc.net_arrays("actor", nets["actor"], S + G + C, C),
        critic=cc.net_arrays("critic", nets["critic"], S + G + C, 1),
        num_samples=N, noise=np.random.default_rng(0).normal(size=(N, B, C)).astype(np.float32),
        seed=None, out_chunks=np.zeros((B, C), np.float32), out_scores=np.zeros(B, np.float32),
        out_indices=np.zeros(B, np.int64), num_threads=2)
    return args, nets


def _mutations(args):
    """Yields (description, mutated kwargs) that the binding must reject."""
    def arr_mutants(a):
        yield "float64", a.astype(np.float64)
        yield "int32", a.astype(np.int32)
        yield "float16", a.astype(np.float16)
        strided = np.repeat(a, 2, axis=-1)[..., ::2]
        if not strided.flags.c_contiguous:  # (a 1-element array is contiguous whatever its stride)
            yield "strided (same shape)", strided
        if a.ndim >= 2 and min(a.shape) > 1:
            yield "Fortran order (same shape)", np.asfortranarray(a)
        yield "extra dim", a[None]
        yield "flattened", a.reshape(-1) if a.ndim > 1 else a.reshape(1, -1)
        if a.shape[0] > 1:
            yield "shorter", a[:-1].copy()
        yield "longer", np.concatenate([a, a[:1]], 0)
        yield "list", a.tolist()
        yield "None", None
        yield "torch tensor", torch.from_numpy(np.ascontiguousarray(a))
    for key in ("states", "goals", "noise", "out_chunks", "out_scores", "out_indices"):
        for desc, m in arr_mutants(args[key]):
            if key == "noise" and m is None:
                desc = "None and seed None"
            yield f"{key}: {desc}", dict(args, **{key: m})
    for net in ("actor", "critic"):
        layers = args[net]
        yield f"{net}: empty", dict(args, **{net: []})
        yield f"{net}: not a list", dict(args, **{net: 3})
        yield f"{net}: a string", dict(args, **{net: "abc"})
        yield f"{net}: head dropped", dict(args, **{net: layers[:-1]})
        yield f"{net}: layer duplicated", dict(args, **{net: layers + layers[-1:]})
        for i, layer in enumerate(layers):
            def replaced(t, i=i):
                return dict(args, **{net: layers[:i] + [t] + layers[i + 1:]})
            for cut in (0, 1, 2, 3):
                yield f"{net}.{i}: {cut} entries", replaced(tuple(layer[:cut]))
            yield f"{net}.{i}: 5 entries", replaced(tuple(layer) + (layer[0],))
            yield f"{net}.{i}: not a tuple", replaced(layer[0])
            for j in range(4):
                if layer[j] is None:  # the head's norm slots
                    t = list(layer)
                    t[j] = np.ones(layer[1].shape, np.float32)
                    yield f"{net}.{i}: norm on the head", replaced(tuple(t))
                    continue
                for desc, m in arr_mutants(layer[j]):
                    t = list(layer)
                    t[j] = m
                    yield f"{net}.{i}[{j}]: {desc}", replaced(tuple(t))
    B = args["out_scores"].shape[0]
    yield "both noise and seed", dict(args, seed=3)
    yield "negative seed", dict(args, noise=None, seed=-1)
    yield "huge seed", dict(args, noise=None, seed=2 ** 64)
    yield "float seed", dict(args, noise=None, seed=1.5)
    yield "N mismatch", dict(args, num_samples=args["num_samples"] + 1)
    yield "N zero", dict(args, num_samples=0)
    yield "threads zero", dict(args, num_threads=0)
    ro = args["out_chunks"].copy()
    ro.setflags(write=False)
    yield "read-only output", dict(args, out_chunks=ro)
    yield "output aliases input", dict(args, out_chunks=args["noise"][0])
    yield "output aliases output", dict(args, out_scores=args["out_chunks"].reshape(-1)[:B])
    misaligned = np.zeros(B * 4 + 1, np.uint8)[1:].view(np.float32)
    yield "misaligned output", dict(args, out_scores=misaligned)
    yield "unknown isa", dict(args, isa="avx1024")


def test_binding_fuzz_rejects_bad_arguments():
    args, _ = _valid_bon_args()
    C_ext.best_of_n(**args)  # the valid call works
    n = 0
    for desc, kw in _mutations(args):
        try:
            C_ext.best_of_n(**kw)
        except (TypeError, ValueError):
            n += 1
            continue
        pytest.fail(f"accepted a bad argument: {desc}")
    assert n > 150


def test_binding_keeps_temporaries_alive():
    """A layer sequence that builds fresh arrays on every access: the binding must hold them."""
    args, _ = _valid_bon_args()
    C_ext.best_of_n(**args)
    expect = {k: args[k].copy() for k in ("out_chunks", "out_scores", "out_indices")}

    class Fresh(list):
        def __getitem__(self, i):
            return tuple(None if a is None else a.copy() for a in list.__getitem__(self, i))

    kw = dict(args, actor=Fresh(args["actor"]), critic=Fresh(args["critic"]))
    for k in expect:
        kw[k] = np.zeros_like(args[k])
    C_ext.best_of_n(**kw)
    for k, v in expect.items():
        np.testing.assert_array_equal(kw[k], v)


def test_binding_fuzz_random_shapes():
    """Random shape/dtype perturbations of imagine's arguments: an exception or a correct call,
    never a crash or an out-of-bounds access."""
    rng = np.random.default_rng(1)
    B, S, G, C, N, H = 4, 3, 0, 2, 3, 2
    nets = make_nets(S, G, C, (5,), seed=1)

    def valid():
        return dict(
            states=rng.normal(size=(B, S)).astype(np.float32), goals=None,
            actor=cc.net_arrays("actor", nets["actor"], S + C, C),
            critic=cc.net_arrays("critic", nets["critic"], S + C, 1),
            dynamics=cc.net_arrays("dynamics", nets["dynamics"], S + C, S),
            reward=cc.net_arrays("reward", nets["reward"], S + C, 1), success=None,
            steps=H, num_samples=N, noise=None, seed=5,
            out_states=np.zeros((H + 1, B, S), np.float32), out_chunks=np.zeros((H, B, C), np.float32),
            out_rewards=np.zeros((H, B), np.float32), out_masks=np.zeros((H, B), np.float32),
            out_q=np.zeros((H, B), np.float32))

    C_ext.imagine(**valid())
    arrays = ["states", "out_states", "out_chunks", "out_rewards", "out_masks", "out_q"]
    for trial in range(300):
        kw = valid()
        key = arrays[rng.integers(len(arrays))]
        a = kw[key]
        kind = rng.integers(5)
        if kind == 0:
            shape = list(a.shape)
            ax = rng.integers(len(shape))
            shape[ax] = max(0, shape[ax] + int(rng.choice([-1, 1, 2])))
            kw[key] = np.zeros(shape, np.float32)
        elif kind == 1:
            kw[key] = a.astype(rng.choice([np.float16, np.float64, np.int64]))
        elif kind == 2:
            kw[key] = np.repeat(a, 2, axis=-1)[..., ::2]
        elif kind == 3:
            kw["steps"] = int(rng.choice([0, H + 1, -1]))
        else:
            net = str(rng.choice(["actor", "critic", "dynamics", "reward"]))
            layers = list(kw[net])
            i = rng.integers(len(layers))
            t = list(layers[i])
            j = rng.integers(2)
            t[j] = rng.normal(size=tuple(d + int(rng.choice([1, 2])) for d in t[j].shape)).astype(np.float32)
            layers[i] = tuple(t)
            kw[net] = layers
        with pytest.raises((TypeError, ValueError)):
            C_ext.imagine(**kw)


# ------------------------------------------------------------------------------------ hypothesis

if HAS_HYPOTHESIS:
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(B=st.integers(1, 40), N=st.integers(1, 12), S=st.integers(1, 12), G=st.integers(0, 5),
           C=st.integers(1, 12), depth=st.integers(0, 3), width=st.integers(1, 70),
           seed=st.integers(0, 2 ** 64 - 1), threading=st.sampled_from(THREADINGS))
    def test_best_of_n_hypothesis(B, N, S, G, C, depth, width, seed, threading):
        hidden = tuple(max(1, width - 7 * i) for i in range(depth))
        nets = make_nets(S, G, C, hidden, seed=seed % 1000)
        s, g = inputs(B, S, G, seed=seed % 997)
        check_best_of_n(nets, s, g, N, seed=seed, num_threads=threading[0], parallel=threading[1],
                        min_comparable=0.0)

    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
    @given(B=st.integers(1, 24), N=st.integers(1, 9), S=st.integers(1, 9), G=st.integers(0, 4),
           C=st.integers(1, 9), depth=st.integers(0, 2), width=st.integers(1, 40),
           H=st.integers(1, 4), seed=st.integers(0, 2 ** 63), goal_task=st.booleans(),
           threading=st.sampled_from(THREADINGS))
    def test_imagine_hypothesis(B, N, S, G, C, depth, width, H, seed, goal_task, threading):
        hidden = tuple(max(1, width - 5 * i) for i in range(depth))
        nets = make_nets(S, G, C, hidden, seed=seed % 1000, goal_task=goal_task)
        s, g = inputs(B, S, G, seed=seed % 991)
        check_imagine(nets, s, g, H, N, seed=seed, min_comparable=0.0,  # tiny nets: exact ties
                      num_threads=threading[0], parallel=threading[1])


# ------------------------------------------------------------------------------------ bf16 mode

BF16_SIGNIFICAND_BITS = 8  # bfloat16: 7 stored + 1 implicit (float32 has 24)


def _bf16_ulp(v: torch.Tensor) -> torch.Tensor:
    """The spacing of bfloat16 numbers at |v| (float64): 2^(exponent(v) - 7)."""
    _, e = torch.frexp(v)  # v = m 2^e, 0.5 <= |m| < 1
    return torch.where(v == 0, torch.zeros_like(v),
                       torch.ldexp(torch.ones_like(v), (e - BF16_SIGNIFICAND_BITS).to(torch.int32)))


def bf16_error_model(net: MLP, x: torch.Tensor):
    """Float64 outputs of ``net`` on ``x`` and the standard deviation of the bf16 mode's error on
    each of them, from bfloat16's 8-bit significand and the network's depth and widths.

    The bf16 mode rounds, in every hidden-to-hidden layer (not the first layer, not the head), the
    weights W and the layer's input x (the previous LayerNorm's output) to bfloat16 and accumulates
    the products in float32. Rounding v to nearest makes an error uniform in +-ulp(v)/2, variance
    ulp(v)^2 / 12, independent between elements. To first order the pre-activation of output o of
    bf16 layer l then errs by sum_k (x_k dW_ok + W_ok dx_k), which reaches the network's outputs
    through the Jacobian J_l = d out / d pre_l (GELU, LayerNorm and every later layer, in float64):
        var(out) = 1/12 sum_l [ J_l^2 (ulp(W_l)^2 x^2) + (J_l W_l)^2 ulp(x)^2 ]
    (squares elementwise, products over the layer's width: the width and the depth enter here).
    The float32 accumulation adds ~K 2^-24 relative, negligible next to 2^-8."""
    from torch.func import jacrev, vmap
    import torch.nn.functional as F

    layers = [tuple(None if t is None else t.detach().double() for t in lay) for lay in net.dense_layers()]
    L = len(layers)

    def hidden(j, pre):
        w, b, gam, bet = layers[j]
        return F.layer_norm(F.gelu(pre, approximate="tanh"), pre.shape[-1:], gam, bet, 1e-6)

    def tail(l, pre):  # the outputs as a function of layer l's pre-activation (one row)
        h = hidden(l, pre)
        for j in range(l + 1, L):
            pre = h @ layers[j][0].T + layers[j][1]
            h = pre if j == L - 1 else hidden(j, pre)
        return h

    h, ins, pres = x.double(), [], []
    for j, (w, b, _, _) in enumerate(layers):
        ins.append(h)
        pres.append(h @ w.T + b)
        h = pres[-1] if j == L - 1 else hidden(j, pres[-1])
    var = torch.zeros_like(h)
    for l in range(1, L - 1):
        w, xin = layers[l][0], ins[l]
        J = vmap(jacrev(lambda p, l=l: tail(l, p)))(pres[l])          # (rows, out, width_l)
        var += (J ** 2 @ ((_bf16_ulp(w) ** 2) @ (xin ** 2).T).T.unsqueeze(-1)).squeeze(-1)
        var += ((J @ w) ** 2 @ (_bf16_ulp(xin) ** 2).unsqueeze(-1)).squeeze(-1)
    return h, torch.sqrt(var / 12)


BF16_SIGMAS = 6.0  # a sum of many independent roundings is near-normal: 6 sigma is never reached


@pytest.mark.skipif(not cpu_has_bf16(), reason="no AVX512-BF16 on this CPU: the bf16 mode is refused here")
def test_bf16_mode_within_its_rounding_error_of_float64():
    """bf16 outputs (networks, best-of-N chunks and scores) are within 6 standard deviations of
    bf16_error_model's rounding error of a float64 evaluation, plus float32-level slack. Measured:
    the mean |error| is 0.81 sigma (a normal variable's is 0.80), the largest of 300 is 3.1 sigma;
    a bf16 mode that rounded to 7 significant bits would double every error."""
    nets = make_nets(10, 0, 6, (64, 71, 48), seed=3)  # odd width: padded bf16 pairs; 2 bf16 layers
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        x = torch.randn(50, 16, generator=gen)
        for name in ("actor", "critic"):
            net = nets[name]
            ref, sd = bf16_error_model(net, x)
            err32 = float((cc.mlp_forward(net, x).double() - ref).abs().max())
            slack = 8 * err32 + 1e-5 * float(ref.abs().max())  # float32-level differences
            for nt, par in THREADINGS:
                err = (cc.mlp_forward(net, x, bf16=True, num_threads=nt, parallel=par).double() - ref).abs()
                z = float(((err - slack) / sd).max())
                assert z <= BF16_SIGMAS, f"{name}: bf16 error {float(err.max()):.3g} is {z:.1f} sigma"
            assert float(sd.max()) < 0.05 * max(1.0, float(ref.abs().max()))  # the model is not vacuous
        # best-of-N: the chosen chunk is the bf16 actor's output for the chosen noise, its score the
        # bf16 critic's value of that chunk; both within the model of float64.
        s, _ = inputs(64, 10, 0)
        N = 8
        z = philox_normal(1, (N, 64, 6))
        out = cc.best_of_n(s, None, nets["actor"], nets["critic"], N, None, 1, bf16=True)
        a_in = torch.cat([s, z[out.indices, torch.arange(64)]], 1)
        a_ref, a_sd = bf16_error_model(nets["actor"], a_in)
        err = (out.chunks.double() - a_ref.clamp(-1, 1)).abs()  # clip is 1-Lipschitz
        assert float(((err - 1e-5) / a_sd).max()) <= BF16_SIGMAS
        q_ref, q_sd = bf16_error_model(nets["critic"], torch.cat([s, out.chunks], 1))
        err = (out.scores.double() - q_ref.squeeze(1)).abs()
        slack = 1e-5 * max(1.0, float(q_ref.abs().max()))
        assert float(((err - slack) / q_sd.squeeze(1)).max()) <= BF16_SIGMAS
        # the argmax mostly agrees with float32 (near-ties differ), and a rollout stays finite
        a32 = cc.best_of_n(s, None, nets["actor"], nets["critic"], N, None, 1)
        assert (a32.indices == out.indices).float().mean() >= 0.8
        r = cc.imagine(s, None, nets["actor"], nets["critic"], nets["dynamics"], nets["reward"],
                       nets["success"], 2, 4, None, 3, bf16=True, num_threads=2, parallel="columns")
        assert torch.isfinite(r.states).all()


def test_bf16_refused_without_support():
    nets = make_nets(5, 0, 3, (8, 8), seed=0)
    s, _ = inputs(4, 5, 0)
    with pytest.raises(ValueError, match="bf16"):
        cc.best_of_n(s, None, nets["actor"], nets["critic"], 2, None, 1, bf16=True, isa="avx2")


# ------------------------------------------------------------------------------------ flow teacher

@pytest.mark.parametrize("lead", [(9,), (3, 5)])
def test_flow_teacher_on_the_native_core(lead):
    """The K Euler passes of the distillation teacher (no gradient) on the native core: each pass
    as accurate as torch float32 against float64 (the error compounds over the K passes in both);
    with gradients enabled the torch path runs, so the flow-matching loss still trains."""
    from mac.agent import euler_flow
    gen = torch.Generator().manual_seed(3)
    S, C, K = 6, 8, 5
    flow = _randomise(MLP(S + C + 1, C, (33, 17)), gen, scale=0.5)
    ctx, z = torch.randn(*lead, S, generator=gen), torch.randn(*lead, C, generator=gen)
    with torch.no_grad():
        native = euler_flow(flow, ctx, z, K, backend="cpu")
        ref32 = euler_flow(flow, ctx, z, K, backend="torch")
        ref64 = euler_flow(as64(flow), ctx.double(), z.double(), K, backend="torch")
    assert native.shape == z.shape
    assert_same_order("teacher", native, ref32, ref64)
    assert not torch.equal(native, z)
    z.requires_grad_(True)
    out = euler_flow(flow, ctx, z, K, backend="cpu")
    out.sum().backward()
    assert z.grad is not None and flow.layers[0].weight.grad is not None
