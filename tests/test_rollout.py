"""The PyTorch reference of best-of-N and imagined rollouts, and the API's argument checks."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mac.nets import MLP
from mac.noise import philox_normal
from mac.reference import reward_and_mask
from mac.rollout import (best_of_n, best_of_n_reference, imagine, imagine_reference,
                         select_best)

S, G, C = 5, 3, 4


def nets(goal_dim=G, reward=True):
    torch.manual_seed(1)
    return dict(actor=MLP(S + goal_dim + C, C, (16, 16)), critic=MLP(S + goal_dim + C, 1, (16,)),
                dynamics=MLP(S + C, S, (8,)),
                reward=MLP(S + goal_dim + C, 1, (8,)) if reward else None,
                success=MLP(S + goal_dim + C, 1, (8,)))


def test_mlp_layout_and_init():
    m = MLP(7, 3, (11, 13))
    kinds = [type(x).__name__ for x in m.layers]
    assert kinds == ["Linear", "LayerNorm", "Linear", "LayerNorm", "Linear"]
    assert m.layers[1].eps == 1e-6
    assert all(float(l.bias.abs().max()) == 0 for l in m.layers if isinstance(l, torch.nn.Linear))
    # forward == the spelled-out formula
    x = torch.randn(4, 7)
    h = x
    for lin, ln in ((m.layers[0], m.layers[1]), (m.layers[2], m.layers[3])):
        z = lin(h)
        z = 0.5 * z * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (z + 0.044715 * z ** 3)))
        h = (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + 1e-6)
        h = h * ln.weight + ln.bias
    torch.testing.assert_close(m(x), m.layers[4](h), rtol=1e-5, atol=1e-5)
    assert len(m.dense_layers()) == 3 and m.dense_layers()[-1].norm_weight is None
    with pytest.raises(ValueError):
        MLP(0, 3)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 1.0, 2.0, float("nan"), -1.0]), min_size=3, max_size=3),
                min_size=1, max_size=6))
def test_select_best_ties_lowest_and_nan_never_wins(cols):
    q = torch.tensor(cols).T  # (N=3, B)
    idx = select_best(q)
    for b in range(q.shape[1]):
        col = q[:, b].tolist()
        finite = [v for v in col if v == v]
        expected = col.index(max(finite)) if finite else 0
        assert int(idx[b]) == expected


def test_best_of_n_reference_picks_argmax_of_clipped_candidates():
    n = nets()
    s, g = torch.randn(6, S), torch.randn(6, G)
    noise = torch.randn(5, 6, C)
    res = best_of_n_reference(s, g, n["actor"], n["critic"], noise)
    cands = n["actor"](torch.cat([s.expand(5, -1, -1), g.expand(5, -1, -1), noise], -1)).clamp(-1, 1)
    q = n["critic"](torch.cat([s.expand(5, -1, -1), g.expand(5, -1, -1), cands], -1)).squeeze(-1)
    torch.testing.assert_close(res.scores, q.max(0).values)
    torch.testing.assert_close(res.chunks, cands[q.argmax(0), torch.arange(6)])
    assert res.chunks.abs().max() <= 1


def test_constant_critic_ties_to_index_zero():
    n = nets()
    torch.nn.init.zeros_(n["critic"].layers[-1].weight)
    res = best_of_n(torch.randn(4, S), torch.randn(4, G), actor=n["actor"], critic=n["critic"],
                    num_samples=6, seed=0, backend="torch")
    assert res.indices.tolist() == [0, 0, 0, 0]


def test_seed_reproduces_and_equals_explicit_philox_noise():
    n = nets()
    s, g = torch.randn(3, S), torch.randn(3, G)
    a = best_of_n(s, g, actor=n["actor"], critic=n["critic"], num_samples=4, seed=7, backend="torch")
    b = best_of_n(s, g, actor=n["actor"], critic=n["critic"], num_samples=4,
                  noise=philox_normal(7, (4, 3, C)), backend="torch")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("with_reward", [True, False])
def test_imagine_reference_follows_the_mac_rules(with_reward):
    n = nets(reward=with_reward)
    s, g = torch.randn(4, S), torch.randn(4, G)
    H, N = 3, 5
    noise = torch.randn(H, N, 4, C)
    ro = imagine(s, g, **n, steps=H, num_samples=N, noise=noise, backend="torch")
    assert ro.states.shape == (H + 1, 4, S) and ro.chunks.shape == (H, 4, C)
    assert not ro.states.requires_grad
    cur = s
    for k in range(H):
        bo = best_of_n_reference(cur, g, n["actor"], n["critic"], noise[k])
        torch.testing.assert_close(ro.chunks[k], bo.chunks)
        torch.testing.assert_close(ro.q[k], bo.scores)
        inp = torch.cat([cur, g, bo.chunks], -1)
        succ = (n["success"](inp).squeeze(-1) > 0).float()
        torch.testing.assert_close(ro.masks[k], 1 - succ)
        if with_reward:
            torch.testing.assert_close(ro.rewards[k], n["reward"](inp).squeeze(-1))
        else:
            torch.testing.assert_close(ro.rewards[k], succ - 1)
        cur = cur + n["dynamics"](torch.cat([cur, bo.chunks], -1))
        torch.testing.assert_close(ro.states[k + 1], cur)


def test_no_goal_and_no_success_net_means_mask_one():
    n = nets(goal_dim=0)
    n["success"] = None
    ro = imagine(torch.randn(2, S), None, **n, steps=2, num_samples=3, seed=1, backend="torch")
    assert torch.all(ro.masks == 1)


def test_rollout_runs_without_grad_even_when_params_require_it():
    n = nets()
    ro = imagine(torch.randn(2, S), torch.randn(2, G), **n, steps=2, num_samples=2, seed=0, backend="torch")
    assert all(not t.requires_grad for t in ro)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(states=torch.randn(3)), ValueError, "shape \\(B, S\\)"),
    (dict(goals=torch.randn(2, G)), ValueError, "goals must have shape"),
    (dict(num_samples=0), ValueError, "num_samples"),
    (dict(num_samples=True), ValueError, "num_samples"),
    (dict(actor=torch.nn.Linear(3, 3)), TypeError, "mac.nets.MLP"),
    (dict(critic=MLP(S + G + C, 2, (4,))), ValueError, "critic maps"),
    (dict(noise=torch.randn(2, 3, C)), ValueError, "noise must have shape"),
    (dict(noise=torch.randn(4, 3, C), seed=1), ValueError, "either noise or seed"),
    (dict(seed=-1), ValueError, "seed must be in"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
    (dict(backend="cuda"), ValueError, "needs CUDA tensors"),
    (dict(states=torch.randn(3, S, dtype=torch.float64), goals=torch.randn(3, G, dtype=torch.float64)),
     TypeError, "dtype"),
])
def test_best_of_n_argument_errors(kwargs, err, match):
    n = nets()
    args = dict(states=torch.randn(3, S), goals=torch.randn(3, G), actor=n["actor"], critic=n["critic"],
                num_samples=4, backend="torch")
    args.update(kwargs)
    states, goals = args.pop("states"), args.pop("goals")
    with pytest.raises(err, match=match):
        best_of_n(states, goals, **args)


def test_imagine_argument_errors():
    n = nets()
    s, g = torch.randn(3, S), torch.randn(3, G)
    with pytest.raises(ValueError, match="steps"):
        imagine(s, g, **n, steps=0, num_samples=2, backend="torch")
    bad = dict(n, dynamics=MLP(S + C, S + 1, (4,)))
    with pytest.raises(ValueError, match="dynamics maps"):
        imagine(s, g, **bad, steps=1, num_samples=2, backend="torch")


def test_auto_keeps_cuda_tensors_on_the_reference_unless_opted_in(monkeypatch):
    """The CUDA kernels lost to torch eager on their first GPU run (docs/CUDA.md): "auto" must not
    pick them for CUDA tensors unless MAC_AUTO_CUDA_KERNELS=1."""
    import types

    from mac import _native, rollout
    fake = types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32)
    monkeypatch.setattr(_native, "cuda_backend_ready", lambda states: True)
    monkeypatch.setattr(rollout, "_cuda_proven", lambda device: True)  # the proof: test_selfcheck.py
    assert rollout._resolve_backend("auto", fake) == "torch"
    monkeypatch.setattr(rollout, "AUTO_USES_CUDA_KERNELS", True)
    assert rollout._resolve_backend("auto", fake) == "cuda"


def test_the_native_modules_depend_one_way():
    """mac.rollout -> mac._cpu_core / mac._cuda_core -> mac._native, mac.results: the cores never
    import the rollout API and _native imports no core (a fresh interpreter sees the import graph)."""
    import subprocess
    import sys
    code = ("import sys, mac._native; assert not {'mac._cpu_core', 'mac._cuda_core', 'mac.rollout'} & "
            "set(sys.modules), sorted(sys.modules); import mac._cpu_core, mac._cuda_core; "
            "assert 'mac.rollout' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


# ------------------------------------------------------------------------------------ reference details
# Pinned against mutants of mac.reference that survived the tests above (docs/TESTING.md).

def _zero_net(in_dim, out_dim):
    net = MLP(in_dim, out_dim, (8,))
    torch.nn.init.zeros_(net.layers[-1].weight)
    torch.nn.init.zeros_(net.layers[-1].bias)
    return net


def test_a_success_logit_of_exactly_zero_is_not_a_success():
    """sigmoid(0) = 0.5 is not > 0.5: reward -1 and mask 1 on goal tasks."""
    torch.manual_seed(0)
    B = 6
    states, goals, chunks = torch.randn(B, S), torch.randn(B, G), torch.rand(B, C)
    r, m = reward_and_mask(states, goals, chunks, None, _zero_net(S + G + C, 1))
    torch.testing.assert_close(r, torch.full((B,), -1.0))
    torch.testing.assert_close(m, torch.ones(B))


def test_float64_rollouts_without_a_success_net_stay_float64():
    """Reward task, no success net: masks are ones of the states' dtype and batch size (S != B)."""
    torch.manual_seed(0)
    n = {k: v.double() if v is not None else None for k, v in nets(goal_dim=0).items()}
    B, H, N = 7, 2, 3
    ro = imagine_reference(torch.randn(B, S, dtype=torch.float64), None, n["actor"], n["critic"],
                           n["dynamics"], n["reward"], None, torch.randn(H, N, B, C, dtype=torch.float64))
    assert ro.masks.dtype == ro.rewards.dtype == torch.float64
    torch.testing.assert_close(ro.masks, torch.ones(H, B, dtype=torch.float64))


def test_reference_noise_from_torch_generator_has_the_states_dtype():
    torch.manual_seed(0)
    n = {k: v.double() if v is not None else None for k, v in nets().items()}
    states, goals = torch.randn(4, S, dtype=torch.float64), torch.randn(4, G, dtype=torch.float64)
    torch.manual_seed(5)
    got = best_of_n(states, goals, actor=n["actor"], critic=n["critic"], num_samples=3, backend="torch")
    torch.manual_seed(5)
    noise = torch.randn(3, 4, C, dtype=torch.float64)
    want = best_of_n_reference(states, goals, n["actor"], n["critic"], noise)
    torch.testing.assert_close(got.chunks, want.chunks, rtol=0, atol=0)
