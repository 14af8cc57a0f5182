"""Agent hyperparameters, presets, and ``--agent.<key>=<value>`` flag parsing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields


def _f(default, help: str):
    """A dataclass field with a one-line description (``--help`` of ``mac train`` shows it)."""
    return field(default=default, metadata={"help": help})


@dataclass
class AgentConfig:
    """MAC hyperparameters (MAC.md defaults; see ``PRESETS`` for the CPU preset)."""

    chunk_len: int = _f(10, "h: actions per chunk (the policy outputs h actions at once); 1 = the paper's "
                            "no-chunking ablation (rollout_steps is not rescaled, as in the authors' code)")
    rollout_steps: int = _f(10, "H: model calls (chunks) per imagined rollout: h*H env steps, each call "
                                "discounted by discount^h (authors: independent of chunk_len; for h=1 pass "
                                "H=100 to keep a 100-step horizon)")
    rollout_batch: int = _f(1024, "B_r: rollout start states per training step (<= batch_size)")
    num_samples_train: int = _f(8, "N: candidate chunks per state in the training rollouts (best-of-N; "
                                   "extraction=q_gradient uses 1)")
    num_samples_test: int = _f(32, "N: candidate chunks per decision at evaluation (best-of-N; "
                                   "extraction=q_gradient uses 1)")
    flow_steps: int = _f(10, "K: Euler steps of the flow policy")
    discount: float = _f(0.999, "gamma per environment step")
    tau: float = _f(0.005, "Polyak averaging rate of the target value network")
    batch_size: int = _f(1024, "chunks per gradient step")
    lr: float = _f(3e-4, "Adam learning rate of all networks")
    hidden_dims: tuple = _f((1024, 1024, 1024, 1024), "hidden layer widths of every MLP without its own *_hidden_dims, e.g. 256,256,256")
    action_execute: int = _f(1, "actions of the chosen chunk executed per decision at evaluation (<= chunk_len)")
    rollout_backend: str = _f("auto", "best-of-N/rollout engine: auto | torch | cpu | cuda")
    value_goal_current: float = _f(0.2, "goal tasks: probability that a value goal is the current state")
    value_goal_future: float = _f(0.5, "goal tasks: probability that a value goal is a later state of the trajectory")
    value_goal_random: float = _f(0.3, "goal tasks: probability that a value goal is a random dataset state")
    actor_goal_future: float = _f(0.5, "goal tasks: probability that an actor goal is a later state of the trajectory")
    actor_goal_random: float = _f(0.5, "goal tasks: probability that an actor goal is a random dataset state")
    # Options of the authors' code (agents/mac.py get_config, main.py); see docs/FIDELITY.md.
    actor_goal_current: float = _f(0.0, "goal tasks: probability that an actor goal is the current state (authors: actor_p_curgoal)")
    value_geom_sample: bool = _f(False, "goal tasks: future value goals at a geometric offset (p = 1 - discount) instead of uniform")
    actor_geom_sample: bool = _f(True, "goal tasks: future actor goals at a geometric offset (p = 1 - discount) instead of uniform")
    chunk_reward: str = _f("mean", "reward tasks: chunk reward = mean (authors: (1/h) sum_i gamma^i r_t+i) | sum (sum_i gamma^i r_t+i)")
    reward_task_termination: bool = _f(False, "reward tasks: success net learns OGBench's masks and cuts imagined returns (false: authors' all-ones masks)")
    lam: float = _f(1.0, "lambda of the imagined lambda-returns (authors' GAE lambda); 1 = plain return bootstrapped at step H")
    value_loss: str = _f("mse", "value/critic loss: mse (authors: squared) | bce on a sigmoid head (goal tasks with gc_negative=false)")
    gc_negative: bool = _f(True, "goal tasks: imagined reward success - 1 (true) or success (false, returns in [0, 1])")
    target_network: bool = _f(True, "bootstrap imagined returns with the Polyak target value (false: the current value)")
    layer_norm: bool = _f(True, "LayerNorm after each hidden GELU in every MLP (false: only the torch rollout backend)")
    actor_hidden_dims: tuple | None = _f(None, "hidden widths of the flow and one-step actors, or of the Gaussian actor (None: hidden_dims)")
    value_hidden_dims: tuple | None = _f(None, "hidden widths of the value and target value (None: hidden_dims)")
    dynamics_hidden_dims: tuple | None = _f(None, "hidden widths of the dynamics, critic, reward and success nets, as grouped by the authors (None: hidden_dims)")
    normalize_obs: bool = _f(True, "min-max normalise observations and goals with the validation split's statistics")
    # The paper's ablations (docs/FIDELITY.md, "Ablations"): settings of this one agent.
    actor_type: str = _f("flow", "chunk policy: flow (flow matching + one-step distilled actor: MAC) | gaussian "
                                 "(tanh-Gaussian trained by log-likelihood: the authors' MAC (Gau), "
                                 "agents/mbrs_ac.py; torch rollout backend)")
    extraction: str = _f("rejection", "policy extraction: rejection (best-of-N by Q: MAC) | q_gradient (one-step "
                                      "actor trained with -Q/|Q| + alpha*distillation on imagined states, acting "
                                      "and rollouts with its single sample: the authors' MAC (FQL), agents/mbfql.py)")
    alpha: float = _f(0.3, "extraction=q_gradient: weight of the distillation loss (authors' mbfql alpha)")

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
            raise ValueError(f"agent.action_execute={self.action_execute} exceeds agent.chunk_len={self.chunk_len}; "
                             f"pass --agent.action_execute=<1..{self.chunk_len}>")
        if self.rollout_batch > self.batch_size:
            raise ValueError(f"agent.rollout_batch={self.rollout_batch} exceeds agent.batch_size="
                             f"{self.batch_size} (rollouts start from the first batch states)")
        if self.rollout_backend not in ("auto", "torch", "cpu", "cuda"):
            raise ValueError(f"agent.rollout_backend must be auto|torch|cpu|cuda, got {self.rollout_backend!r}")
        for k in ("actor_hidden_dims", "value_hidden_dims", "dynamics_hidden_dims"):
            v = getattr(self, k)
            if v is not None and (not v or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in v)):
                raise ValueError(f"agent.{k} must be None or positive ints, got {v!r}")
        for k in ("value_geom_sample", "actor_geom_sample", "reward_task_termination", "gc_negative",
                  "target_network", "layer_norm", "normalize_obs"):
            if not isinstance(getattr(self, k), bool):
                raise ValueError(f"agent.{k} must be true or false, got {getattr(self, k)!r}")
        for who in ("value", "actor"):
            probs = [getattr(self, f"{who}_goal_{k}") for k in ("current", "future", "random")]
            if any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
                raise ValueError(f"agent.{who}_goal_current/future/random must be >= 0 and sum to 1, "
                                 f"got {probs}")
        if self.chunk_reward not in ("mean", "sum"):
            raise ValueError(f"agent.chunk_reward must be mean|sum, got {self.chunk_reward!r}")
        if not 0 <= self.lam <= 1:
            raise ValueError(f"agent.lam must be in [0, 1], got {self.lam}")
        if self.value_loss not in ("mse", "bce"):
            raise ValueError(f"agent.value_loss must be mse|bce, got {self.value_loss!r}")
        if self.value_loss == "bce" and self.gc_negative:
            # The authors clip the targets to [0, 1]: with rewards success - 1 every return is <= 0
            # and every target 0. BCE needs the 0/1 rewards of gc_negative=False (goal tasks).
            raise ValueError("agent.value_loss=bce needs --agent.gc_negative=false: the BCE targets are the "
                             "imagined returns clipped to [0, 1], which are all 0 with rewards success - 1")
        if self.actor_type not in ("flow", "gaussian"):
            raise ValueError(f"agent.actor_type must be flow|gaussian, got {self.actor_type!r}")
        if self.extraction not in ("rejection", "q_gradient"):
            raise ValueError(f"agent.extraction must be rejection|q_gradient, got {self.extraction!r}")
        if self.actor_type == "gaussian" and self.extraction != "rejection":
            raise ValueError("agent.actor_type=gaussian needs agent.extraction=rejection: the authors' Gaussian "
                             "ablation (agents/mbrs_ac.py) extracts by best-of-N; q_gradient trains the "
                             "flow's one-step actor (agents/mbfql.py)")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha >= 0:
            raise ValueError(f"agent.alpha must be >= 0, got {self.alpha!r}")
        if self.rollout_backend in ("cpu", "cuda"):
            ok, why = native_rollout_supported(self, self.rollout_backend)
            if not ok:
                raise ValueError(f"agent.rollout_backend={self.rollout_backend} cannot serve these settings: "
                                 f"{why}; use --agent.rollout_backend=auto (falls back to torch) or torch")
        return self

    def net_hidden_dims(self, group: str) -> tuple:
        """Hidden widths of a network group: "actor" (flow + one-step actor), "value" (value + target),
        "dynamics" (dynamics, critic, reward, success: the authors' grouping)."""
        v = getattr(self, f"{group}_hidden_dims")
        return tuple(self.hidden_dims if v is None else v)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in _TUPLE_FIELDS:
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AgentConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown agent settings {sorted(unknown)}; valid: {sorted(known)}")
        d = dict(d)
        if "chunk_reward" not in d:  # saved before these options existed: the behaviour of that time
            d = {**_LEGACY_DEFAULTS, **d}
        for k in _TUPLE_FIELDS:
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d).validate()


