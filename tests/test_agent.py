"""MAC losses, returns, target update, gradient isolation, flags, training and resume."""

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mac.agent import MACAgent, discounted_returns, euler_flow, fetch_floats
from mac.config import AgentConfig, apply_agent_flags, preset

S, A, H = 4, 2, 3


def tiny_config(**kw):
    base = dict(chunk_len=H, rollout_steps=2, rollout_batch=4, num_samples_train=3, num_samples_test=4,
                flow_steps=3, discount=0.9, tau=0.1, batch_size=8, lr=1e-3, hidden_dims=(16, 16),
                rollout_backend="torch")
    base.update(kw)
    return AgentConfig(**base).validate()


def batch(B=8, goal_dim=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = {"observations": torch.randn(B, S, generator=g), "actions": torch.rand(B, H * A, generator=g) * 2 - 1,
         "next_observations": torch.randn(B, S, generator=g), "rewards": -torch.rand(B, generator=g),
         "masks": (torch.rand(B, generator=g) > 0.3).float()}
    if goal_dim:
        b["value_goals"] = torch.randn(B, goal_dim, generator=g)
        b["actor_goals"] = torch.randn(B, goal_dim, generator=g)
    return b


def zero_heads(agent):
    for net in (agent.dynamics, agent.reward, agent.success, agent.flow_actor, agent.actor,
                agent.value, agent.critic):
        if net is not None:
            torch.nn.init.zeros_(net.layers[-1].weight)
            torch.nn.init.zeros_(net.layers[-1].bias)


def test_supervised_losses_on_hand_checkable_example():
    agent = MACAgent(S, A, 0, tiny_config())
    zero_heads(agent)  # every network outputs exactly 0
    b = batch()
    m = agent.model_losses(b)
    torch.testing.assert_close(m["dynamics"], ((b["observations"] - b["next_observations"]) ** 2).mean())
    torch.testing.assert_close(m["reward"], (b["rewards"] ** 2).mean())
    torch.testing.assert_close(m["success"], torch.tensor(np.log(2.0), dtype=torch.float32))
    torch.manual_seed(5)
    a = agent.actor_losses(b)
    torch.manual_seed(5)
    z = torch.randn(8, H * A)
    torch.rand(8, 1)
    z2 = torch.randn(8, H * A)
    torch.testing.assert_close(a["flow"], ((b["actions"] - z) ** 2).mean())       # v = 0, target a - z
    torch.testing.assert_close(a["distill"], (z2.clamp(-1, 1) ** 2).mean())       # teacher = clip(z2)


def test_flow_matching_interpolant():
    agent = MACAgent(S, A, 0, tiny_config())
    b = batch()
    torch.manual_seed(3)
    got = agent.actor_losses(b)["flow"]
    torch.manual_seed(3)
    z, u = torch.randn(8, H * A), torch.rand(8, 1)
    x = (1 - u) * z + u * b["actions"]
    want = F.mse_loss(agent.flow_actor(torch.cat([b["observations"], x, u], -1)), b["actions"] - z)
    torch.testing.assert_close(got, want)


def test_euler_flow_integrates_constant_velocity():
    agent = MACAgent(S, A, 0, tiny_config())
    net = agent.flow_actor
    torch.nn.init.zeros_(net.layers[-1].weight)
    with torch.no_grad():
        net.layers[-1].bias.fill_(0.25)
    z = torch.zeros(3, H * A)
    torch.testing.assert_close(euler_flow(net, torch.zeros(3, S), z, 4), torch.full((3, H * A), 0.25))


def test_discounted_returns_recursion():
    r = torch.tensor([[-1.0], [-1.0], [0.0]])
    m = torch.tensor([[1.0], [1.0], [0.0]])
    boot = torch.tensor([10.0])
    out = discounted_returns(r, m, boot, 0.5)
    # G2 = 0 + 0.5*0*10 = 0; G1 = -1 + 0.5*0 = -1; G0 = -1 + 0.5*(-1) = -1.5
    torch.testing.assert_close(out[:, 0], torch.tensor([-1.5, -1.0, 0.0]))


def test_polyak_update():
    agent = MACAgent(S, A, 0, tiny_config(tau=0.25))
    with torch.no_grad():
        for p in agent.value.parameters():
            p.fill_(1.0)
        for p in agent.target_value.parameters():
            p.fill_(3.0)
    agent.polyak_update()
    for p in agent.target_value.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.25 * 1 + 0.75 * 3))
    assert not any(p.requires_grad for p in agent.target_value.parameters())
    assert all(id(p) not in {id(q) for q in agent.target_value.parameters()}
               for p in agent.optimizer.param_groups[0]["params"])


