"""Known answers, independent of the code under test.

* Philox4x32-10: the published known-answer vectors of Random123 (Salmon et al., SC'11; the
  library's tests/kat_vectors), on every implementation: the numpy twin in mac.noise (which the
  PyTorch reference backend draws from), the C++ copy in the bindings (behind
  ``mac._C.philox_normal``), and the copy compiled into each ISA's kernels (the one that draws the
  in-kernel noise of seeded calls). The CUDA kernels' copy is checked against the numpy twin's
  stream by tests/test_cuda.py (seeded == explicit Philox noise), hence against these vectors.
  The Gaussian stream is then checked to be Box-Muller of exactly these blocks, in the documented
  counter/key layout, with Box-Muller written out here in plain float64 Python.

* A rollout small enough to do by hand (2 steps, 2 rows, 2 candidates, 2-wide hidden layers),
  run by every available backend and compared with the values derived below, re-evaluated here in
  float64 numpy without mac's code.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import mac.rollout as R
from mac.nets import MLP
from mac.noise import philox4x32_10, philox_normal, philox_normal_numpy

from conftest import ISAS, cpu_has_isa, isa_params

# Random123 kat_vectors, "philox4x32 10": counter (4 words), key (2 words) -> output (4 words).
PHILOX4X32_10_KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _c_ext():
    return pytest.importorskip("mac._C")


@pytest.mark.parametrize("ctr,key,want", PHILOX4X32_10_KAT)
def test_philox_known_answers_numpy_twin(ctr, key, want):
    got = philox4x32_10(np.array([ctr], np.uint32), key)
    assert got.dtype == np.uint32 and tuple(int(v) for v in got[0]) == want


@pytest.mark.parametrize("copy", ["host"] + isa_params())
@pytest.mark.parametrize("ctr,key,want", PHILOX4X32_10_KAT)
def test_philox_known_answers_native(ctr, key, want, copy):
    C = _c_ext()
    if not hasattr(C, "philox4x32_10"):
        pytest.fail("mac._C has no philox4x32_10: rebuild the extension")
    assert tuple(C.philox4x32_10(list(ctr), list(key), copy)) == want


def _box_muller(bits):
    """The four normals of one Philox block, as mac/noise.py documents them (float64, then float32)."""
    u = [(b + 0.5) * 2.0 ** -32 for b in bits]
    r01, r23 = math.sqrt(-2.0 * math.log(u[0])), math.sqrt(-2.0 * math.log(u[2]))
    t01, t23 = 2.0 * math.pi * u[1], 2.0 * math.pi * u[3]
    return np.array([r01 * math.cos(t01), r01 * math.sin(t01), r23 * math.cos(t23), r23 * math.sin(t23)],
                    np.float32)


def _ulps(a, b):
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64)).max()


@pytest.mark.parametrize("seed,block", [(0, 0), (2 ** 64 - 1, 2 ** 64 // 4 - 1), (0x299F31D0A4093822, 7),
                                        (12345, 2 ** 40 + 3)])
def test_normal_stream_is_box_muller_of_the_philox_blocks(seed, block):
    """Elements 4*block .. 4*block+3 of the stream of ``seed`` come from Philox block
    counter=(block low, block high, 0, 0), key=(seed low, seed high); seed 0 / block 0 is the
    first KAT vector. Within 1 float32 ulp (libm's float64 log/cos/sin may differ in the last bit)."""
    key = (seed & 0xFFFFFFFF, seed >> 32)
    ctr = (block & 0xFFFFFFFF, block >> 32, 0, 0)
    if (seed, block) == (0, 0):
        bits = PHILOX4X32_10_KAT[0][2]
    else:
        bits = tuple(int(v) for v in philox4x32_10(np.array([ctr], np.uint32), key)[0])
    want = _box_muller(bits)
    start = 4 * block
    streams = {"numpy": philox_normal_numpy(seed, 4, start)}
    if block == 0:  # the torch-facing twin draws from the stream's start
        streams["torch"] = philox_normal(seed, (4,)).numpy()
    try:
        import mac._C as C
        streams["native"] = C.philox_normal(seed, 4, start)
    except ImportError:
        pass
    for name, got in streams.items():
        assert got.dtype == np.float32
        assert _ulps(got, want) <= 1, f"{name}: {got} != Box-Muller of the Philox block {want}"


# ------------------------------------------------------------------------------------ a rollout by hand

EPS = 1e-6  # LayerNorm epsilon of mac.nets


def _soft_sign(x):
    """What every network here computes: its hidden layer's pre-activations are (x, -x), so after
    GELU (g(x) - g(-x) = x for any g(x) = x (1 + odd(x)) / 2) the 2-wide LayerNorm gives
    (x/2) / sqrt(x^2/4 + eps) * (1, -1), and the head (1/2, -1/2) reads (x/2) / sqrt(x^2/4 + eps)
    = sign(x) / sqrt(1 + 4 eps / x^2)."""
    return math.copysign(1.0, x) / math.sqrt(1.0 + 4.0 * EPS / (x * x))


def _net(in_dim, out_dim, pre_row, pre_bias, head_bias, head=None):
    """A 1-hidden-layer MLP of width 2 whose pre-activations are (x, -x), x = pre_row . input + pre_bias."""
    net = MLP(in_dim, out_dim, (2,))
    lin, norm, out = net.layers
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([pre_row, [-v for v in pre_row]], dtype=torch.float32))
        lin.bias.copy_(torch.tensor([pre_bias, -pre_bias]))
        norm.weight.fill_(1.0)
        norm.bias.zero_()
        out.weight.copy_(torch.tensor(head if head is not None else [[0.5, -0.5]] * out_dim))
        out.bias.copy_(torch.tensor(head_bias))
    return net


