"""Every random law of the chunk sampler against its exact distribution: the value and actor goal
mixtures (current / future / random), the geometric future offset at realistic discounts (capped at
the episode's end), the uniform future offset with the authors' rounding, and the labels of every
sampled chunk. Each law has a deliberately wrong sampler beside it that the same test rejects.

Expected counts are exact: every sample's probability of each bin, given its chunk start t and its
episode end, summed over the samples (chi-square goodness of fit, as test_sampler_uniformity.py).
ALPHA = 1e-3 with fixed seeds; the wrong samplers give p < 1e-12.
"""

import numpy as np
import pytest

from conftest import make_episodes
from mac.data import ChunkSampler, GoalMixture, OfflineData
from test_sampler_uniformity import ALPHA, chi2_pvalue

SAMPLES = 200_000
H = 5
ONLY_FUTURE = dict(value_current=0.0, value_future=1.0, value_random=0.0, actor_future=1.0, actor_random=0.0)


def goal_data(lengths) -> OfflineData:
    """Goal reps = observations, whose column 0 is the row id: a goal's row is readable."""
    a = make_episodes(list(lengths))
    return OfflineData(a["observations"], a["actions"], a["terminals"], goal_reps=a["observations"])


def draw(sampler: ChunkSampler, who: str, n: int = SAMPLES):
    """(t, goal rows, episode ends) of n samples: ``who`` = "value" or "actor" goals."""
    b = sampler.sample(n)
    t = b["idxs"]
    rows = b["value_goal_idxs"] if who == "value" else b["actor_goals"][:, 0].astype(np.int64)
    if who == "value":   # the goal handed to the networks is that row's representation
        np.testing.assert_array_equal(b["value_goals"][:, 0], rows)
    end = sampler.data.episode_ends[np.searchsorted(sampler.data.episode_ends, t)]
    return t, rows, end


def sampler_for(cls, data, discount, seed=0, **mixture):
    return cls(data, H, discount, goal_conditioned=True, goal_mixture=GoalMixture(**mixture), seed=seed)


# ------------------------------------------------------------------------------ future offset laws

def geometric_bins(t, end, discount, edges):
    """Exact bin probabilities (n, len(edges)) of the offset k = min(t + Geometric(p), end) - t,
    p = 1 - discount: bins [edges[i], edges[i+1]) below the cap D = end - t, the last column the
    cap itself (k = D, probability P(G >= D)). P(G >= k) = (1 - p)^(k - 1)."""
    q = discount
    D = (end - t).astype(np.float64)[:, None]                               # (n, 1)
    lo, hi = np.asarray(edges[:-1], np.float64), np.asarray(edges[1:], np.float64)
    lo_c, hi_c = np.minimum(lo, D), np.minimum(hi, D)                       # bins cut at the cap
    below = np.where(lo_c < hi_c, q ** (lo_c - 1) - q ** (hi_c - 1), 0.0)  # (n, bins)
    return np.concatenate([below, q ** (D - 1)], axis=1)


def geometric_observed(t, rows, end, edges):
    k = rows - t
    assert np.all((k >= 1) & (rows <= end)), "future goals must lie in [t + 1, episode end]"
    capped = rows == end
    b = np.searchsorted(edges, k[~capped], side="right") - 1
    return np.append(np.bincount(b, minlength=len(edges) - 1), capped.sum())