def test_distillation_teacher_carries_no_gradient():
    agent = MACAgent(S, A, 0, tiny_config())
    agent.actor_losses(batch())["distill"].backward()
    assert all(p.grad is None for p in agent.flow_actor.parameters())
    assert any(p.grad is not None for p in agent.actor.parameters())


def test_value_and_critic_losses_do_not_backprop_into_rollout_networks():
    agent = MACAgent(S, A, 3, tiny_config())
    losses, stats = agent.value_losses(batch(goal_dim=3))
    (losses["value"] + losses["critic"]).backward()
    for net in (agent.actor, agent.dynamics, agent.success, agent.target_value):
        assert all(p.grad is None for p in net.parameters())
    assert all(p.grad is not None for p in agent.value.parameters())
    assert all(p.grad is not None for p in agent.critic.parameters())
    assert set(stats) >= {"imagined_return", "q_chosen"}


def test_critic_target_uses_first_imagined_step():
    agent = MACAgent(S, A, 0, tiny_config())
    b = batch()
    torch.manual_seed(11)
    losses, _ = agent.value_losses(b)
    torch.manual_seed(11)
    ro = agent.imagine(b["observations"][:4], None)
    with torch.no_grad():
        target = ro.rewards[0] + agent.chunk_discount * ro.masks[0] * agent.value(ro.states[1]).squeeze(-1)
        q = agent.critic(torch.cat([b["observations"][:4], ro.chunks[0]], -1)).squeeze(-1)
    torch.testing.assert_close(losses["critic"], F.mse_loss(q, target))


def test_short_training_lowers_every_supervised_loss():
    torch.manual_seed(0)
    agent = MACAgent(S, A, 0, tiny_config(lr=3e-3, batch_size=64, rollout_batch=8))
    data = batch(B=64, seed=1)
    data["next_observations"] = data["observations"] * 0.5 + 0.1  # a learnable dynamics
    first = fetch_floats(agent.update(data))
    for _ in range(150):
        last = agent.update(data)
    last = fetch_floats(last)
    for k in ("dynamics", "reward", "success", "flow", "distill"):
        assert last[f"loss/{k}"] < 0.7 * first[f"loss/{k}"], k


def test_agent_flags_parse_and_reject_unknown_keys():
    cfg, rest = apply_agent_flags(preset("paper"), ["--agent.chunk_len=5", "--agent.lr", "1e-4",
                                                    "--agent.hidden_dims=64,64", "--seed", "3"])
    assert (cfg.chunk_len, cfg.lr, cfg.hidden_dims) == (5, 1e-4, (64, 64))
    assert rest == ["--seed", "3"]
    with pytest.raises(ValueError, match="unknown agent setting --agent.chunk_size; valid keys: .*chunk_len"):
        apply_agent_flags(preset("paper"), ["--agent.chunk_size=5"])
    with pytest.raises(ValueError, match="cannot parse 'ten' as int"):
        apply_agent_flags(preset("paper"), ["--agent.chunk_len=ten"])
    with pytest.raises(ValueError, match="action_execute=20 exceeds"):
        apply_agent_flags(preset("paper"), ["--agent.action_execute=20"])
    assert AgentConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_act_returns_clipped_chunk_of_actions():
    agent = MACAgent(S, A, 0, tiny_config())
    acts = agent.act(torch.randn(2, S))
    assert acts.shape == (2, H, A) and acts.abs().max() <= 1
