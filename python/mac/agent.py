"""The MAC agent: eight networks, their losses, one optimiser step, and acting (MAC.md)."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch.nn import functional as F

from mac import precision as precision_api, rollout as rollout_api
from mac.config import AgentConfig
from mac.nets import MLP, GaussianActor

# Where Adam steps fused: on CUDA one kernel updates every tensor, its step counts on the device
# (torch's default there, foreach, keeps the counts on the host and works out each tensor's bias
# correction in Python). The CPU keeps torch's default single-tensor loop, whose numbers fused Adam
# would not reproduce bitwise.
FUSED_ADAM_DEVICES = ("cuda",)


def discounted_returns(rewards: torch.Tensor, masks: torch.Tensor, bootstrap: torch.Tensor,
                       chunk_discount: float, lam: float = 1.0,
                       next_values: torch.Tensor | None = None) -> torch.Tensor:
    """Lambda-returns over an imagined trajectory. rewards, masks (H, B) -> (H, B).

    G_{H-1} = r_{H-1} + gamma m_{H-1} bootstrap;
    G_k = r_k + gamma m_k ((1 - lam) V(s_{k+1}) + lam G_{k+1}), with ``next_values[k]`` = V(s_{k+1})
    (k < H-1; needed only when lam < 1). This is the authors' GAE (returns = values + advantages,
    agents/mac.py compute_gae) written without the values that cancel; with lam = 1 it is
    G_k = r_k + gamma m_k G_{k+1}, computed exactly as before lam existed (bitwise)."""
    if lam != 1.0 and next_values is None and rewards.shape[0] > 1:
        raise ValueError("lam < 1 needs next_values = V(s_{k+1}) for k < H - 1")
    out = torch.empty_like(rewards)
    g = bootstrap
    for k in range(rewards.shape[0] - 1, -1, -1):
        if lam != 1.0 and k < rewards.shape[0] - 1:
            g = (1.0 - lam) * next_values[k] + lam * g
        g = rewards[k] + chunk_discount * masks[k] * g
        out[k] = g
    return out


def euler_flow(flow: MLP, context: torch.Tensor, z: torch.Tensor, steps: int,
               backend: str = "torch") -> torch.Tensor:
    """x_0 = z; x_{i+1} = x_i + v([context, x_i, i/K]) / K. context (..., S+G), z (..., C).
    Without gradient (the distillation teacher) the K passes of v may run on the native core
    (``backend`` as the rollout's: 4.7x torch eager at the paper's 4x1024, benchmarks/RESULTS.md)."""
    x = z
    native = backend != "torch" and not torch.is_grad_enabled()
    for i in range(steps):
        u = torch.full((*z.shape[:-1], 1), i / steps, dtype=z.dtype, device=z.device)
        inp = torch.cat([context, x, u], dim=-1)
        x = x + (rollout_api.mlp_forward(flow, inp, backend) if native else flow(inp)) / steps
    return x


def fetch_floats(values: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """The logged values of :meth:`MACAgent.update` (detached 0-d tensors on the agent's device) as
    Python floats, in one device-to-host transfer: on a GPU every transfer waits for the queued work,
    so the training loop calls this at log steps only. Entries that are numbers already pass through;
    the keys keep their order. float32 -> Python float is exact: the same numbers as ``float(v)``."""
    tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
    fetched = dict(zip(tensors, torch.stack(list(tensors.values())).tolist())) if tensors else {}
    return {k: fetched.get(k, v) for k, v in values.items()}


def frozen(net: torch.nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """``net(*inputs)`` with its parameters detached: gradients reach the inputs, never the net (the
    authors call such a net with its current, non-differentiated parameters)."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    return torch.func.functional_call(net, params, inputs)


class MACAgent(torch.nn.Module):
    """All networks of MAC. ``goal_dim = 0`` for reward tasks (no goal inputs, a reward net).

    The paper's ablations are settings (docs/FIDELITY.md): ``actor_type=gaussian`` replaces the flow
    and the one-step actor by one tanh-Gaussian chunk policy ``actor`` (agents/mbrs_ac.py);
    ``extraction=q_gradient`` trains the one-step actor with -Q/|Q| + alpha * distillation on the
    imagined states and acts with its single sample (agents/mbfql.py)."""

    def __init__(self, obs_dim: int, action_dim: int, goal_dim: int, config: AgentConfig):
        super().__init__()
        self.config = config.validate()
        self.obs_dim, self.action_dim, self.goal_dim = obs_dim, action_dim, goal_dim
        self.chunk_dim = C = config.chunk_len * action_dim
        S, G = obs_dim, goal_dim
        self.goal_conditioned = goal_dim > 0
        if config.value_loss == "bce" and not self.goal_conditioned:
            raise ValueError("agent.value_loss=bce is for goal tasks only: the BCE targets are the imagined "
                             "returns clipped to [0, 1], and reward-task returns are <= 0 (all targets 0)")
        ln = config.layer_norm
        # The authors' grouping: the critic, reward and success nets take dynamics_hidden_dims.
        ha, hv, hm = (config.net_hidden_dims(g) for g in ("actor", "value", "dynamics"))
        self.dynamics = MLP(S + C, S, hm, ln)
        self.reward = None if self.goal_conditioned else MLP(S + C, 1, hm, ln)
        self.success = MLP(S + G + C, 1, hm, ln)
        if config.actor_type == "gaussian":     # one BC policy; no flow, no one-step actor
            self.flow_actor = None
            self.actor = GaussianActor(S + G, C, ha, ln)
        else:
            self.flow_actor = MLP(S + G + C + 1, C, ha, ln)
            self.actor = MLP(S + G + C, C, ha, ln)
        self.value = MLP(S + G, 1, hv, ln)
        self.critic = MLP(S + G + C, 1, hm, ln)
        self.target_value = copy.deepcopy(self.value).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.trainable_parameters(), lr=config.lr)
        # Called with the trainable parameters between backward and the optimiser step; data-parallel
        # training (mac.distributed) averages their gradients over the processes there.
        self.gradient_hook: Callable[[list[torch.nn.Parameter]], None] | None = None

    def trainable_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("target_value.")]

    @property
    def chunk_discount(self) -> float:
        """gamma^h: the discount of one model call (the authors' ``discount ** action_chunking``)."""
        return self.config.discount ** self.config.chunk_len

    def num_candidates(self, train: bool) -> int:
        """Candidates per decision: N_train / N_test for best-of-N; 1 (the one-step policy's single
        sample, as agents/mbfql.py sample_actions) with extraction=q_gradient."""
        if self.config.extraction == "q_gradient":
            return 1
        return self.config.num_samples_train if train else self.config.num_samples_test

    # ------------------------------------------------------------------ pieces of the loss
    @staticmethod
    def _cat(*xs):
        return torch.cat([x for x in xs if x is not None], dim=-1)

    def model_losses(self, batch) -> dict[str, torch.Tensor]:
        s, a, s_next = batch["observations"], batch["actions"], batch["next_observations"]
        g = batch.get("value_goals")
        out = {"dynamics": F.mse_loss(s + self.dynamics(self._cat(s, a)), s_next)}
        if self.reward is not None:
            out["reward"] = F.mse_loss(self.reward(self._cat(s, a)).squeeze(-1), batch["rewards"])
        out["success"] = F.binary_cross_entropy_with_logits(
            self.success(self._cat(s, g, a)).squeeze(-1), 1.0 - batch["masks"])
        return out

    def actor_losses(self, batch) -> dict[str, torch.Tensor]:
        """BC losses on the dataset batch (actor goals): flow matching + distillation (MAC); flow
        matching only with extraction=q_gradient (its actor loss needs the rollout: :meth:`q_actor_loss`);
        -log pi(a | s, g) with actor_type=gaussian (agents/mbrs_ac.py bc_actor_loss)."""
        s, a = batch["observations"], batch["actions"]
        g = batch.get("actor_goals")
        B = s.shape[0]
        context = self._cat(s, g)
        if self.config.actor_type == "gaussian":
            return {"bc": -self.actor.log_prob(context, a).mean()}
        z = torch.randn(B, self.chunk_dim, dtype=s.dtype, device=s.device)
        u = torch.rand(B, 1, dtype=s.dtype, device=s.device)
        x_u = (1 - u) * z + u * a
        flow = F.mse_loss(self.flow_actor(self._cat(context, x_u, u)), a - z)
        if self.config.extraction == "q_gradient":
            return {"flow": flow}
        z2 = torch.randn(B, self.chunk_dim, dtype=s.dtype, device=s.device)
        with torch.no_grad():  # the teacher is a fixed target for the one-step actor
            teacher = euler_flow(self.flow_actor, context, z2, self.config.flow_steps,
                                 self.config.rollout_backend).clamp(-1, 1)
        distill = F.mse_loss(self.actor(self._cat(context, z2)), teacher)
        return {"flow": flow, "distill": distill}

    def q_actor_loss(self, states: torch.Tensor, goals: torch.Tensor | None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """extraction=q_gradient (agents/mbfql.py actor_loss) on the imagined states ``states``
        (H, B, S) with the rollout (value) goals (B, G): z ~ N(0, I);
        distill = mean (mu(s, g, z) - clip(Euler_K(v; s, g, z), -1, 1))^2 (teacher without gradient);
        q = mean over the H steps of Q(s, g, clip(mu, -1, 1)) (B,), with Q's parameters fixed;
        loss = alpha * distill - mean(q) / stop_gradient(mean |q|). Returns (loss, its parts as
        detached 0-d tensors: distill, q_loss, q)."""
        if goals is not None:
            goals = goals.unsqueeze(0).expand(states.shape[0], -1, -1)
        context = self._cat(states, goals)
        z = torch.randn(*states.shape[:-1], self.chunk_dim, dtype=states.dtype, device=states.device)
        with torch.no_grad():
            teacher = euler_flow(self.flow_actor, context, z, self.config.flow_steps,
                                 self.config.rollout_backend).clamp(-1, 1)
        mu = self.actor(self._cat(context, z))
        distill = F.mse_loss(mu, teacher)
        q = frozen(self.critic, self._cat(context, mu.clamp(-1, 1))).squeeze(-1).mean(0)    # (B,)
        q_loss = -q.mean() / q.abs().mean().detach()
        loss = self.config.alpha * distill + q_loss
        return loss, {"distill": distill.detach(), "q_loss": q_loss.detach(), "q": q.detach().mean()}

    def imagine(self, states, goals, num_samples=None, backend=None):
        """Imagined rollout with the current networks (no gradient)."""
        cfg = self.config
        return rollout_api.imagine(
            states, goals, actor=self.actor, critic=self.critic, dynamics=self.dynamics,
            reward=self.reward, success=self.success, steps=cfg.rollout_steps,
            num_samples=num_samples or self.num_candidates(train=True),
            backend=backend or cfg.rollout_backend)

    @torch.no_grad()
    def _v(self, net: MLP, states: torch.Tensor, goals: torch.Tensor | None) -> torch.Tensor:
        """The value of ``net`` (value or target) as a number, for targets (no gradient): the head, or
        sigmoid(head) with value_loss=bce. states (..., S), goals (B, G) broadcast over leading dims."""
        if goals is not None and states.dim() == 3:
            goals = goals.unsqueeze(0).expand(states.shape[0], -1, -1)
        inp = self._cat(states, goals)
        # Targets carry no gradient: the native core may run them, as the rollout.
        out = rollout_api.mlp_forward(net, inp, self.config.rollout_backend).squeeze(-1)
        return torch.sigmoid(out) if self.config.value_loss == "bce" else out

    def _regression(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """mse, or (value_loss=bce) BCE of the logit ``pred`` to ``target`` clipped to [0, 1] (the authors')."""
        if self.config.value_loss == "bce":
            return F.binary_cross_entropy_with_logits(pred, target.clamp(0.0, 1.0))
        return F.mse_loss(pred, target)

    def value_losses(self, batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        losses, stats, _, _ = self._value_losses(batch)
        return losses, stats

    def _value_losses(self, batch):
        """(losses, stats, rollout, rollout goals): the imagined rollout from the first B_r batch
        states, the value/critic losses on it and its statistics (0-d tensors, no gradient)."""
        cfg = self.config
        Br = cfg.rollout_batch
        s0 = batch["observations"][:Br]
        g = batch.get("value_goals")
        g = g[:Br] if g is not None else None
        ro = self.imagine(s0, g)                                            # no gradient inside
        H = cfg.rollout_steps
        rewards = ro.rewards
        if self.goal_conditioned and not cfg.gc_negative:
            rewards = rewards + 1.0     # success - 1 -> success (exact: both are 0/1 valued)
        # The authors bootstrap with the target value (target_network=True) or the current one.
        boot_net = self.target_value if cfg.target_network else self.value
        with torch.no_grad():
            bootstrap = self._v(boot_net, ro.states[H], g)
            next_values = self._v(boot_net, ro.states[1:H], g) if cfg.lam != 1.0 and H > 1 else None
            returns = discounted_returns(rewards, ro.masks, bootstrap, self.chunk_discount, cfg.lam,
                                         next_values)
            # The authors' critic target uses the current value net. With value_loss=bce they add its
            # logit (agents/mac.py critic_loss); we add sigmoid(logit), the value (docs/FIDELITY.md).
            v_next = self._v(self.value, ro.states[1], g)
            q_target = rewards[0] + self.chunk_discount * ro.masks[0] * v_next
        gs = g.unsqueeze(0).expand(H, -1, -1) if g is not None else None
        v = self.value(self._cat(ro.states[:H], gs)).squeeze(-1)           # (H, Br)
        q = self.critic(self._cat(s0, g, ro.chunks[0])).squeeze(-1)
        losses = {"value": self._regression(v, returns), "critic": self._regression(q, q_target)}
        stats = {"imagined_return": returns[0].mean(), "imagined_reward": rewards.mean(),
                 "imagined_mask": ro.masks.mean(), "q_chosen": ro.q[0].mean()}
        return losses, stats, ro, g

    # ------------------------------------------------------------------ one step
    def losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, logged values): every loss of one step (summed with weight 1, as the authors)
        and the rollout statistics, as ``loss/<name>``, ``loss/total``, ``rollout/<name>``
        (and ``actor/<name>`` with extraction=q_gradient). The logged values are detached 0-d
        tensors on the agent's device: reading them is left to :func:`fetch_floats`."""
        losses = self.model_losses(batch)
        losses.update(self.actor_losses(batch))
        value_losses, stats, ro, g = self._value_losses(batch)
        losses.update(value_losses)
        actor_stats = {}
        if self.config.extraction == "q_gradient":
            losses["actor"], actor_stats = self.q_actor_loss(ro.states[:self.config.rollout_steps], g)
        total = sum(losses.values())
        out = {f"loss/{k}": v.detach() for k, v in losses.items()}
        out["loss/total"] = total.detach()
        out.update({f"rollout/{k}": v for k, v in stats.items()})
        out.update({f"actor/{k}": v for k, v in actor_stats.items()})
        return total, out

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One gradient step on all networks; returns the losses and rollout statistics as
        :meth:`losses` does (0-d tensors: :func:`fetch_floats` reads them). Nothing here waits for
        the device (tests/test_host_sync.py), so on a GPU the host queues the next step meanwhile."""
        with self._autocast():
            total, out = self.losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.gradient_hook is not None:
            self.gradient_hook(self.trainable_parameters())
        # The authors' order: the target moves toward V's parameters from before this step's update.
        self.polyak_update()
        self._match_adam_to_device()
        self.optimizer.step()
        return out

    def _autocast(self):
        """bf16 autocast of the differentiable part where the run's precision (mac.precision) is bf16;
        parameters, optimiser state, LayerNorm statistics and losses stay float32."""
        device = self.optimizer.param_groups[0]["params"][0].device
        return precision_api.autocast(precision_api.resolve(None, device), device)

    def _match_adam_to_device(self) -> None:
        """Fused Adam while the parameters are on one of FUSED_ADAM_DEVICES, torch's default
        elsewhere. Set before every step, not once: the optimiser is made with the agent, on the CPU,
        before ``.to(device)``, and loading a checkpoint restores the flags of the device that saved it."""
        fused = self.optimizer.param_groups[0]["params"][0].device.type in FUSED_ADAM_DEVICES
        for group in self.optimizer.param_groups:
            if bool(group["fused"]) == fused:
                continue
            group["fused"], group["foreach"] = (True if fused else None), None
            for p in group["params"]:
                state = self.optimizer.state.get(p, {})
                if "step" in state:  # fused: a float32 count on the parameter's device; else on the CPU
                    device, dtype = (p.device, torch.float32) if fused else ("cpu", torch.get_default_dtype())
                    state["step"] = state["step"].to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ diagnostics (no gradient)
    @torch.no_grad()
    def eval_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """The values :meth:`update` logs, on ``batch``, as floats, without a gradient step (the
        authors' ``total_loss(val_batch, grad_params=None)``); draws from torch's RNG like a step."""
        with self._autocast():
            return fetch_floats(self.losses(batch)[1])

    @torch.no_grad()
    def bc_error(self, batch: dict[str, torch.Tensor]) -> float:
        """Mean squared error between the chunk the policy chooses for the batch states (with the
        actor goals; N_train candidates, or the single sample with q_gradient) and the dataset
        chunk: the authors' ``compute_metrics`` ``mse``."""
        s, g = batch["observations"], batch.get("actor_goals")
        chosen = rollout_api.best_of_n(s, g if self.goal_conditioned else None, actor=self.actor,
                                       critic=self.critic, num_samples=self.num_candidates(train=True),
                                       backend=self.config.rollout_backend).chunks
        return float(((chosen - batch["actions"]) ** 2).mean())

    @torch.no_grad()
    def rollout_error(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Model error along real chunk sequences (the authors' ``rollout_metrics``, agents/model_ac.py):
        observations (L, B, S) = s_t, s_{t+h}, ..., actions (L, B, C) the real chunks. From
        ŝ_0 = s_t, ŝ_{k+1} = ŝ_k + f(ŝ_k, a_k); returns (L,) mean_{B,S} (s_{t+kh} - ŝ_k)^2 (index 0 is 0)."""
        s, preds = observations[0], []
        for k in range(observations.shape[0]):
            preds.append(s)
            s = s + self.dynamics(self._cat(s, actions[k]))
        return ((observations - torch.stack(preds)) ** 2).mean(dim=(1, 2))

    @torch.no_grad()
    def polyak_update(self) -> None:
        """target <- target + tau (value - target) for every tensor in one foreach call (on CUDA a
        kernel per dtype, not per tensor; on the CPU the same per-tensor lerp_, bitwise)."""
        torch._foreach_lerp_(list(self.target_value.parameters()), list(self.value.parameters()),
                             self.config.tau)

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, observations: torch.Tensor, goals: torch.Tensor | None = None,
            num_samples: int | None = None, backend: str | None = None) -> torch.Tensor:
        """Best-of-N chunk for normalised observations (B, S) -> actions (B, h, A) in [-1, 1].
        With extraction=q_gradient the one-step policy's single sample (``num_samples`` is ignored)."""
        if self.config.extraction == "q_gradient":
            num_samples = 1
        res = rollout_api.best_of_n(observations, goals if self.goal_conditioned else None,
                                    actor=self.actor, critic=self.critic,
                                    num_samples=num_samples or self.config.num_samples_test,
                                    backend=backend or self.config.rollout_backend)
        return res.chunks.view(-1, self.config.chunk_len, self.action_dim)
