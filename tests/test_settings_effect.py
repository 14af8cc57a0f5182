"""Every ``--agent.`` setting changes what is computed (issue 22).

Each test computes the quantity a setting governs (a loss of the training step, the imagined
returns, a parameter update, the sampled chunk, its goals, labels and normalisation, the executed
actions, the network shapes) through the project with the setting at two values, compares both with
numbers written here from the formulas (MAC.md; the authors' agents/mac.py, mbfql.py, mbrs_ac.py,
utils/datasets.py), and asserts that the two values give different numbers. A setting that is parsed
and then ignored fails: one of its two values no longer matches the formula.

The formulas are independent of the project: :class:`Reference` evaluates the agent's networks from
their parameters (Linear -> tanh-GELU -> LayerNorm written out, in float64) and recomputes a training
step's losses, calling nothing of mac.agent, mac.nets or mac.rollout. It draws the step's random
numbers from torch's generator in the agent's order (flow z and u, distillation z, the rollout's
(H, N, B_r, C) noise, the q_gradient actor's z), the convention test_agent.py relies on too.

``SETTING_TESTS`` maps every field of AgentConfig to its test here; a new setting without one fails
``test_every_setting_has_an_effect_test``. test_fidelity.py's run-and-resume per setting stays the check
that a setting survives a checkpoint; whether it changes training is checked here.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from conftest import make_episodes
from mac import _native
from mac.agent import MACAgent
from mac.config import AgentConfig
from mac.data import Normalizer, OfflineData
from mac.evaluate import checkpoint_policy_state, policy_from_state, run_episode
from mac.noise import philox_normal
from mac.rollout import draw_seed
from mac.train import _policy, make_sampler, training_batch

from test_ablations import batch as chunk_batch      # a batch for any chunk length
from test_agent import A, S, tiny_config             # one tiny agent for all agent tests
from test_fidelity import goal_data, reward_data     # the hand-made datasets

# INIT_SEED 2: the tiny agents' success nets fire on some imagined states and not others (masks 0
# and 1 at both rollout steps, reward and goal tasks), so the discount and the bootstrap reach every
# target; with seed 0 the first step's masks are all 0 and the critic target ignores gamma.
INIT_SEED, STEP_SEED, ACT_SEED = 2, 11, 5
G = 3                                    # goal size of the goal-task agents (goal_data's goal_reps)
# Both sides in float64: only the order of operations and torch's own GELU/LayerNorm kernels differ
# (~1e-15 relative); 1e-9 leaves six orders of headroom below the effects checked (>1e-3).
F64 = dict(rtol=1e-9, atol=1e-12)
# A float32 agent (the native core and the evaluation Policy run float32) against the float64
# formulas: float32 rounding (6e-8) through three layers of width <= 16, LayerNorm and two model
# calls, measured at <= 4.4e-7 here (absolute on actions, relative on losses); 5e-6 is ~10x that.
# Every decision (best-of-N argmax, success threshold) is checked to be clear by MARGIN, so a
# rounding difference cannot pick another candidate or flip a mask.
F32 = dict(rtol=5e-6, atol=5e-6)
MARGIN = 1e-4
# Sampled labels are float32 (the sampler's dtype) against float64 formulas: a few ulp.
LABELS = dict(rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------ the formulas

def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def layer_norm(x, weight, bias, eps=1e-6):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def bce_with_logits(logit, target):
    """mean of -(t log sigmoid(x) + (1 - t) log sigmoid(-x)) (the authors' bce_loss)."""
    return -(target * torch.nn.functional.logsigmoid(logit)
             + (1 - target) * torch.nn.functional.logsigmoid(-logit)).mean()


def mse(a, b):
    return ((a - b) ** 2).mean()


def gae_returns(rewards, masks, values, next_values, chunk_discount, lam):
    """The authors' compute_gae (agents/mac.py): delta_k = r_k + m_k g V(s_k+1) - V(s_k),
    A_k = delta_k + m_k g lam A_k+1, returns = V(s_k) + A_k, with g = gamma^h."""
    adv, out = torch.zeros_like(rewards[0]), torch.empty_like(rewards)
    for k in range(rewards.shape[0] - 1, -1, -1):
        delta = rewards[k] + masks[k] * chunk_discount * next_values[k] - values[k]
        adv = delta + masks[k] * chunk_discount * lam * adv
        out[k] = values[k] + adv
    return out


NETS = ("dynamics", "reward", "success", "flow_actor", "actor", "value", "target_value", "critic")


class Reference:
    """MAC's training step, best-of-N and rollout written from MAC.md and the authors' code, in
    float64, on a copy of ``agent``'s parameters and with the settings of ``cfg``.

    Networks are read by their documented layout (mac/nets.py: ``layers.{2i}`` the i-th Linear,
    ``layers.{2i+1}`` its LayerNorm; the Gaussian actor's under ``net.``) and evaluated as
    Linear -> GELU(tanh) -> LayerNorm(eps 1e-6) per hidden layer, then the linear head; the
    LayerNorm only where ``cfg.layer_norm`` says, so a network built against the setting fails."""

    def __init__(self, agent: MACAgent, cfg: AgentConfig):
        self.cfg = cfg
        self.C = cfg.chunk_len * A
        self.chunk_discount = cfg.discount ** cfg.chunk_len
        self.params = {}
        for name in NETS:
            net = getattr(agent, name)
            if net is not None:
                self.params[name] = {k.removeprefix("net."): v.detach().to(torch.float64).clone()
                                     for k, v in net.state_dict().items()}
        # how clear every decision was: best minus second-best Q of each best-of-N row, and |logit|
        # of each success threshold (float32 tests need them well above rounding)
        self.margins = []

    # -- networks
    def mlp(self, name, *inputs):
        p = self.params[name]
        x = torch.cat([t.to(torch.float64) for t in inputs if t is not None], dim=-1)
        linears = max(int(k.split(".")[1]) for k in p) // 2 + 1
        for i in range(linears):
            x = x @ p[f"layers.{2 * i}.weight"].T + p[f"layers.{2 * i}.bias"]
            if i < linears - 1:
                x = gelu_tanh(x)
                if self.cfg.layer_norm:
                    x = layer_norm(x, p[f"layers.{2 * i + 1}.weight"], p[f"layers.{2 * i + 1}.bias"])
        return x

    @staticmethod
    def expand(goals, like):
        """Goals (B, G) broadcast to the leading dims of ``like`` (..., B, D); None stays None."""
        return None if goals is None else goals.expand(*like.shape[:-1], goals.shape[-1])

    def value_of(self, name, states, goals):
        """V(s, g): the head, or sigmoid(head) with value_loss=bce (the authors' compute_gae)."""
        v = self.mlp(name, states, self.expand(goals, states))[..., 0]
        return torch.sigmoid(v) if self.cfg.value_loss == "bce" else v

    def flow_sample(self, context, z):
        """clip(Euler_K(v)): x_0 = z, x_i+1 = x_i + v([s, g, x_i, i/K]) / K (sample_flow_actions)."""
        K, x = self.cfg.flow_steps, z
        for i in range(K):
            x = x + self.mlp("flow_actor", context, x, torch.full_like(x[..., :1], i / K)) / K
        return x.clamp(-1, 1)

    def gaussian(self, context):
        out = self.mlp("actor", context)
        return out[..., :self.C], out[..., self.C:].clamp(-5.0, 2.0)

    def candidates(self, states, goals, z):
        """clip(mu([s, g, z]), -1, 1) (one-step actor), or clip(tanh(mean + exp(log_std) z), -1, 1)
        with log_std clipped to [-5, 2] (actor_type=gaussian, agents/mbrs_ac.py)."""
        if self.cfg.actor_type == "gaussian":
            mean, log_std = self.gaussian(torch.cat([t for t in (states, goals) if t is not None], -1))
            return torch.tanh(mean + log_std.exp() * z).clamp(-1, 1)
        return self.mlp("actor", states, goals, z).clamp(-1, 1)

    def best_of_n(self, states, goals, noise):
        """The candidate of the N in ``noise`` (N, B, C) with the highest Q([s, g, c]): (chunk, Q)."""
        N = noise.shape[0]
        s = states.expand(N, *states.shape)
        g = self.expand(goals, s)
        cands = self.candidates(s, g, noise.to(torch.float64))
        q = self.mlp("critic", s, g, cands)[..., 0]                               # (N, B)
        if N > 1:
            top = q.topk(2, dim=0).values
            self.margins.append(float((top[0] - top[1]).min()))
        best = q.argmax(0)
        rows = torch.arange(states.shape[0])
        return cands[best, rows], q[best, rows]

    def rollout(self, states, goals, noise):
        """H model calls from ``states`` with best-of-N (noise (H, N, B, C)); success = sigmoid(c) >
        0.5, goal tasks r = success - 1 (gc_negative) or success, reward tasks r = r([s, a]),
        m = 1 - success; s_k+1 = s_k + f([s_k, a_k])."""
        out = {"states": [states], "chunks": [], "rewards": [], "masks": [], "q": []}
        for k in range(noise.shape[0]):
            a, q = self.best_of_n(states, goals, noise[k])
            logit = self.mlp("success", states, goals, a)[..., 0]
            self.margins.append(float(logit.abs().min()))
            success = (torch.sigmoid(logit) > 0.5).double()
            if goals is not None:
                r = success - 1.0 if self.cfg.gc_negative else success
            else:
                r = self.mlp("reward", states, a)[..., 0]
            states = states + self.mlp("dynamics", states, a)
            for key, v in (("states", states), ("chunks", a), ("rewards", r), ("masks", 1.0 - success),
                           ("q", q)):
                out[key].append(v)
        return {k: torch.stack(v) for k, v in out.items()}

    def regression(self, pred, target):
        """mse, or (value_loss=bce) BCE of the logit to the target clipped to [0, 1] (theirs)."""
        if self.cfg.value_loss == "bce":
            return bce_with_logits(pred, target.clamp(0, 1))
        return mse(pred, target)

    # -- the training step
    def value_logs(self, batch, rollout_noise):
        """Value and critic losses on the rollout from the first B_r batch states (value goals):
        returns by the authors' GAE with V-bar (target_network) or V bootstrapping; critic target
        r_0 + gamma^h m_0 V(s_1) with the current V. With value_loss=bce we add sigmoid(V) (the
        project's documented choice, docs/FIDELITY.md; the authors add the logit)."""
        cfg, Br, H = self.cfg, self.cfg.rollout_batch, self.cfg.rollout_steps
        s0 = batch["observations"][:Br].double()
        g = batch.get("value_goals")
        g = None if g is None else g[:Br].double()
        ro = self.rollout(s0, g, rollout_noise)
        boot = "target_value" if cfg.target_network else "value"
        returns = gae_returns(ro["rewards"], ro["masks"], self.value_of(boot, ro["states"][:H], g),
                              self.value_of(boot, ro["states"][1:], g), self.chunk_discount, cfg.lam)
        v = self.mlp("value", ro["states"][:H], self.expand(g, ro["states"][:H]))[..., 0]
        q = self.mlp("critic", s0, g, ro["chunks"][0])[..., 0]
        v_next = self.value_of("value", ro["states"][1], g)
        q_target = ro["rewards"][0] + self.chunk_discount * ro["masks"][0] * v_next
        logs = {"loss/value": self.regression(v, returns), "loss/critic": self.regression(q, q_target),
                "rollout/imagined_return": returns[0].mean(), "rollout/imagined_reward": ro["rewards"].mean(),
                "rollout/imagined_mask": ro["masks"].mean(), "rollout/q_chosen": ro["q"][0].mean()}
        return logs, ro, g

    def step_logs(self, batch, noise):
        """Every logged value of one training step (agent.losses) for the step's random numbers."""
        cfg = self.cfg
        b = {k: v.double() for k, v in batch.items()}
        s, a, gv, ga = b["observations"], b["actions"], b.get("value_goals"), b.get("actor_goals")
        losses = {"dynamics": mse(s + self.mlp("dynamics", s, a), b["next_observations"])}
        if gv is None:
            losses["reward"] = mse(self.mlp("reward", s, a)[..., 0], b["rewards"])
        losses["success"] = bce_with_logits(self.mlp("success", s, gv, a)[..., 0], 1.0 - b["masks"])
        if cfg.actor_type == "gaussian":
            # -log pi(a): N(atanh a; mean, std) and the tanh change of variables, d tanh = 1 - a^2
            mean, log_std = self.gaussian(torch.cat([t for t in (s, ga) if t is not None], -1))
            u = torch.atanh(a)
            log_normal = (-0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi))
            losses["bc"] = -(log_normal - torch.log(1 - a ** 2)).sum(-1).mean()
        else:
            z, u = noise["flow_z"], noise["flow_u"]
            x_u = (1 - u) * z + u * a
            losses["flow"] = mse(self.mlp("flow_actor", s, ga, x_u, u), a - z)
            if cfg.extraction == "rejection":
                z2 = noise["distill_z"]
                context = torch.cat([t for t in (s, ga) if t is not None], -1)
                losses["distill"] = mse(self.mlp("actor", s, ga, z2), self.flow_sample(context, z2))
        value_logs, ro, g = self.value_logs(b, noise["rollout"])
        losses["value"], losses["critic"] = value_logs.pop("loss/value"), value_logs.pop("loss/critic")
        logs = dict(value_logs)
        if cfg.extraction == "q_gradient":
            # agents/mbfql.py actor_loss on the imagined states: alpha distill - mean(q) / mean|q|
            states = ro["states"][:cfg.rollout_steps]
            goals = self.expand(g, states)
            context = torch.cat([t for t in (states, goals) if t is not None], -1)
            z = noise["actor_z"]
            mu = self.mlp("actor", states, goals, z)
            distill = mse(mu, self.flow_sample(context, z))
            q = self.mlp("critic", states, goals, mu.clamp(-1, 1))[..., 0].mean(0)
            q_loss = -q.mean() / q.abs().mean()
            losses["actor"] = cfg.alpha * distill + q_loss
            logs.update({"actor/distill": distill, "actor/q_loss": q_loss, "actor/q": q.mean()})
        logs.update({f"loss/{k}": v for k, v in losses.items()})
        logs["loss/total"] = sum(losses.values())
        return {k: float(v) for k, v in logs.items()}


