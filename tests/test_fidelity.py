"""The authors' options (agents/mac.py, utils/datasets.py, main.py, envs/env_utils.py) and the
paper preset's fidelity to their code: hand-computed cases per switch, an independent recomputation
of their chunk labels and GAE, and a short training run + resume per setting (docs/FIDELITY.md). That
every setting changes what is computed is test_settings_effect.py."""

import csv

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import make_episodes
from mac.agent import MACAgent, discounted_returns, fetch_floats
from mac.config import (AgentConfig, apply_agent_flags, fit_normalizers, native_rollout_supported,
                        preset, sampler_options)
from mac.data import ChunkSampler, GoalMixture, Normalizer, OfflineData
from mac.nets import MLP
from mac.rollout import Rollout, _resolve_backend, imagine, imagine_reference

from test_agent import A, H, S, batch, tiny_config  # noqa: E402  (one tiny agent for all agent tests)
EPS = 1e-5


# ------------------------------------------------------------------------------------ data

def reward_data():
    """Two episodes (rows 0-5, 6-12) with hand-set rewards, masks and actions at the bounds."""
    a = make_episodes([6, 7], obs_dim=S, action_dim=A)
    rewards = np.array([-2, -1, -1, 0, -1, 0, -3, -2, -2, -1, 0, 0, -1], np.float32)
    masks = (rewards < 0).astype(np.float32)
    a["actions"][0] = [1.0, -1.0]
    a["actions"][1] = [1 - 1e-6, -0.5]
    return OfflineData(a["observations"], a["actions"], a["terminals"], rewards=rewards, masks=masks)


def goal_data(lengths=(40, 50)):
    a = make_episodes(list(lengths), obs_dim=S, action_dim=A)
    return OfflineData(a["observations"], a["actions"], a["terminals"], goal_reps=a["observations"][:, :3])


def authors_ac_dataset_sample(data, idxs, h, discount):
    """utils/datasets.py ACDataset.sample for given chunk starts, written independently, on actions
    clipped as envs/env_utils.py does at load."""
    actions = np.clip(data.actions, -1 + EPS, 1 - EPS)
    batch_idxs = np.stack([idxs + i for i in range(h + 1)], axis=0)          # (h+1, B)
    rewards = data.rewards[batch_idxs]
    return {
        "observations": data.observations[batch_idxs[0]],
        "actions": np.concatenate(actions[batch_idxs][:h], axis=-1),
        "next_observations": data.observations[batch_idxs[-1]],
        "rewards": np.mean(rewards[:-1] * np.power(discount, np.arange(h)[:, None]), axis=0),
        "masks": np.ones_like(rewards[0]),
    }


def test_paper_chunk_labels_equal_the_authors_formulas():
    data, h, discount = reward_data(), 3, 0.9
    s = ChunkSampler(data, h, discount, seed=0, **sampler_options(preset("paper")))
    b = s.sample(300)
    want = authors_ac_dataset_sample(data, b["idxs"], h, discount)
    for k in ("observations", "actions", "next_observations", "masks"):
        np.testing.assert_array_equal(b[k], want[k], err_msg=k)
    np.testing.assert_allclose(b["rewards"], want["rewards"], rtol=1e-6, atol=0)
    # by hand: the chunk at row 0 has rewards -2, -1, -1 -> mean(-2, -0.9, -0.81) = -1.2367
    row0 = np.flatnonzero(b["idxs"] == 0)[0]
    np.testing.assert_allclose(b["rewards"][row0], (-2 - 0.9 - 0.81) / 3, rtol=1e-6)
    np.testing.assert_array_equal(b["actions"][row0][:4], np.float32([1 - EPS, -(1 - EPS), 1 - EPS, -0.5]))
    assert set(b["masks"]) == {1.0}


