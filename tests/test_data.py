import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import make_episodes
from mac.data import (ChunkSampler, DatasetError, GoalMixture, Normalizer, OfflineData,
                      find_dataset_files, load_offline_data, parse_env_name, read_npz)
from mac.data.files import MappedPages, cached_columns, load_shards
from mac.data.generate import generate_dataset


# ------------------------------------------------------------------------------------ names

def test_parse_env_names():
    s = parse_env_name("cube-single-play-singletask-task2-v0")
    assert (s.env_id, s.dataset_name, s.kind, s.task_id) == (
        "cube-single-singletask-task2-v0", "cube-single-play-v0", "singletask", 2)
    s = parse_env_name("puzzle-3x3-play-oraclerep-v0")
    assert (s.env_id, s.dataset_name, s.kind) == ("puzzle-3x3-v0", "puzzle-3x3-play-v0", "oraclerep")
    s = parse_env_name("cube-single-play-v0")
    assert (s.env_id, s.kind, s.goal_conditioned) == ("cube-single-v0", "goal", True)
    with pytest.raises(ValueError, match="not an OGBench dataset name"):
        parse_env_name("cube")


# ------------------------------------------------------------------------------------ files

def _save(path, arrays):
    np.savez(path, **arrays)
    return path


def test_missing_files_name_paths_and_generate_command(tmp_path):
    with pytest.raises(DatasetError) as e:
        find_dataset_files("cube-single-play-v0", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cube-single-play-v0.npz") in msg
    assert "mac data generate --env_name cube-single-play-v0" in msg


@pytest.mark.parametrize("mutate, match", [
    (lambda a: a.pop("actions"), "missing key"),
    (lambda a: a.__setitem__("actions", a["actions"].astype(np.int32)), "dtype int32"),
    (lambda a: a.__setitem__("actions", a["actions"][:-1]), "mismatched lengths"),
    (lambda a: a["observations"].__setitem__((3, 1), np.nan), "NaN/inf .*row 3"),
    (lambda a: a.__setitem__("terminals", a["terminals"][:-1]), "mismatched lengths"),
    (lambda a: a.__setitem__("observations", a["observations"][:, 0]), "must be 2-D"),
])
def test_bad_arrays_get_clear_errors(tmp_path, mutate, match):
    arrays = make_episodes([5, 6])
    mutate(arrays)
    p = _save(tmp_path / "x.npz", arrays)
    with pytest.raises(DatasetError, match=match) as e:
        read_npz(p)
    assert str(p) in str(e.value)


def test_truncated_file(tmp_path):
    p = tmp_path / "x.npz"
    np.savez_compressed(p, **make_episodes([50, 60]))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        read_npz(p)
    p.write_bytes(b"not a zip at all")
    with pytest.raises(DatasetError, match=str(p)):
        read_npz(p)


def test_last_row_must_be_terminal(tmp_path):
    arrays = make_episodes([5, 6])
    arrays["terminals"][-1] = False
    with pytest.raises(DatasetError, match="not terminal"):
        read_npz(_save(tmp_path / "x.npz", arrays))


def test_shards_are_cached_and_equal_to_concatenation(tmp_path):
    parts = [make_episodes([4, 5], seed=i) for i in range(3)]
    d = tmp_path / "cube-single-play-v0"
    d.mkdir()
    for i, p in enumerate(parts):
        _save(d / f"shard-{i:03d}.npz", p)
    _save(d / "cube-single-play-v0-val.npz", parts[0])
    files = find_dataset_files("cube-single-play-v0", tmp_path)
    assert len(files.train) == 3
    arrays = load_shards(files.train, progress=False)
    for k in ("observations", "actions", "terminals"):
        np.testing.assert_array_equal(np.asarray(arrays[k]), np.concatenate([p[k] for p in parts]))
    assert isinstance(arrays["observations"], np.memmap)
    manifest = (d / ".mac_cache" / "manifest.json").read_text()
    again = load_shards(files.train, progress=False)  # reused, not rebuilt
    assert (d / ".mac_cache" / "manifest.json").read_text() == manifest
    np.testing.assert_array_equal(again["actions"], arrays["actions"])
    # a changed shard invalidates the cache
    _save(d / "shard-001.npz", make_episodes([7], seed=9))
    assert len(load_shards(files.train, progress=False)["terminals"]) == 4 + 5 + 7 + 4 + 5
    assert json.loads((d / ".mac_cache" / "manifest.json").read_text())["source"] != json.loads(manifest)["source"]


# ------------------------------------------------------------------------------------ sampler

def _reward_data(lengths, seed=0):
    a = make_episodes(lengths, seed=seed)
    rng = np.random.default_rng(seed + 1)
    rewards = -rng.integers(0, 3, size=len(a["terminals"])).astype(np.float32)
    return OfflineData(a["observations"], a["actions"], a["terminals"],
                       rewards=rewards, masks=(rewards < 0).astype(np.float32))


episode_lengths = st.lists(st.integers(1, 30), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(lengths=episode_lengths, h=st.integers(1, 12), seed=st.integers(0, 2 ** 16),
       chunk_reward=st.sampled_from(["sum", "mean"]), termination=st.booleans())
def test_chunks_never_cross_episode_ends(lengths, h, seed, chunk_reward, termination):
    data = _reward_data(lengths, seed)
    if max(lengths) - 1 < h:
        with pytest.raises(DatasetError, match="longer than every trajectory"):
            ChunkSampler(data, h, 0.99, seed=seed)
        return
    s = ChunkSampler(data, h, 0.99, seed=seed, chunk_reward=chunk_reward,
                     reward_task_termination=termination)
    b = s.sample(64)
    t = b["idxs"]
    ep = np.searchsorted(data.episode_ends, t)          # episode containing row t
    assert np.all(t + h <= data.episode_ends[ep])       # s_{t+h} is in the same episode
    assert np.all(t >= data.episode_starts[ep])
    np.testing.assert_array_equal(b["observations"][:, 0], t)                 # row ids
    np.testing.assert_array_equal(b["next_observations"][:, 0], t + h)        # true state h later
    expected_actions = np.stack([data.actions[t + i] for i in range(h)], axis=1).reshape(64, -1)
    np.testing.assert_array_equal(b["actions"], np.clip(expected_actions, -1 + 1e-5, 1 - 1e-5))  # time-major
    w = 0.99 ** np.arange(h)
    exp_r = np.array([np.dot(data.rewards[i:i + h], w) for i in t]) / (h if chunk_reward == "mean" else 1)
    np.testing.assert_allclose(b["rewards"], exp_r, rtol=1e-5, atol=1e-5)
    exp_m = [data.masks[i:i + h].min() for i in t] if termination else np.ones(64)
    np.testing.assert_array_equal(b["masks"], exp_m)


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(2, 15), min_size=1, max_size=6), h=st.integers(1, 5))
def test_every_valid_start_is_reachable_uniformly(lengths, h):
    data = _reward_data(lengths)
    valid = [t for s, e in zip(data.episode_starts, data.episode_ends) for t in range(s, e - h + 1)]
    if not valid:
        return
    s = ChunkSampler(data, h, 0.9, seed=1)
    counts = np.bincount(s.sample(4000 * len(valid) // 10 + 400)["idxs"], minlength=len(data.terminals))
    assert set(np.flatnonzero(counts)) == set(valid)


def test_goal_mixture_proportions_and_success_labels():
    a = make_episodes([200] * 20, goal_dim=None)
    data = OfflineData(a["observations"], a["actions"], a["terminals"], goal_reps=a["observations"])
    h, n = 5, 40000
    s = ChunkSampler(data, h, 0.99, goal_conditioned=True, seed=3)
    b = s.sample(n)
    t, gi = b["idxs"], b["value_goal_idxs"]
    ep = np.searchsorted(data.episode_ends, t)
    current = gi == t
    future = (gi > t) & (gi <= data.episode_ends[ep])
    # binomial standard error with n=40000 is < 0.0025; 0.015 is > 6 sigma
    assert abs(current.mean() - 0.2) < 0.015
    assert abs(future.mean() - (0.5 + 0.3 * 200 / 4000 * 0.5)) < 0.015
    np.testing.assert_array_equal(b["value_goals"][:, 0], gi)  # goal = the goal row's representation
    succ = (gi >= t) & (gi < t + h)
    np.testing.assert_array_equal(b["masks"], 1 - succ)
    np.testing.assert_array_equal(b["rewards"], succ - 1.0)
    ag = b["actor_goals"][:, 0].astype(np.int64)
    in_future = (ag > t) & (ag <= data.episode_ends[ep])
    assert abs(in_future.mean() - (0.5 + 0.5 * 0.05 * 0.5)) < 0.02


def test_goal_mixture_validates():
    with pytest.raises(ValueError, match="sum to 1"):
        GoalMixture(value_current=0.5)


def test_sampler_resume_state_reproduces_stream():
    data = _reward_data([20, 30, 25])
    s = ChunkSampler(data, 4, 0.9, seed=7)
    s.sample(10)
    state = json.loads(json.dumps(s.state_dict()))  # JSON-serialisable
    want = s.sample(10)
    s2 = ChunkSampler(data, 4, 0.9, seed=123)
    s2.load_state_dict(state)
    got = s2.sample(10)
    for k in want:
        np.testing.assert_array_equal(want[k], got[k])


def _mapped_data(d, obs_dim=64):
    """A 48k-row sharded dataset (obs_dim 64: 12 MB of observations), memory-mapped from its cache
    under ``d``, with memory-mapped rewards/masks as the label cache has them."""
    for i in range(3):
        _save(d / f"shard-{i}.npz", make_episodes([400] * 40, obs_dim=obs_dim, action_dim=8, seed=i))
    shards = tuple(sorted(d.glob("shard-*.npz")))
    a = load_shards(shards, progress=False)
    labels = cached_columns(shards, "labels/test", ("terminals",), lambda arrays, where: {
        "rewards": arrays["terminals"].astype(np.float32) - 1,
        "masks": (~arrays["terminals"]).astype(np.float32)}, progress=False)
    return OfflineData(a["observations"], a["actions"], a["terminals"], goal_reps=a["observations"],
                       **labels)


def _mapped_kb(directory) -> int:
    """Rss (kB) of this process's mappings of the files under ``directory`` (/proc/self/smaps)."""
    prefix, total, inside = os.path.realpath(directory) + os.sep, 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if not head[0].endswith(":"):        # a mapping's first line: range perms offset dev inode [path]
                inside = len(head) == 6 and head[5].startswith(prefix)
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total


@pytest.mark.parametrize("goal_conditioned", [False, True])
def test_releasing_mapped_pages_keeps_batches_identical(tmp_path, goal_conditioned):
    data = _mapped_data(tmp_path)
    kw = dict(goal_conditioned=goal_conditioned, reward_task_termination=True, seed=3)
    free, tight = (ChunkSampler(data, 5, 0.9, mapped_budget_mb=b, **kw) for b in (None, 0))
    assert free.mapped_pages is None and tight.mapped_pages is not None
    for _ in range(20):
        want, got = free.sample(64), tight.sample(64)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    want, got = free.sample_sequences(16, 3), tight.sample_sequences(16, 3)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert tight.mapped_pages.releases > 10
    assert ChunkSampler(data, 5, 0.9).mapped_pages is None          # the cache fits the default budget
    assert ChunkSampler(_reward_data([20, 30]), 4, 0.9, mapped_budget_mb=0).mapped_pages is None  # in RAM


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_mapped_pages_of_the_cache_stay_under_the_budget(tmp_path, monkeypatch):
    data = _mapped_data(tmp_path, obs_dim=256)                # 49 MB of observations
    cache, budget_kb = tmp_path / ".mac_cache", 16 * 1024
    free = ChunkSampler(data, 5, 0.9, mapped_budget_mb=None)
    for _ in range(100):
        free.sample(64)
    assert _mapped_kb(cache) > 2 * budget_kb      # without a budget the gathers keep the cache mapped
    peaks = []                                    # the cache's mapped kB after each batch, before its check
    check = MappedPages.check
    monkeypatch.setattr(MappedPages, "check", lambda self: (peaks.append(_mapped_kb(cache)), check(self)))
    s = ChunkSampler(data, 5, 0.9, mapped_budget_mb=budget_kb / 1024)
    assert _mapped_kb(cache) == 0                 # pages mapped before (by loading, by `free`) dropped
    after = [0]
    for _ in range(200):
        s.sample(2)
        after.append(_mapped_kb(cache))
    assert max(after) <= budget_kb and s.mapped_pages.releases > 1
    # within a batch: over the budget by at most the largest batch
    assert max(peaks) <= budget_kb + max(p - a for p, a in zip(peaks, after))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(2, 40), st.integers(0, 999))
def test_normalizer_round_trip_and_range(dim, n, seed):
    x = np.random.default_rng(seed).normal(scale=10, size=(n, dim)).astype(np.float32)
    norm = Normalizer.fit(x)
    y = norm(x)
    assert np.all(np.abs(y) <= 1.0 + 1e-5)
    np.testing.assert_allclose(norm.inverse(y), x, rtol=1e-5, atol=1e-4)
    again = Normalizer.from_state_dict(json.loads(json.dumps(norm.state_dict())))
    np.testing.assert_array_equal(again(x), y)


# ------------------------------------------------------------------------------------ real OGBench data

def test_rewards_equal_ogbench_relabelling(tiny_cube_dir):
    import ogbench

    spec = parse_env_name("cube-single-play-singletask-task2-v0")
    env = ogbench.make_env_and_datasets(spec.name, env_only=True)
    train, val = load_offline_data(spec, tiny_cube_dir, env, progress=False)
    _, ref_train, _ = ogbench.make_env_and_datasets(
        spec.name, dataset_path=str(tiny_cube_dir / "cube-single-play-v0.npz"))
    keep = ~train.terminals  # ogbench's non-compact loader drops each episode's last row
    np.testing.assert_array_equal(train.rewards[keep], ref_train["rewards"])
    np.testing.assert_array_equal(train.masks[keep], ref_train["masks"])
    np.testing.assert_array_equal(train.observations[keep], ref_train["observations"])
    assert train.obs_dim == 28 and train.action_dim == 5


def test_oracle_goal_reps_equal_ogbench(tiny_cube_dir):
    import ogbench

    spec = parse_env_name("cube-single-play-oraclerep-v0")
    env = ogbench.make_env_and_datasets(spec.name, env_only=True)
    train, _ = load_offline_data(spec, tiny_cube_dir, env, progress=False)
    _, ref, _ = ogbench.make_env_and_datasets(
        spec.name, dataset_path=str(tiny_cube_dir / "cube-single-play-v0.npz"))
    np.testing.assert_allclose(train.goal_reps[~train.terminals], ref["oracle_reps"])
    assert train.goal_dim == 3


@pytest.fixture(scope="module")
def tiny_puzzle_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("puzzle")
    generate_dataset("puzzle-3x3-play-v0", 4, str(d), workers=1, seed=0, max_episode_steps=60, progress=False)
    return d


def _as_shards(src_dir, dataset_name, dst_dir, episodes_per_shard=(1, 1, 2)):
    """Split ``<src_dir>/<dataset_name>.npz`` at episode ends into shards under ``dst_dir/<dataset_name>/``
    (the same rows, every key); returns the original file."""
    src = src_dir / f"{dataset_name}.npz"
    with np.load(src) as f:
        whole = {k: f[k] for k in f.files}
    ends = np.flatnonzero(whole["terminals"]) + 1
    assert len(ends) == sum(episodes_per_shard)
    cuts = np.concatenate([[0], ends[np.cumsum(episodes_per_shard) - 1]])
    d = dst_dir / dataset_name
    d.mkdir()
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        np.savez_compressed(d / f"{dataset_name}-{i:03d}.npz", **{k: v[a:b] for k, v in whole.items()})
    os.symlink(src_dir / f"{dataset_name}-val.npz", d / f"{dataset_name}-val.npz")
    return src


@pytest.mark.parametrize("env_name", ["cube-single-play-singletask-task2-v0", "cube-single-play-oraclerep-v0",
                                      "puzzle-3x3-play-singletask-task4-v0", "puzzle-3x3-play-oraclerep-v0"])
def test_shard_labels_equal_ogbench_on_the_concatenation(env_name, tiny_cube_dir, tiny_puzzle_dir, tmp_path):
    import ogbench
    from ogbench.relabel_utils import add_oracle_reps, relabel_dataset

    spec = parse_env_name(env_name)
    src = _as_shards(tiny_cube_dir if spec.family == "cube" else tiny_puzzle_dir, spec.dataset_name, tmp_path)
    env = ogbench.make_env_and_datasets(spec.name, env_only=True)
    train, val = load_offline_data(spec, tmp_path, env, progress=False)
    ref = ogbench.utils.load_dataset(str(src), compact_dataset=True, add_info=True)  # every row, as stored
    if spec.kind == "singletask":
        relabel_dataset(spec.env_id, env, ref)
        got, want = (train.rewards, train.masks), (ref["rewards"], ref["masks"])
        assert len(np.unique(ref["rewards"])) > 1 or spec.family == "cube"  # puzzle rewards vary
    else:
        add_oracle_reps(spec.env_id, env, ref)
        got, want = (train.goal_reps,), (ref["oracle_reps"],)
    for g, w in zip(got, want):
        assert isinstance(g, np.memmap) and g.dtype == w.dtype == np.float32
        np.testing.assert_array_equal(g, w)
    with np.load(src) as f:
        for k in ("observations", "actions", "terminals"):
            np.testing.assert_array_equal(getattr(train, k), f[k])
    cache = tmp_path / spec.dataset_name / ".mac_cache"
    assert sorted(p.name for p in cache.glob("*.npy")) == ["actions.npy", "observations.npy", "terminals.npy"]
    assert (cache / "labels" / spec.env_id / "manifest.json").is_file()
    assert len(val.terminals) == 60 and (val.rewards is not None) == (spec.kind == "singletask")


def test_shard_label_cache_is_per_env_and_follows_the_shards(tiny_puzzle_dir, tmp_path):
    import ogbench

    _as_shards(tiny_puzzle_dir, "puzzle-3x3-play-v0", tmp_path)
    cache = tmp_path / "puzzle-3x3-play-v0" / ".mac_cache"
    rewards, stamps = {}, {}
    for task in (1, 4, 1):
        spec = parse_env_name(f"puzzle-3x3-play-singletask-task{task}-v0")
        env = ogbench.make_env_and_datasets(spec.name, env_only=True)
        train, _ = load_offline_data(spec, tmp_path, env, progress=False)
        if task in rewards:  # reused, not rebuilt
            assert (cache / "labels" / spec.env_id / "manifest.json").stat().st_mtime_ns == stamps[task]
        rewards[task] = np.array(train.rewards)
        stamps[task] = (cache / "labels" / spec.env_id / "manifest.json").stat().st_mtime_ns
    assert not np.array_equal(rewards[1], rewards[4])
    # a changed shard invalidates the base cache and every env's labels
    shard = tmp_path / "puzzle-3x3-play-v0" / "puzzle-3x3-play-v0-001.npz"
    with np.load(shard) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["button_states"] = 1 - arrays["button_states"]
    np.savez_compressed(shard, **arrays)
    os.utime(shard, (1, 1))   # a different mtime even on a coarse clock
    spec = parse_env_name("puzzle-3x3-play-singletask-task1-v0")
    train, _ = load_offline_data(spec, tmp_path, ogbench.make_env_and_datasets(spec.name, env_only=True),
                                 progress=False)
    assert not np.array_equal(train.rewards, rewards[1])


def test_interrupted_cache_build_is_never_used(tmp_path):
    from mac.data.files import cached_columns

    d = tmp_path / "shards"
    d.mkdir()
    shards = tuple(_save(d / f"s{i}.npz", make_episodes([3, 4], seed=i)) for i in range(3))
    (d / ".mac_cache").mkdir()
    (d / ".mac_cache" / "observations.npy.999999999.tmp").write_bytes(b"left by a killed builder")

    def fail_on_second(arrays, where):
        if where.endswith("s1.npz"):
            raise KeyboardInterrupt
        return arrays

    with pytest.raises(KeyboardInterrupt):
        cached_columns(shards, "", ("terminals", "actions"), fail_on_second, progress=False)
    assert sorted(p.name for p in (d / ".mac_cache").iterdir()) == []  # no manifest, no temp files
    out = cached_columns(shards, "", ("terminals", "actions"), lambda a, w: a, progress=False)
    np.testing.assert_array_equal(out["actions"], np.concatenate([np.load(p)["actions"] for p in shards]))


def test_dataset_of_another_env_is_rejected(tiny_cube_dir, tmp_path):
    import ogbench

    spec = parse_env_name("puzzle-3x3-play-singletask-task1-v0")
    os.symlink(tiny_cube_dir / "cube-single-play-v0.npz", tmp_path / "puzzle-3x3-play-v0.npz")
    os.symlink(tiny_cube_dir / "cube-single-play-v0-val.npz", tmp_path / "puzzle-3x3-play-v0-val.npz")
    env = ogbench.make_env_and_datasets(spec.name, env_only=True)
    with pytest.raises(DatasetError, match="belongs to another environment"):
        load_offline_data(spec, tmp_path, env, progress=False)
