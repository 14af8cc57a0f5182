"""OGBench naming: which environment and which dataset files an ``--env_name`` refers to.

Mirrors ``ogbench.make_env_and_datasets``: ``cube-single-play-singletask-task2-v0`` is the env
``cube-single-singletask-task2-v0`` on the dataset ``cube-single-play-v0``;
``cube-double-play-oraclerep-v0`` is ``cube-double-v0`` (oracle goal representation) on
``cube-double-play-v0``; ``cube-single-play-v0`` is the goal-conditioned ``cube-single-v0``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_VERSION = re.compile(r"^v\d+$")


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