def test_cpu_preset_takes_the_mean_and_ogbench_masks():
    """The CPU preset (chosen by the measurement in docs/RESULTS.md): the authors' mean chunk reward,
    OGBench's masks for termination."""
    data, h = reward_data(), 3
    s = ChunkSampler(data, h, 0.9, seed=0, **sampler_options(preset("cpu")))
    b = s.sample(300)
    row8 = np.flatnonzero(b["idxs"] == 8)[0]           # rewards -2, -1, 0 ; masks 1, 1, 0
    np.testing.assert_allclose(b["rewards"][row8], (-2 - 0.9 + 0) / h, rtol=1e-6)
    assert b["masks"][row8] == 0.0
    row1 = np.flatnonzero(b["idxs"] == 1)[0]           # rewards -1, -1, 0 -> mask min = 0
    np.testing.assert_allclose(b["rewards"][row1], -1.9 / h, rtol=1e-6)
    assert b["masks"][row1] == 0.0
    row0 = np.flatnonzero(b["idxs"] == 0)[0]           # rewards -2, -1, -1 -> all masks 1
    assert b["masks"][row0] == 1.0


@pytest.mark.parametrize("key, a, b, changed", [
    ("chunk_reward", "sum", "mean", "rewards"),
    ("reward_task_termination", True, False, "masks"),
])
def test_reward_switches_change_only_their_label(key, a, b, changed):
    data = reward_data()
    base = dict(chunk_reward="sum", reward_task_termination=True)
    x = ChunkSampler(data, 3, 0.9, seed=4, **{**base, key: a}).sample(64)
    y = ChunkSampler(data, 3, 0.9, seed=4, **{**base, key: b}).sample(64)
    for k in x:
        if k == changed:
            assert not np.array_equal(x[k], y[k])
        else:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    if key == "chunk_reward":
        np.testing.assert_allclose(y["rewards"], x["rewards"] / 3, rtol=1e-6)
    else:
        assert set(y["masks"]) == {1.0}


def test_sampler_rejects_unknown_chunk_reward():
    with pytest.raises(ValueError, match="chunk_reward"):
        ChunkSampler(reward_data(), 3, 0.9, chunk_reward="avg")


def _goal_sampler(data, discount=1e-9, **mix):
    kw = dict(value_current=0.0, value_future=1.0, value_random=0.0, actor_future=1.0, actor_random=0.0)
    kw.update(mix)
    return ChunkSampler(data, 5, discount, goal_conditioned=True, goal_mixture=GoalMixture(**kw), seed=2)


def test_geometric_value_goals_by_hand():
    # discount ~ 0 -> p = 1 - discount ~ 1 -> every geometric offset is 1: the goal is row t + 1.
    data = goal_data()
    geo = _goal_sampler(data, value_geom_sample=True).sample(2000)
    uni = _goal_sampler(data, value_geom_sample=False).sample(2000)
    np.testing.assert_array_equal(geo["value_goal_idxs"], geo["idxs"] + 1)
    end = data.episode_ends[np.searchsorted(data.episode_ends, uni["idxs"])]
    off = uni["value_goal_idxs"] - uni["idxs"]
    assert np.all((off >= 1) & (uni["value_goal_idxs"] <= end)) and off.max() > 20
    # actor goals (geometric, p ~ 1) are t + 1 under both settings: the switch is value-only
    for b in (geo, uni):
        np.testing.assert_array_equal(b["actor_goals"][:, 0], b["idxs"] + 1)


def test_uniform_actor_goals_by_hand():
    data = goal_data()
    geo = _goal_sampler(data, value_geom_sample=True, actor_geom_sample=True).sample(2000)
    uni = _goal_sampler(data, value_geom_sample=True, actor_geom_sample=False).sample(2000)
    np.testing.assert_array_equal(geo["actor_goals"][:, 0], geo["idxs"] + 1)
    ag = uni["actor_goals"][:, 0].astype(np.int64)
    end = data.episode_ends[np.searchsorted(data.episode_ends, uni["idxs"])]
    assert np.all((ag > uni["idxs"]) & (ag <= end)) and (ag - uni["idxs"]).max() > 20
    for b in (geo, uni):                                       # value goals untouched: t + 1
        np.testing.assert_array_equal(b["value_goal_idxs"], b["idxs"] + 1)


def test_actor_goal_current():
    data = goal_data((200,) * 10)
    b = _goal_sampler(data, actor_current=1.0, actor_future=0.0).sample(100)
    np.testing.assert_array_equal(b["actor_goals"], data.goal_reps[b["idxs"]])
    b = _goal_sampler(data, 0.99, actor_current=0.3, actor_future=0.4, actor_random=0.3).sample(20000)
    ag, t = b["actor_goals"][:, 0].astype(np.int64), b["idxs"]
    assert abs((ag == t).mean() - 0.3) < 0.015              # random rows hit t with prob 1/2000
    with pytest.raises(ValueError, match="sum to 1"):
        GoalMixture(actor_current=0.2)