def hand_nets():
    # S = 2 (s0, s1), C = 1, no goals.
    return {
        # actor([s, z]) = soft_sign(z) - 1/4: ~0.75 for z > 0, ~-1.25 -> clipped to -1 for z < 0
        "actor": _net(3, 1, [0.0, 0.0, 1.0], 0.0, [-0.25]),
        # critic([s, c]) = soft_sign(c): the positive candidate wins; two clipped -1 candidates tie
        "critic": _net(3, 1, [0.0, 0.0, 1.0], 0.0, [0.0]),
        # dynamics([s, c]) = (soft_sign(c) / 2, 1/10): s0 moves by ~+-1/2, s1 by 0.1
        "dynamics": _net(3, 2, [0.0, 0.0, 1.0], 0.0, [0.0, 0.1], head=[[0.25, -0.25], [0.0, 0.0]]),
        # reward([s, c]) = soft_sign(s0)
        "reward": _net(3, 1, [1.0, 0.0, 0.0], 0.0, [0.0]),
        # success logit([s, c]) = soft_sign(s1 - 0.15): success once s1 > 0.15
        "success": _net(3, 1, [0.0, 1.0, 0.0], -0.15, [0.0]),
    }


HAND_STATES = [[0.2, 0.1], [-0.4, -0.3]]
HAND_NOISE = [  # (H=2, N=2, B=2, C=1)
    [[[-0.5], [0.3]], [[0.8], [-2.0]]],     # step 0: row 0 -> candidate 1 (z=0.8), row 1 -> candidate 0
    [[[1.5], [-0.7]], [[-0.1], [-1.3]]],    # step 1: row 0 -> candidate 0; row 1: both clip to -1, tie -> 0
]


