"""Agent hyperparameters, presets, and ``--agent.<key>=<value>`` flag parsing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields


@dataclass
class AgentConfig:
    """MAC hyperparameters (MAC.md defaults; see ``PRESETS`` for the CPU preset)."""

    chunk_len: int = 10                 # h: actions per chunk
    rollout_steps: int = 10             # H: model calls per imagined rollout
    rollout_batch: int = 1024           # B_r: rollout start states per step
    num_samples_train: int = 8          # N in rollouts
    num_samples_test: int = 32          # N at evaluation
    flow_steps: int = 10                # K: Euler steps of the flow policy
    discount: float = 0.999             # gamma per env step
    tau: float = 0.005                  # Polyak rate of the target value
    batch_size: int = 1024
    lr: float = 3e-4
    hidden_dims: tuple = (1024, 1024, 1024, 1024)
    action_execute: int = 1             # actions of the chosen chunk executed per decision (<= h)
    rollout_backend: str = "auto"       # auto | torch | cpu | cuda
    value_goal_current: float = 0.2
    value_goal_future: float = 0.5
    value_goal_random: float = 0.3
    actor_goal_future: float = 0.5
    actor_goal_random: float = 0.5

    def validate(self) -> "AgentConfig":
        positive = ("chunk_len", "rollout_steps", "rollout_batch", "num_samples_train",
                    "num_samples_test", "flow_steps", "batch_size", "action_execute")
        for k in positive:
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"agent.{k} must be a positive int, got {v!r}")
        if not 0 < self.discount <= 1:
            raise ValueError(f"agent.discount must be in (0, 1], got {self.discount}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"agent.tau must be in (0, 1], got {self.tau}")
        if self.lr <= 0:
            raise ValueError(f"agent.lr must be > 0, got {self.lr}")
        if not self.hidden_dims or any((not isinstance(d, int)) or d < 1 for d in self.hidden_dims):
            raise ValueError(f"agent.hidden_dims must be positive ints, got {self.hidden_dims!r}")
        if self.action_execute > self.chunk_len:
            raise ValueError(f"agent.action_execute={self.action_execute} exceeds agent.chunk_len={self.chunk_len}")
        if self.rollout_batch > self.batch_size:
            raise ValueError(f"agent.rollout_batch={self.rollout_batch} exceeds agent.batch_size="
                             f"{self.batch_size} (rollouts start from the first batch states)")
        if self.rollout_backend not in ("auto", "torch", "cpu", "cuda"):
            raise ValueError(f"agent.rollout_backend must be auto|torch|cpu|cuda, got {self.rollout_backend!r}")
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AgentConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown agent settings {sorted(unknown)}; valid: {sorted(known)}")
        d = dict(d)
        if "hidden_dims" in d:
            d["hidden_dims"] = tuple(d["hidden_dims"])
        return cls(**d).validate()


PRESETS: dict[str, dict] = {
    "paper": {},
    # Sized for a 2-core CPU: same algorithm, smaller networks and batches (see docs/RESULTS.md).
    # Executing the whole chosen chunk: with the authors' code 46% vs 16% success for 1 action early
    # in training (MAC.md, "Acting"); with ours, checkpoints at 18k-22k steps scored 61% (whole
    # chunk) vs 39% (5 actions) on average over 150 episodes (docs/RESULTS.md), at a tenth of the
    # decisions of the paper's 1 action.
    "cpu": dict(hidden_dims=(256, 256, 256), batch_size=256, rollout_batch=128, flow_steps=10,
                action_execute=10),
}


def preset(name: str) -> AgentConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return AgentConfig(**PRESETS[name])


def _convert(key: str, text: str, current):
    try:
        if isinstance(current, bool):
            if text.lower() in ("1", "true", "yes"):
                return True
            if text.lower() in ("0", "false", "no"):
                return False
            raise ValueError
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple):
            parts = [p for p in text.strip("()[] ").replace(",", " ").split() if p]
            return tuple(int(p) for p in parts)
        return text
    except ValueError:
        raise ValueError(f"--agent.{key}: cannot parse {text!r} as {type(current).__name__}") from None


def apply_agent_flags(config: AgentConfig, argv: list[str]) -> tuple[AgentConfig, list[str]]:
    """Consume ``--agent.key=value`` / ``--agent.key value`` from argv; returns (config, rest)."""
    valid = {f.name for f in fields(AgentConfig)}
    rest, i = [], 0
    updates = {}
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--agent."):
            key, eq, value = arg[len("--agent."):].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"{arg} needs a value")
                value, i = argv[i + 1], i + 1
            if key not in valid:
                raise ValueError(f"unknown agent setting --agent.{key}; valid keys: {', '.join(sorted(valid))}")
            updates[key] = _convert(key, value, getattr(config, key))
        else:
            rest.append(arg)
        i += 1
    return dataclasses.replace(config, **updates).validate(), rest


def goal_mixture(config: AgentConfig):
    from mac.data import GoalMixture
    return GoalMixture(config.value_goal_current, config.value_goal_future, config.value_goal_random,
                       config.actor_goal_future, config.actor_goal_random)


__all__ = ["AgentConfig", "PRESETS", "apply_agent_flags", "goal_mixture", "preset"]