def test_normalize_obs_switch():
    data = goal_data()
    on = fit_normalizers(AgentConfig(), data, True)
    off = fit_normalizers(AgentConfig(normalize_obs=False), data, True)
    x = data.observations[:5]
    np.testing.assert_array_equal(off[0](x), x)
    np.testing.assert_array_equal(off[1](data.goal_reps[:5]), data.goal_reps[:5])
    lo, hi = x.min(0), x.max(0)
    np.testing.assert_allclose(Normalizer.fit(x)(x), (x - (hi + lo) / 2) / ((hi - lo) / 2 + 1e-3), rtol=1e-6)
    mk = lambda n: ChunkSampler(data, 5, 0.99, obs_normalizer=n[0], goal_normalizer=n[1],
                                goal_conditioned=True, seed=1).sample(32)
    raw, normed = mk(off), mk(on)
    np.testing.assert_array_equal(raw["observations"], data.observations[raw["idxs"]])
    np.testing.assert_array_equal(raw["value_goals"], data.goal_reps[raw["value_goal_idxs"]])
    np.testing.assert_allclose(normed["observations"], on[0](raw["observations"]), rtol=1e-6)
    np.testing.assert_array_equal(raw["actions"], normed["actions"])
    assert fit_normalizers(AgentConfig(normalize_obs=False), data, False)[1] is None


# ------------------------------------------------------------------------------------ config

def test_presets_flags_and_authors_names():
    paper, cpu = preset("paper"), preset("cpu")
    assert (paper.chunk_reward, paper.reward_task_termination, paper.lam, paper.value_loss,
            paper.target_network, paper.layer_norm, paper.value_geom_sample, paper.actor_geom_sample,
            paper.actor_goal_current, paper.normalize_obs, paper.gc_negative) == (
        "mean", False, 1.0, "mse", True, True, False, True, 0.0, True, True)
    assert (cpu.chunk_reward, cpu.reward_task_termination) == ("mean", True)
    cfg, rest = apply_agent_flags(paper, [
        "--agent.lam=0.9", "--agent.value_loss=squared", "--agent.target_network=false",
        "--agent.layer_norm", "false", "--agent.actor_hidden_dims=8,8", "--agent.value_hidden_dims=none",
        "--agent.dynamics_hidden_dims=(4, 5)", "--agent.value_geom_sample=true",
        "--agent.actor_geom_sample=0", "--agent.actor_p_curgoal=0.2", "--agent.actor_p_trajgoal=0.3",
        "--agent.actor_p_randomgoal=0.5",
        "--agent.normalize_obs=no", "--agent.chunk_reward=sum", "--agent.reward_task_termination=1", "-x"])
    assert rest == ["-x"]
    assert (cfg.lam, cfg.value_loss, cfg.target_network, cfg.layer_norm, cfg.actor_hidden_dims,
            cfg.value_hidden_dims, cfg.dynamics_hidden_dims, cfg.value_geom_sample, cfg.actor_geom_sample,
            cfg.actor_goal_current, cfg.actor_goal_future, cfg.normalize_obs, cfg.chunk_reward,
            cfg.reward_task_termination) == (0.9, "mse", False, False, (8, 8), None, (4, 5), True, False,
                                             0.2, 0.3, False, "sum", True)
    assert AgentConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.net_hidden_dims("value") == cfg.hidden_dims
    with pytest.raises(ValueError, match="chunk_reward must be mean"):
        apply_agent_flags(paper, ["--agent.chunk_reward=avg"])
    with pytest.raises(ValueError, match="lam must be in"):
        apply_agent_flags(paper, ["--agent.lam=1.5"])
    with pytest.raises(ValueError, match="cannot parse 'x' as tuple"):
        apply_agent_flags(paper, ["--agent.actor_hidden_dims=x"])
    with pytest.raises(ValueError, match="needs --agent.gc_negative=false"):
        apply_agent_flags(paper, ["--agent.value_loss=bce"])
    with pytest.raises(ValueError, match="value_loss must be mse"):
        apply_agent_flags(paper, ["--agent.value_loss=huber"])
    with pytest.raises(ValueError, match="actor_goal_current/future/random must be >= 0 and sum to 1"):
        apply_agent_flags(paper, ["--agent.actor_p_curgoal=0.2"])


