"""The sampler's contract beyond its laws (tests/test_sampling_laws.py): output dtypes whatever the
dataset's, argument checks (property-based), read-only chunk windows, defaults, every row reachable as
a random goal, consecutive-chunk sequences and the mapped-page budget. Written against the mutants
that survived the laws tests (docs/TESTING.md, "Mutation testing")."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import make_episodes
from mac.data import ChunkSampler, GoalMixture, Normalizer, OfflineData
from mac.data.files import DatasetError
from mac.data.sampler import _chunk_windows

H = 3


def reward_data(lengths, dtype=np.float32) -> OfflineData:
    a = make_episodes(list(lengths), seed=1)
    n = len(a["terminals"])
    rng = np.random.default_rng(2)
    return OfflineData(a["observations"].astype(dtype), a["actions"].astype(dtype), a["terminals"],
                       rewards=rng.normal(size=n).astype(dtype), masks=(rng.random(n) < 0.7).astype(dtype))


def goal_data(lengths, dtype=np.float32) -> OfflineData:
    a = make_episodes(list(lengths), seed=1)
    obs = a["observations"].astype(dtype)
    return OfflineData(obs, a["actions"].astype(dtype), a["terminals"], goal_reps=obs)


def float_arrays(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("idxs", "value_goal_idxs")}


# ------------------------------------------------------------------------------------ dtypes

@pytest.mark.parametrize("chunk_reward", ["mean", "sum"])
@pytest.mark.parametrize("termination", [False, True])
def test_reward_task_batches_are_float32_from_a_float64_dataset(chunk_reward, termination):
    data = reward_data([20, 30], np.float64)
    norm = Normalizer.fit(data.observations)
    s = ChunkSampler(data, H, 0.99, obs_normalizer=norm, chunk_reward=chunk_reward,
                     reward_task_termination=termination)
    batch = s.sample(16)
    for name, v in float_arrays(batch).items():
        assert v.dtype == np.float32, (name, v.dtype)
    seq = s.sample_sequences(4, 2)
    assert seq["observations"].dtype == np.float32 and seq["actions"].dtype == np.float32


def test_goal_task_batches_are_float32_from_a_float64_dataset():
    data = goal_data([20, 30], np.float64)
    s = ChunkSampler(data, H, 0.99, goal_conditioned=True, goal_normalizer=Normalizer.fit(data.goal_reps))
    for name, v in float_arrays(s.sample(16)).items():
        assert v.dtype == np.float32, (name, v.dtype)


# ------------------------------------------------------------------------------------ argument checks

def _rejects(make) -> bool:
    try:
        make()
    except ValueError:
        return True
    return False


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.integers(-3, 6), st.floats(-2, 6), st.booleans(), st.just("2")))
def test_chunk_len_must_be_a_positive_int(h):
    data = reward_data([20])
    ok = isinstance(h, int) and not isinstance(h, bool) and h >= 1
    assert _rejects(lambda: ChunkSampler(data, h, 0.99)) is not ok


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.floats(-1.0, 2.0), st.sampled_from([0.0, 1.0, 1e-9, 1.0 + 1e-9])))
def test_discount_must_be_in_the_half_open_unit_interval(discount):
    data = reward_data([20])
    assert _rejects(lambda: ChunkSampler(data, H, discount)) is not (0.0 < discount <= 1.0)


@settings(max_examples=30, deadline=None)
@given(st.one_of(st.integers(-3, 5), st.floats(0.5, 4), st.booleans()))
def test_batch_size_and_sequence_length_must_be_positive_ints(n):
    s = ChunkSampler(reward_data([40, 40]), H, 0.99)
    ok = isinstance(n, int) and not isinstance(n, bool) and n >= 1
    assert _rejects(lambda: s.sample(n)) is not ok
    assert _rejects(lambda: s.sample_sequences(2, n)) is not ok


# ------------------------------------------------------------------------------------ windows, defaults

def test_chunk_windows_are_a_read_only_view_of_every_start():
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    w = _chunk_windows(x, 4)
    assert w.shape == (9, 4, 2)
    np.testing.assert_array_equal(w[8], x[8:12])
    assert not w.flags.writeable
    with pytest.raises(ValueError):
        w[0, 0, 0] = 1.0


def test_defaults_are_seed_0_and_the_authors_all_ones_masks():
    data = reward_data([30, 30])
    data.masks[:] = 0.0          # OGBench masks ignored unless reward_task_termination
    a, b = ChunkSampler(data, H, 0.99).sample(32), ChunkSampler(data, H, 0.99, seed=0).sample(32)
    np.testing.assert_array_equal(a["idxs"], b["idxs"])
    np.testing.assert_array_equal(a["masks"], np.ones(32, np.float32))


@pytest.mark.parametrize("who", ["value", "actor"])
def test_every_row_is_reachable_as_a_random_goal(who):
    data = goal_data([4, 3])    # 7 rows: row 0 and the last row must both appear
    mix = (dict(value_current=0.0, value_future=0.0, value_random=1.0) if who == "value" else
           dict(actor_future=0.0, actor_random=1.0))
    s = ChunkSampler(data, 2, 0.99, goal_conditioned=True, goal_mixture=GoalMixture(**mix))
    b = s.sample(700)
    rows = b["value_goal_idxs"] if who == "value" else b["actor_goals"][:, 0].astype(np.int64)
    assert set(rows.tolist()) == set(range(7))


# ------------------------------------------------------------------------------------ sequences

def test_sequences_are_normalised_clipped_consecutive_chunks():
    data = reward_data([50, 60])
    data.actions[:] = np.sign(data.actions)            # +-1: clipped to +-ACTION_CLIP
    norm = Normalizer.fit(data.observations)
    s = ChunkSampler(data, H, 0.99, obs_normalizer=norm)
    L, B = 3, 8
    seq = s.sample_sequences(B, L)
    t = seq["idxs"]
    assert seq["observations"].shape == (L, B, data.observations.shape[1])
    assert seq["actions"].shape == (L, B, H * data.actions.shape[1])
    for k in range(L):
        np.testing.assert_allclose(seq["observations"][k], norm(data.observations[t + k * H]), rtol=1e-6)
        rows = t[:, None] + k * H + np.arange(H)
        expect = np.clip(data.actions[rows], -s.ACTION_CLIP, s.ACTION_CLIP).reshape(B, -1)
        np.testing.assert_array_equal(seq["actions"][k], expect)
    assert np.abs(seq["actions"]).max() == np.float32(s.ACTION_CLIP)


def test_sequences_start_anywhere_a_run_fits_and_nowhere_else():
    L = 4
    span = L * H
    # episodes of 3 and 3 transitions hold no run; the last holds exactly one (t = its first row)
    data = reward_data([4, 4, span + 1])
    s = ChunkSampler(data, H, 0.99)
    seq = s.sample_sequences(16, L)
    np.testing.assert_array_equal(seq["idxs"], np.full(16, 8))
    with pytest.raises(ValueError, match="no episode holds 5 consecutive chunks"):
        s.sample_sequences(2, L + 1)


# ------------------------------------------------------------------------------------ mapped pages

def test_mapped_budget_is_given_in_mebibytes(tmp_path):
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("no /proc/self/statm here: mapped pages are not bounded")
    a = make_episodes([4000, 4000], obs_dim=128, action_dim=8)     # 4 MiB of observations
    maps = {}
    for k in ("observations", "actions", "terminals"):
        np.save(tmp_path / f"{k}.npy", a[k])
        maps[k] = np.load(tmp_path / f"{k}.npy", mmap_mode="r")
    data = OfflineData(maps["observations"], maps["actions"], maps["terminals"],
                       rewards=np.zeros(8000, np.float32), masks=np.ones(8000, np.float32))
    s = ChunkSampler(data, H, 0.99, mapped_budget_mb=0.5)
    assert s.mapped_pages is not None and s.mapped_pages.budget == 2 ** 19


def test_a_dataset_without_rows_is_rejected_with_the_reason():
    empty = OfflineData(np.zeros((0, 3), np.float32), np.zeros((0, 2), np.float32), np.zeros(0, bool),
                        rewards=np.zeros(0, np.float32), masks=np.zeros(0, np.float32))
    with pytest.raises(DatasetError, match="the longest episode has 0 transitions"):
        ChunkSampler(empty, H, 0.99)
    short = reward_data([3, 2])        # 2 and 1 transitions: no chunk of 3 fits
    with pytest.raises(DatasetError, match="the longest episode has 2 transitions"):
        ChunkSampler(short, H, 0.99)