def draw_step_noise(cfg, batch_size):
    """The random numbers of one training step of a float64 agent, from torch's generator in the
    agent's order."""
    C, Br, H = cfg.chunk_len * A, cfg.rollout_batch, cfg.rollout_steps
    N = 1 if cfg.extraction == "q_gradient" else cfg.num_samples_train
    f64, noise = torch.float64, {}
    if cfg.actor_type == "flow":
        noise["flow_z"] = torch.randn(batch_size, C, dtype=f64)
        noise["flow_u"] = torch.rand(batch_size, 1, dtype=f64)
        if cfg.extraction == "rejection":
            noise["distill_z"] = torch.randn(batch_size, C, dtype=f64)
    noise["rollout"] = torch.randn(H, N, Br, C, dtype=f64)
    if cfg.extraction == "q_gradient":
        noise["actor_z"] = torch.randn(H, Br, C, dtype=f64)
    return noise


# ------------------------------------------------------------------------------------ the project

def tiny_agent(cfg, goal_dim=0, dtype=torch.float64):
    """A seeded tiny agent whose target value differs from its value (at construction it is a copy,
    which would hide which of the two a target reads)."""
    torch.manual_seed(INIT_SEED)
    agent = MACAgent(S, A, goal_dim, cfg)
    with torch.no_grad():
        for p in agent.target_value.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return agent.to(dtype)