def test_configs_saved_before_the_options_keep_their_behaviour():
    old = preset("paper").to_dict()
    for k in ("chunk_reward", "reward_task_termination"):
        del old[k]
    cfg = AgentConfig.from_dict(old)
    assert (cfg.chunk_reward, cfg.reward_task_termination) == ("sum", True)


def test_native_rollout_supported():
    assert native_rollout_supported(preset("paper")) == (True, "")
    ok, why = native_rollout_supported(AgentConfig(layer_norm=False))
    assert not ok and "LayerNorm" in why
    deep = AgentConfig(dynamics_hidden_dims=(8,) * 12)
    assert native_rollout_supported(deep, "cpu") == (True, "")
    ok, why = native_rollout_supported(deep, "cuda")
    assert not ok and "at most 12" in why
    assert native_rollout_supported(AgentConfig(value_hidden_dims=(8,) * 12), "cuda")[0]  # not in rollouts
    for backend in ("cpu", "cuda"):
        with pytest.raises(ValueError, match="cannot serve these settings: layer_norm=false"):
            AgentConfig(layer_norm=False, rollout_backend=backend).validate()
    AgentConfig(layer_norm=False, rollout_backend="auto").validate()


# ------------------------------------------------------------------------------------ networks

def test_mlp_without_layer_norm():
    m = MLP(7, 3, (11, 13), layer_norm=False)
    assert [type(x).__name__ for x in m.layers] == ["Linear", "Identity", "Linear", "Identity", "Linear"]
    assert sorted(m.state_dict()) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias"))
    x = torch.randn(4, 7)
    gelu = lambda z: F.gelu(z, approximate="tanh")
    want = m.layers[4](gelu(m.layers[2](gelu(m.layers[0](x)))))
    torch.testing.assert_close(m(x), want, rtol=0, atol=0)
    assert all(d.norm_weight is None for d in m.dense_layers())
    with_ln = MLP(7, 3, (11, 13))
    assert with_ln.layer_norm and sum(isinstance(x, torch.nn.LayerNorm) for x in with_ln.layers) == 2


def test_agent_layer_norm_switch_and_rollout_fallback():
    agent = MACAgent(S, A, 0, tiny_config(layer_norm=False, rollout_backend="auto"))
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in agent.modules())
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in MACAgent(S, A, 0, tiny_config()).modules()) == 8 * 2
    info = agent.update(batch())                       # auto -> the torch reference, no error
    assert np.isfinite(fetch_floats(info)["loss/total"])
    nets = dict(actor=agent.actor, critic=agent.critic, dynamics=agent.dynamics, reward=agent.reward,
                success=agent.success)
    states = torch.randn(5, S)
    noise = torch.randn(2, 3, 5, H * A)
    got = imagine(states, None, **nets, steps=2, num_samples=3, noise=noise, backend="auto")
    want = imagine_reference(states, None, agent.actor, agent.critic, agent.dynamics, agent.reward,
                             agent.success, noise)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for backend in ("cpu", "cuda"):
        with pytest.raises(ValueError, match="no LayerNorm"):
            imagine(states, None, **nets, steps=2, num_samples=3, noise=noise, backend=backend)
        with pytest.raises(ValueError, match="no LayerNorm"):
            _resolve_backend(backend, states, {"actor": agent.actor})
    from mac import _native
    ln_actor = MLP(S + H * A, H * A, (8,))
    want_backend = "cpu" if _native.cpu_backend_ready(states) else "torch"
    assert _resolve_backend("auto", states, {"actor": ln_actor}) == want_backend
    assert _resolve_backend("auto", states, {"actor": agent.actor}) == "torch"


