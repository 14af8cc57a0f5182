"""The paper's ablations as settings of the one agent (docs/FIDELITY.md, "Ablations") and the
diagnostics of the authors' main.py (val/ losses, BC error, model error along real chunks): hand cases
per switch, the native/torch split, and the train.csv columns. The short training run + resume per
ablation is in test_fidelity.py (SETTINGS)."""

import csv
import math

import numpy as np
import pytest
import torch

from conftest import make_episodes
from mac.agent import MACAgent, fetch_floats
from mac.checkpoint import rng_state
from mac.config import AgentConfig, apply_agent_flags, native_rollout_supported, preset
from mac.data import ChunkSampler, OfflineData
from mac.diagnostics import ROLLOUT_ENV_STEPS, ROLLOUT_SEQUENCES, Diagnostics
from mac.nets import MLP, GaussianActor
from mac.rollout import _resolve_backend, best_of_n, best_of_n_reference, imagine

from test_agent import A, H, S, tiny_config  # noqa: E402  (one tiny agent for all agent tests)
C = H * A


def batch(B=8, goal_dim=0, seed=0, chunk=C):
    g = torch.Generator().manual_seed(seed)
    b = {"observations": torch.randn(B, S, generator=g),
         "actions": (torch.rand(B, chunk, generator=g) * 2 - 1) * (1 - 1e-5),
         "next_observations": torch.randn(B, S, generator=g), "rewards": -torch.rand(B, generator=g),
         "masks": torch.ones(B)}
    if goal_dim:
        b["value_goals"] = torch.randn(B, goal_dim, generator=g)
        b["actor_goals"] = torch.randn(B, goal_dim, generator=g)
    return b


def _head(net, bias, weight=0.0):
    """Make an MLP's output constant: head weight = ``weight`` (0: input-independent), bias = ``bias``."""
    head = net.layers[-1]
    with torch.no_grad():
        head.weight.fill_(weight)
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype).expand_as(head.bias))


# ------------------------------------------------------------------------------------ Gaussian actor

def test_gaussian_actor_layout_and_init():
    torch.manual_seed(0)
    pi = GaussianActor(7, 3, (32, 16))
    assert [type(x).__name__ for x in pi.net.layers] == ["Linear", "LayerNorm", "Linear", "LayerNorm", "Linear"]
    head = pi.net.layers[-1]
    w = head.weight.detach()
    assert tuple(w.shape) == (6, 16) and float(head.bias.detach().abs().max()) == 0
    # the authors' variance_scaling(0.01, 'fan_avg', 'uniform') of a Dense(16 -> 3) head
    limit = math.sqrt(3 * 0.01 / ((16 + 3) / 2))
    assert float(w.abs().max()) <= limit and float(w.abs().max()) > 0.5 * limit
    mean, log_std = pi(torch.randn(5, 7))
    assert mean.shape == log_std.shape == (5, 3)
    _head(pi.net, [0.0, 0.0, 0.0, 10.0, -10.0, 1.0])
    _, log_std = pi(torch.randn(2, 7))
    torch.testing.assert_close(log_std, torch.tensor([[2.0, -5.0, 1.0]] * 2))     # clipped to [-5, 2]