def uniform_bins(t, end, buckets):
    """Exact bucket probabilities of the authors' uniform future goal round(x), x uniform on
    (t + 1, end] (they mix t+1 and end with a uniform weight and round): with L = end - t - 1, row
    t + 1 + j has probability 1/L for 0 < j < L and 1/(2L) at j = 0 and j = L (half a unit of x
    rounds to each end); L = 0 gives row end. Columns: j = 0, j = L, then ``buckets`` interior
    buckets j * buckets // L."""
    L = end - t - 1
    out = np.zeros((len(t), buckets + 2))
    for ell in np.unique(L):
        sel = L == ell
        if ell == 0:
            out[sel, 1] = 1.0
            continue
        j = np.arange(1, ell)
        interior = np.bincount(j * buckets // ell, minlength=buckets) / ell
        out[sel] = np.concatenate([[0.5 / ell, 0.5 / ell], interior])
    return out


def uniform_observed(t, rows, end, buckets):
    L, j = end - t - 1, rows - t - 1
    assert np.all((j >= 0) & (rows <= end)), "future goals must lie in [t + 1, episode end]"
    first, last = (j == 0) & (L > 0), j == L
    inner = ~first & ~last
    interior = np.bincount(j[inner] * buckets // L[inner], minlength=buckets)
    return np.concatenate([[first.sum(), last.sum()], interior])


class GeometricWrongRate(ChunkSampler):
    """Wrong: the geometric rate 1.1 (1 - discount) instead of 1 - discount."""

    def _future_idxs(self, t, end, geometric):
        if geometric:
            return np.minimum(t + self.rng.geometric(1.1 * (1 - self.discount), size=len(t)), end)
        return super()._future_idxs(t, end, geometric)


class GeometricFromZero(ChunkSampler):
    """Wrong: an offset that may be 0 (the current state) and never reaches a full Geometric's tail."""

    def _future_idxs(self, t, end, geometric):
        if geometric:
            return np.minimum(t + self.rng.geometric(1 - self.discount, size=len(t)) - 1, end)
        return super()._future_idxs(t, end, geometric)


class UniformAlwaysLast(ChunkSampler):
    """Wrong: the "uniform" future goal is always the episode's last row."""

    def _future_idxs(self, t, end, geometric):
        return end if not geometric else super()._future_idxs(t, end, geometric)


class UniformWithoutRounding(ChunkSampler):
    """Wrong: uniform over [t + 1, end] (every row 1/(L+1)), not the authors' rounding of a uniform
    mix (half weight at both ends)."""

    def _future_idxs(self, t, end, geometric):
        if geometric:
            return super()._future_idxs(t, end, geometric)
        return t + 1 + np.floor(self.rng.random(len(t)) * (end - t)).astype(np.int64)


# Episodes long enough that offsets reach the bulk and the tail of the geometric law at each
# discount, and short enough that the cap at the episode end holds a large share.
GEOMETRIC_CASES = {0.99: [40, 90, 150, 300, 700], 0.999: [300, 900, 1500, 3000, 6000]}


def geometric_edges(discount):
    """Bin edges of k at the Geometric(1 - discount) deciles (a bin per tenth of the law)."""
    deciles = np.ceil(np.log1p(-np.arange(1, 10) / 10) / np.log(discount)).astype(int) + 1
    return np.unique(np.concatenate([[1], deciles, [10 ** 6]]))


def geometric_pvalue(cls, who, discount, seed=0):
    data = goal_data(GEOMETRIC_CASES[discount])
    s = sampler_for(cls, data, discount, seed, value_geom_sample=who == "value",
                    actor_geom_sample=who == "actor", **ONLY_FUTURE)
    t, rows, end = draw(s, who)
    edges = geometric_edges(discount)
    expected = geometric_bins(t, end, discount, edges).sum(0)
    assert expected.sum() == pytest.approx(len(t))
    return chi2_pvalue(geometric_observed(t, rows, end, edges), expected)


def uniform_pvalue(cls, who, seed=0, buckets=8):
    data = goal_data([12, 25, 40, 60, 90, 7, 6])
    s = sampler_for(cls, data, 0.99, seed, value_geom_sample=False, actor_geom_sample=False, **ONLY_FUTURE)
    t, rows, end = draw(s, who)
    expected = uniform_bins(t, end, buckets).sum(0)
    assert expected.sum() == pytest.approx(len(t))
    return chi2_pvalue(uniform_observed(t, rows, end, buckets), expected)


@pytest.mark.parametrize("who", ["value", "actor"])
@pytest.mark.parametrize("discount", [0.99, 0.999])
def test_geometric_future_offsets_follow_the_capped_geometric_law(who, discount):
    assert geometric_pvalue(ChunkSampler, who, discount) > ALPHA


@pytest.mark.parametrize("cls", [GeometricWrongRate, GeometricFromZero])
@pytest.mark.parametrize("discount", [0.99, 0.999])
def test_wrong_geometric_samplers_fail(cls, discount):
    if cls is GeometricFromZero:   # offset 0 is outside [t + 1, end]: the bounds check catches it
        with pytest.raises(AssertionError, match="future goals"):
            geometric_pvalue(cls, "actor", discount)
        return
    assert geometric_pvalue(cls, "actor", discount) < 1e-12


@pytest.mark.parametrize("who", ["value", "actor"])
def test_uniform_future_offsets_follow_the_authors_rounding(who):
    assert uniform_pvalue(ChunkSampler, who) > ALPHA


@pytest.mark.parametrize("cls", [UniformAlwaysLast, UniformWithoutRounding])
def test_wrong_uniform_samplers_fail(cls):
    assert uniform_pvalue(cls, "value") < 1e-12


def test_law_helpers_sum_to_one():
    t, end = np.array([0, 10, 20, 5]), np.array([1, 13, 60, 400])
    np.testing.assert_allclose(geometric_bins(t, end, 0.99, geometric_edges(0.99)).sum(1), 1.0)
    np.testing.assert_allclose(uniform_bins(t, end, 8).sum(1), 1.0)


# ------------------------------------------------------------------------------ goal mixtures

def mixture_bins(t, end, n_rows, current, future, random):
    """Exact probabilities (n, 3) of the goal kinds as seen in the data: the current row t, a row
    of (t, end], any other row. A random goal is uniform over all rows, so it lands on t with
    probability 1/N and in (t, end] with probability (end - t)/N."""
    D = (end - t).astype(np.float64)
    return np.stack([np.full_like(D, current + random / n_rows), future + random * D / n_rows,
                     random * (n_rows - 1 - D) / n_rows], axis=1)


def mixture_observed(t, rows, end):
    cur, fut = rows == t, (rows > t) & (rows <= end)
    return np.array([cur.sum(), fut.sum(), (~cur & ~fut).sum()])


class RandomGoalsFromTheEpisode(ChunkSampler):
    """Wrong: "random" goals drawn from the chunk's own episode instead of the whole dataset."""

    def _value_goal_idxs(self, t, end):
        m = self.mix
        r = self.rng.random(len(t))
        start = self.data.episode_starts[np.searchsorted(self.data.episode_ends, t)]
        same_episode = start + np.floor(self.rng.random(len(t)) * (end - start + 1)).astype(np.int64)
        future = self._future_idxs(t, end, m.value_geom_sample)
        return np.where(r < m.value_current, t, np.where(r < m.value_current + m.value_future, future,
                                                         same_episode))


class MixtureSwapsCurrentAndRandom(ChunkSampler):
    """Wrong: the current and random thresholds swapped (0.3 current, 0.2 random)."""

    def _value_goal_idxs(self, t, end):
        m = self.mix
        swapped = GoalMixture(m.value_random, m.value_future, m.value_current, m.actor_future, m.actor_random)
        self.mix = swapped
        try:
            return super()._value_goal_idxs(t, end)
        finally:
            self.mix = m


MIXTURES = {
    "authors value": ("value", dict(value_current=0.2, value_future=0.5, value_random=0.3)),
    "authors actor": ("actor", dict(actor_future=0.5, actor_random=0.5)),
    "actor with current": ("actor", dict(actor_current=0.2, actor_future=0.4, actor_random=0.4)),
    "value geometric": ("value", dict(value_current=0.1, value_future=0.6, value_random=0.3,
                                      value_geom_sample=True)),
}


def mixture_pvalue(cls, case, seed=0):
    who, mixture = MIXTURES[case]
    # Few episodes, so that a random row falls in the chunk's own future often enough to matter.
    data = goal_data([60, 80, 100, 120])
    s = sampler_for(cls, data, 0.99, seed, **mixture)
    t, rows, end = draw(s, who)
    m = s.mix
    probs = ((m.value_current, m.value_future, m.value_random) if who == "value"
             else (m.actor_current, m.actor_future, m.actor_random))
    expected = mixture_bins(t, end, len(data), *probs).sum(0)
    return chi2_pvalue(mixture_observed(t, rows, end), expected)


@pytest.mark.parametrize("case", list(MIXTURES))
def test_goal_mixtures_have_their_proportions(case):
    assert mixture_pvalue(ChunkSampler, case) > ALPHA


@pytest.mark.parametrize("cls", [RandomGoalsFromTheEpisode, MixtureSwapsCurrentAndRandom])
def test_wrong_mixtures_fail(cls):
    assert mixture_pvalue(cls, "authors value") < 1e-12


# ------------------------------------------------------------------------------ labels

def chunk_labels_by_hand(data, t, h, discount, chunk_reward, termination):
    """Reward-task labels of chunks starting at t, one by one from the definitions (MAC.md):
    mean: (1/h) sum_{i<h} discount^i r_{t+i}; sum: the same without 1/h; mask: 0 if OGBench's mask
    is 0 in any of rows t..t+h-1 (with termination), else 1."""
    rewards, masks = [], []
    for start in t.tolist():
        r = [float(data.rewards[start + i]) * discount ** i for i in range(h)]
        rewards.append(sum(r) / h if chunk_reward == "mean" else sum(r))
        masks.append(min(float(data.masks[start + i]) for i in range(h)) if termination else 1.0)
    return np.array(rewards), np.array(masks)


class RewardWindowOffByOne(ChunkSampler):
    """Wrong: the rewards of rows t+1 .. t+h (the next state's) instead of t .. t+h-1."""

    def sample(self, batch_size):
        b = super().sample(batch_size)
        t = b["idxs"]
        shifted = self.data.rewards[(t + 1)[:, None] + np.arange(self.h)]
        b["rewards"] = np.mean(shifted * self.discount ** np.arange(self.h), axis=1).astype(np.float32)
        return b


class MaskFromLastRowOnly(ChunkSampler):
    """Wrong: the mask of row t+h-1 alone (a success earlier in the chunk is missed)."""

    def sample(self, batch_size):
        b = super().sample(batch_size)
        b["masks"] = self.data.masks[b["idxs"] + self.h - 1].astype(np.float32)
        return b


def reward_data(seed=0):
    a = make_episodes([30, 45, 12, 60], seed=seed)
    rng = np.random.default_rng(seed)
    masks = (rng.random(len(a["terminals"])) > 0.15).astype(np.float32)   # successes scattered
    rewards = masks - 1.0 + rng.normal(size=len(masks)).astype(np.float32) * 0.1
    return OfflineData(a["observations"], a["actions"], a["terminals"], rewards=rewards, masks=masks)


def reward_label_errors(cls, chunk_reward, termination):
    data, discount = reward_data(), 0.9
    s = cls(data, H, discount, chunk_reward=chunk_reward, reward_task_termination=termination, seed=1)
    b = s.sample(2000)
    want_r, want_m = chunk_labels_by_hand(data, b["idxs"], H, discount, chunk_reward, termination)
    # float32 labels of sums of <= 5 float32 terms of magnitude <= 1.3: rounding is below 1e-6
    return np.abs(b["rewards"] - want_r).max(), np.abs(b["masks"] - want_m).max()


@pytest.mark.parametrize("chunk_reward", ["mean", "sum"])
@pytest.mark.parametrize("termination", [True, False])
def test_reward_task_labels_of_every_sample(chunk_reward, termination):
    r_err, m_err = reward_label_errors(ChunkSampler, chunk_reward, termination)
    assert r_err < 1e-5 and m_err == 0


def test_wrong_reward_labels_fail():
    assert reward_label_errors(RewardWindowOffByOne, "mean", True)[0] > 1e-2
    assert reward_label_errors(MaskFromLastRowOnly, "mean", True)[1] == 1


class SuccessWindowInclusive(ChunkSampler):
    """Wrong: success when the goal row is in [t, t+h] (one row past the chunk)."""

    def sample(self, batch_size):
        b = super().sample(batch_size)
        g, t = b["value_goal_idxs"], b["idxs"]
        success = ((g >= t) & (g <= t + self.h)).astype(np.float32)
        b["rewards"], b["masks"] = success - 1.0, 1.0 - success
        return b


def goal_label_mismatches(cls):
    data = goal_data([30, 45, 12, 60])
    s = sampler_for(cls, data, 0.99, 4, value_current=0.2, value_future=0.5, value_random=0.3)
    b = s.sample(20_000)
    g, t = b["value_goal_idxs"], b["idxs"]
    success = np.array([start <= goal < start + H for start, goal in zip(t.tolist(), g.tolist())], np.float32)
    return int((b["rewards"] != success - 1).sum() + (b["masks"] != 1 - success).sum())


def test_goal_task_labels_of_every_sample():
    assert goal_label_mismatches(ChunkSampler) == 0


def test_wrong_goal_labels_fail():
    assert goal_label_mismatches(SuccessWindowInclusive) > 0


class RandomGoalsSkipLastRow(ChunkSampler):
    """Wrong: random goals never the dataset's last row (an off-by-one in the row range)."""

    def _value_goal_idxs(self, t, end):
        idx = super()._value_goal_idxs(t, end)
        return np.where(idx == len(self.data) - 1, idx - 1, idx)


@pytest.mark.parametrize("cls, ok", [(ChunkSampler, True), (RandomGoalsSkipLastRow, False)])
def test_random_goals_are_uniform_over_every_row(cls, ok):
    """value_random = 1: every row of the dataset (terminal rows included, unlike the authors'
    compact-layout skip: docs/FIDELITY.md) with probability 1/N."""
    data = goal_data([7, 13, 20, 10])
    s = sampler_for(cls, data, 0.99, 5, value_current=0.0, value_future=0.0, value_random=1.0,
                    actor_future=1.0, actor_random=0.0)
    rows = s.sample(SAMPLES)["value_goal_idxs"]
    observed = np.bincount(rows, minlength=len(data))
    p = chi2_pvalue(observed, np.full(len(data), len(rows) / len(data)))
    assert (p > ALPHA) if ok else (p < 1e-12)
