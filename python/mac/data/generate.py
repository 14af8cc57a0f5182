"""Local generation of OGBench-format offline datasets.

The official OGBench datasets cannot be downloaded here, but everything needed to regenerate most of
them ships in the ``ogbench`` wheel: the environments in ``mode='data_collection'`` and the scripted
oracles. This module re-implements the logic of OGBench's data-generation drivers
(``data_gen_scripts/generate_manipspace.py`` and ``generate_locomaze.py`` in the OGBench repository)
with three additions:

* **Reproducibility.** The official scripts never use their ``--seed``. Here every episode gets its
  own seed, derived from ``(seed, split, episode index)`` with :class:`numpy.random.SeedSequence`; it
  seeds ``env.reset``, numpy's global RNG (the oracles and the maze goal noise draw from
  ``np.random``) and a private :class:`numpy.random.Generator` (stacking probability, action noise,
  random actions, maze cells). Episodes therefore do not depend on which process ran them or on what
  ran before: the output is bit-identical for any number of workers, and the train file for ``N``
  episodes is a prefix of the train file for ``M > N`` episodes (the validation episodes come from a
  separate stream).
* **Parallelism.** Episodes run in ``workers`` spawned processes (one BLAS/OpenMP thread each), and
  are gathered in order.
* **Atomic output.** Both files are written to temporary files in ``save_dir`` and moved into place
  with :func:`os.replace`, so an interrupted run never leaves a truncated ``.npz``.

File layout (what ``ogbench.load_dataset`` / ``ogbench.make_env_and_datasets`` read):
``<save_dir>/<dataset>.npz`` with ``num_episodes`` episodes and ``<save_dir>/<dataset>-val.npz`` with
``max(1, num_episodes // 10)`` further episodes. Keys: ``observations`` (float32), ``actions``
(float32, clipped to [-1, 1]), ``terminals`` (bool, 1 on the last row of every episode), ``qpos`` and
``qvel`` (float32, MuJoCo state at the observation) and, for puzzle and scene, ``button_states``
(int64).

Supported datasets: ``cube-{single,double,triple,quadruple,octuple}-{play,noisy}-v0``,
``scene-{play,noisy}-v0``, ``puzzle-{3x3,4x4,4x5,4x6}-{play,noisy}-v0`` and
``pointmaze-{medium,large,giant,teleport}-{navigate,stitch}-v0``; single-task (``...-singletask[-taskN]-v0``)
and oracle-representation (``...-oraclerep-v0``) names map to the dataset they are built from.
Ant, humanoid and antsoccer data need trained expert policies whose weights are not available, and
``visual-*`` / powderworld datasets are not generated.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import re
import secrets
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mac.console import show_progress, silence_harmless_warnings
from mac.data.names import MANIPULATION_TYPES, MAZE_TYPES, parse_env_name, validate_env_name

silence_harmless_warnings()  # here too for the spawned worker processes, which import this module

__all__ = [
    "DatasetSpec",
    "resolve_dataset",
    "generate_dataset",
    "generate_episode",
    "add_arguments",
    "run",
    "SUPPORTED_DATASETS",
]

# Environment variables that cap the thread pools of BLAS/OpenMP libraries. They must be set before
# numpy is imported in a worker, which is why workers are spawned with them in their environment.
_THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

# Health check of the scene datasets may reject an episode; give up after this many attempts.
_MAX_SCENE_ATTEMPTS = 100

# Split tags used in the seed derivation (train and validation episodes come from separate streams).
_SPLIT_TRAIN = 0
_SPLIT_VAL = 1


# --------------------------------------------------------------------------------------------------
# Dataset names
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to generate one OGBench dataset."""

    dataset_name: str  # e.g. 'cube-single-play-v0' (the file stem)
    env_id: str  # gymnasium id used for collection, e.g. 'cube-single-v0'
    family: str  # 'cube' | 'scene' | 'puzzle' | 'pointmaze'
    dataset_type: str  # 'play' | 'noisy' | 'navigate' | 'stitch'
    max_episode_steps: int  # official episode length (rows per episode)
    official_num_episodes: int | None  # number of training episodes of the official dataset
    noise: float  # plan-oracle noise / markov max noise scale / maze Gaussian noise std
    noise_smoothing: float  # plan-oracle noise smoothing (play only)
    min_norm: float  # markov-oracle minimum action norm (noisy only)
    p_random_action: float  # probability of a uniformly random action (manipulation only)

    @property
    def has_button_states(self) -> bool:
        return self.family in ("puzzle", "scene")