def hand_rollout():
    """The rollout worked out by hand from the comments of hand_nets (float64 Python)."""
    ss = _soft_sign
    s = [list(r) for r in HAND_STATES]
    states, chunks, rewards, masks, qs, idx = [[list(r) for r in s]], [], [], [], [], []
    for k in range(2):
        c_k, r_k, m_k, q_k, i_k, nxt = [], [], [], [], [], []
        for b in range(2):
            cands = [min(1.0, max(-1.0, ss(HAND_NOISE[k][i][b][0]) - 0.25)) for i in range(2)]
            q = [ss(c) for c in cands]
            i = 0 if q[0] >= q[1] else 1                          # ties -> the lowest index
            c = cands[i]
            r_k.append(ss(s[b][0]))
            m_k.append(0.0 if ss(s[b][1] - 0.15) > 0 else 1.0)
            nxt.append([s[b][0] + 0.5 * ss(c), s[b][1] + 0.1])
            c_k.append([c]), q_k.append(q[i]), i_k.append(i)
        s = nxt
        states.append([list(r) for r in s])
        chunks.append(c_k), rewards.append(r_k), masks.append(m_k), qs.append(q_k), idx.append(i_k)
    return {"states": states, "chunks": chunks, "rewards": rewards, "masks": masks, "q": qs, "indices": idx}


def test_the_hand_rollout_is_what_the_comments_say():
    """The decisions, by inspection: row 0 picks z=0.8 then z=1.5 (chunks ~0.75, s0: 0.2 -> 0.7 ->
    1.2), row 1 picks z=0.3 then ties at -1 (both candidates clip) and takes candidate 0 (s0: -0.4
    -> 0.1 -> -0.4); rewards are sign(s0); row 0 succeeds at step 1 (s1 = 0.2 > 0.15): mask 0."""
    h = hand_rollout()
    assert h["indices"] == [[1, 0], [0, 0]]
    assert [[round(c[0], 4) for c in row] for row in h["chunks"]] == [[0.75, 0.75], [0.75, -1.0]]
    assert h["chunks"][1][1] == [-1.0]
    assert [[round(r) for r in row] for row in h["rewards"]] == [[1, -1], [1, 1]]
    assert h["masks"] == [[1.0, 1.0], [0.0, 1.0]]
    assert [[round(v, 4) for v in row] for row in h["states"][2]] == [[1.2, 0.3], [-0.4, -0.1]]


def _numpy_rollout(nets):
    """The same rollout from the networks' parameters, in float64 numpy (GELU tanh, LayerNorm)."""
    def mlp(net, x):
        layers = [tuple(None if t is None else t.detach().double().numpy() for t in lay)
                  for lay in net.dense_layers()]
        for w, b, g, be in layers[:-1]:
            h = x @ w.T + b
            h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
            m = h.mean(-1, keepdims=True)
            h = (h - m) / np.sqrt(((h - m) ** 2).mean(-1, keepdims=True) + EPS) * g + be
            x = h
        w, b, _, _ = layers[-1]
        return x @ w.T + b

    s = np.array(HAND_STATES)
    z = np.array(HAND_NOISE)
    out = {"states": [s], "chunks": [], "rewards": [], "masks": [], "q": []}
    for k in range(2):
        cands = np.stack([np.clip(mlp(nets["actor"], np.concatenate([s, z[k, i]], 1)), -1, 1)
                          for i in range(2)])                                  # (N, B, 1)
        q = np.stack([mlp(nets["critic"], np.concatenate([s, cands[i]], 1))[:, 0] for i in range(2)])
        i = q.argmax(0)
        c = cands[i, np.arange(2)]
        sc = np.concatenate([s, c], 1)
        out["chunks"].append(c), out["q"].append(q[i, np.arange(2)])
        out["rewards"].append(mlp(nets["reward"], sc)[:, 0])
        out["masks"].append(1.0 - (mlp(nets["success"], sc)[:, 0] > 0))
        s = s + mlp(nets["dynamics"], sc)
        out["states"].append(s)
    return {k: np.array(v) for k, v in out.items()}