_TUPLE_FIELDS = ("hidden_dims", "actor_hidden_dims", "value_hidden_dims", "dynamics_hidden_dims")
# Agent configs saved before chunk_reward/reward_task_termination existed were trained with these.
_LEGACY_DEFAULTS = {"chunk_reward": "sum", "reward_task_termination": True}


PRESETS: dict[str, dict] = {
    "paper": {},  # the AgentConfig defaults: the authors' code (docs/FIDELITY.md lists what differs)
    # Sized for a 2-core CPU: same algorithm, smaller networks and batches (see docs/RESULTS.md).
    # Executing the whole chosen chunk: with the authors' code 46% vs 16% success for 1 action early
    # in training (MAC.md, "Acting"); with ours, checkpoints at 18k-22k steps scored 61% (whole
    # chunk) vs 39% (5 actions) on average over 150 episodes (docs/RESULTS.md), at a tenth of the
    # decisions of the paper's 1 action.
    # Chunk reward: the authors' mean; termination: OGBench's masks (the authors use none). Of the
    # four combinations on cube-single task 2 (1M transitions, 10k steps, docs/RESULTS.md "Chunk
    # reward x termination"), mean + termination led on every measure (62% at 10k in training
    # evaluations, 54% whole chunk / 36% first action on 50 fresh episodes); termination helped with
    # either reward.
    "cpu": dict(hidden_dims=(256, 256, 256), batch_size=256, rollout_batch=128, flow_steps=10,
                action_execute=10, chunk_reward="mean", reward_task_termination=True),
}