def test_separate_hidden_sizes_follow_the_authors_grouping():
    cfg = tiny_config(actor_hidden_dims=(5,), value_hidden_dims=(6, 7), dynamics_hidden_dims=(9,))
    for goal_dim in (0, 3):
        agent = MACAgent(S, A, goal_dim, cfg)
        assert agent.actor.hidden_dims == agent.flow_actor.hidden_dims == (5,)
        assert agent.value.hidden_dims == agent.target_value.hidden_dims == (6, 7)
        for net in (agent.dynamics, agent.critic, agent.success, agent.reward):
            assert net is None or net.hidden_dims == (9,)
    agent = MACAgent(S, A, 0, tiny_config(value_hidden_dims=(6,)))
    assert agent.value.hidden_dims == (6,) and agent.actor.hidden_dims == agent.critic.hidden_dims == (16, 16)
    assert np.isfinite(fetch_floats(MACAgent(S, A, 3, cfg).update(batch(goal_dim=3)))["loss/total"])


# ------------------------------------------------------------------------------------ returns

def authors_gae_returns(rewards, masks, values, discount, lam):
    """agents/mac.py compute_gae in numpy: values (H+1, B) = V(s_0..s_H); returns = values + advs."""
    Hh, B = rewards.shape
    v, nv = values[:-1], values[1:]
    adv, advs = np.zeros(B), np.zeros((Hh, B))
    for k in range(Hh - 1, -1, -1):
        delta = rewards[k] + masks[k] * discount * nv[k] - v[k]
        adv = delta + masks[k] * discount * lam * adv
        advs[k] = adv
    return v + advs


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_lambda_returns_equal_the_authors_gae(lam):
    g = torch.Generator().manual_seed(3)
    Hh, B = 5, 7
    r = -torch.rand(Hh, B, generator=g, dtype=torch.float64)
    m = (torch.rand(Hh, B, generator=g, dtype=torch.float64) > 0.2).double()
    values = torch.randn(Hh + 1, B, generator=g, dtype=torch.float64)
    got = discounted_returns(r, m, values[Hh], 0.8, lam, values[1:Hh])
    want = authors_gae_returns(r.numpy(), m.numpy(), values.numpy(), 0.8, lam)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_lambda_one_is_the_plain_return_bitwise():
    g = torch.Generator().manual_seed(4)
    r, m = -torch.rand(10, 64, generator=g), (torch.rand(10, 64, generator=g) > 0.1).float()
    boot, nv = torch.randn(64, generator=g), torch.randn(9, 64, generator=g)
    plain = discounted_returns(r, m, boot, 0.99 ** 10)
    torch.testing.assert_close(discounted_returns(r, m, boot, 0.99 ** 10, 1.0, nv), plain, rtol=0, atol=0)
    manual, x = torch.empty_like(r), boot
    for k in range(9, -1, -1):
        x = r[k] + 0.99 ** 10 * m[k] * x
        manual[k] = x
    torch.testing.assert_close(plain, manual, rtol=0, atol=0)


def test_lambda_returns_by_hand():
    # r = [-1, -1], m = 1, gamma_chunk = 0.5, V(s_1) = 4, V(s_2) = 8, lam = 0.5:
    # G_1 = -1 + 0.5 * 8 = 3; G_0 = -1 + 0.5 * (0.5 * 4 + 0.5 * 3) = 0.75
    out = discounted_returns(torch.tensor([[-1.0], [-1.0]]), torch.ones(2, 1), torch.tensor([8.0]), 0.5,
                             0.5, torch.tensor([[4.0]]))
    torch.testing.assert_close(out[:, 0], torch.tensor([0.75, 3.0]))
    with pytest.raises(ValueError, match="next_values"):
        discounted_returns(torch.zeros(2, 1), torch.ones(2, 1), torch.zeros(1), 0.5, 0.5)


# ------------------------------------------------------------------------------------ value/critic losses

def _const(net, value):
    torch.nn.init.zeros_(net.layers[-1].weight)
    with torch.no_grad():
        net.layers[-1].bias.fill_(value)


V, VT = 2.0, 5.0           # value head, target value head (logits with bce)
SUCC = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])   # (H=2, B=4) imagined successes


