"""pytest-benchmark suite for the fused rollout / best-of-N paths.

Tiny shapes by default so CI can run it in seconds:

    pytest benchmarks/bench_rollout.py --benchmark-disable      # smoke run, each case once
    pytest benchmarks/bench_rollout.py                          # timings

MAC_BENCH_SIZE=cpu (3x256 networks, B=256) or MAC_BENCH_SIZE=paper (4x1024, B=1024; minutes)
selects larger shapes. For the markdown report with GFLOP/s, % of peak and torch.compile, use
`mac bench` (python/mac/bench.py).

Noise: the native core draws it from a seed inside the timed call (that is part of its work); the
torch backend gets the same noise, drawn once outside the timed region. Each case's result is
checked once, after timing, against the PyTorch reference judged in float64
(mac.bench.compare_with_reference: the tolerance is explained there).
"""

from __future__ import annotations

import os

import pytest
import torch

import mac.rollout as R
from mac import _native
from mac.bench import compare_with_reference
from mac.nets import MLP
from mac.noise import philox_normal

SIZES = {
    # B, H, N, S, C, hidden
    "tiny": (64, 2, 8, 10, 20, (64, 64)),
    "cpu": (256, 10, 8, 28, 50, (256,) * 3),
    "paper": (1024, 10, 8, 28, 50, (1024,) * 4),
}
B, H, N, S, C, HIDDEN = SIZES[os.environ.get("MAC_BENCH_SIZE", "tiny")]

pytest.importorskip("pytest_benchmark")


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    nets = {
        "actor": MLP(S + C, C, HIDDEN), "critic": MLP(S + C, 1, HIDDEN),
        "dynamics": MLP(S + C, S, HIDDEN), "reward": MLP(S + C, 1, HIDDEN),
        "success": MLP(S + C, 1, HIDDEN),
    }
    for n in nets.values():
        n.requires_grad_(False)
    states = torch.randn(B, S)
    return nets, states, philox_normal(1, (H, N, B, C))


def _flops(nets, kind):
    per_state = N * (nets["actor"].flops_per_row() + nets["critic"].flops_per_row())
    if kind == "best_of_n":
        return B * per_state
    return H * B * (per_state + nets["dynamics"].flops_per_row() + nets["reward"].flops_per_row()
                    + nets["success"].flops_per_row())


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_imagine(benchmark, problem, backend):
    nets, states, noise = problem
    if backend == "cpu" and not _native.cpu_backend_ready(states):
        pytest.skip("native CPU core not built")
    kw = dict(actor=nets["actor"], critic=nets["critic"], dynamics=nets["dynamics"],
              reward=nets["reward"], success=nets["success"], steps=H, num_samples=N)
    if backend == "cpu":
        out = benchmark(R.imagine, states, **kw, seed=1, backend="cpu")  # = philox_normal(1, ...)
    else:
        out = benchmark(R.imagine, states, **kw, noise=noise, backend="torch")
    assert out.states.shape == (H + 1, B, S)
    compare_with_reference(f"imagine-{backend}", "imagine", out, nets, states, noise, H, N)
    benchmark.extra_info["gflop"] = _flops(nets, "imagine") / 1e9


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("batch", [1, 64])
def test_best_of_n(benchmark, problem, backend, batch):
    nets, states, noise = problem
    if backend == "cpu" and not _native.cpu_backend_ready(states):
        pytest.skip("native CPU core not built")
    s = states[:batch]
    n = 32
    kw = dict(actor=nets["actor"], critic=nets["critic"], num_samples=n, backend=backend)
    z = philox_normal(3, (n, batch, C))  # drawn here, outside the timed region
    if backend == "cpu":
        out = benchmark(R.best_of_n, s, **kw, seed=3)  # the native core draws it in-kernel
    else:
        out = benchmark(R.best_of_n, s, **kw, noise=z)
    assert out.chunks.shape == (s.shape[0], C)
    compare_with_reference(f"best_of_n-{backend}", "best_of_n", out, nets, s, z, 1, n)