def _backends():
    """name -> run(kind, nets, states, noise) for every backend available here; kind is "imagine"
    (2 steps, 2 candidates) or "best_of_n" (2 candidates)."""
    def public(backend, dtype=torch.float32, device="cpu"):
        def run(kind, n, s, z):
            n = {k: copy.deepcopy(v).to(device, dtype) for k, v in n.items()}
            s, z = s.to(device, dtype), z.to(device, dtype)
            if kind == "best_of_n":
                return R.best_of_n(s, actor=n["actor"], critic=n["critic"], num_samples=2, noise=z,
                                   backend=backend)
            return R.imagine(s, **n, steps=2, num_samples=2, noise=z, backend=backend)
        return run

    out = {"torch-float32": public("torch"), "torch-float64": public("torch", torch.float64)}
    try:
        from mac import _cpu_core as cc
        from mac import _native
        ready = _native.cpu_backend_ready(torch.zeros(1))
    except ImportError:
        ready = False
    if ready:
        out["cpu"] = public("cpu")
        for isa in (i for i in ISAS if cpu_has_isa(i)):
            for nt, par in ((1, "auto"), (2, "tiles"), (2, "columns")):
                def run(kind, n, s, z, isa=isa, nt=nt, par=par):
                    kw = dict(num_threads=nt, isa=isa, parallel=par)
                    if kind == "best_of_n":
                        return cc.best_of_n(s, None, n["actor"], n["critic"], 2, z, None, **kw)
                    return cc.imagine(s, None, n["actor"], n["critic"], n["dynamics"], n["reward"],
                                      n["success"], 2, 2, z, None, **kw)
                out[f"cpu-{isa}-{nt}-{par}"] = run
    if torch.cuda.is_available():
        from mac import _native
        if _native.cuda_backend_ready(torch.zeros(1, device="cuda")):
            out["cuda"] = public("cuda", device="cuda")
    return out


def test_hand_rollout_on_every_backend():
    nets = hand_nets()
    for net in nets.values():
        net.requires_grad_(False)
    want = {k: np.array(v, np.float64) for k, v in hand_rollout().items()}
    indep = _numpy_rollout(nets)
    for k in ("states", "chunks", "rewards", "masks", "q"):  # two derivations of the same numbers
        np.testing.assert_allclose(indep[k], want[k], rtol=0, atol=1e-7, err_msg=k)  # float32 params
    s = torch.tensor(HAND_STATES)
    z = torch.tensor(HAND_NOISE)
    backends = _backends()
    assert {"torch-float32", "torch-float64"} <= set(backends)
    for name, run in backends.items():
        # float32 backends: the inputs (0.1, 0.15, ...) are rounded to float32 (6e-8 relative) and
        # every value here is O(1): 2e-6 is ~30 float32 ulps. The CUDA core multiplies in TF32 by
        # default (10-bit significand, u = 2^-11): every output here is at most 2 products of
        # TF32-rounded O(1) values, a step chains two networks (dynamics feeds the next state), and
        # there are 2 steps: at most 8 u. (The decisions have O(1) margins and must not change.)
        atol = 8 * 2.0 ** -11 if name == "cuda" else 2e-6
        out = run("imagine", nets, s, z)
        for k in ("states", "chunks", "rewards", "masks", "q"):
            got = getattr(out, k).double().cpu().numpy()
            np.testing.assert_allclose(got, want[k], rtol=0, atol=atol, err_msg=f"{name}: {k}")
        for k in range(2):  # each step as one best-of-N call: the chosen indices (ties -> lowest)
            b = run("best_of_n", nets, torch.tensor(want["states"][k], dtype=torch.float32), z[k])
            assert b.indices.cpu().tolist() == want["indices"][k].tolist(), f"{name}: step {k} indices"
            np.testing.assert_allclose(b.chunks.double().cpu().numpy(), want["chunks"][k], atol=atol)
            np.testing.assert_allclose(b.scores.double().cpu().numpy(), want["q"][k], atol=atol)