def test_gaussian_log_likelihood_by_hand():
    pi = GaussianActor(3, 2, (8,))
    _head(pi.net, [0.0, 0.5, 0.0, math.log(2.0)])          # mean (0, 0.5), std (1, 2)
    a = torch.tensor([[0.0, 0.5]])
    # u = atanh(a) = (0, 0.549306); log N(u; mean, std) - sum log(1 - a^2)
    u1 = math.atanh(0.5)
    want = (-0.5 * 0 ** 2 - 0 - 0.5 * math.log(2 * math.pi)
            - 0.5 * ((u1 - 0.5) / 2) ** 2 - math.log(2.0) - 0.5 * math.log(2 * math.pi)
            - math.log(1 - 0.0 ** 2) - math.log(1 - 0.5 ** 2))
    got = pi.log_prob(torch.randn(1, 3), a).detach()
    assert float(got) == pytest.approx(want, rel=1e-6)
    assert want == pytest.approx(-0.918939 - 1.612390 + 0.287682, abs=1e-5)   # = -2.243647
    # against torch.distributions on random parameters and actions near the clip bound
    torch.manual_seed(1)
    pi = GaussianActor(3, 4, (8,))
    torch.nn.init.normal_(pi.net.layers[-1].weight)
    x = torch.randn(6, 3)
    acts = torch.rand(6, 4) * 2 - 1
    acts[0] = 1 - 1e-5
    mean, log_std = pi(x)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean.double(), log_std.double().exp()),
        [torch.distributions.TanhTransform()])
    want = dist.log_prob(acts.double()).sum(-1)
    torch.testing.assert_close(pi.log_prob(x, acts).double(), want, rtol=1e-4, atol=1e-4)
    # a sample is tanh(mean + std z)
    z = torch.randn(6, 4)
    torch.testing.assert_close(pi.sample(x, z), torch.tanh(mean + log_std.exp() * z))


def test_gaussian_agent_builds_one_policy_and_trains_it_by_likelihood():
    for goal_dim in (0, 3):
        agent = MACAgent(S, A, goal_dim, tiny_config(actor_type="gaussian", rollout_backend="auto"))
        assert agent.flow_actor is None and isinstance(agent.actor, GaussianActor)
        assert not any(n.startswith(("flow_actor.", "actor.layers")) for n, _ in agent.named_parameters())
        b = batch(goal_dim=goal_dim)
        losses = agent.actor_losses(b)
        assert list(losses) == ["bc"]
        ctx = torch.cat([b["observations"], b["actor_goals"]], -1) if goal_dim else b["observations"]
        torch.testing.assert_close(losses["bc"], -agent.actor.log_prob(ctx, b["actions"]).mean())
        info = fetch_floats(agent.update(b))
        assert "loss/bc" in info and "loss/flow" not in info and "loss/distill" not in info
        assert all(np.isfinite(v) for v in info.values())
        assert agent.act(b["observations"][:2], b.get("value_goals", torch.zeros(8, 0))[:2]
                         if goal_dim else None).shape == (2, H, A)


def test_gaussian_best_of_n_ranks_tanh_samples_by_q():
    torch.manual_seed(2)
    pi, critic = GaussianActor(S, C, (8,)), MLP(S + C, 1, (8,))
    s, z = torch.randn(5, S), torch.randn(4, 5, C)
    res = best_of_n(s, None, actor=pi, critic=critic, num_samples=4, noise=z, backend="auto")
    cands = pi.sample(s.expand(4, -1, -1), z).clamp(-1, 1)                  # (N, B, C)
    q = critic(torch.cat([s.expand(4, -1, -1), cands], -1)).squeeze(-1)
    idx = q.argmax(0)
    torch.testing.assert_close(res.chunks, cands[idx, torch.arange(5)], rtol=0, atol=0)
    torch.testing.assert_close(res.indices, idx)


def test_gaussian_needs_the_torch_reference():
    ok, why = native_rollout_supported(AgentConfig(actor_type="gaussian"))
    assert not ok and "actor_type=gaussian" in why
    for backend in ("cpu", "cuda"):
        with pytest.raises(ValueError, match="cannot serve these settings: actor_type=gaussian"):
            AgentConfig(actor_type="gaussian", rollout_backend=backend).validate()
        with pytest.raises(ValueError, match="tanh-Gaussian"):
            _resolve_backend(backend, torch.zeros(2, S), {"actor": GaussianActor(S, C, (8,))})
    assert _resolve_backend("auto", torch.zeros(2, S), {"actor": GaussianActor(S, C, (8,))}) == "torch"
    with pytest.raises(ValueError, match="needs agent.extraction=rejection"):
        AgentConfig(actor_type="gaussian", extraction="q_gradient").validate()
    with pytest.raises(ValueError, match="actor_type must be flow"):
        apply_agent_flags(preset("paper"), ["--agent.actor_type=diffusion"])
    import mac
    serves = mac.info()["native_rollout_serves"]
    assert "actor_type=flow" in serves and "q_gradient" in serves and "gaussian" in serves