def field_help(name: str) -> str:
    """The one-line description of the agent setting ``name``."""
    return AgentConfig.__dataclass_fields__[name].metadata["help"]


def agent_help(config: AgentConfig) -> str:
    """One line per setting: ``--agent.<key>=<value of config>`` and its description."""
    rows = []
    for f in fields(AgentConfig):
        value = getattr(config, f.name)
        if isinstance(value, tuple):
            value = ",".join(map(str, value))
        rows.append((f"--agent.{f.name}={value}", f.metadata["help"]))
    width = max(len(a) for a, _ in rows) + 2
    return "\n".join(f"  {a:<{width}}{h}" for a, h in rows)


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
        if key in _TUPLE_FIELDS:
            if key != "hidden_dims" and text.strip().lower() in ("", "none"):
                return None                     # the per-group widths: None = hidden_dims
            parts = [p for p in text.strip("()[] ").replace(",", " ").split() if p]
            return tuple(int(p) for p in parts)
        if key == "value_loss" and text == "squared":
            return "mse"                        # the authors' name
        return text
    except ValueError:
        kind = "tuple of ints" if key in _TUPLE_FIELDS else type(current).__name__
        raise ValueError(f"--agent.{key}: cannot parse {text!r} as {kind}") from None


# The authors' flag names (agents/mac.py get_config) for settings that have another name here.
AUTHOR_NAMES = {"value_p_curgoal": "value_goal_current", "value_p_trajgoal": "value_goal_future",
                "value_p_randomgoal": "value_goal_random", "actor_p_curgoal": "actor_goal_current",
                "actor_p_trajgoal": "actor_goal_future", "actor_p_randomgoal": "actor_goal_random",
                "action_chunking": "chunk_len", "rollout_batch_size": "rollout_batch"}


