"""Tests of the local OGBench dataset generator (mac.data.generate).

Tiny episodes (30-50 steps, 2-3 episodes) keep the whole file well under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pytest

ogbench = pytest.importorskip("ogbench")

# ogbench's environments warn about float64 Box bounds; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*precision lowered by casting:UserWarning")

from mac.data import generate as gen  # noqa: E402
from mac.data.generate import generate_dataset, resolve_dataset  # noqa: E402

# name -> (episodes, steps, observation dim, nq, nv, number of buttons or None, action dim)
CASES = {
    "cube-single-play-v0": (3, 40, 28, None, None, None, 5),
    "puzzle-3x3-play-v0": (2, 30, 55, None, None, 9, 5),
    "puzzle-4x4-noisy-v0": (2, 30, None, None, None, 16, 5),
    "scene-play-v0": (2, 30, 40, None, None, 2, 5),
    "pointmaze-medium-navigate-v0": (3, 50, 2, 2, 2, None, 2),
}


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    out = {}
    for name, (n, steps, *_rest) in CASES.items():
        d = tmp_path_factory.mktemp(name)
        out[name] = generate_dataset(name, n, str(d), seed=0, max_episode_steps=steps, progress=False)
    return out


# ------------------------------------------------------------------------------------------------
# Names
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, dataset, env_id, dtype",
    [
        ("cube-single-play-v0", "cube-single-play-v0", "cube-single-v0", "play"),
        ("cube-single-play-singletask-task2-v0", "cube-single-play-v0", "cube-single-v0", "play"),
        ("cube-double-noisy-singletask-v0", "cube-double-noisy-v0", "cube-double-v0", "noisy"),
        ("cube-single-play-oraclerep-v0", "cube-single-play-v0", "cube-single-v0", "play"),
        ("scene-play-v0", "scene-play-v0", "scene-v0", "play"),
        ("puzzle-4x4-noisy-v0", "puzzle-4x4-noisy-v0", "puzzle-4x4-v0", "noisy"),
        ("pointmaze-medium-navigate-v0", "pointmaze-medium-navigate-v0", "pointmaze-medium-v0", "navigate"),
        ("pointmaze-large-navigate-singletask-task1-v0", "pointmaze-large-navigate-v0", "pointmaze-large-v0",
         "navigate"),
    ],
)
def test_resolve_names(name, dataset, env_id, dtype):
    spec = resolve_dataset(name)
    assert (spec.dataset_name, spec.env_id, spec.dataset_type) == (dataset, env_id, dtype)


def test_resolve_parameters_match_official():
    play = resolve_dataset("cube-single-play-v0")
    assert (play.noise, play.noise_smoothing, play.p_random_action, play.max_episode_steps) == (0.1, 0.5, 0.0, 1001)
    noisy = resolve_dataset("scene-noisy-v0")
    assert (noisy.min_norm, noisy.noise, noisy.p_random_action) == (0.4, 0.1, 0.1)
    assert resolve_dataset("puzzle-3x3-noisy-v0").p_random_action == 0.2
    maze = resolve_dataset("pointmaze-medium-navigate-v0")
    assert (maze.noise, maze.max_episode_steps) == (0.5, 1001)
    assert resolve_dataset("pointmaze-giant-navigate-v0").max_episode_steps == 2001
    assert resolve_dataset("cube-triple-play-v0").official_num_episodes == 3000
    assert all(resolve_dataset(n).dataset_name == n for n in gen.SUPPORTED_DATASETS)


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("antmaze-large-navigate-v0", "expert"),
        ("humanoidmaze-medium-navigate-v0", "expert"),
        ("antsoccer-arena-navigate-v0", "expert"),
        ("visual-cube-single-play-v0", "visual"),
        ("cube-single-navigate-v0", "play/noisy"),
        ("pointmaze-medium-play-v0", "navigate"),
        ("cube-sextuple-play-v0", "unknown cube"),
        ("walker-run-v0", "unknown environment"),
        ("cube-single-play-v1", "v0"),
        ("nonsense", "dataset name"),
    ],
)
def test_unsupported_names_raise_helpful_error(name, fragment):
    with pytest.raises(ValueError) as exc:
        resolve_dataset(name)
    msg = str(exc.value)
    assert name in msg and fragment in msg
    assert "supported datasets" in msg and "cube-" in msg and "pointmaze-" in msg


def test_generate_dataset_rejects_unsupported_before_work(tmp_path):
    with pytest.raises(ValueError, match="expert"):
        generate_dataset("antmaze-medium-navigate-v0", 2, str(tmp_path), progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_episodes=0), "num_episodes"),
        (dict(num_episodes=2.5), "num_episodes"),
        (dict(workers=0), "workers"),
        (dict(seed=-1), "seed"),
        (dict(max_episode_steps=1), "max_episode_steps"),
    ],
)
def test_argument_validation(tmp_path, kwargs, match):
    args = dict(num_episodes=2, workers=1, seed=0, max_episode_steps=10)
    args.update(kwargs)
    n = args.pop("num_episodes")
    with pytest.raises(ValueError, match=match):
        generate_dataset("pointmaze-medium-navigate-v0", n, str(tmp_path), progress=False, **args)


def test_save_dir_must_be_a_writable_directory(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ValueError, match="save_dir"):
        generate_dataset("pointmaze-medium-navigate-v0", 1, str(not_a_dir / "sub"), progress=False)
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(ValueError, match="not writable"):
                generate_dataset("pointmaze-medium-navigate-v0", 1, str(ro), progress=False)
        finally:
            ro.chmod(0o700)


# ------------------------------------------------------------------------------------------------
# File format
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_file_format(generated, name):
    n, steps, ob_dim, nq, nv, n_buttons, action_dim = CASES[name]
    train_path, val_path = generated[name]
    assert train_path.name == f"{name}.npz" and val_path.name == f"{name}-val.npz"
    assert train_path.parent == val_path.parent
    # No temporary files left behind.
    assert sorted(p.name for p in train_path.parent.iterdir()) == sorted([train_path.name, val_path.name])

    for path, episodes in [(train_path, n), (val_path, max(1, n // 10))]:
        data = _load(path)
        keys = {"observations", "actions", "terminals", "qpos", "qvel"}
        if n_buttons is not None:
            keys.add("button_states")
        assert set(data) == keys
        rows = episodes * steps
        assert data["observations"].dtype == np.float32 and data["observations"].shape[0] == rows
        if ob_dim is not None:
            assert data["observations"].shape == (rows, ob_dim)
        assert data["actions"].dtype == np.float32 and data["actions"].shape == (rows, action_dim)
        assert data["terminals"].dtype == np.bool_ and data["terminals"].shape == (rows,)
        for k, dim in (("qpos", nq), ("qvel", nv)):
            assert data[k].dtype == np.float32 and data[k].ndim == 2 and data[k].shape[0] == rows
            if dim is not None:
                assert data[k].shape[1] == dim
        if n_buttons is not None:
            assert data["button_states"].dtype == np.int64
            assert data["button_states"].shape == (rows, n_buttons)
            assert set(np.unique(data["button_states"])) <= {0, 1}

        expected_terminals = np.zeros(rows, dtype=bool)
        expected_terminals[steps - 1 :: steps] = True
        np.testing.assert_array_equal(data["terminals"], expected_terminals)

        assert np.isfinite(data["observations"]).all() and np.isfinite(data["actions"]).all()
        assert data["actions"].min() >= -1.0 and data["actions"].max() <= 1.0
        assert np.abs(data["actions"]).max() > 0.05  # the oracle actually acts


@pytest.mark.parametrize("name", list(CASES))
def test_observations_progress_and_match_qpos(generated, name):
    _, steps, *_ = CASES[name]
    data = _load(generated[name][0])
    obs, qpos = data["observations"], data["qpos"]
    for start in range(0, len(obs), steps):
        ep_obs, ep_qpos = obs[start : start + steps], qpos[start : start + steps]
        # The state moves: most consecutive rows differ.
        assert np.mean(np.any(ep_obs[1:] != ep_obs[:-1], axis=1)) > 0.9
        assert np.mean(np.any(ep_qpos[1:] != ep_qpos[:-1], axis=1)) > 0.9
    # Episodes start from different states.
    assert not np.array_equal(obs[0], obs[steps])

    if name.startswith("pointmaze"):
        # Point-mass observation is its position: o_t must equal the recorded prev_qpos.
        np.testing.assert_array_equal(obs, qpos)
    elif name.startswith("cube-single"):
        # Arm joint positions come first in both; the cube position is qpos[-7:-4] (free joint).
        np.testing.assert_allclose(obs[:, :6], qpos[:, :6], atol=1e-5)
        np.testing.assert_allclose(obs[:, 19:22], (qpos[:, -7:-4] - [0.425, 0.0, 0.0]) * 10.0, atol=1e-4)


def test_ogbench_load_dataset(generated):
    for name, (n, steps, *_rest) in CASES.items():
        ds = ogbench.load_dataset(str(generated[name][0]))
        # Non-compact loading drops the last row of every episode and adds next_observations.
        assert ds["observations"].shape[0] == n * (steps - 1)
        assert ds["next_observations"].shape == ds["observations"].shape
        assert ds["terminals"].sum() == n


@pytest.mark.parametrize(
    "dataset, singletask, reward_values",
    [
        ("cube-single-play-v0", "cube-single-play-singletask-task2-v0", {-1.0, 0.0}),
        ("puzzle-3x3-play-v0", "puzzle-3x3-play-singletask-v0", set(np.arange(-9.0, 1.0))),
        ("pointmaze-medium-navigate-v0", "pointmaze-medium-navigate-singletask-task1-v0", {-1.0, 0.0}),
    ],
)
def test_make_env_and_datasets_singletask(generated, dataset, singletask, reward_values):
    train_path, _ = generated[dataset]
    env, train, val = ogbench.make_env_and_datasets(singletask, dataset_path=str(train_path))
    try:
        for ds in (train, val):
            assert {"observations", "actions", "rewards", "masks", "next_observations"} <= set(ds)
            assert ds["rewards"].shape == ds["terminals"].shape
            assert set(np.unique(ds["rewards"]).tolist()) <= reward_values
        assert train["observations"].shape[1:] == env.observation_space.shape
    finally:
        env.close()


def test_make_env_and_datasets_goal_conditioned(generated):
    train_path, _ = generated["cube-single-play-v0"]
    env, train, val = ogbench.make_env_and_datasets("cube-single-play-v0", dataset_path=str(train_path))
    env.close()
    assert train["observations"].shape == (3 * 39, 28) and val["observations"].shape == (39, 28)


def test_scene_health_check():
    healthy = np.zeros((5, 25))
    healthy[:, 14:17] = [0.4, 0.0, 0.02]
    assert gen._scene_is_healthy(healthy)
    right = healthy.copy()
    right[3, 15] = 0.3
    assert not gen._scene_is_healthy(right)
    left_on_table = healthy.copy()
    left_on_table[2, 15], left_on_table[2, 16] = -0.31, 0.02
    assert not gen._scene_is_healthy(left_on_table)
    in_drawer = healthy.copy()
    in_drawer[2, 15], in_drawer[2, 16] = -0.31, 0.07
    assert gen._scene_is_healthy(in_drawer)


def test_scene_unhealthy_episode_is_retried_deterministically(monkeypatch):
    calls = []

    def reject_first(qpos):
        calls.append(len(qpos))
        return len(calls) > 1

    monkeypatch.setattr(gen, "_scene_is_healthy", reject_first)
    ep = gen.generate_episode("scene-play-v0", 0, seed=0, max_episode_steps=10)
    assert calls == [10, 10]
    # The retry is the episode's attempt 1 (its own seeds), not a continuation of attempt 0.
    spec = resolve_dataset("scene-play-v0")
    env = gen._get_env(spec, 10)
    retry, _ = gen._manip_episode(env, spec, gen._episode_seeds(0, gen._SPLIT_TRAIN, 0, 1))
    first, _ = gen._manip_episode(env, spec, gen._episode_seeds(0, gen._SPLIT_TRAIN, 0, 0))
    gen._close_cached_envs()
    for k in ep:
        np.testing.assert_array_equal(ep[k], retry[k], err_msg=k)
    assert not np.array_equal(ep["observations"], first["observations"])


# ------------------------------------------------------------------------------------------------
# Determinism
# ------------------------------------------------------------------------------------------------


def _assert_same(a: Path, b: Path) -> None:
    da, db = _load(a), _load(b)
    assert set(da) == set(db)
    for k in da:
        np.testing.assert_array_equal(da[k], db[k], err_msg=k)


def test_same_seed_is_bit_identical(generated, tmp_path):
    n, steps, *_ = CASES["cube-single-play-v0"]
    again = generate_dataset("cube-single-play-v0", n, str(tmp_path), seed=0, max_episode_steps=steps,
                             progress=False)
    for a, b in zip(generated["cube-single-play-v0"], again):
        _assert_same(a, b)


def test_different_seed_differs(generated, tmp_path):
    n, steps, *_ = CASES["puzzle-3x3-play-v0"]
    other, _ = generate_dataset("puzzle-3x3-play-v0", n, str(tmp_path), seed=1, max_episode_steps=steps,
                                progress=False)
    a, b = _load(generated["puzzle-3x3-play-v0"][0]), _load(other)
    assert a["observations"].shape == b["observations"].shape
    assert not np.array_equal(a["observations"], b["observations"])
    assert not np.array_equal(a["actions"], b["actions"])


def test_train_file_is_prefix_of_a_larger_run(generated, tmp_path):
    n, steps, *_ = CASES["pointmaze-medium-navigate-v0"]
    small_train, small_val = generate_dataset("pointmaze-medium-navigate-v0", n - 1, str(tmp_path), seed=0,
                                              max_episode_steps=steps, progress=False)
    big_train, big_val = generated["pointmaze-medium-navigate-v0"]
    small, big = _load(small_train), _load(big_train)
    for k in small:
        np.testing.assert_array_equal(small[k], big[k][: (n - 1) * steps], err_msg=k)
    _assert_same(small_val, big_val)  # validation episodes come from their own stream


def test_generate_episode_matches_dataset(generated):
    n, steps, *_ = CASES["pointmaze-medium-navigate-v0"]
    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    ep = gen.generate_episode("pointmaze-medium-navigate-v0", 1, seed=0, max_episode_steps=steps)
    assert np.random.random() == expected_next  # the caller's global RNG state is left alone
    data = _load(generated["pointmaze-medium-navigate-v0"][0])
    for k, v in ep.items():
        np.testing.assert_array_equal(v, data[k][steps : 2 * steps], err_msg=k)


@pytest.mark.slow
def test_workers_do_not_change_the_result(generated, tmp_path):
    # Two spawned workers (each imports ogbench and builds its own env): a few seconds on 2 cores.
    n, steps, *_ = CASES["puzzle-3x3-play-v0"]
    t0 = time.perf_counter()
    par = generate_dataset("puzzle-3x3-play-v0", n, str(tmp_path), seed=0, workers=2, max_episode_steps=steps,
                           progress=False)
    assert time.perf_counter() - t0 < 60
    for a, b in zip(generated["puzzle-3x3-play-v0"], par):
        _assert_same(a, b)


# ------------------------------------------------------------------------------------------------
# Atomic writes and CLI glue
# ------------------------------------------------------------------------------------------------


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    # An existing dataset is kept intact and no partial/temporary file remains.
    train, val = generate_dataset("pointmaze-medium-navigate-v0", 1, str(tmp_path), max_episode_steps=10,
                                  progress=False)
    before = train.read_bytes()

    def boom(file, **arrays):
        file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(gen.np, "savez_compressed", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset("pointmaze-medium-navigate-v0", 2, str(tmp_path), max_episode_steps=10, seed=3,
                         progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([train.name, val.name])
    assert train.read_bytes() == before


def test_cli_run(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    gen.add_arguments(parser)
    args = parser.parse_args(["--env_name", "pointmaze-medium-navigate-singletask-v0", "--num_episodes", "2",
                              "--save_dir", str(tmp_path), "--max_episode_steps", "12", "--seed", "5",
                              "--no_progress"])
    assert gen.run(args) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(tmp_path / "pointmaze-medium-navigate-v0.npz"),
                   str(tmp_path / "pointmaze-medium-navigate-v0-val.npz")]
    assert _load(Path(out[0]))["observations"].shape == (24, 2)

    bad = parser.parse_args(["--env_name", "antmaze-large-navigate-v0", "--num_episodes", "2",
                             "--save_dir", str(tmp_path)])
    assert gen.run(bad) == 2
    assert "expert" in capsys.readouterr().err
