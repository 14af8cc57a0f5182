"""Chunk sampling for MAC (MAC.md, "One gradient step" and "Data").

A sample is a chunk starting at row t of some episode: s_t, a_{t:t+h} (flattened time-major),
s_{t+h}, and labels. A chunk never crosses an episode end: t + h <= the episode's last row.
Sampling is uniform over all valid chunk starts of all episodes (across shards too), in O(log E)
per sample and without materialising the list of valid starts (100M rows would cost 800 MB).

Boundaries, kept on purpose where they differ from the authors' code (docs/FIDELITY.md): their
ACDataset/ACGCDataset read OGBench's *compact* layout, whose ``terminals`` mark both the last and the
second-to-last row of an episode. Their valid starts are therefore t <= last - h - 2 (ours: t <= last
- h, every chunk whose h actions and s_{t+h} exist), their future goals are capped at last - 1 (ours:
last, a valid observation) and their random goals skip each episode's last row (ours: any row). These
are by-products of the layout, not choices of the method, and touch ~2 rows in 1000.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mac.data.dataset import Normalizer, OfflineData
from mac.data.files import MAPPED_BUDGET_MB, DatasetError, MappedPages


@dataclass(frozen=True)
class GoalMixture:
    """Probabilities of the goal kinds and the law of the future offset (the authors' defaults:
    value goals current 0.2 / uniform future 0.5 / random 0.3; actor goals geometric future 0.5 /
    random 0.5). Future goals lie in [t+1, episode end]: uniform, or t + Geometric(1 - discount) capped
    at the episode end (``*_geom_sample``), as the authors' GCDataset.sample_goals."""

    value_current: float = 0.2
    value_future: float = 0.5
    value_random: float = 0.3
    actor_future: float = 0.5
    actor_random: float = 0.5
    actor_current: float = 0.0   # the authors' actor_p_curgoal
    value_geom_sample: bool = False
    actor_geom_sample: bool = True

    def __post_init__(self):
        for name, probs in (("value", (self.value_current, self.value_future, self.value_random)),
                            ("actor", (self.actor_current, self.actor_future, self.actor_random))):
            if any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
                raise ValueError(f"{name} goal probabilities (current, future, random) must be >= 0 and "
                                 f"sum to 1, got {probs}")


def _chunk_windows(x: np.ndarray, h: int) -> np.ndarray:
    """Read-only view (N - h + 1, h, ...) of x (N, ...): row t is x[t : t + h]. No copy."""
    return np.lib.stride_tricks.as_strided(x, (len(x) - h + 1, h, *x.shape[1:]), (x.strides[0], *x.strides),
                                           writeable=False)