def step_batch(cfg, goal_dim=0, dtype=torch.float64):
    b = chunk_batch(B=cfg.batch_size, goal_dim=goal_dim, chunk=cfg.chunk_len * A)
    return {k: v.to(dtype) for k, v in b.items()}


def project_step_logs(agent, batch):
    torch.manual_seed(STEP_SEED)
    return {k: float(v) for k, v in agent.losses(batch)[1].items()}


def reference_step_logs(agent, cfg, batch):
    ref = Reference(agent, cfg)
    torch.manual_seed(STEP_SEED)
    return ref.step_logs(batch, draw_step_noise(cfg, batch["observations"].shape[0]))


def assert_logs_match(got, want, what):
    """The project's logs equal the formulas' for every value the formulas give, and it logs the
    same losses (an ablation that kept or dropped a loss would show here)."""
    assert {k for k in got if k.startswith("loss/")} == {k for k in want if k.startswith("loss/")}, what
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=F64["rtol"], abs=F64["atol"]), f"{k} with {what}"


def differs(x, y, rel=1e-6):
    return abs(x - y) > rel * max(1.0, abs(x), abs(y))


def check_step_follows(setting, values, changed, same=(), goal_dim=0, **fixed):
    """One training step's logs with ``setting`` at each of the two ``values``: each equals the
    formulas; the ``changed`` entries differ between the two, the ``same`` ones are equal."""
    logs = []
    for value in values:
        cfg = tiny_config(**{**fixed, setting: value})
        agent = tiny_agent(cfg, goal_dim)
        b = step_batch(cfg, goal_dim)
        got = project_step_logs(agent, b)
        assert_logs_match(got, reference_step_logs(agent, cfg, b), f"{setting}={value!r}")
        logs.append(got)
    for k in changed:
        assert differs(logs[0][k], logs[1][k]), f"{k} is the same with {setting} = {values}"
    for k in same:
        assert logs[0][k] == logs[1][k], f"{k} changed with {setting} = {values}"
    return logs