def split_agent_flags(argv: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(the ``--agent.key=value`` / ``--agent.key value`` settings of argv as (key, value) in order,
    with the authors' names mapped to ours; the other arguments). Unknown keys are an error."""
    valid = {f.name for f in fields(AgentConfig)}
    settings, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--agent."):
            key, eq, value = arg[len("--agent."):].partition("=")
            key = AUTHOR_NAMES.get(key, key)
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"{arg} needs a value")
                value, i = argv[i + 1], i + 1
            if key not in valid:
                raise ValueError(f"unknown agent setting --agent.{key}; valid keys: {', '.join(sorted(valid))}")
            settings.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return settings, rest


def apply_agent_flags(config: AgentConfig, argv: list[str]) -> tuple[AgentConfig, list[str]]:
    """Consume ``--agent.key=value`` / ``--agent.key value`` from argv; returns (config, rest)."""
    settings, rest = split_agent_flags(argv)
    updates = {key: _convert(key, value, getattr(config, key)) for key, value in settings}
    return dataclasses.replace(config, **updates).validate(), rest


def goal_mixture(config: AgentConfig):
    from mac.data import GoalMixture
    return GoalMixture(config.value_goal_current, config.value_goal_future, config.value_goal_random,
                       config.actor_goal_future, config.actor_goal_random,
                       actor_current=config.actor_goal_current, value_geom_sample=config.value_geom_sample,
                       actor_geom_sample=config.actor_geom_sample)


def sampler_options(config: AgentConfig) -> dict:
    """The ChunkSampler keywords that come from the agent settings."""
    return {"goal_mixture": goal_mixture(config), "chunk_reward": config.chunk_reward,
            "reward_task_termination": config.reward_task_termination}


def fit_normalizers(config: AgentConfig, val_data, goal_conditioned: bool):
    """(observation, goal) normalisers from the validation split (the authors' choice), or identity
    ones with normalize_obs=False; the goal normaliser is None for reward tasks."""
    from mac.data import Normalizer
    if not config.normalize_obs:
        return (Normalizer.identity(val_data.obs_dim),
                Normalizer.identity(val_data.goal_dim) if goal_conditioned else None)
    return (Normalizer.fit(val_data.observations),
            Normalizer.fit(val_data.goal_reps) if goal_conditioned else None)


def native_rollout_supported(config: AgentConfig, backend: str | None = None) -> tuple[bool, str]:
    """Whether the native rollout cores can run the networks these settings build: (True, "") or
    (False, reason). ``backend``: "cpu", "cuda" or None (either). Only the settings are judged; whether
    a core was built and a GPU is usable is reported by ``mac info``. Where this is False,
    rollout_backend=auto uses the PyTorch reference and an explicit cpu/cuda is an error.

    The cores run the flow's one-step actor with best-of-N: extraction=rejection (N candidates) and
    extraction=q_gradient (its single sample is best-of-1) both; actor_type=gaussian is not served."""
    if config.actor_type != "flow":
        return False, (f"actor_type={config.actor_type}: the native cores run the flow one-step actor; the "
                       "tanh-Gaussian chunk policy runs on the torch reference")
    if not config.layer_norm:
        return False, ("layer_norm=false: the native cores fuse Linear -> GELU -> LayerNorm in every "
                       "hidden layer")
    if backend == "cuda":
        for group in ("actor", "dynamics"):      # the value nets are not in the rollout
            layers = len(config.net_hidden_dims(group)) + 1
            if layers > CUDA_MAX_LAYERS:
                return False, (f"the {group} networks have {layers} layers; the CUDA core supports at "
                               f"most {CUDA_MAX_LAYERS} (hidden layers + head)")
    return True, ""


CUDA_MAX_LAYERS = 12  # layers per network of the CUDA core (hidden + head), cuda/tiling.h kMaxLayers

# What `mac info` says about the settings (native_rollout_supported is the exact rule).
NATIVE_ROLLOUT_SERVES = ("actor_type=flow, extraction=rejection (best-of-N) or q_gradient (best-of-1), "
                         "layer_norm=true; other settings (actor_type=gaussian, layer_norm=false) use the "
                         "torch reference")


__all__ = ["AUTHOR_NAMES", "AgentConfig", "NATIVE_ROLLOUT_SERVES", "PRESETS", "agent_help", "apply_agent_flags", "split_agent_flags", "field_help",
           "fit_normalizers", "goal_mixture", "native_rollout_supported", "preset", "sampler_options"]