_CUBE_SIZES = ("single", "double", "triple", "quadruple", "octuple")
_PUZZLE_SIZES = ("3x3", "4x4", "4x5", "4x6")
_MAZE_SIZES = ("medium", "large", "giant", "teleport")

# Official number of training episodes per dataset (data_gen_scripts/commands.sh).
_OFFICIAL_EPISODES = {
    "cube-single": 1000,
    "cube-double": 1000,
    "cube-triple": 3000,
    "cube-quadruple": 5000,
    "scene": 1000,
    "puzzle-3x3": 1000,
    "puzzle-4x4": 1000,
    "puzzle-4x5": 3000,
    "puzzle-4x6": 5000,
}


def _list_supported() -> list[str]:
    names = []
    for size in _CUBE_SIZES:
        names += [f"cube-{size}-{t}-v0" for t in MANIPULATION_TYPES]
    names += [f"scene-{t}-v0" for t in MANIPULATION_TYPES]
    for size in _PUZZLE_SIZES:
        names += [f"puzzle-{size}-{t}-v0" for t in MANIPULATION_TYPES]
    for size in _MAZE_SIZES:
        names += [f"pointmaze-{size}-{t}-v0" for t in MAZE_TYPES]
    return names


SUPPORTED_DATASETS: tuple[str, ...] = tuple(_list_supported())

_SUPPORTED_SUMMARY = (
    "supported datasets: cube-{single,double,triple,quadruple,octuple}-{play,noisy}-v0, "
    "scene-{play,noisy}-v0, puzzle-{3x3,4x4,4x5,4x6}-{play,noisy}-v0, "
    "pointmaze-{medium,large,giant,teleport}-{navigate,stitch}-v0 "
    "(single-task '...-singletask[-taskN]-v0' and '...-oraclerep-v0' names map to their dataset)"
)


def _unsupported(name: str, why: str) -> ValueError:
    return ValueError(f"cannot generate dataset {name!r}: {why}; {_SUPPORTED_SUMMARY}")


def _strip_variant(name: str) -> str:
    """Map a single-task / oracle-representation name to its underlying dataset name
    (``cube-single-play-singletask-task2-v0`` -> ``cube-single-play-v0``), as mac.data.names does."""
    try:
        return parse_env_name(name).dataset_name
    except ValueError as exc:
        raise _unsupported(name, str(exc)) from None