def chunk_reward_formula(data, t, h, gamma, mode="mean"):
    """The authors' chunk reward (utils/datasets.py ACDataset): (1/h) sum_i<h gamma^i r_t+i, or the
    sum without 1/h (chunk_reward=sum), in float64."""
    window = np.stack([data.rewards[t + i] for i in range(h)], 1).astype(np.float64)
    weighted = (window * gamma ** np.arange(h)).sum(1)
    return weighted / h if mode == "mean" else weighted


# ------------------------------------------------------------------------------------ the training step

def test_chunk_len():
    """h: the agent's chunk (h*A actions) and per-call discount gamma^h in every target (formulas:
    Reference), and the sampler's chunk: actions of rows t..t+h-1 time-major, s_t+h, and the reward
    (1/h) sum_i<h gamma^i r_t+i."""
    check_step_follows("chunk_len", (2, 3), changed=("loss/value", "loss/critic", "loss/total"))
    data = reward_data()
    chunks = []
    for h in (2, 3):
        cfg = tiny_config(chunk_len=h, normalize_obs=False)
        b = make_sampler(cfg, data, data, False, seed=0)[0].sample(64)
        t = b["idxs"]
        want_actions = np.concatenate([np.clip(data.actions[t + i], -1 + 1e-5, 1 - 1e-5) for i in range(h)], -1)
        np.testing.assert_array_equal(b["actions"], want_actions)
        np.testing.assert_array_equal(b["next_observations"], data.observations[t + h])
        np.testing.assert_allclose(b["rewards"], chunk_reward_formula(data, t, h, cfg.discount), **LABELS)
        chunks.append(b["actions"].shape[1])
    assert chunks == [2 * A, 3 * A]


def test_rollout_steps():
    """H: the rollout's model calls, hence the H*B_r states of the value loss and the horizon of
    the returns (formulas: Reference.rollout, gae_returns)."""
    check_step_follows("rollout_steps", (1, 3), changed=("loss/value", "rollout/imagined_return"),
                       same=("loss/dynamics", "loss/flow", "loss/distill"))


def test_rollout_batch():
    """B_r: the rollout starts from the first B_r batch states; value and critic losses average
    over them (formulas: Reference.value_logs)."""
    check_step_follows("rollout_batch", (2, 4), changed=("loss/value", "loss/critic"),
                       same=("loss/dynamics", "loss/flow", "loss/distill"))


def test_num_samples_train():
    """N_train: candidates per best-of-N in the rollout: a_k = argmax_i Q(s_k, c_i) over N_train
    (formula: Reference.best_of_n); the chosen Q and the value loss move with it."""
    check_step_follows("num_samples_train", (1, 5), changed=("rollout/q_chosen", "loss/value"),
                       same=("loss/dynamics", "loss/flow", "loss/distill"))


@pytest.mark.parametrize("extraction, key", [("rejection", "loss/distill"), ("q_gradient", "actor/distill")])
def test_flow_steps(extraction, key):
    """K: Euler steps of the flow teacher, x_i+1 = x_i + v(s, g, x_i, i/K) / K, in the distillation
    loss (rejection) and the q_gradient actor's distillation (formula: Reference.flow_sample)."""
    check_step_follows("flow_steps", (1, 4), changed=(key,), same=("loss/dynamics", "loss/flow"),
                       extraction=extraction)


def test_discount():
    """gamma: gamma^h discounts each model call in the value returns and the critic target
    (Reference), and weights the chunk reward (1/h) sum_i gamma^i r_t+i in the sampler."""
    check_step_follows("discount", (0.9, 0.5), changed=("loss/value", "loss/critic"),
                       same=("loss/dynamics", "loss/flow", "loss/distill"))
    data, rewards = reward_data(), []
    for gamma in (0.9, 0.5):
        cfg = tiny_config(discount=gamma)
        b = make_sampler(cfg, data, data, False, seed=0)[0].sample(64)
        np.testing.assert_allclose(b["rewards"], chunk_reward_formula(data, b["idxs"], cfg.chunk_len, gamma),
                                   **LABELS)
        rewards.append(b["rewards"])
    assert not np.allclose(rewards[0], rewards[1])


def test_lam():
    """lambda: the authors' GAE returns, A_k = delta_k + m_k gamma^h lam A_k+1, returns = V-bar + A
    (gae_returns); only the value loss moves, the critic's one-step target does not."""
    check_step_follows("lam", (1.0, 0.5), changed=("loss/value", "rollout/imagined_return"),
                       same=("loss/critic", "loss/dynamics", "loss/distill"))


def test_target_network():
    """target_network: the returns bootstrap with V-bar (true) or V (false), the critic target
    always with V (the authors'); formulas: Reference.value_logs."""
    check_step_follows("target_network", (True, False), changed=("loss/value",),
                       same=("loss/critic", "rollout/q_chosen"))


