"""OGBench naming: which environment and which dataset files an ``--env_name`` refers to.

Mirrors ``ogbench.make_env_and_datasets``: ``cube-single-play-singletask-task2-v0`` is the env
``cube-single-singletask-task2-v0`` on the dataset ``cube-single-play-v0``;
``cube-double-play-oraclerep-v0`` is ``cube-double-v0`` (oracle goal representation) on
``cube-double-play-v0``; ``cube-single-play-v0`` is the goal-conditioned ``cube-single-v0``.

:func:`validate_env_name` is what the commands call first (``mac train``, ``mac data generate``,
``mac data download``, ``mac eval``): the name must parse and name an environment that ogbench
registers, and a misspelt name gets the closest valid names suggested.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass

_VERSION = re.compile(r"^v\d+$")

# OGBench dataset types per family (the datasets mac.data.generate can make).
MANIPULATION_TYPES = ("play", "noisy")   # cube, scene, puzzle
MAZE_TYPES = ("navigate", "stitch")      # pointmaze


@dataclass(frozen=True)
class EnvSpec:
    name: str           # as given, e.g. cube-single-play-singletask-task2-v0
    env_id: str         # gymnasium id, e.g. cube-single-singletask-task2-v0
    dataset_name: str   # file stem, e.g. cube-single-play-v0
    kind: str           # "singletask" (reward-based), "oraclerep" or "goal"
    task_id: int | None  # singletask task number (None = the env's default task)

    @property
    def goal_conditioned(self) -> bool:
        return self.kind != "singletask"

    @property
    def family(self) -> str:
        return self.dataset_name.split("-")[0]


def parse_env_name(name: str) -> EnvSpec:
    if not isinstance(name, str) or not name:
        raise ValueError(f"env_name must be a non-empty string, got {name!r}")
    splits = name.split("-")
    if len(splits) < 3 or not _VERSION.match(splits[-1]):
        raise ValueError(f"env_name {name!r} is not an OGBench dataset name like "
                         "'cube-single-play-v0', 'cube-single-play-singletask-task2-v0' or "
                         "'puzzle-3x3-play-oraclerep-v0'")
    if "singletask" in splits:
        pos = splits.index("singletask")
        if pos < 2:
            raise ValueError(f"env_name {name!r}: expected <env>-<dataset type>-singletask-...")
        env_id = "-".join(splits[: pos - 1] + splits[pos:])
        dataset_name = "-".join(splits[:pos] + splits[-1:])
        task = None
        m = re.search(r"-task(\d+)-", name)
        if m:
            task = int(m.group(1))
        return EnvSpec(name, env_id, dataset_name, "singletask", task)
    if "oraclerep" in splits:
        if splits[-2] != "oraclerep" or len(splits) < 4:
            raise ValueError(f"env_name {name!r}: expected <env>-<dataset type>-oraclerep-v<k>")
        return EnvSpec(name, "-".join(splits[:-3] + splits[-1:]), "-".join(splits[:-2] + splits[-1:]),
                       "oraclerep", None)
    return EnvSpec(name, "-".join(splits[:-2] + splits[-1:]), name, "goal", None)


# ------------------------------------------------------------------------------ validation

class UnknownEnvError(ValueError):
    """``--env_name`` is not an OGBench name; the message suggests the closest valid ones."""


def ogbench_env_ids() -> frozenset[str]:
    """The gymnasium ids that ogbench registers (importing ogbench registers them; no env is made)."""
    import gymnasium
    import ogbench  # noqa: F401

    ids = set()
    for env_id, env_spec in gymnasium.envs.registry.items():
        entry = env_spec.entry_point
        module = entry if isinstance(entry, str) else getattr(entry, "__module__", "") or ""
        if module.startswith("ogbench."):
            ids.add(env_id)
    return frozenset(ids)


def _split_env_id(env_id: str) -> tuple[list[str], list[str], str]:
    """``cube-single-singletask-task2-v0`` -> (['cube', 'single'], ['singletask', 'task2'], 'v0')."""
    parts = env_id.split("-")
    if "singletask" in parts:
        pos = parts.index("singletask")
        return parts[:pos], parts[pos:-1], parts[-1]
    return parts[:-1], [], parts[-1]


def dataset_types(env: str) -> tuple[str, ...] | None:
    """The OGBench dataset types of an environment (``'cube-single'``, ``'visual-puzzle-3x3'``,
    ``'pointmaze-medium'``, ...), or None for the families this package does not know."""
    family = env.removeprefix("visual-").split("-")[0]
    if family in ("cube", "scene", "puzzle"):
        return MANIPULATION_TYPES
    if family == "pointmaze":
        return MAZE_TYPES
    return None


@functools.lru_cache(maxsize=1)
def valid_env_names() -> tuple[str, ...]:
    """Every ``--env_name`` whose dataset types this package knows (:func:`dataset_types`), built from
    ogbench's registered env ids: ``<env>-<type>-v0``, ``<env>-<type>-oraclerep-v0`` and
    ``<env>-<type>-singletask[-taskN]-v0``; each maps back to its env id with :func:`parse_env_name`."""
    names = set()
    for env_id in ogbench_env_ids():
        env, variant, version = _split_env_id(env_id)
        types = dataset_types("-".join(env))
        for t in types or ():
            forms = ["-".join(env + [t] + variant + [version])]
            if not variant and env[0] != "visual":
                forms.append("-".join(env + [t, "oraclerep", version]))
            for name in forms:
                try:
                    if parse_env_name(name).env_id == env_id:
                        names.add(name)
                except ValueError:
                    pass
    return tuple(sorted(names))


def _suggest(name: str, examples: bool = True) -> str:
    close = difflib.get_close_matches(str(name), valid_env_names(), n=3, cutoff=0.6)
    if close:
        return "; did you mean " + " or ".join(close) + "?"
    if not examples:
        return ""
    return ("; valid names look like cube-single-play-v0 (goal-conditioned), "
            "cube-single-play-singletask-task2-v0 (reward task) or puzzle-3x3-play-oraclerep-v0")


def validate_env_name(name: str) -> EnvSpec:
    """:func:`parse_env_name`, plus: the gymnasium id must be registered by ogbench and, for the
    families whose dataset types are known (cube, scene, puzzle, pointmaze), the dataset type must
    be one of them. Cheap (no environment or file is made).

    Raises:
        UnknownEnvError (a ValueError) naming the problem and the closest valid names.
    """
    try:
        spec = parse_env_name(name)
    except ValueError as exc:
        raise UnknownEnvError(f"{exc}{_suggest(name, examples=False)}") from None
    if spec.env_id not in ogbench_env_ids():
        raise UnknownEnvError(f"unknown OGBench environment {name!r}: ogbench registers no environment "
                              f"{spec.env_id!r}{_suggest(name)}")
    parts = spec.dataset_name.split("-")
    env, dataset_type = "-".join(parts[:-2]), parts[-2]
    types = dataset_types(env)
    if types is not None and dataset_type not in types:
        source = "" if spec.dataset_name == name else f" (from {name!r})"
        raise UnknownEnvError(f"unknown OGBench dataset {spec.dataset_name!r}{source}: {env} datasets "
                              f"are of type {' or '.join(types)}{_suggest(name)}")
    return spec
