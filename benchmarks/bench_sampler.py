"""Chunk-sampling throughput (issue 2 goal: >= 1M chunk samples/s on one core, B=1024, h=10).

Synthetic arrays of the real shapes (cube-single: S=28, A=5; 1000 episodes x 1001 rows = 1M rows).
    python -m pytest benchmarks/bench_sampler.py --benchmark-only     # pytest-benchmark table
    python benchmarks/bench_sampler.py                                 # samples/s summary
MAC_BENCH_EPISODES shrinks the dataset (CI runs one tiny round).
"""

import os
import statistics
import time

import numpy as np
import pytest

from mac.data import ChunkSampler, Normalizer, OfflineData

EPISODES = int(os.environ.get("MAC_BENCH_EPISODES", "1000"))
ROWS_PER_EPISODE, S, A, G, B, H = 1001, 28, 5, 3, 1024, 10


def synthetic_data(episodes=EPISODES, goal=False):
    rng = np.random.default_rng(0)
    n = episodes * ROWS_PER_EPISODE
    terminals = np.zeros(n, bool)
    terminals[ROWS_PER_EPISODE - 1::ROWS_PER_EPISODE] = True
    obs = rng.standard_normal((n, S), dtype=np.float32)
    data = OfflineData(obs, rng.uniform(-1, 1, (n, A)).astype(np.float32), terminals)
    if goal:
        data.goal_reps = rng.standard_normal((n, G), dtype=np.float32)
    else:
        data.rewards = -rng.integers(0, 2, n).astype(np.float32)
        data.masks = (data.rewards < 0).astype(np.float32)
    return data


@pytest.fixture(scope="module", params=["reward", "goal"])
def sampler(request):
    goal = request.param == "goal"
    data = synthetic_data(goal=goal)
    norm = Normalizer.fit(data.observations[:100_000])
    gnorm = Normalizer.fit(data.goal_reps[:100_000]) if goal else None
    return ChunkSampler(data, H, 0.999, obs_normalizer=norm, goal_normalizer=gnorm, goal_conditioned=goal)


def test_sample_batch(benchmark, sampler):
    batch = benchmark(sampler.sample, B)
    assert batch["actions"].shape == (B, H * A)


def main():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for kind in ("reward", "goal"):
        goal = kind == "goal"
        data = synthetic_data(goal=goal)
        s = ChunkSampler(data, H, 0.999, obs_normalizer=Normalizer.fit(data.observations[:100_000]),
                         goal_normalizer=Normalizer.fit(data.goal_reps[:100_000]) if goal else None,
                         goal_conditioned=goal)
        times = []
        for _ in range(200):
            t = time.perf_counter()
            s.sample(B)
            times.append(time.perf_counter() - t)
        med = statistics.median(times[20:])
        print(f"{kind:6s} tasks: {len(data):,} rows, B={B}, h={H}: median {med * 1e3:.3f} ms/batch "
              f"= {B / med / 1e6:.2f} M chunk samples/s (one process, one thread)")


if __name__ == "__main__":
    main()