def test_gc_negative():
    """gc_negative (goal tasks): imagined reward success - 1 (true) or success (false); value and
    critic targets move by it, the rollout itself does not."""
    check_step_follows("gc_negative", (True, False), goal_dim=G,
                       changed=("loss/value", "loss/critic", "rollout/imagined_reward"),
                       same=("rollout/q_chosen", "rollout/imagined_mask", "loss/dynamics"))


def test_value_loss():
    """value_loss (goal tasks, gc_negative=false): (V - G)^2 or BCE(V logit, clip(G, 0, 1)) with
    V = sigmoid(head) in every target; the same for the critic."""
    check_step_follows("value_loss", ("mse", "bce"), goal_dim=G, gc_negative=False,
                       changed=("loss/value", "loss/critic"), same=("loss/dynamics", "loss/success"))


def test_layer_norm():
    """layer_norm: LayerNorm after each hidden GELU of every network or none (Reference evaluates the
    networks with or without it as the setting says, so a network built otherwise fails)."""
    check_step_follows("layer_norm", (True, False),
                       changed=("loss/dynamics", "loss/flow", "loss/value", "loss/critic"))
    for flag, count in ((True, 2 * 8), (False, 0)):     # 2 hidden layers x 8 networks
        agent = MACAgent(S, A, 0, tiny_config(layer_norm=flag))
        assert sum(isinstance(m, torch.nn.LayerNorm) for m in agent.modules()) == count


def test_actor_type():
    """actor_type: flow (flow matching + distillation, candidates clip(mu(s, z))) or gaussian
    (-log pi(a) of the tanh-Gaussian, candidates clip(tanh(mean + std z)) in the rollout)."""
    flow, gauss = check_step_follows("actor_type", ("flow", "gaussian"), changed=("loss/value",))
    assert {"loss/flow", "loss/distill"} <= set(flow) and "loss/bc" not in flow
    assert "loss/bc" in gauss and not {"loss/flow", "loss/distill"} & set(gauss)


def test_extraction():
    """extraction: rejection (distillation on the batch, best-of-N_train rollouts) or q_gradient
    (no batch distillation, single-sample rollouts, actor loss alpha distill - mean Q / mean |Q| on
    the imagined states: agents/mbfql.py); the acting side is in test_num_samples_test."""
    rej, qgrad = check_step_follows("extraction", ("rejection", "q_gradient"),
                                    changed=("rollout/q_chosen", "loss/value"), same=("loss/flow",))
    assert "loss/distill" in rej and "loss/actor" not in rej
    assert "loss/actor" in qgrad and "loss/distill" not in qgrad


def test_alpha():
    """alpha (q_gradient): weight of the distillation in the actor loss alpha distill + q_loss."""
    low, high = check_step_follows("alpha", (0.3, 1.0), extraction="q_gradient",
                                   changed=("loss/actor", "loss/total"),
                                   same=("actor/distill", "actor/q_loss", "loss/value"))
    assert high["loss/actor"] - low["loss/actor"] == pytest.approx(0.7 * low["actor/distill"], rel=1e-9)


# ------------------------------------------------------------------------------------ the update

def test_lr():
    """lr: one update's change of every trainable parameter is Adam's first step,
    -lr m-hat / (sqrt(v-hat) + eps) = -lr g / (|g| + 1e-8) (m-hat = g, v-hat = g^2 after bias
    correction; torch's and optax's eps)."""
    steps = []
    for lr in (1e-3, 1e-2):
        cfg = tiny_config(lr=lr)
        agent = tiny_agent(cfg)
        before = {n: p.detach().clone() for n, p in agent.named_parameters()}
        torch.manual_seed(STEP_SEED)
        agent.update(step_batch(cfg))
        changes = {}
        for n, p in agent.named_parameters():
            if n.startswith("target_value."):          # not trained by Adam: see test_tau
                continue
            g = torch.zeros_like(p) if p.grad is None else p.grad
            changes[n] = p.detach() - before[n]
            torch.testing.assert_close(changes[n], -lr * g / (g.abs() + 1e-8), **F64, msg=n)
        steps.append(changes)
    assert all(not torch.allclose(steps[0][n], steps[1][n]) for n in steps[0] if steps[0][n].abs().max() > 0)


def test_tau():
    """tau: after an update the target value is (1 - tau) V-bar + tau V, with V's parameters from
    before the step (the authors' order)."""
    targets = []
    for tau in (0.1, 0.5):
        cfg = tiny_config(tau=tau)
        agent = tiny_agent(cfg)
        v0 = [p.detach().clone() for p in agent.value.parameters()]
        t0 = [p.detach().clone() for p in agent.target_value.parameters()]
        torch.manual_seed(STEP_SEED)
        agent.update(step_batch(cfg))
        after = [p.detach().clone() for p in agent.target_value.parameters()]
        for got, v, t in zip(after, v0, t0):
            torch.testing.assert_close(got, (1 - tau) * t + tau * v, **F64)
        targets.append(after)
    assert not all(torch.allclose(a, b) for a, b in zip(*targets))


# ------------------------------------------------------------------------------------ network shapes

GROUP_OF = {"flow_actor": "actor", "actor": "actor", "value": "value", "target_value": "value",
            "dynamics": "dynamics", "critic": "dynamics", "reward": "dynamics", "success": "dynamics"}