class ChunkSampler:
    """Draws training batches of action chunks from ``data``.

    ``sample(B)`` returns float32 arrays: observations (B, S), actions (B, h*A),
    next_observations (B, S) = s_{t+h}, rewards (B,), masks (B,), and for goal tasks value_goals and
    actor_goals (B, G); plus ``idxs`` (B,) int64, the chunk starts. Observations and goals are
    normalised with the given normalisers.

    Reward tasks: ``chunk_reward="mean"`` (the authors' ACDataset): reward = (1/h) sum_{i<h}
    discount^i r_{t+i}; ``"sum"``: sum_{i<h} discount^i r_{t+i}. ``reward_task_termination=False``
    (the authors'): mask = 1 for every chunk; True: mask = 0 if any of rows t..t+h-1 has OGBench mask 0
    (the task is solved inside the chunk). Goal tasks: success = goal row in [t, t+h);
    reward = success - 1, mask = 1 - success.

    Dataset actions are clipped to +-(1 - 1e-5) as the authors do when loading (envs/env_utils.py);
    here per batch, which gives the same numbers without copying a memory-mapped dataset.

    ``mapped_budget_mb``: for a memory-mapped dataset (shards), the most of its pages kept mapped in
    this process (:class:`mac.data.files.MappedPages`); None: no bound (RSS grows to the touched part
    of the cache). Batches are the same either way.
    """

    ACTION_CLIP = 1.0 - 1e-5

    def __init__(self, data: OfflineData, chunk_len: int, discount: float, *,
                 obs_normalizer: Normalizer | None = None, goal_normalizer: Normalizer | None = None,
                 goal_conditioned: bool = False, goal_mixture: GoalMixture = GoalMixture(),
                 seed: int = 0, chunk_reward: str = "mean", reward_task_termination: bool = False,
                 mapped_budget_mb: float | None = MAPPED_BUDGET_MB):
        if chunk_reward not in ("mean", "sum"):
            raise ValueError(f"chunk_reward must be 'mean' or 'sum', got {chunk_reward!r}")
        if isinstance(chunk_len, bool) or not isinstance(chunk_len, (int, np.integer)) or chunk_len < 1:
            raise ValueError(f"chunk_len must be a positive int, got {chunk_len!r}")
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        if goal_conditioned and data.goal_reps is None:
            raise ValueError("goal_conditioned sampling needs data.goal_reps")
        if not goal_conditioned and data.rewards is None:
            raise ValueError("reward-task sampling needs data.rewards and data.masks")
        self.data = data
        self.h = int(chunk_len)
        self.discount = float(discount)
        self.obs_normalizer = obs_normalizer
        self.goal_normalizer = goal_normalizer
        self.goal_conditioned = goal_conditioned
        self.mix = goal_mixture
        self.chunk_reward = chunk_reward
        self.reward_task_termination = bool(reward_task_termination)
        lengths = data.episode_ends - data.episode_starts  # transitions per episode
        self.valid_per_episode = np.maximum(lengths - self.h + 1, 0)
        self.valid_cum = np.cumsum(self.valid_per_episode)
        self.num_valid = int(self.valid_cum[-1]) if len(self.valid_cum) else 0
        if self.num_valid == 0:
            raise DatasetError(f"chunk length h={self.h} is longer than every trajectory: the longest "
                               f"episode has {int(lengths.max()) if len(lengths) else 0} transitions; "
                               "use a shorter --agent.chunk_len or a dataset with longer episodes")
        self.reward_weights = (self.discount ** np.arange(self.h)).astype(np.float32)
        # One gather per chunk instead of h (the rows of a chunk are contiguous in every column)
        self._action_windows = _chunk_windows(data.actions, self.h)                 # (N-h+1, h, A)
        if data.rewards is not None:
            self._reward_windows = _chunk_windows(data.rewards, self.h)             # (N-h+1, h)
        if data.masks is not None:
            self._mask_windows = _chunk_windows(data.masks, self.h)                 # (N-h+1, h)
        self.rng = np.random.default_rng(seed)
        self.mapped_pages = MappedPages.of(
            (data.observations, data.actions, data.terminals, data.rewards, data.masks, data.goal_reps),
            None if mapped_budget_mb is None else int(mapped_budget_mb * 2 ** 20))

    def _after_gathers(self) -> None:
        if self.mapped_pages is not None:
            self.mapped_pages.check()

    # -- state for exact resume
    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]

    def reseed(self, seed) -> None:
        """Restart the random stream from ``seed`` (an int or a sequence of ints, as
        ``numpy.random.default_rng``)."""
        self.rng = np.random.default_rng(seed)

    def max_sequence_chunks(self) -> int:
        """The most consecutive chunks that fit in one episode (t + L h <= the episode's last row)."""
        lengths = self.data.episode_ends - self.data.episode_starts
        return int(lengths.max()) // self.h

    def sample_sequences(self, batch_size: int, length: int) -> dict[str, np.ndarray]:
        """``batch_size`` runs of ``length`` consecutive chunks inside one episode (the authors'
        ``sample_consecutive``): observations (L, B, S) = s_{t + k h} (normalised) and actions
        (L, B, h A) = the chunks a_{t + k h : t + (k+1) h} (clipped as in :meth:`sample`), k < L.
        A start t is uniform over the rows with t + L h <= the episode's last row (the authors require
        the state after the last chunk to be in the same episode too)."""
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        d, h, L = self.data, self.h, int(length)
        span = L * h
        per_ep = np.maximum(d.episode_ends - d.episode_starts - span + 1, 0)
        cum = np.cumsum(per_ep)
        if not len(cum) or cum[-1] == 0:
            raise ValueError(f"no episode holds {L} consecutive chunks of {h} actions")
        u = self.rng.integers(0, int(cum[-1]), size=batch_size)
        ep = np.searchsorted(cum, u, side="right")
        t = d.episode_starts[ep] + (u - (cum[ep] - per_ep[ep]))                # (B,)
        starts = t[None, :] + h * np.arange(L)[:, None]                        # (L, B)
        obs = d.observations[starts.ravel()]
        if self.obs_normalizer is not None:
            obs = self.obs_normalizer(obs)
        rows = (starts[:, :, None] + np.arange(h)).ravel()                     # (L, B, h)
        actions = np.clip(np.asarray(d.actions[rows], np.float32), -self.ACTION_CLIP, self.ACTION_CLIP)
        self._after_gathers()
        return {"observations": np.asarray(obs, np.float32).reshape(L, batch_size, -1),
                "actions": actions.reshape(L, batch_size, -1), "idxs": t}

    def _episode_of(self, u: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.valid_cum, u, side="right")

    def sample_starts(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Uniform valid chunk starts (B,) and their episodes (B,)."""
        u = self.rng.integers(0, self.num_valid, size=batch_size)
        ep = self._episode_of(u)
        first_of_ep = self.valid_cum[ep] - self.valid_per_episode[ep]
        return self.data.episode_starts[ep] + (u - first_of_ep), ep

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        d, h = self.data, self.h
        t, ep = self.sample_starts(batch_size)
        both = d.observations[np.concatenate([t, t + h])]                # (2B, S): s_t then s_{t+h}
        if self.obs_normalizer is not None:
            both = self.obs_normalizer(both)
        both = np.asarray(both, np.float32)
        batch = {
            "idxs": t,
            "observations": both[:batch_size],
            "actions": np.clip(np.asarray(self._action_windows[t], np.float32).reshape(batch_size, -1),
                               -self.ACTION_CLIP, self.ACTION_CLIP),
            "next_observations": both[batch_size:],
        }
        if self.goal_conditioned:
            end = d.episode_ends[ep]
            value_idx = self._value_goal_idxs(t, end)
            succeeded = (value_idx >= t) & (value_idx < t + h)
            batch["rewards"] = succeeded.astype(np.float32) - 1.0
            batch["masks"] = 1.0 - succeeded.astype(np.float32)
            batch["value_goals"] = self._goals(value_idx)
            batch["actor_goals"] = self._goals(self._actor_goal_idxs(t, end))
            batch["value_goal_idxs"] = value_idx
        else:
            r = self._reward_windows[t]                                        # (B, h)
            if self.chunk_reward == "sum":
                batch["rewards"] = np.asarray(r @ self.reward_weights, np.float32)
            else:  # the authors' np.mean(rewards * discount ** arange(h)), in float64 as theirs
                batch["rewards"] = np.mean(r * self.discount ** np.arange(h, dtype=np.float64),
                                           axis=1).astype(np.float32)
            if self.reward_task_termination:
                batch["masks"] = self._mask_windows[t].min(axis=1).astype(np.float32)
            else:  # the authors' np.ones_like: the success net learns "never", returns are not cut
                batch["masks"] = np.ones(batch_size, np.float32)
        self._after_gathers()
        return batch

    def _goals(self, idx: np.ndarray) -> np.ndarray:
        g = self.data.goal_reps[idx]
        if self.goal_normalizer is not None:
            g = self.goal_normalizer(g)
        return np.asarray(g, np.float32)

    def _future_idxs(self, t, end, geometric: bool):
        """A later row of the same episode: t + Geometric(1 - discount) capped at ``end``, or uniform
        on [t+1, end] (the authors' rounding of a uniform mix of t+1 and end); ``end`` itself if t = end."""
        B = len(t)
        if geometric:
            p = max(1.0 - self.discount, 1e-6)
            return np.minimum(t + self.rng.geometric(p, size=B), end)
        frac = self.rng.random(B)
        return np.round(np.minimum(t + 1, end) * frac + end * (1 - frac)).astype(np.int64)

    def _value_goal_idxs(self, t, end):
        """current (t) / future row / uniform random row, per GoalMixture."""
        B, m = len(t), self.mix
        r = self.rng.random(B)
        future = self._future_idxs(t, end, m.value_geom_sample)
        random_row = self.rng.integers(0, len(self.data), size=B)
        return np.where(r < m.value_current, t,
                        np.where(r < m.value_current + m.value_future, future, random_row))

    def _actor_goal_idxs(self, t, end):
        """current (t) / future row / uniform random row, per GoalMixture."""
        B, m = len(t), self.mix
        future = self._future_idxs(t, end, m.actor_geom_sample)
        random_row = self.rng.integers(0, len(self.data), size=B)
        if m.actor_current == 0:      # the draws of the two-way mixture, as before actor_current existed
            return np.where(self.rng.random(B) < m.actor_future, future, random_row)
        r = self.rng.random(B)
        return np.where(r < m.actor_current, t,
                        np.where(r < m.actor_current + m.actor_future, future, random_row))
