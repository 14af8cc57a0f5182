"""An OGBench dataset in memory (or memory-mapped), with OGBench's own rewards and goal reps."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mac.data.files import (LABEL_KEYS, REQUIRED_KEYS, DatasetError, DatasetFiles, cached_columns,
                            find_dataset_files, load_train_arrays, read_npz)
from mac.data.names import EnvSpec


@dataclass
class OfflineData:
    """Rows in the official compact layout: every episode's rows are contiguous and end with a
    terminal row whose observation is valid (its action has no successor).

    observations (N, S), actions (N, A), terminals (N,) bool; for reward tasks rewards/masks (N,)
    computed on s_t by ogbench's relabelling; for goal tasks goal_reps (N, G) (the oracle
    representation for ``-oraclerep`` envs, the observation otherwise).
    """

    observations: np.ndarray
    actions: np.ndarray
    terminals: np.ndarray
    rewards: np.ndarray | None = None
    masks: np.ndarray | None = None
    goal_reps: np.ndarray | None = None

    def __post_init__(self):
        ends = np.flatnonzero(self.terminals)
        self.episode_ends = ends.astype(np.int64)                                   # (E,) inclusive
        self.episode_starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)  # (E,)

    def __len__(self) -> int:
        return len(self.terminals)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def goal_dim(self) -> int:
        return 0 if self.goal_reps is None else self.goal_reps.shape[1]


LABELS_VERSION = 1


def compute_labels(spec: EnvSpec, env, arrays: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """OGBench's own labels of the rows in ``arrays`` (needs qpos, and button_states for puzzle/scene):
    ``{"rewards": (n,), "masks": (n,)}`` float32 for singletask envs (``relabel_dataset``),
    ``{"goal_reps": (n, G)}`` float32 for oraclerep envs (``add_oracle_reps``), ``{}`` otherwise.

    Both ogbench functions are row-wise (each row's label reads only that row's qpos/button_states
    and the env's fixed task), so labelling shard by shard gives exactly the labels of the whole.
    """
    from ogbench.relabel_utils import add_oracle_reps, relabel_dataset

    if spec.kind not in ("singletask", "oraclerep"):
        return {}
    info = {k: arrays[k] for k in ("qpos", "button_states") if k in arrays}
    if "qpos" not in info:
        raise DatasetError(f"{where}: {spec.kind} env {spec.name!r} needs the 'qpos' key "
                           "(and 'button_states' for puzzle/scene) to compute OGBench labels")
    if spec.family in ("puzzle", "scene") and "button_states" not in info:
        raise DatasetError(f"{where}: {spec.family} datasets need 'button_states'")
    if spec.kind == "singletask":
        relabel_dataset(spec.env_id, env, info)
        return {"rewards": info["rewards"], "masks": info["masks"]}
    add_oracle_reps(spec.env_id, env, info)
    return {"goal_reps": info["oracle_reps"]}


def _offline_data(spec: EnvSpec, arrays: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> OfflineData:
    if spec.kind == "goal":
        labels = {"goal_reps": arrays["observations"]}
    return OfflineData(arrays["observations"], arrays["actions"], arrays["terminals"], **labels)


def add_labels(spec: EnvSpec, env, arrays: dict[str, np.ndarray], where: str) -> OfflineData:
    """Rows in RAM (one file) with their labels (:func:`compute_labels`)."""
    return _offline_data(spec, arrays, compute_labels(spec, env, arrays, where))


def _shard_labels(spec: EnvSpec, env, files: DatasetFiles, progress: bool) -> dict[str, np.ndarray]:
    """:func:`compute_labels` of every shard, memory-mapped from ``.mac_cache/labels/<env id>``
    (built once per env: it reads only terminals, qpos and button_states, one shard at a time)."""
    if spec.kind not in ("singletask", "oraclerep"):
        return {}
    from importlib.metadata import version

    key = {"env_id": spec.env_id, "kind": spec.kind, "labels_version": LABELS_VERSION,
           "ogbench": version("ogbench")}
    return cached_columns(files.train, f"labels/{spec.env_id}", ("terminals", *LABEL_KEYS),
                          lambda arrays, where: compute_labels(spec, env, arrays, where), key=key,
                          progress=progress, desc=f"labelling shards ({spec.env_id})")


def load_offline_data(spec: EnvSpec, dataset_dir: str | os.PathLike, env,
                      progress: bool = True) -> tuple[OfflineData, OfflineData]:
    """(train, val) for ``spec`` from ``dataset_dir``; ``env`` is the env made for ``spec``.

    A single training file (the official 1M layout; an .npz cannot be memory-mapped) is read into
    RAM; a shard layout, even of one shard, is memory-mapped from its cache (memory bounded by one
    shard at any total size). The validation file is read into RAM.
    """
    files = find_dataset_files(spec.dataset_name, dataset_dir)
    train_arrays = load_train_arrays(files, progress=progress)
    val_arrays = read_npz(files.val, REQUIRED_KEYS + LABEL_KEYS)
    for what, a in (("validation", val_arrays),):
        for k in ("observations", "actions"):
            if a[k].shape[1:] != train_arrays[k].shape[1:]:
                raise DatasetError(f"{files.val}: {what} {k!r} has shape {a[k].shape[1:]} per row but "
                                   f"the training data has {train_arrays[k].shape[1:]}")
    if env is not None and hasattr(env, "observation_space") and env.observation_space.shape:
        expected = env.observation_space.shape[-1]
        got = train_arrays["observations"].shape[1]
        if expected != got:
            raise DatasetError(f"{files.train[0]}: observations have {got} dims but {spec.env_id} "
                               f"produces {expected}; the file belongs to another environment")
    if not files.sharded:
        train = add_labels(spec, env, train_arrays, str(files.train[0]))
    else:
        train = _offline_data(spec, train_arrays, _shard_labels(spec, env, files, progress))
    val = add_labels(spec, env, val_arrays, str(files.val))
    return train, val


@dataclass(frozen=True)
class Normalizer:
    """Min-max normalisation to about [-1, 1]: x -> (x - (max+min)/2) / ((max-min)/2 + 1e-3)."""

    center: np.ndarray  # (D,)
    scale: np.ndarray   # (D,)

    EPS = 1e-3

    @classmethod
    def fit(cls, x: np.ndarray) -> "Normalizer":
        lo, hi = x.min(axis=0).astype(np.float64), x.max(axis=0).astype(np.float64)
        return cls(((hi + lo) / 2).astype(np.float32), ((hi - lo) / 2 + cls.EPS).astype(np.float32))

    @classmethod
    def identity(cls, dim: int) -> "Normalizer":
        """x -> (x - 0) / 1 = x exactly (agent setting normalize_obs=false, the authors' flag)."""
        return cls(np.zeros(dim, np.float32), np.ones(dim, np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.center) / self.scale

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return y * self.scale + self.center

    def state_dict(self) -> dict:
        return {"center": self.center.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_state_dict(cls, d: dict) -> "Normalizer":
        return cls(np.asarray(d["center"], np.float32), np.asarray(d["scale"], np.float32))