def expected_linear_shapes(cfg, goal_dim=0):
    """(out, in) of every Linear per network: its inputs and output (MAC.md, "Networks") and the
    widths of its group (the authors' grouping: actor / value / dynamics), else hidden_dims."""
    C = cfg.chunk_len * A
    io = {"dynamics": (S + C, S), "success": (S + goal_dim + C, 1), "flow_actor": (S + goal_dim + C + 1, C),
          "actor": (S + goal_dim + C, C), "value": (S + goal_dim, 1), "target_value": (S + goal_dim, 1),
          "critic": (S + goal_dim + C, 1)}
    if not goal_dim:
        io["reward"] = (S + C, 1)
    shapes = {}
    for net, (d_in, d_out) in io.items():
        widths = getattr(cfg, f"{GROUP_OF[net]}_hidden_dims") or cfg.hidden_dims
        dims = [d_in, *widths, d_out]
        shapes[net] = [(b, a) for a, b in zip(dims[:-1], dims[1:])]
    return shapes


def linear_shapes(agent):
    return {name: [tuple(m.weight.shape) for m in getattr(agent, name).modules()
                   if isinstance(m, torch.nn.Linear)]
            for name in GROUP_OF if getattr(agent, name) is not None}


def test_hidden_dims():
    """hidden_dims: the widths of every network without its own *_hidden_dims."""
    shapes = []
    for dims in ((8,), (12, 8)):
        cfg = tiny_config(hidden_dims=dims)
        shapes.append(linear_shapes(MACAgent(S, A, 0, cfg)))
        assert shapes[-1] == expected_linear_shapes(cfg)
    assert all(shapes[0][net] != shapes[1][net] for net in GROUP_OF)


@pytest.mark.parametrize("group", ["actor", "value", "dynamics"])
def test_group_hidden_dims(group):
    """actor_hidden_dims (flow + one-step actor), value_hidden_dims (value + target),
    dynamics_hidden_dims (dynamics, critic, reward, success): the widths of their group only."""
    shapes = []
    for dims in (None, (6,)):
        cfg = tiny_config(**{f"{group}_hidden_dims": dims})
        shapes.append(linear_shapes(MACAgent(S, A, 0, cfg)))
        assert shapes[-1] == expected_linear_shapes(cfg)
    for net, g in GROUP_OF.items():
        assert (shapes[0][net] != shapes[1][net]) == (g == group), net


# ------------------------------------------------------------------------------------ acting

class RecordingEnv:
    """Stands in for an OGBench env in evaluate.run_episode: ``length`` steps, a fixed random
    observation per step, every executed action recorded."""

    def __init__(self, length):
        self.length = length
        self.observations = np.random.default_rng(0).normal(size=(length + 1, S)).astype(np.float32)

    def reset(self, seed=None, options=None):
        self.t, self.actions = 0, []
        return self.observations[0], {}

    def step(self, action):
        self.actions.append(np.asarray(action, np.float64))
        self.t += 1
        return self.observations[self.t], 0.0, False, self.t >= self.length, {"success": 0.0}


POLICY_SOURCES = {
    "train": lambda agent: _policy(agent, Normalizer.identity(S), None),     # training's evaluation
    "checkpoint": lambda agent: policy_from_state(checkpoint_policy_state({   # `mac eval` of a checkpoint
        "agent_config": agent.config.to_dict(), "dims": [S, A, 0], "agent": agent.state_dict(),
        "obs_norm": Normalizer.identity(S).state_dict(), "goal_norm": None})),
}


def executed_actions(cfg, source, length=6):
    """The actions one episode of the evaluation Policy executes, checked against the formula:
    a decision at every step where the previous chunk's first k = action_execute actions are spent,
    each the best of N_test (1 with q_gradient) candidates, executing its first k actions."""
    agent = tiny_agent(cfg, dtype=torch.float32)            # the Policy acts in float32
    env, policy = RecordingEnv(length), POLICY_SOURCES[source](agent)
    torch.manual_seed(ACT_SEED)
    run_episode(env, policy, None, seed=0)
    ref = Reference(agent, cfg)
    N = 1 if cfg.extraction == "q_gradient" else cfg.num_samples_test
    torch.manual_seed(ACT_SEED)
    want = []
    while len(want) < length:
        ob = torch.from_numpy(env.observations[len(want)]).double()[None]
        chunk, _ = ref.best_of_n(ob, None, torch.randn(N, 1, cfg.chunk_len * A))
        want += list(chunk.view(cfg.chunk_len, A)[:cfg.action_execute])
    assert min(ref.margins, default=1.0) > MARGIN
    got = np.stack(env.actions)
    np.testing.assert_allclose(got, torch.stack(want[:length]).numpy(), **F32)
    return got


@pytest.mark.parametrize("source", sorted(POLICY_SOURCES))
def test_action_execute(source):
    """action_execute: the evaluation Policy executes the first k actions of each chosen chunk
    open loop, so an episode of T steps makes ceil(T / k) decisions (formula: executed_actions)."""
    one, whole = (executed_actions(tiny_config(action_execute=k), source) for k in (1, 3))
    assert not np.allclose(one, whole)
    np.testing.assert_allclose(one[0], whole[0], **F32)        # the first decision is the same


@pytest.mark.parametrize("source", sorted(POLICY_SOURCES))
def test_num_samples_test(source):
    """num_samples_test: candidates per decision of the evaluation Policy (best of N_test by Q;
    one with extraction=q_gradient, whatever N_test); formula: executed_actions."""
    few, many = (executed_actions(tiny_config(num_samples_test=n), source) for n in (1, 6))
    assert not np.allclose(few, many)
    single = [executed_actions(tiny_config(num_samples_test=n, extraction="q_gradient"), source) for n in (1, 6)]
    np.testing.assert_array_equal(single[0], single[1])


@pytest.mark.skipif(not _native.cpu_backend_ready(torch.zeros(1)),
                    reason="the native CPU core (mac._C) is not built")
