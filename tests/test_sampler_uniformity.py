"""Chunk starts are uniform over all valid starts of a sharded dataset: chi-square tests over shards
and over relative positions within episodes, with a fixed seed, and proof that they can fail.

ALPHA = 1e-3: a correct sampler fails one seed in a thousand, so a numpy stream change is very
unlikely to turn the fixed-seed test red; the biased samplers below give p < 1e-12, far below it.
"""

import math

import numpy as np
import pytest

from conftest import make_episodes
from mac.data import ChunkSampler, OfflineData
from mac.data.files import load_shards

ALPHA = 1e-3
H = 4
SAMPLES = 200_000
POSITION_BUCKETS = 10


def chi2_sf(x: float, k: int) -> float:
    """P(X >= x) for X ~ chi-square with k degrees of freedom, in closed form (exact, no scipy):
    Q(k/2, x/2) = e^-y sum_{i<k/2} y^i / i! for even k, and for odd k
    erfc(sqrt y) + sum_{i<(k-1)/2} e^-y y^(i+1/2) / Gamma(i+3/2), with y = x/2. Terms in logs."""
    if x <= 0:
        return 1.0
    y = x / 2
    if k % 2 == 0:
        return min(1.0, sum(math.exp(i * math.log(y) - y - math.lgamma(i + 1)) for i in range(k // 2)))
    return min(1.0, math.erfc(math.sqrt(y)) + sum(math.exp((i + 0.5) * math.log(y) - y - math.lgamma(i + 1.5))
                                                  for i in range((k - 1) // 2)))


def chi2_pvalue(observed: np.ndarray, expected: np.ndarray) -> float:
    assert expected.min() >= 5, "too few expected counts per bin for the chi-square approximation"
    stat = float(((observed - expected) ** 2 / expected).sum())
    return chi2_sf(stat, len(observed) - 1)


# Episode lengths (rows, terminal included) per shard: shards differ in how many valid starts an
# episode has, so "uniform over episodes" is far from "uniform over starts"; some are too short (< H+1).
SHARD_EPISODES = [
    [5, 6, 7, 8, 9, 10, 11, 12, 3, 2] * 4,
    [80, 95, 110, 120, 150, 130],
    [3, 40, 17, 100, 25, 9, 64, 33, 5, 71, 12, 48, 90, 20, 4, 58, 36, 27, 81, 15],
    [300],
]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    for i, lengths in enumerate(SHARD_EPISODES):
        np.savez(d / f"shard-{i:03d}.npz", **make_episodes(lengths, seed=i))
    a = load_shards(tuple(sorted(d.glob("shard-*.npz"))), progress=False)
    return OfflineData(a["observations"], a["actions"], a["terminals"], goal_reps=a["observations"])


class EpisodeUniformSampler(ChunkSampler):
    """Biased: an episode uniformly (among those with a valid start), then a start in it."""

    def sample_starts(self, batch_size):
        eps = np.flatnonzero(self.valid_per_episode)
        ep = eps[self.rng.integers(0, len(eps), size=batch_size)]
        return self.data.episode_starts[ep] + self.rng.integers(0, self.valid_per_episode[ep]), ep


class DropsLastStartSampler(ChunkSampler):
    """Biased: an off-by-one that never draws an episode's last valid start."""

    def sample_starts(self, batch_size):
        t, ep = super().sample_starts(batch_size)
        last = self.data.episode_starts[ep] + self.valid_per_episode[ep] - 1
        return np.where((t == last) & (self.valid_per_episode[ep] > 1), t - 1, t), ep


def _starts_per_episode():
    """Valid starts of every episode, shard by shard, from the lengths alone: t <= last - H."""
    return [[max(n - H, 0) for n in lengths] for lengths in SHARD_EPISODES]


def shard_pvalue(t: np.ndarray) -> float:
    rows = np.cumsum([sum(lengths) for lengths in SHARD_EPISODES])
    observed = np.bincount(np.searchsorted(rows, t, side="right"), minlength=len(rows))
    valid = np.array([sum(v) for v in _starts_per_episode()], float)
    return chi2_pvalue(observed, len(t) * valid / valid.sum())


def position_pvalue(t: np.ndarray, data: OfflineData) -> float:
    """Buckets of (t - episode start) / (the episode's valid starts); the expected count of a bucket is
    exact: the number of valid starts, over all episodes, that fall in it."""
    valid = np.concatenate(_starts_per_episode())
    ep = np.searchsorted(data.episode_ends, t)
    observed = np.bincount((t - data.episode_starts[ep]) * POSITION_BUCKETS // valid[ep],
                           minlength=POSITION_BUCKETS)
    expected = np.zeros(POSITION_BUCKETS)
    for n in valid[valid > 0]:
        expected += np.bincount(np.arange(n) * POSITION_BUCKETS // n, minlength=POSITION_BUCKETS)
    return chi2_pvalue(observed, len(t) * expected / valid.sum())


def _starts(cls, data, seed=0):
    return cls(data, H, 0.99, goal_conditioned=True, seed=seed).sample_starts(SAMPLES)[0]


def test_chunk_starts_are_uniform_over_shards_and_positions(sharded):
    assert len(sharded) == sum(map(sum, SHARD_EPISODES))
    t = _starts(ChunkSampler, sharded)
    assert shard_pvalue(t) > ALPHA
    assert position_pvalue(t, sharded) > ALPHA


@pytest.mark.parametrize("cls, test", [(EpisodeUniformSampler, "shard"), (DropsLastStartSampler, "position")])
def test_biased_samplers_fail(sharded, cls, test):
    t = _starts(cls, sharded)
    p = shard_pvalue(t) if test == "shard" else position_pvalue(t, sharded)
    assert p < 1e-12  # far below ALPHA: the test above can fail, and would here


def test_chi2_sf_is_exact():
    # textbook 95% points
    for k, x in ((1, 3.841459), (2, 5.991465), (3, 7.814728), (9, 16.918978), (10, 18.307038)):
        assert chi2_sf(x, k) == pytest.approx(0.05, abs=1e-6)
    stats = pytest.importorskip("scipy.stats")
    for k in range(1, 30):
        for x in (0.1, 1.0, k, 3.0 * k, 10.0 * k + 40):
            assert chi2_sf(x, k) == pytest.approx(stats.chi2.sf(x, k), rel=1e-9, abs=1e-300)