# ------------------------------------------------------------------------------------ Q-gradient extraction

def test_q_gradient_actor_loss_is_minus_normalised_q_plus_alpha_distill():
    torch.manual_seed(3)
    agent = MACAgent(S, A, 0, tiny_config(extraction="q_gradient", alpha=0.7))
    _head(agent.actor, 0.25)                     # mu(s, z) = 0.25 everywhere
    _head(agent.flow_actor, 0.6)                 # v = 0.6: Euler_K(z) = z + 0.6
    states = torch.randn(2, 5, S)                # (H, B, S) imagined states
    torch.manual_seed(9)
    loss, stats = agent.q_actor_loss(states, None)
    stats = fetch_floats(stats)
    torch.manual_seed(9)
    z = torch.randn(2, 5, C)                     # the noise the loss drew
    distill = float(((0.25 - (z + 0.6).clamp(-1, 1)) ** 2).mean())
    with torch.no_grad():
        q = agent.critic(torch.cat([states, torch.full((2, 5, C), 0.25)], -1)).squeeze(-1).mean(0)   # (B,)
    q_loss = float(-q.mean() / q.abs().mean())
    assert stats["distill"] == pytest.approx(distill, rel=1e-5)
    assert stats["q_loss"] == pytest.approx(q_loss, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(0.7 * distill + q_loss, rel=1e-5)
    # a constant positive critic: -Q/|Q| = -1 exactly
    _head(agent.critic, 3.0)
    torch.manual_seed(9)
    loss, stats = agent.q_actor_loss(states, None)
    assert float(stats["q_loss"]) == pytest.approx(-1.0)
    assert float(loss.detach()) == pytest.approx(0.7 * distill - 1.0, rel=1e-5)


def test_q_gradient_trains_only_the_one_step_actor():
    torch.manual_seed(4)
    agent = MACAgent(S, A, 3, tiny_config(extraction="q_gradient"))
    loss, _ = agent.q_actor_loss(torch.randn(2, 4, S), torch.randn(4, 3))
    loss.backward()
    assert all(p.grad is None for p in agent.critic.parameters())          # Q fixed: gradient via actions
    assert all(p.grad is None for p in agent.flow_actor.parameters())      # the teacher is fixed
    assert any(float(p.grad.abs().max()) > 0 for p in agent.actor.parameters())
    # no distillation on the dataset batch; the actor loss joins the sum
    info = fetch_floats(agent.update(batch(goal_dim=3)))
    assert {"loss/flow", "loss/actor", "actor/distill", "actor/q_loss", "actor/q"} <= set(info)
    assert "loss/distill" not in info
    total = sum(v for k, v in info.items() if k.startswith("loss/") and k != "loss/total")
    assert info["loss/total"] == pytest.approx(total, rel=1e-5)


def test_q_gradient_acts_and_rolls_out_with_the_single_sample(monkeypatch):
    torch.manual_seed(5)
    agent = MACAgent(S, A, 0, tiny_config(extraction="q_gradient", num_samples_test=32, num_samples_train=8))
    s = torch.randn(6, S)
    torch.manual_seed(11)
    got = agent.act(s, num_samples=32)
    torch.manual_seed(11)
    z = torch.randn(1, 6, C)
    want = agent.actor(torch.cat([s, z[0]], -1)).clamp(-1, 1)                 # clip(mu(s, z))
    torch.testing.assert_close(got.reshape(6, C), want, rtol=0, atol=0)
    seen = []
    real = imagine
    monkeypatch.setattr("mac.rollout.imagine", lambda *a, **k: seen.append(k["num_samples"]) or real(*a, **k))
    agent.update(batch())
    assert seen == [1]
    assert native_rollout_supported(AgentConfig(extraction="q_gradient")) == (True, "")
    AgentConfig(extraction="q_gradient", rollout_backend="cpu").validate()       # best-of-1 runs native
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        apply_agent_flags(preset("paper"), ["--agent.alpha=-1"])


def test_native_cores_serve_best_of_one():
    from mac import _native
    torch.manual_seed(6)
    actor, critic = MLP(S + C, C, (16,)), MLP(S + C, 1, (16,))
    s, z = torch.randn(7, S), torch.randn(1, 7, C)
    ref = best_of_n_reference(s, None, actor, critic, z)
    torch.testing.assert_close(ref.chunks, actor(torch.cat([s, z[0]], -1)).clamp(-1, 1), rtol=0, atol=0)
    if _native.cpu_backend_ready(s):
        got = best_of_n(s, None, actor=actor, critic=critic, num_samples=1, noise=z, backend="cpu")
        torch.testing.assert_close(got.chunks, ref.chunks, rtol=1e-5, atol=1e-5)
        assert bool((got.indices == 0).all())
    if _native.cuda_ext is not None:             # the CUDA kernel's program, run on the host
        from mac import _cuda_core as cc
        got = cc.emulate_best_of_n(s, None, actor, critic, 1, noise=z, precision="fp32")
        torch.testing.assert_close(got.chunks, ref.chunks, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ no chunking (h = 1)

def test_chunk_len_one_horizon_and_discount():
    cfg = tiny_config(chunk_len=1, rollout_steps=3, discount=0.9)
    agent = MACAgent(S, A, 0, cfg)
    assert agent.chunk_dim == A and agent.chunk_discount == 0.9       # gamma^h with h = 1
    # H = rollout_steps model calls, not rescaled: 3 calls of one action = 3 env steps
    b = batch(chunk=A)
    ro = agent.imagine(b["observations"][:4], None)
    assert ro.states.shape == (4, 4, S) and ro.chunks.shape == (3, 4, A)
    # returns by hand: constant V = 2, target V = 5, rewards -1, masks 1: G_0 = -1 - 0.9 - 0.81 + 0.729*5
    for net, v in ((agent.value, 2.0), (agent.target_value, 5.0), (agent.critic, 0.0)):
        _head(net, v)
    _head(agent.reward, -1.0)
    _head(agent.success, -50.0)                  # never succeeds: masks 1
    losses, stats = agent.value_losses(b)
    G0 = -1 - 0.9 - 0.81 + 0.729 * 5
    G = torch.tensor([G0, -1 - 0.9 + 0.81 * 5, -1 + 0.9 * 5])
    assert float(stats["imagined_return"]) == pytest.approx(G0, rel=1e-5)
    assert float(losses["value"].detach()) == pytest.approx(float(((2 - G) ** 2).mean()), rel=1e-5)
    assert float(losses["critic"].detach()) == pytest.approx((-1 + 0.9 * 2) ** 2, rel=1e-5)
    # the same H with h = 3 discounts each call by 0.9^3
    assert MACAgent(S, A, 0, tiny_config(chunk_len=3, discount=0.9)).chunk_discount == pytest.approx(0.729)


def test_chunk_len_one_samples_single_transitions():
    a = make_episodes([6, 7], obs_dim=S, action_dim=A)
    rewards = np.arange(13, dtype=np.float32) * -1
    data = OfflineData(a["observations"], a["actions"], a["terminals"], rewards=rewards,
                       masks=np.ones(13, np.float32))
    b = ChunkSampler(data, 1, 0.9, seed=0, **{"chunk_reward": "mean"}).sample(200)
    t = b["idxs"]
    np.testing.assert_array_equal(b["next_observations"][:, 0], t + 1)       # s_{t+1}, same episode
    assert not np.any(t == 5) and not np.any(t == 12)                         # episode ends
    np.testing.assert_array_equal(b["rewards"], rewards[t])                   # mean of one = r_t
    np.testing.assert_array_equal(b["actions"], np.clip(a["actions"][t], -1 + 1e-5, 1 - 1e-5))
    with pytest.raises(ValueError, match="action_execute=10 exceeds agent.chunk_len=1.*action_execute=<1..1>"):
        apply_agent_flags(preset("cpu"), ["--agent.chunk_len=1"])
    cfg, _ = apply_agent_flags(preset("cpu"), ["--agent.chunk_len=1", "--agent.action_execute=1"])
    assert (cfg.chunk_len, cfg.rollout_steps) == (1, 10)


# ------------------------------------------------------------------------------------ diagnostics

def test_rollout_error_feeds_the_real_chunks_by_hand():
    agent = MACAgent(S, A, 0, tiny_config())
    _head(agent.dynamics, [0.5, 0.0, -1.0, 0.0])          # s' = s + (0.5, 0, -1, 0)
    obs = torch.randn(4, 3, S)
    err = agent.rollout_error(obs, torch.randn(4, 3, C))
    pred = obs[0] + torch.arange(4.0)[:, None, None] * torch.tensor([0.5, 0.0, -1.0, 0.0])
    torch.testing.assert_close(err, ((obs - pred) ** 2).mean(dim=(1, 2)))
    assert float(err[0]) == 0.0


def test_bc_error_of_the_chosen_chunk_by_hand():
    agent = MACAgent(S, A, 3, tiny_config())
    _head(agent.actor, 0.3)                               # every candidate is 0.3
    b = batch(goal_dim=3)
    assert agent.bc_error(b) == pytest.approx(float(((0.3 - b["actions"]) ** 2).mean()), rel=1e-6)
    g = MACAgent(S, A, 0, tiny_config(actor_type="gaussian"))
    _head(g.actor.net, [0.0] * C + [-5.0] * C)            # mean 0, std e^-5: samples ~ 0
    b = batch()
    assert g.bc_error(b) == pytest.approx(float((b["actions"] ** 2).mean()), abs=5e-3)


def test_sample_sequences_are_consecutive_chunks_inside_one_episode():
    a = make_episodes([30, 12, 40], obs_dim=S, action_dim=A)
    data = OfflineData(a["observations"], a["actions"], a["terminals"], rewards=np.zeros(82, np.float32),
                       masks=np.ones(82, np.float32))
    s = ChunkSampler(data, 3, 0.9, seed=0)
    assert s.max_sequence_chunks() == 39 // 3
    seq = s.sample_sequences(500, 4)                      # 12 steps: the 12-row episode (11 steps) is out
    t = seq["idxs"]
    assert seq["observations"].shape == (4, 500, S) and seq["actions"].shape == (4, 500, 3 * A)
    np.testing.assert_array_equal(seq["observations"][:, :, 0], t[None] + 3 * np.arange(4)[:, None])
    end = data.episode_ends[np.searchsorted(data.episode_ends, t)]
    assert np.all(t + 12 <= end) and not np.any((t >= 30) & (t < 42))
    assert {int(x) for x in t} == set(range(0, 18)) | set(range(42, 70))     # every valid start drawn
    rows = t[None, :, None] + 3 * np.arange(4)[:, None, None] + np.arange(3)   # (L, B, h)
    want = np.clip(a["actions"][rows.ravel()], -1 + 1e-5, 1 - 1e-5).reshape(4, 500, 3 * A)
    np.testing.assert_array_equal(seq["actions"], want)


def _diagnostics(agent_cfg, goal=False, seed=0):
    a = make_episodes([40, 50, 30], obs_dim=S, action_dim=A)
    kw = dict(rewards=-np.ones(120, np.float32), masks=np.ones(120, np.float32))
    if goal:
        kw = dict(goal_reps=a["observations"][:, :3])
    data = OfflineData(a["observations"], a["actions"], a["terminals"], **kw)
    opts = dict(goal_conditioned=goal)
    return Diagnostics(agent_cfg, data, data, seed=seed, device="cpu", sampler_kwargs=opts), data


@pytest.mark.parametrize("flags", [{}, dict(actor_type="gaussian"), dict(extraction="q_gradient")])
def test_diagnostics_leave_the_training_streams_alone(flags):
    cfg = tiny_config(rollout_backend="auto", **flags)
    agent = MACAgent(S, A, 0, cfg)
    diag, data = _diagnostics(cfg)
    assert diag.rollout_chunks == min(ROLLOUT_ENV_STEPS // H, 49 // H)
    train_sampler = ChunkSampler(data, H, 0.9, seed=5)
    b = {k: torch.from_numpy(v) for k, v in train_sampler.sample(8).items() if v.dtype == np.float32}
    torch.manual_seed(123)
    before, sampler_before = rng_state(), train_sampler.state_dict()
    params = {k: v.clone() for k, v in agent.state_dict().items()}
    adam = str(agent.optimizer.state_dict())
    out = diag.compute(agent, b, 7)
    after = rng_state()
    assert torch.equal(before["torch"], after["torch"]) and before["numpy"]["pos"] == after["numpy"]["pos"]
    assert torch.equal(before["numpy"]["keys"], after["numpy"]["keys"]) and before["python"] == after["python"]
    assert train_sampler.state_dict() == sampler_before
    for k, v in agent.state_dict().items():
        assert torch.equal(v, params[k]), k
    assert str(agent.optimizer.state_dict()) == adam
    # a function of (seed, step, agent): the same again, another step differs
    assert diag.compute(agent, b, 7) == out
    assert diag.compute(agent, b, 8)["val/loss/total"] != out["val/loss/total"]
    names = [f"metrics/rollout/mse_{k * H}" for k in range(diag.rollout_chunks)]
    assert [k for k in out if k.startswith("metrics/rollout/")] == names and out[names[0]] == 0.0
    assert "metrics/mse" in out and all(np.isfinite(v) for v in out.values())
    want_val = {f"val/{k}" for k in agent.eval_losses(b)}
    assert want_val == {k for k in out if k.startswith("val/")}
    assert ROLLOUT_SEQUENCES == 15


def test_train_csv_has_the_diagnostic_columns_from_the_first_row(tiny_cube_dir, tmp_path):
    from test_train import TINY, run_train
    run = run_train(tiny_cube_dir, tmp_path, "diag", 2, *TINY, "--agent.actor_type=gaussian",
                    "--agent.rollout_backend=auto")
    with open(run / "train.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    assert len(rows) == 2
    for col in ("loss/bc", "val/loss/bc", "val/loss/total", "val/rollout/imagined_return", "metrics/mse",
                "metrics/rollout/mse_0", "metrics/rollout/mse_5"):
        assert col in header, col
    losses = [h[len("loss/"):] for h in header if h.startswith("loss/")]
    assert {h[len("val/loss/"):] for h in header if h.startswith("val/loss/")} == set(losses)
    for row in rows:
        assert len(row) == len(header) and all(v != "" for v in row)
        assert all(math.isfinite(float(row[header.index(h)])) for h in header
                   if h.startswith(("val/", "metrics/")))


def test_a_run_without_diagnostics_trains_the_same_networks(tiny_cube_dir, tmp_path, monkeypatch):
    from mac.checkpoint import load_checkpoint
    from test_train import TINY, run_train
    with_diag = run_train(tiny_cube_dir, tmp_path, "with", 3, *TINY, "--agent.rollout_backend=auto")
    monkeypatch.setattr("mac.train.Diagnostics.compute", lambda self, agent, batch, step: {})
    without = run_train(tiny_cube_dir, tmp_path, "without", 3, *TINY, "--agent.rollout_backend=auto")
    a, b = load_checkpoint(with_diag), load_checkpoint(without)
    for k in a["agent"]:
        torch.testing.assert_close(a["agent"][k], b["agent"][k], rtol=0, atol=0, msg=k)
    assert a["sampler"] == b["sampler"]
    with open(without / "train.csv", newline="") as f:
        assert not any(h.startswith(("val/", "metrics/")) for h in next(csv.reader(f)))
