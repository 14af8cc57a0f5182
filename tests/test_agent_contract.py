"""Agent details the loss tests do not reach: which engine runs the flow teacher, the float fetch of
logged values, returns of one-step rollouts, goal conditioning, the Gaussian actor's LayerNorm
setting, candidate counts, the gradient hook, BCE target clipping and fused Adam's device switch.
Written against the mutants that survived the rest of the suite (docs/TESTING.md, "Mutation
testing"); each test says what it pins."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from mac import _native, agent as agent_module
from mac.agent import MACAgent, discounted_returns, euler_flow, fetch_floats
from mac.nets import MLP
from test_agent import A, S, batch, tiny_config


class CountingForward:
    """Stands in for mac.rollout.mlp_forward and records the backends it was asked for."""

    def __init__(self, real):
        self.real, self.backends = real, []

    def __call__(self, net, x, backend="auto"):
        self.backends.append(backend)
        return self.real(net, x, "torch")


@pytest.fixture
def counting(monkeypatch):
    c = CountingForward(agent_module.rollout_api.mlp_forward)
    monkeypatch.setattr(agent_module.rollout_api, "mlp_forward", c)
    return c


def _flow(ctx=4, C=3):
    torch.manual_seed(0)
    return MLP(ctx + C + 1, C, (8,))


def test_euler_flow_teacher_runs_on_the_rollout_engine_only_without_gradient(counting):
    flow, ctx, z = _flow(), torch.randn(5, 4), torch.randn(5, 3)
    with torch.no_grad():
        euler_flow(flow, ctx, z, 3)                             # default: torch, never the native core
        euler_flow(flow, ctx, z, 3, backend="torch")
        assert counting.backends == []
        euler_flow(flow, ctx, z, 3, backend="cpu")
    assert counting.backends == ["cpu"] * 3
    euler_flow(flow, ctx, z, 3, backend="cpu")                  # with gradient: torch (autograd)
    assert counting.backends == ["cpu"] * 3


def test_euler_flow_integrates_in_the_inputs_dtype():
    """x_{i+1} = x_i + v([ctx, x_i, i/K]) / K with i/K in float64 for float64 inputs (K = 3: 1/3 and
    2/3 are not float32 numbers), bitwise as written here."""
    flow = _flow().double()
    ctx, z = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    x = euler_flow(flow, ctx, z, 3)
    want = z
    for i in range(3):
        u = torch.full((5, 1), i / 3, dtype=torch.float64)
        want = want + flow(torch.cat([ctx, want, u], dim=-1)) / 3
    assert x.dtype == torch.float64
    torch.testing.assert_close(x, want, rtol=0, atol=0)


def test_fetch_floats_passes_plain_numbers_through():
    assert fetch_floats({"a": torch.tensor(1.5), "b": 2.5}) == {"a": 1.5, "b": 2.5}
    assert fetch_floats({"b": 2.5, "c": 3}) == {"b": 2.5, "c": 3.0}


def test_one_step_returns_need_no_next_values_at_any_lambda():
    r, m, boot = torch.tensor([[-1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([2.0, 3.0])
    out = discounted_returns(r, m, boot, 0.9, 0.5, None)
    torch.testing.assert_close(out, torch.tensor([[-1.0 + 0.9 * 2.0, 0.0]]))


def test_a_one_dimensional_goal_makes_a_goal_conditioned_agent():
    agent = MACAgent(S, A, 1, tiny_config())
    assert agent.goal_conditioned
    assert not MACAgent(S, A, 0, tiny_config()).goal_conditioned


def test_gaussian_actor_follows_the_layer_norm_setting():
    def norms(layer_norm):
        agent = MACAgent(S, A, 0, tiny_config(actor_type="gaussian", layer_norm=layer_norm))
        return sum(isinstance(m, torch.nn.LayerNorm) for m in agent.actor.modules())
    assert norms(False) == 0 and norms(True) > 0


def test_candidate_counts_for_training_and_evaluation():
    agent = MACAgent(S, A, 0, tiny_config(num_samples_train=3, num_samples_test=5))
    assert (agent.num_candidates(train=True), agent.num_candidates(train=False)) == (3, 5)
    q = MACAgent(S, A, 0, tiny_config(extraction="q_gradient"))
    assert (q.num_candidates(train=True), q.num_candidates(train=False)) == (1, 1)


def test_gradient_hook_sees_every_trainable_parameter_with_its_gradient():
    torch.manual_seed(0)
    agent = MACAgent(S, A, 0, tiny_config())
    seen = []
    agent.gradient_hook = lambda params: seen.append([(p, p.grad is not None) for p in params])
    agent.update(batch())
    expected = list(agent.trainable_parameters())
    assert len(seen) == 1 and [p for p, _ in seen[0]] == expected
    assert all(has_grad for _, has_grad in seen[0])


def test_bce_targets_are_clipped_to_the_unit_interval():
    agent = MACAgent(S, A, 2, tiny_config(value_loss="bce", gc_negative=False))
    pred = torch.tensor([1.0, 0.5, -0.5])
    got = agent._regression(pred, torch.tensor([2.0, -1.0, 0.25]))
    want = F.binary_cross_entropy_with_logits(pred, torch.tensor([1.0, 0.0, 0.25]))
    torch.testing.assert_close(got, want)
    assert not math.isclose(float(got), float(F.binary_cross_entropy_with_logits(
        pred, torch.tensor([2.0, -1.0, 0.25]))))


def test_adam_switches_to_fused_on_a_fused_device_and_back(monkeypatch):
    """The switch CUDA needs, played on the CPU (torch has a fused CPU Adam): the flags of every group
    follow the parameters' device, and the step counts survive the switch."""
    torch.manual_seed(0)
    agent = MACAgent(S, A, 0, tiny_config())
    agent.update(batch())
    groups = agent.optimizer.param_groups
    assert all(not g["fused"] for g in groups)
    monkeypatch.setattr(agent_module, "FUSED_ADAM_DEVICES", ("cpu",))
    agent.update(batch(seed=1))
    assert all(g["fused"] is True and g["foreach"] is None for g in groups)
    steps = [agent.optimizer.state[p]["step"] for g in groups for p in g["params"]]
    assert all(float(s) == 2.0 and s.dtype == torch.float32 for s in steps)
    monkeypatch.setattr(agent_module, "FUSED_ADAM_DEVICES", ())
    agent.update(batch(seed=2))
    assert all(g["fused"] is None and g["foreach"] is None for g in groups)
    assert all(float(agent.optimizer.state[p]["step"]) == 3.0 for g in groups for p in g["params"])


@pytest.mark.skipif(not _native.cpu_backend_ready(torch.zeros(1)),
                    reason="the native CPU core (mac._C) is not built")
@pytest.mark.parametrize("extraction", ["rejection", "q_gradient"])
def test_the_distillation_teacher_runs_on_the_configured_rollout_engine(counting, extraction):
    """With rollout_backend=cpu the K teacher passes go to the rollout engine (the spy: torch numbers),
    in the BC loss (rejection) and in the Q-gradient actor loss."""
    torch.manual_seed(0)
    agent = MACAgent(S, A, 0, tiny_config(rollout_backend="cpu", extraction=extraction))
    b = batch()
    if extraction == "rejection":
        agent.actor_losses(b)
    else:
        agent.q_actor_loss(b["observations"].unsqueeze(0), None)
    assert counting.backends.count("cpu") == agent.config.flow_steps