def _losses(goal_dim=3, **kw):
    """value/critic losses on a fixed imagined rollout with constant V = 2, target V = 5, Q = 0."""
    agent = MACAgent(S, A, goal_dim, tiny_config(**kw))
    _const(agent.value, V)
    _const(agent.target_value, VT)
    _const(agent.critic, 0.0)
    g = torch.Generator().manual_seed(0)
    ro = Rollout(torch.randn(3, 4, S, generator=g), torch.rand(2, 4, H * A, generator=g),
                 SUCC - 1.0, 1.0 - SUCC, torch.zeros(2, 4))
    agent.imagine = lambda s0, goals: ro
    losses, _ = agent.value_losses(batch(goal_dim=goal_dim))
    return agent.chunk_discount, {k: float(v.detach()) for k, v in losses.items()}


def _returns(r, m, gc, boot, lam=1.0, mid=None):
    g1 = r[1] + gc * m[1] * boot
    g0 = r[0] + gc * m[0] * (g1 if lam == 1.0 else (1 - lam) * mid + lam * g1)
    return torch.stack([g0, g1])


def test_value_and_critic_targets_by_hand():
    r, m = SUCC - 1.0, 1.0 - SUCC
    gc, base = _losses()
    G = _returns(r, m, gc, VT)
    q_target = r[0] + gc * m[0] * V
    assert base["value"] == pytest.approx(float(((V - G) ** 2).mean()), rel=1e-6)
    assert base["critic"] == pytest.approx(float((q_target ** 2).mean()), rel=1e-6)

    # target_network=false: bootstrap with the current value (2): only the value loss changes
    _, no_target = _losses(target_network=False)
    G = _returns(r, m, gc, V)
    assert no_target["value"] == pytest.approx(float(((V - G) ** 2).mean()), rel=1e-6)
    assert no_target["critic"] == base["critic"]

    # lam = 0.5: G_0 mixes V_target(s_1) = 5 with G_1: only the value loss changes
    _, lam = _losses(lam=0.5)
    G = _returns(r, m, gc, VT, 0.5, VT)
    assert lam["value"] == pytest.approx(float(((V - G) ** 2).mean()), rel=1e-6)
    assert lam["critic"] == base["critic"] and lam["value"] != base["value"]

    # gc_negative=false: imagined reward = success (0/1): value and critic targets move by it
    _, pos = _losses(gc_negative=False)
    G = _returns(SUCC, m, gc, VT)
    assert pos["value"] == pytest.approx(float(((V - G) ** 2).mean()), rel=1e-6)
    assert pos["critic"] == pytest.approx(float(((SUCC[0] + gc * m[0] * V) ** 2).mean()), rel=1e-6)


def test_bce_value_loss_by_hand():
    m = 1.0 - SUCC
    gc, got = _losses(value_loss="bce", gc_negative=False)
    sv, st = torch.sigmoid(torch.tensor(V)), torch.sigmoid(torch.tensor(VT))
    G = _returns(SUCC, m, gc, st).clamp(0, 1)                 # sigmoid head of the target, clipped
    want_v = F.binary_cross_entropy_with_logits(torch.full_like(G, V), G)
    q_target = (SUCC[0] + gc * m[0] * sv).clamp(0, 1)
    want_q = F.binary_cross_entropy_with_logits(torch.zeros(4), q_target)
    assert got["value"] == pytest.approx(float(want_v), rel=1e-6)
    assert got["critic"] == pytest.approx(float(want_q), rel=1e-6)
    with pytest.raises(ValueError, match="goal tasks only"):
        MACAgent(S, A, 0, tiny_config(value_loss="bce", gc_negative=False))


def test_target_update_uses_the_parameters_before_the_step():
    agent = MACAgent(S, A, 0, tiny_config(tau=0.25))
    with torch.no_grad():
        for p in agent.target_value.parameters():
            p.add_(torch.randn_like(p))
    v0 = [p.detach().clone() for p in agent.value.parameters()]
    t0 = [p.detach().clone() for p in agent.target_value.parameters()]
    agent.update(batch())
    for p, vb, tb in zip(agent.target_value.parameters(), v0, t0):
        torch.testing.assert_close(p, tb.lerp(vb, 0.25), rtol=0, atol=0)
    assert any(not torch.equal(p, vb) for p, vb in zip(agent.value.parameters(), v0))


# ------------------------------------------------------------------------------------ training runs
# These runs prove that each setting trains, survives a checkpoint and resumes bitwise, and that the
# flags parse into the config; they do not prove that a setting changes training (one parsed and then
# ignored passes here). That is test_settings_effect.py: every setting's quantity at two values
# against independent formulas.