def resolve_dataset(env_name: str) -> DatasetSpec:
    """Parse a dataset (or single-task / oraclerep) name into a :class:`DatasetSpec`.

    Raises:
        ValueError: the name is not a dataset this module can generate; the message says why and
            lists what is supported.
    """
    if not isinstance(env_name, str) or not env_name.strip():
        raise _unsupported(str(env_name), "empty dataset name")
    name = env_name.strip()
    lowered = name.lower()

    if lowered.startswith("visual-"):
        raise _unsupported(
            name,
            "pixel-observation (visual-*) datasets are not generated here; use the state-based dataset "
            "of the same task",
        )
    if lowered.startswith(("antmaze", "humanoidmaze", "antsoccer")) or lowered.startswith(("ant-", "humanoid-")):
        raise _unsupported(
            name,
            "ant, humanoid and antsoccer datasets are collected by trained expert policies (SAC "
            "checkpoints) whose weights are not available offline here",
        )
    if lowered.startswith("powderworld"):
        raise _unsupported(name, "powderworld datasets are not supported by this generator")

    dataset_name = _strip_variant(name)
    parts = dataset_name.split("-")
    if len(parts) < 3 or not re.fullmatch(r"v\d+", parts[-1]):
        raise _unsupported(name, "not an OGBench dataset name of the form '<env>-<type>-vK'")
    version, dataset_type, env_parts = parts[-1], parts[-2], parts[:-2]
    if version != "v0":
        raise _unsupported(name, f"only version v0 exists in ogbench, got {version!r}")
    base = "-".join(env_parts)
    env_id = f"{base}-{version}"
    family = env_parts[0]

    if family == "cube":
        if len(env_parts) != 2 or env_parts[1] not in _CUBE_SIZES:
            raise _unsupported(name, f"unknown cube environment {base!r}")
    elif family == "scene":
        if len(env_parts) != 1:
            raise _unsupported(name, f"unknown scene environment {base!r}")
    elif family == "puzzle":
        if len(env_parts) != 2 or env_parts[1] not in _PUZZLE_SIZES:
            raise _unsupported(name, f"unknown puzzle environment {base!r}")
    elif family == "pointmaze":
        if len(env_parts) != 2 or env_parts[1] not in _MAZE_SIZES:
            raise _unsupported(name, f"unknown pointmaze environment {base!r}")
    else:
        raise _unsupported(name, f"unknown environment family {family!r}")

    if family == "pointmaze":
        if dataset_type not in MAZE_TYPES:
            raise _unsupported(
                name, f"pointmaze datasets are of type {'/'.join(MAZE_TYPES)}, got {dataset_type!r}"
            )
        if dataset_type == "navigate":
            giant = env_parts[1] == "giant"
            steps, episodes = (2001, 500) if giant else (1001, 1000)
        else:  # stitch: short episodes towards a goal 4 cells away
            steps, episodes = 201, 5000
        return DatasetSpec(
            dataset_name=dataset_name,
            env_id=env_id,
            family=family,
            dataset_type=dataset_type,
            max_episode_steps=steps,
            official_num_episodes=episodes,
            noise=0.5,
            noise_smoothing=0.0,
            min_norm=0.0,
            p_random_action=0.0,
        )

    if dataset_type not in MANIPULATION_TYPES:
        raise _unsupported(
            name, f"manipulation datasets are of type {'/'.join(MANIPULATION_TYPES)}, got {dataset_type!r}"
        )
    noisy = dataset_type == "noisy"
    if noisy:
        p_random = 0.2 if family == "puzzle" else 0.1
    else:
        p_random = 0.0
    return DatasetSpec(
        dataset_name=dataset_name,
        env_id=env_id,
        family=family,
        dataset_type=dataset_type,
        max_episode_steps=1001,
        official_num_episodes=_OFFICIAL_EPISODES.get(base),
        noise=0.1,
        noise_smoothing=0.5,
        min_norm=0.4,
        p_random_action=p_random,
    )


# --------------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _EpisodeSeeds:
    env_seed: int  # for env.reset(seed=...)
    global_seed: np.ndarray  # uint32 words for np.random.seed (oracles, maze goal noise)
    space_seed: int  # for action spaces that keep their own RNG (pointmaze reset stabilisation)
    rng: np.random.Generator  # private generator of the driver


def _episode_seeds(seed: int, split: int, index: int, attempt: int) -> _EpisodeSeeds:
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(split, index, attempt))
    env_ss, global_ss, space_ss, rng_ss = ss.spawn(4)
    return _EpisodeSeeds(
        env_seed=int(env_ss.generate_state(1, np.uint64)[0] >> np.uint64(1)),
        global_seed=global_ss.generate_state(4, np.uint32),
        space_seed=int(space_ss.generate_state(1, np.uint32)[0]),
        rng=np.random.default_rng(rng_ss),
    )