def test_rollout_backend(monkeypatch):
    """rollout_backend: an engine choice. torch runs the reference rollout, cpu the native core
    (spied), auto the native core on CPU float32 tensors where it is built; each computes the
    formulas (Reference.value_logs) for the noise it draws: torch's generator (reference), or the
    Philox stream of a seed drawn from it (native, mac.noise). The CUDA core is not checked here."""
    import mac._cpu_core as cpu_core
    import mac.rollout as rollout_api
    calls = []

    def spy(module, name):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, **k: calls.append(name) or real(*a, **k))

    spy(cpu_core, "imagine")
    spy(cpu_core, "mlp_forward")
    spy(rollout_api, "imagine_reference")
    native = ["imagine", "mlp_forward"]          # the rollout and the V/V-bar targets
    want_engines = {"torch": ["imagine_reference"], "cpu": native, "auto": native}
    engines = {}
    for backend in want_engines:
        cfg = tiny_config(rollout_backend=backend)
        agent = tiny_agent(cfg, dtype=torch.float32)
        b = step_batch(cfg, dtype=torch.float32)
        calls.clear()
        torch.manual_seed(STEP_SEED)
        losses, stats = agent.value_losses(b)
        engines[backend] = sorted(set(calls))
        got = {"loss/value": float(losses["value"].detach()), "loss/critic": float(losses["critic"].detach()),
               **{f"rollout/{k}": float(v) for k, v in stats.items()}}
        shape = (cfg.rollout_steps, cfg.num_samples_train, cfg.rollout_batch, cfg.chunk_len * A)
        torch.manual_seed(STEP_SEED)
        noise = torch.randn(shape) if engines[backend] != native else philox_normal(draw_seed(), shape)
        ref = Reference(agent, cfg)
        want, _, _ = ref.value_logs(b, noise.double())
        assert min(ref.margins) > MARGIN
        for k, v in want.items():
            assert got[k] == pytest.approx(float(v), rel=F32["rtol"], abs=F32["atol"]), f"{k} ({backend})"
    assert engines == want_engines


# ------------------------------------------------------------------------------------ the sampler

def goal_batch(size=400, **settings):
    """A batch of the training sampler (make_sampler, as mac train builds it) on goal_data (two
    episodes of 40 and 50 rows, goal_reps[:, 0] = row id), unnormalised so goals show their rows:
    (batch, t, episode end, value goal rows, actor goal rows)."""
    data = goal_data()
    cfg = tiny_config(normalize_obs=False, **settings)
    b = make_sampler(cfg, data, data, True, seed=0)[0].sample(size)
    t = b["idxs"]
    end = data.episode_ends[np.searchsorted(data.episode_ends, t)]
    return b, t, end, b["value_goals"][:, 0].astype(np.int64), b["actor_goals"][:, 0].astype(np.int64)


def goal_shares(goals, t, end):
    """Shares of the goals at t, in (t, end] (the rest of the episode) and outside [t, end]."""
    return np.array([np.mean(goals == t), np.mean((goals > t) & (goals <= end)),
                     np.mean((goals < t) | (goals > end))])


def expected_goal_shares(probs, t, end, rows):
    """The shares goal_shares should see for (current, future, random) probabilities: a random goal
    is any of the ``rows`` rows, so it lands at t with probability 1 / rows and in (t, end] with
    (end - t) / rows."""
    current, future, random = probs
    in_rest = (end - t) / rows
    return np.array([current + random / rows, future + random * in_rest.mean(),
                     random * (1 - 1 / rows - in_rest).mean()])


@pytest.mark.parametrize("who", ["value", "actor"])
def test_goal_mixture(who):
    """value_goal_current/future/random and actor_goal_current/future/random: a goal is the current
    row t, a later row of the episode or any row with these probabilities (expected_goal_shares).
    Each kind alone gives only its goals; a mix (0.1, 0.2, 0.7), away from every default, gives its
    shares. Value goals set the goal-task labels: success = g in [t, t+h), reward = success - 1,
    mask = 1 - success."""
    kinds, rows = ("current", "future", "random"), len(goal_data().terminals)
    for kind in kinds:
        b, t, end, value_goals, actor_goals = goal_batch(**{f"{who}_goal_{k}": float(k == kind) for k in kinds})
        goals = value_goals if who == "value" else actor_goals
        shares = goal_shares(goals, t, end)
        if kind == "random":        # ~75% of them lie outside [t, end] here
            assert shares[2] > 0.5, shares
        else:
            assert shares[kinds.index(kind)] == 1.0, shares
        success = ((value_goals >= t) & (value_goals < t + 3)).astype(np.float64)
        np.testing.assert_array_equal(b["rewards"], success - 1)
        np.testing.assert_array_equal(b["masks"], 1 - success)
    probs = (0.1, 0.2, 0.7)
    _, t, end, value_goals, actor_goals = goal_batch(2000, **{f"{who}_goal_{k}": p for k, p in zip(kinds, probs)})
    shares = goal_shares(value_goals if who == "value" else actor_goals, t, end)
    # binomial(2000, p <= 0.5): standard deviation <= 0.011; 0.05 is 4.5 of them
    np.testing.assert_allclose(shares, expected_goal_shares(probs, t, end, rows), atol=0.05)


@pytest.mark.parametrize("who", ["value", "actor"])
def test_geom_sample(who):
    """value_geom_sample / actor_geom_sample: future goals at t + Geometric(1 - gamma) or uniform on
    (t, end]. With gamma = 1e-9 every geometric offset is 1 (g = t + 1), a uniform one spreads."""
    mix = dict(value_goal_current=0.0, value_goal_future=1.0, value_goal_random=0.0,
               actor_goal_future=1.0, actor_goal_random=0.0, discount=1e-9)
    offsets = []
    for geometric in (True, False):
        _, t, end, value_goals, actor_goals = goal_batch(**mix, **{f"{who}_geom_sample": geometric})
        goals = value_goals if who == "value" else actor_goals
        assert np.all((goals > t) & (goals <= end))
        offsets.append(goals - t)
    assert set(offsets[0]) == {1} and offsets[1].max() > 10


