import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)


def make_episodes(lengths, obs_dim=3, action_dim=2, seed=0, goal_dim=None):
    """Synthetic official-layout arrays: episode e has lengths[e] rows, the last one terminal.
    observations[i, 0] = i (row id) so tests can see which rows were taken."""
    rng = np.random.default_rng(seed)
    n = int(sum(lengths))
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    obs[:, 0] = np.arange(n)
    actions = rng.uniform(-1, 1, size=(n, action_dim)).astype(np.float32)
    terminals = np.zeros(n, bool)
    terminals[np.cumsum(lengths) - 1] = True
    return {"observations": obs, "actions": actions, "terminals": terminals}


@pytest.fixture(scope="session")
def tiny_cube_dir(tmp_path_factory):
    """A tiny locally generated cube-single-play dataset (official file format)."""
    from mac.data.generate import generate_dataset

    d = tmp_path_factory.mktemp("cube")
    generate_dataset("cube-single-play-v0", 4, str(d), workers=1, seed=0, max_episode_steps=60,
                     progress=False)
    return d