REWARD_ENV, GOAL_ENV = "cube-single-play-singletask-task2-v0", "cube-single-play-oraclerep-v0"
SETTINGS = [
    (REWARD_ENV, ["--preset", "paper"]),
    (REWARD_ENV, ["--agent.chunk_reward=mean"]),
    (REWARD_ENV, ["--agent.reward_task_termination=false"]),
    (REWARD_ENV, ["--agent.lam=0.5"]),
    (REWARD_ENV, ["--agent.target_network=false"]),
    (REWARD_ENV, ["--agent.layer_norm=false", "--agent.rollout_backend=auto"]),
    (REWARD_ENV, ["--agent.actor_hidden_dims=8", "--agent.value_hidden_dims=12,12",
                  "--agent.dynamics_hidden_dims=10"]),
    (REWARD_ENV, ["--agent.normalize_obs=false"]),
    (GOAL_ENV, ["--agent.value_loss=bce", "--agent.gc_negative=false"]),
    (GOAL_ENV, ["--agent.value_geom_sample=true", "--agent.actor_geom_sample=false",
                "--agent.actor_p_curgoal=0.2", "--agent.actor_p_trajgoal=0.4",
                "--agent.actor_p_randomgoal=0.4"]),
    # the paper's ablations (test_ablations.py has their hand cases)
    (REWARD_ENV, ["--agent.chunk_len=1", "--agent.action_execute=1"]),
    (REWARD_ENV, ["--agent.actor_type=gaussian", "--agent.rollout_backend=auto"]),
    (GOAL_ENV, ["--agent.actor_type=gaussian", "--agent.rollout_backend=auto"]),
    (REWARD_ENV, ["--agent.extraction=q_gradient", "--agent.alpha=0.5", "--agent.rollout_backend=auto"]),
    (GOAL_ENV, ["--agent.extraction=q_gradient"]),
]


@pytest.mark.parametrize("env_name, flags", SETTINGS, ids=[" ".join(f) for _, f in SETTINGS])
def test_short_run_per_setting_finishes_and_resumes(env_name, flags, tiny_cube_dir, tmp_path, monkeypatch):
    """Two steps with ``flags`` finish, a 1 + 1 run resumed from its checkpoint equals the straight
    one bitwise (networks and every logged value), and the saved config is the parsed flags. Whether
    each setting changes what is computed: test_settings_effect.py."""
    from mac.checkpoint import load_checkpoint
    from mac.train import train
    from test_train import TINY

    # evaluation is not what is tested here (test_train.py covers it); skip the simulator
    monkeypatch.setattr("mac.train.evaluate", lambda *a, **k: {"success": 0.0, "episodes": 1})

    def run(name, steps, *extra):
        return train(["--env_name", env_name, "--dataset_dir", str(tiny_cube_dir), "--save_dir", str(tmp_path),
                      "--run_name", name, "--offline_steps", str(steps), "--log_interval", "1",
                      "--eval_interval", "0", "--eval_episodes", "1", "--save_interval", "1",
                      "--no_progress", "--seed", "1", "--threads", "2", *extra])

    straight = run("straight", 2, *TINY, *flags)
    half = run("half", 1, *TINY, *flags)
    assert run("x", 2, "--restore_path", str(half)) == half
    a, b = load_checkpoint(straight), load_checkpoint(half)
    assert a["step"] == b["step"] == 2 and a["agent_config"] == b["agent_config"]
    for k in a["agent"]:
        torch.testing.assert_close(a["agent"][k], b["agent"][k], rtol=0, atol=0, msg=k)
    # every logged value (losses, val/ losses, diagnostics) too, except the wall-clock time
    rows = []
    for run_dir in (straight, half):
        with open(run_dir / "train.csv", newline="") as f:
            rows.append([{k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader(f)])
    assert rows[0] == rows[1] and len(rows[0]) == 2
    assert any(k.startswith("val/") for k in rows[0][0]) and "metrics/mse" in rows[0][0]
    cfg = AgentConfig.from_dict(a["agent_config"])
    want, _ = apply_agent_flags(preset("paper" if "paper" in flags else "cpu"), TINY + flags)
    assert cfg == want