# --------------------------------------------------------------------------------------------------
# Environments and oracles (built lazily, cached per process)
# --------------------------------------------------------------------------------------------------

_ENV_CACHE: dict[tuple[str, int], Any] = {}


def _get_env(spec: DatasetSpec, max_episode_steps: int):
    key = (spec.env_id, max_episode_steps)
    env = _ENV_CACHE.get(key)
    if env is None:
        import gymnasium

        silence_harmless_warnings()  # again: in case the filters were reset since the import
        if spec.family == "pointmaze":
            import ogbench.locomaze  # noqa: F401  (registers the maze environments)

            env = gymnasium.make(
                spec.env_id,
                terminate_at_goal=False,
                max_episode_steps=max_episode_steps,
                disable_env_checker=True,
            )
        else:
            import ogbench.manipspace  # noqa: F401  (registers the manipulation environments)

            env = gymnasium.make(
                spec.env_id,
                terminate_at_goal=False,
                mode="data_collection",
                max_episode_steps=max_episode_steps,
                disable_env_checker=True,
            )
        _ENV_CACHE[key] = env
    return env


def _close_cached_envs() -> None:
    while _ENV_CACHE:
        _, env = _ENV_CACHE.popitem()
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. GLFW complaining about a missing display
            env.close()


def _make_oracles(env, spec: DatasetSpec) -> dict[str, Any]:
    """Fresh oracles for one episode, keyed by the env's ``privileged/target_task``."""
    if spec.dataset_type == "noisy":
        from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
        from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
        from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
        from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle

        kw = dict(env=env, min_norm=spec.min_norm)
        if spec.family == "cube":
            return {"cube": CubeMarkovOracle(**kw)}
        if spec.family == "puzzle":
            return {"button": ButtonMarkovOracle(gripper_always_closed=True, **kw)}
        return {
            "cube": CubeMarkovOracle(max_step=100, **kw),
            "button": ButtonMarkovOracle(**kw),
            "drawer": DrawerMarkovOracle(**kw),
            "window": WindowMarkovOracle(**kw),
        }

    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    kw = dict(env=env, noise=spec.noise, noise_smoothing=spec.noise_smoothing)
    if spec.family == "cube":
        return {"cube": CubePlanOracle(**kw)}
    if spec.family == "puzzle":
        return {"button": ButtonPlanOracle(gripper_always_closed=True, **kw)}
    return {
        "cube": CubePlanOracle(**kw),
        "button": ButtonPlanOracle(**kw),
        "drawer": DrawerPlanOracle(**kw),
        "window": WindowPlanOracle(**kw),
    }


def _sample_p_stack(env_id: str, rng: np.random.Generator) -> float:
    """Per-episode probability of stacking the target cube (as in the official driver)."""
    if "single" in env_id:
        return 0.0
    if "double" in env_id:
        return float(rng.uniform(0.0, 0.25))
    if "triple" in env_id:
        return float(rng.uniform(0.05, 0.35))
    if "quadruple" in env_id:
        return float(rng.uniform(0.1, 0.5))
    return 0.5


def _scene_is_healthy(qpos: np.ndarray) -> bool:
    """The scene cube must stay visible unless it is in the drawer (official health check)."""
    block_xyz = qpos[:, 14:17]
    if (block_xyz[:, 1] >= 0.29).any():  # too far right
        return False
    too_far_left = block_xyz[:, 1] <= -0.3
    not_in_drawer = (block_xyz[:, 2] < 0.06) | (block_xyz[:, 2] > 0.08)
    return not (too_far_left & not_in_drawer).any()


# --------------------------------------------------------------------------------------------------
# Episodes
# --------------------------------------------------------------------------------------------------