def test_chunk_reward():
    """chunk_reward (reward tasks): mean (1/h) sum_i<h gamma^i r_t+i (the authors') or the sum."""
    data, rewards = reward_data(), {}
    for mode in ("mean", "sum"):
        cfg = tiny_config(chunk_reward=mode)
        b = make_sampler(cfg, data, data, False, seed=0)[0].sample(64)
        want = chunk_reward_formula(data, b["idxs"], cfg.chunk_len, cfg.discount, mode)
        np.testing.assert_allclose(b["rewards"], want, **LABELS)
        rewards[mode] = b["rewards"]
    assert not np.allclose(rewards["mean"], rewards["sum"])


def test_reward_task_termination():
    """reward_task_termination (reward tasks): mask = min_i<h of OGBench's masks over the chunk
    (true) or 1 for every chunk (false, the authors')."""
    data, masks = reward_data(), {}
    for flag in (True, False):
        cfg = tiny_config(reward_task_termination=flag)
        b = make_sampler(cfg, data, data, False, seed=0)[0].sample(64)
        window = np.stack([data.masks[b["idxs"] + i] for i in range(cfg.chunk_len)], 1)
        np.testing.assert_array_equal(b["masks"], window.min(1) if flag else np.ones(64))
        masks[flag] = b["masks"]
    assert not np.array_equal(masks[True], masks[False])


def test_normalize_obs():
    """normalize_obs: observations and goals x -> (x - (max+min)/2) / ((max-min)/2 + 1e-3) with the
    validation split's min/max (true), or unchanged (false)."""
    train = goal_data()
    val_arrays = make_episodes([30, 35], obs_dim=S, action_dim=A, seed=1)
    val = OfflineData(val_arrays["observations"], val_arrays["actions"], val_arrays["terminals"],
                      goal_reps=val_arrays["observations"][:, :3] * 2.0)

    def minmax(x, stats):
        lo, hi = stats.min(0).astype(np.float64), stats.max(0).astype(np.float64)
        return (x - (hi + lo) / 2) / ((hi - lo) / 2 + 1e-3)

    seen = []
    for flag in (True, False):
        b = make_sampler(tiny_config(normalize_obs=flag), train, val, True, seed=0)[0].sample(32)
        obs, goals = train.observations[b["idxs"]], train.goal_reps[b["value_goal_idxs"]]
        if flag:
            obs, goals = minmax(obs, val.observations), minmax(goals, val.goal_reps)
        np.testing.assert_allclose(b["observations"], obs, **LABELS)
        np.testing.assert_allclose(b["value_goals"], goals, **LABELS)
        seen.append(b["observations"])
    assert not np.allclose(seen[0], seen[1])


def test_batch_size():
    """batch_size: a training step's batch (mac.train.training_batch) holds batch_size chunks, each
    s_t, its h actions and s_t+h of one episode (observations[:, 0] = row id t)."""
    data = reward_data()
    for size in (8, 16):
        cfg = tiny_config(batch_size=size, normalize_obs=False)
        b = training_batch(make_sampler(cfg, data, data, False, seed=0)[0], cfg, "cpu")
        assert {k: v.shape[0] for k, v in b.items()} == {k: size for k in b}
        t = b["observations"][:, 0].long().numpy()
        np.testing.assert_array_equal(b["next_observations"].numpy(), data.observations[t + cfg.chunk_len])


# ------------------------------------------------------------------------------------ every setting

SETTING_TESTS = {
    "chunk_len": test_chunk_len, "rollout_steps": test_rollout_steps, "rollout_batch": test_rollout_batch,
    "num_samples_train": test_num_samples_train, "num_samples_test": test_num_samples_test,
    "flow_steps": test_flow_steps, "discount": test_discount, "tau": test_tau, "batch_size": test_batch_size,
    "lr": test_lr, "hidden_dims": test_hidden_dims, "action_execute": test_action_execute,
    "rollout_backend": test_rollout_backend,
    "value_goal_current": test_goal_mixture, "value_goal_future": test_goal_mixture,
    "value_goal_random": test_goal_mixture, "actor_goal_current": test_goal_mixture,
    "actor_goal_future": test_goal_mixture, "actor_goal_random": test_goal_mixture,
    "value_geom_sample": test_geom_sample, "actor_geom_sample": test_geom_sample,
    "chunk_reward": test_chunk_reward, "reward_task_termination": test_reward_task_termination,
    "lam": test_lam, "value_loss": test_value_loss, "gc_negative": test_gc_negative,
    "target_network": test_target_network, "layer_norm": test_layer_norm,
    "actor_hidden_dims": test_group_hidden_dims, "value_hidden_dims": test_group_hidden_dims,
    "dynamics_hidden_dims": test_group_hidden_dims, "normalize_obs": test_normalize_obs,
    "actor_type": test_actor_type, "extraction": test_extraction, "alpha": test_alpha,
}


def test_every_setting_has_an_effect_test():
    """A new AgentConfig field fails here until a test above shows that it changes what is computed."""
    fields = {f.name for f in dataclasses.fields(AgentConfig)}
    assert set(SETTING_TESTS) - fields == set(), "SETTING_TESTS names settings that do not exist"
    assert fields - set(SETTING_TESTS) == set(), "settings without a test of their effect"