class _Recorder:
    def __init__(self, with_buttons: bool):
        self.with_buttons = with_buttons
        self.observations: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.terminals: list[bool] = []
        self.qpos: list[np.ndarray] = []
        self.qvel: list[np.ndarray] = []
        self.button_states: list[np.ndarray] = []

    def add(self, ob, action, done, info) -> None:
        self.observations.append(np.asarray(ob, dtype=np.float32))
        self.actions.append(action)
        self.terminals.append(bool(done))
        self.qpos.append(np.asarray(info["prev_qpos"], dtype=np.float32))
        self.qvel.append(np.asarray(info["prev_qvel"], dtype=np.float32))
        if self.with_buttons:
            self.button_states.append(np.asarray(info["prev_button_states"], dtype=np.int64))

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "observations": np.stack(self.observations).astype(np.float32, copy=False),
            "actions": np.stack(self.actions).astype(np.float32, copy=False),
            "terminals": np.asarray(self.terminals, dtype=bool),
            "qpos": np.stack(self.qpos).astype(np.float32, copy=False),
            "qvel": np.stack(self.qvel).astype(np.float32, copy=False),
        }
        if self.with_buttons:
            out["button_states"] = np.stack(self.button_states).astype(np.int64, copy=False)
        return out


def _manip_episode(env, spec: DatasetSpec, seeds: _EpisodeSeeds) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = seeds.rng
    np.random.seed(seeds.global_seed)  # the oracles draw their plans/targets from np.random
    ob, info = env.reset(seed=seeds.env_seed)
    uw = env.unwrapped

    p_stack = _sample_p_stack(spec.env_id, rng)
    markov = spec.dataset_type == "noisy"
    if markov:
        xi = float(rng.uniform(0.0, spec.noise))  # per-episode action-noise scale
        noise_scale = np.array([xi, xi, xi, 3.0 * xi, 10.0 * xi])
    action_dim = 5

    oracles = _make_oracles(env, spec)
    agent = oracles[info["privileged/target_task"]]
    agent.reset(ob, info)

    rec = _Recorder(spec.has_button_states)
    done = False
    while not done:
        if rng.random() < spec.p_random_action:
            # Uniform random action (drawn with our generator: ManipSpaceEnv.action_space is a new,
            # unseeded Box on every access).
            action = rng.uniform(-1.0, 1.0, size=action_dim)
        else:
            action = np.asarray(agent.select_action(ob, info), dtype=np.float64)
            if markov:
                action = action + rng.normal(0.0, noise_scale)
        # Store exactly what is applied.
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        next_ob, _, terminated, truncated, info = env.step(action)
        done = bool(terminated or truncated)

        if agent.done:
            # Re-target when the current sub-task is finished.
            agent_ob, agent_info = uw.set_new_target(p_stack=p_stack)
            agent = oracles[agent_info["privileged/target_task"]]
            agent.reset(agent_ob, agent_info)

        rec.add(ob, action, done, info)
        ob = next_ob

    arrays = rec.arrays()
    return arrays, arrays["qpos"]


class _MazeCells:
    """Free cells and 'vertex' cells (free cells that are not straight hallway segments)."""

    def __init__(self, maze_map: np.ndarray):
        self.maze_map = np.asarray(maze_map)
        self.all_cells: list[tuple[int, int]] = []
        self.vertex_cells: list[tuple[int, int]] = []
        m = self.maze_map
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if m[i, j] != 0:
                    continue
                self.all_cells.append((i, j))
                vertical_hall = m[i - 1, j] == 0 and m[i + 1, j] == 0 and m[i, j - 1] == 1 and m[i, j + 1] == 1
                horizontal_hall = m[i, j - 1] == 0 and m[i, j + 1] == 0 and m[i - 1, j] == 1 and m[i + 1, j] == 1
                if not (vertical_hall or horizontal_hall):
                    self.vertex_cells.append((i, j))

    def cells_at_distance(self, start: tuple[int, int], dist: int) -> list[tuple[int, int]]:
        """Free cells exactly ``dist`` BFS steps from ``start`` (in BFS discovery order)."""
        m = self.maze_map
        depth = np.full(m.shape, -1, dtype=np.int64)
        depth[start] = 0
        queue = [start]
        found = []
        head = 0
        while head < len(queue):
            i, j = queue[head]
            head += 1
            for di, dj in ((-1, 0), (0, -1), (1, 0), (0, 1)):
                ni, nj = i + di, j + dj
                if 0 <= ni < m.shape[0] and 0 <= nj < m.shape[1] and m[ni, nj] == 0 and depth[ni, nj] == -1:
                    depth[ni, nj] = depth[i, j] + 1
                    queue.append((ni, nj))
                    if depth[ni, nj] == dist:
                        found.append((ni, nj))
        return found


_MAZE_CELLS_CACHE: dict[str, _MazeCells] = {}


def _maze_episode(env, spec: DatasetSpec, seeds: _EpisodeSeeds) -> dict[str, np.ndarray]:
    rng = seeds.rng
    np.random.seed(seeds.global_seed)  # start/goal position noise and teleports use np.random
    uw = env.unwrapped
    uw.action_space.seed(seeds.space_seed)  # random stabilisation steps inside reset()
    cells = _MAZE_CELLS_CACHE.get(spec.env_id)
    if cells is None:
        cells = _MAZE_CELLS_CACHE.setdefault(spec.env_id, _MazeCells(uw.maze_map))

    init_ij = cells.all_cells[int(rng.integers(len(cells.all_cells)))]
    if spec.dataset_type == "navigate":
        goal_ij = cells.vertex_cells[int(rng.integers(len(cells.vertex_cells)))]
    else:  # stitch: a goal 4 cells away
        near = cells.cells_at_distance(init_ij, 4)
        goal_ij = near[int(rng.integers(len(near)))] if near else init_ij

    ob, _ = env.reset(seed=seeds.env_seed, options=dict(task_info=dict(init_ij=init_ij, goal_ij=goal_ij)))

    rec = _Recorder(with_buttons=False)
    done = False
    while not done:
        xy = uw.get_xy()
        subgoal_xy, _ = uw.get_oracle_subgoal(xy, uw.cur_goal_xy)
        direction = np.asarray(subgoal_xy, dtype=np.float64) - xy
        direction = direction / (np.linalg.norm(direction) + 1e-6)
        action = direction + rng.normal(0.0, spec.noise, size=direction.shape)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        next_ob, _, terminated, truncated, info = env.step(action)
        done = bool(terminated or truncated)

        if info["success"] and spec.dataset_type == "navigate":
            # Goal reached: keep going towards a fresh random goal.
            new_goal = cells.vertex_cells[int(rng.integers(len(cells.vertex_cells)))]
            uw.set_goal(new_goal)

        rec.add(ob, action, done, info)
        ob = next_ob
    return rec.arrays()


def generate_episode(
    env_name: str | DatasetSpec,
    index: int,
    *,
    seed: int = 0,
    split: str = "train",
    max_episode_steps: int | None = None,
) -> dict[str, np.ndarray]:
    """Generate one episode (in this process); the building block of :func:`generate_dataset`.

    The result depends only on ``(dataset, seed, split, index, max_episode_steps)``.
    """
    spec = env_name if isinstance(env_name, DatasetSpec) else resolve_dataset(env_name)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    steps = spec.max_episode_steps if max_episode_steps is None else int(max_episode_steps)
    split_id = _SPLIT_TRAIN if split == "train" else _SPLIT_VAL
    return _episode_task((spec, seed, split_id, int(index), steps))


def _episode_task(task: tuple[DatasetSpec, int, int, int, int]) -> dict[str, np.ndarray]:
    spec, seed, split, index, steps = task
    env = _get_env(spec, steps)
    # Episodes reseed numpy's global RNG (the oracles use it); leave the caller's state as it was.
    saved_state = np.random.get_state()
    try:
        if spec.family == "pointmaze":
            return _maze_episode(env, spec, _episode_seeds(seed, split, index, 0))
        for attempt in range(_MAX_SCENE_ATTEMPTS):
            arrays, qpos = _manip_episode(env, spec, _episode_seeds(seed, split, index, attempt))
            if spec.family != "scene" or _scene_is_healthy(qpos):
                return arrays
    finally:
        np.random.set_state(saved_state)
    raise RuntimeError(
        f"{spec.dataset_name}: episode {index} failed the scene health check {_MAX_SCENE_ATTEMPTS} times"
    )


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def _worker_init() -> None:
    # Ctrl-C is handled by the parent, which terminates the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _single_threaded_child_env() -> Iterator[None]:
    """Put 1-thread BLAS/OpenMP settings in os.environ while worker processes are alive.

    Spawned children copy os.environ when they start, before they import numpy.
    """
    saved = {k: os.environ.get(k) for k in _THREAD_ENV_VARS}
    os.environ.update({k: "1" for k in _THREAD_ENV_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_save_dir(save_dir: str | os.PathLike) -> Path:
    path = Path(save_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"save_dir {str(path)!r} cannot be created: {exc}") from exc
    if not path.is_dir():
        raise ValueError(f"save_dir {str(path)!r} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".mac-write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"save_dir {str(path)!r} is not writable: {exc}") from exc
    return path


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` with np.savez_compressed to a temp file next to ``path``; return the temp path."""
    # Like tempfile.mkstemp, but with the usual umask-governed permissions of a new file.
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover
        raise FileExistsError(f"could not create a temporary file next to {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _concat(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate episodes key by key, releasing each key's per-episode arrays as it goes."""
    out = {}
    for k in list(episodes[0]):
        out[k] = np.concatenate([ep.pop(k) for ep in episodes], axis=0)
    return out


def _validate_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def generate_dataset(
    env_name: str,
    num_episodes: int,
    save_dir: str,
    *,
    workers: int = 1,
    seed: int = 0,
    max_episode_steps: int | None = None,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Generate an OGBench-format dataset and its validation split.

    Args:
        env_name: Dataset name, e.g. ``'cube-single-play-v0'`` (single-task / oraclerep names are mapped
            to their dataset, e.g. ``'cube-single-play-singletask-task2-v0'`` -> ``'cube-single-play-v0'``).
        num_episodes: Number of training episodes (the validation file gets ``max(1, num_episodes // 10)``
            more).
        save_dir: Output directory (created if missing).
        workers: Number of worker processes (the output does not depend on it).
        seed: Base seed (non-negative).
        max_episode_steps: Rows per episode; defaults to the official value (1001 for manipulation and
            pointmaze navigate, 2001 for pointmaze-giant navigate, 201 for stitch).
        progress: Show a tqdm progress bar over environment steps.

    Returns:
        ``(train_path, val_path)``: ``<save_dir>/<dataset>.npz`` and ``<save_dir>/<dataset>-val.npz``.
        Pass them as ``str`` to ``ogbench.make_env_and_datasets(name, dataset_path=str(train_path))``.
    """
    spec = resolve_dataset(env_name)
    num_episodes = _validate_int("num_episodes", num_episodes, 1)
    workers = _validate_int("workers", workers, 1)
    seed = _validate_int("seed", seed, 0)
    steps = spec.max_episode_steps if max_episode_steps is None else _validate_int(
        "max_episode_steps", max_episode_steps, 2
    )
    out_dir = _check_save_dir(save_dir)
    train_path = out_dir / f"{spec.dataset_name}.npz"
    val_path = out_dir / f"{spec.dataset_name}-val.npz"

    num_val = max(1, num_episodes // 10)
    tasks = [(spec, seed, _SPLIT_TRAIN, i, steps) for i in range(num_episodes)]
    tasks += [(spec, seed, _SPLIT_VAL, i, steps) for i in range(num_val)]
    workers = min(workers, len(tasks))

    from tqdm import tqdm

    bar = tqdm(
        total=len(tasks) * steps,
        unit="step",
        unit_scale=True,
        desc=f"{spec.dataset_name} ({workers} worker{'s' if workers > 1 else ''})",
        disable=not show_progress(progress),
        dynamic_ncols=True,
        smoothing=0.05,
    )
    episodes: list[dict[str, np.ndarray]] = []
    t0 = time.perf_counter()
    try:
        if workers == 1:
            # Workers run with one BLAS thread; so must this process, or a multithreaded BLAS
            # rounds the oracles' matrix products differently (seen with numpy 1.24's OpenBLAS).
            from threadpoolctl import threadpool_limits
            try:
                with threadpool_limits(1):
                    for task in tasks:
                        ep = _episode_task(task)
                        episodes.append(ep)
                        bar.update(len(ep["terminals"]))
            finally:
                _close_cached_envs()
        else:
            ctx = mp.get_context("spawn")
            with _single_threaded_child_env():
                pool = ctx.Pool(processes=workers, initializer=_worker_init)
                try:
                    for ep in pool.imap(_episode_task, tasks, chunksize=1):
                        episodes.append(ep)
                        bar.update(len(ep["terminals"]))
                    pool.close()
                except BaseException:
                    pool.terminate()
                    raise
                finally:
                    pool.join()
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0

    train = _concat(episodes[:num_episodes])
    val = _concat(episodes[num_episodes:])
    del episodes

    tmp_train = tmp_val = None
    try:
        tmp_train = _atomic_savez(train_path, train)
        tmp_val = _atomic_savez(val_path, val)
        os.replace(tmp_val, val_path)
        tmp_val = None
        os.replace(tmp_train, train_path)
        tmp_train = None
    finally:
        for tmp in (tmp_train, tmp_val):
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    if progress:
        n = len(train["terminals"]) + len(val["terminals"])
        print(
            f"{spec.dataset_name}: {num_episodes}+{num_val} episodes, {n} steps in {elapsed:.1f} s "
            f"({n / max(elapsed, 1e-9):.0f} steps/s) -> {train_path}, {val_path}",
            file=sys.stderr,
        )
    return train_path, val_path


# --------------------------------------------------------------------------------------------------
# CLI (wired as `mac data generate` by mac.cli)
# --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``mac data generate``."""
    parser.add_argument(
        "--env_name",
        required=True,
        help="dataset name, e.g. cube-single-play-v0, puzzle-4x4-noisy-v0, pointmaze-medium-navigate-v0 "
        "(single-task/oraclerep names map to their dataset)",
    )
    parser.add_argument(
        "--num_episodes",
        type=int,
        default=None,
        help="training episodes (validation gets num_episodes//10 more, at least 1); "
        "default: the official count (e.g. 1000 for cube-single)",
    )
    parser.add_argument("--save_dir", required=True, help="output directory (created if missing)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (output is independent of it)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (non-negative)")
    parser.add_argument(
        "--max_episode_steps",
        type=int,
        default=None,
        help="rows per episode (default: official, 1001 for manipulation and pointmaze navigate)",
    )
    parser.add_argument("--no_progress", action="store_true", help="disable the progress bar")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``mac data generate``; returns the process exit code."""
    try:
        validate_env_name(args.env_name)  # a misspelt name: the closest valid names, before any work
        num_episodes = args.num_episodes
        if num_episodes is None:
            spec = resolve_dataset(args.env_name)
            if spec.official_num_episodes is None:
                raise ValueError(f"{spec.dataset_name} has no official size; pass --num_episodes")
            num_episodes = spec.official_num_episodes
        train_path, val_path = generate_dataset(
            args.env_name,
            num_episodes,
            args.save_dir,
            workers=args.workers,
            seed=args.seed,
            max_episode_steps=args.max_episode_steps,
            progress=not getattr(args, "no_progress", False),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no dataset file was written", file=sys.stderr)
        return 130
    print(train_path)
    print(val_path)
    return 0
