"""GPU tests of the native CUDA core against the PyTorch reference on CUDA tensors.

Skipped where no usable GPU is present (no device, torch without CUDA, or mac._C_cuda not built or
unusable: see mac._native.cuda_status()). The GPU-free half of the verification (launch planning
and the kernel's program emulated on the host) is tests/test_cuda_launch.py.

Tolerances (mac._cuda_core.TOLERANCES, rationale in docs/CUDA.md): TF32 keeps 10 mantissa bits,
so each GEMM is off by a relative ~1e-3 and a 4-layer network by a few 1e-3: 2e-2 absolute on O(1)
outputs (chunks in [-1, 1], LayerNorm-scaled activations), about 5x the largest error the host
emulation shows on this grid; bf16 keeps 7 bits: 1e-1. Chosen indices are compared exactly except
where the reference's top-two scores are within the tolerance (mac._cuda_core.check_best_of_n).
The reference runs in true float32 (TF32 matmuls disabled for the test).
"""

import pytest
import torch

from mac import _native
from mac.nets import MLP
from mac.noise import philox_normal

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or not _native.cuda_status()["usable"]
                       or _native.cuda_ext is None or not hasattr(_native.cuda_ext, "best_of_n"),
                       reason="needs a CUDA GPU (sm_80+) and the mac._C_cuda kernels: "
                              + str(_native.cuda_status().get("reason") or "torch.cuda.is_available() is False")),
]

DEV = "cuda"


@pytest.fixture(autouse=True)
def _fp32_reference():
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


def cc():
    from mac import _cuda_core
    return _cuda_core


def make_nets(S, G, C, hidden, seed=0, reward=True, success=True):
    torch.manual_seed(seed)
    sgc = S + G + C
    nets = dict(actor=MLP(sgc, C, hidden), critic=MLP(sgc, 1, hidden), dynamics=MLP(S + C, S, hidden),
                reward=MLP(sgc, 1, hidden[:1]) if reward else None,
                success=MLP(sgc, 1, hidden[::-1]) if success else None)
    return {k: (v.to(DEV) if v is not None else None) for k, v in nets.items()}


# B, N, goals, S, G, C, hidden -- B in {1, 3, 17, 64}, N in {1, 4, 8}, depths 0-3, widths not
# multiples of 16, several row / column tiles, and one paper-width network.
GRID = [
    (1, 1, False, 3, 0, 2, (20,)),
    (1, 8, True, 5, 3, 4, (33, 17)),
    (3, 4, True, 5, 3, 4, (33, 20, 9)),
    (3, 1, False, 28, 0, 50, (45,)),
    (17, 8, True, 7, 2, 6, (130, 70)),
    (17, 4, False, 11, 0, 3, ()),
    (64, 8, False, 28, 0, 50, (100, 100)),
    (64, 1, True, 4, 5, 7, (47, 31, 15)),
    (17, 8, False, 28, 0, 50, (1024, 1024)),
]


def grid_id(c):
    return f"B{c[0]}N{c[1]}{'g' if c[2] else ''}S{c[3]}C{c[5]}d{len(c[6])}w{max(c[6] or (0,))}"


def inputs(B, S, G, goal, seed=1):
    torch.manual_seed(seed)
    return torch.randn(B, S, device=DEV), (torch.randn(B, G, device=DEV) if goal else None)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("noise_kind", ["explicit", "seeded"])
@pytest.mark.parametrize("case", GRID, ids=grid_id)
def test_best_of_n_matches_reference(case, noise_kind, precision):
    from mac.rollout import best_of_n
    B, N, goal, S, G, C, hidden = case
    G = G if goal else 0
    nets = make_nets(S, G, C, hidden)
    s, g = inputs(B, S, G, goal)
    if noise_kind == "explicit":
        z = torch.randn(N, B, C, device=DEV)
        kw = dict(noise=z)
    else:
        kw = dict(seed=12345)
        z = philox_normal(12345, (N, B, C), device=DEV)
    cc().set_precision(precision)
    try:
        res = best_of_n(s, g, actor=nets["actor"], critic=nets["critic"], num_samples=N, backend="cuda", **kw)
    finally:
        cc().set_precision(None)
    assert res.chunks.device == s.device and res.indices.dtype == torch.int64
    cc().check_best_of_n(res, s, g, nets["actor"], nets["critic"], z, cc().TOLERANCES[precision])


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("task", ["reward", "goal", "no_success"])
@pytest.mark.parametrize("case", GRID[1::2] + GRID[-1:], ids=grid_id)
def test_imagine_matches_reference(case, task, precision):
    from mac.rollout import imagine
    B, N, goal, S, G, C, hidden = case
    G = G if goal else 0
    nets = make_nets(S, G, C, hidden, reward=task == "reward", success=task != "no_success")
    s, g = inputs(B, S, G, goal)
    H = 3
    z = torch.randn(H, N, B, C, device=DEV)
    cc().set_precision(precision)
    try:
        ro = imagine(s, g, **nets, steps=H, num_samples=N, noise=z, backend="cuda")
    finally:
        cc().set_precision(None)
    cc().check_rollout(ro, s, g, *nets.values(), z, cc().TOLERANCES[precision])
    if task == "no_success":
        assert bool((ro.masks == 1).all()) and bool((ro.rewards == -1).all())


def float64_reference(nets, s, g, noise):
    """The reference rollout in float64 on the CPU: the exact answer both roundings are judged by."""
    import copy

    from mac.rollout import imagine_reference
    n64 = {k: (copy.deepcopy(v).cpu().double() if v is not None else None) for k, v in nets.items()}
    with torch.no_grad():
        return imagine_reference(s.cpu().double(), g.cpu().double() if g is not None else None,
                                 n64["actor"], n64["critic"], n64["dynamics"], n64["reward"],
                                 n64["success"], noise.cpu().double())


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("case", GRID, ids=grid_id)
def test_device_as_accurate_as_host_emulation(case, precision):
    """The strict gate: the kernel against its own program run on the host (cuda/emulate.cpp, the same
    operand rounding) and both against a float64 run of the reference on the same noise.

    Why not plain device == emulation: the two sum float32 products in different orders, and where an
    activation then lands on the other side of a TF32/bf16 rounding boundary the next layer's operand
    moves by a whole TF32/bf16 step (2^-11 / 2^-8 relative); across layers and rollout steps that
    grows to 1e-3..1e-2 on single elements, and a chosen chunk's values move with the state (first GPU
    run, benchmarks/gpu_gate_probe.py: all 18 cases deterministic, the device's float64 error 0.8-1.3x
    the emulation's at every step). What a stale read, a missed grid barrier or a wrong tile does is
    different: errors far above the emulated program's own. So, at every step and for every output,
    the device's max error against float64 must stay within 1.5x the emulation's (+1e-5); step 0 must
    also pick the emulation's candidate in >= 95% of rows, and two device runs must be bitwise equal."""
    B, N, goal, S, G, C, hidden = case
    G = G if goal else 0
    nets = make_nets(S, G, C, hidden)
    s, g = inputs(B, S, G, goal)
    H = 3
    z = torch.randn(H, N, B, C, device=DEV)
    dev = cc().imagine(s, g, *nets.values(), H, N, z, None, precision=precision)
    again = cc().imagine(s, g, *nets.values(), H, N, z, None, precision=precision)
    for a, b in zip(dev, again):
        assert torch.equal(a, b), "the device kernel is not deterministic"
    cpu_nets = {k: (v.cpu() if v is not None else None) for k, v in nets.items()}
    host = cc().emulate_imagine(s.cpu(), g.cpu() if g is not None else None, *cpu_nets.values(), H, N,
                                noise=z.cpu(), precision=precision)
    exact = float64_reference(nets, s, g, z)
    same = (dev.chunks[0].cpu() - host.chunks[0]).abs().amax(-1) < 1e-3
    assert same.float().mean() >= 0.95
    for k in range(H):
        for name, d, h, e in (("states", dev.states[k + 1], host.states[k + 1], exact.states[k + 1]),
                              ("q", dev.q[k], host.q[k], exact.q[k]),
                              ("rewards", dev.rewards[k], host.rewards[k], exact.rewards[k])):
            err_dev = (d.cpu().double() - e).abs().max().item()
            err_emu = (h.double() - e).abs().max().item()
            assert err_dev <= 1.5 * err_emu + 1e-5, (name, k, err_dev, err_emu)


def test_seeded_noise_equals_explicit_philox_noise_and_runs_are_deterministic():
    from mac.rollout import imagine
    nets = make_nets(5, 3, 4, (40, 40))
    s, g = inputs(9, 5, 3, True)
    a = imagine(s, g, **nets, steps=3, num_samples=4, seed=2 ** 63 + 5, backend="cuda")
    b = imagine(s, g, **nets, steps=3, num_samples=4, noise=philox_normal(2 ** 63 + 5, (3, 4, 9, 4), device=DEV),
                backend="cuda")
    c = imagine(s, g, **nets, steps=3, num_samples=4, seed=2 ** 63 + 5, backend="cuda")
    for x, y, w in zip(a, b, c):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)  # CUDA vs numpy float64 libm: <= 1 ulp, rarely
        assert torch.equal(x, w)  # bitwise deterministic


def test_ties_go_to_the_lowest_index_and_nan_never_wins():
    from mac.rollout import best_of_n, best_of_n_reference
    nets = make_nets(4, 2, 3, (24,))
    s, g = inputs(33, 4, 2, True)
    critic = MLP(9, 1, (24,)).to(DEV)
    torch.nn.init.zeros_(critic.layers[-1].weight)
    res = best_of_n(s, g, actor=nets["actor"], critic=critic, num_samples=6, seed=3, backend="cuda")
    assert res.indices.tolist() == [0] * 33
    z = torch.randn(5, 33, 3, device=DEV)
    ref = best_of_n_reference(s, g, nets["actor"], nets["critic"], z)
    z[ref.indices, torch.arange(33, device=DEV)] = float("nan")
    res = best_of_n(s, g, actor=nets["actor"], critic=nets["critic"], num_samples=5, noise=z, backend="cuda")
    assert bool((res.indices != ref.indices).all()) and not bool(torch.isnan(res.scores).any())
    z[:] = float("nan")
    res = best_of_n(s, g, actor=nets["actor"], critic=nets["critic"], num_samples=5, noise=z, backend="cuda")
    assert res.indices.tolist() == [0] * 33 and bool(torch.isnan(res.scores).all())


def test_runs_on_torchs_current_stream_and_sees_weight_updates():
    from mac.rollout import best_of_n
    nets = make_nets(6, 0, 5, (64, 64))
    s, _ = inputs(40, 6, 0, False)
    z = torch.randn(8, 40, 5, device=DEV)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        res = best_of_n(s, None, actor=nets["actor"], critic=nets["critic"], num_samples=8, noise=z, backend="cuda")
    side.synchronize()
    cc().check_best_of_n(res, s, None, nets["actor"], nets["critic"], z, cc().TOLERANCES["tf32"])
    with torch.no_grad():  # an in-place optimiser-like update is seen by the next call
        for p in nets["actor"].parameters():
            p.add_(0.1 * torch.randn_like(p))
    res2 = best_of_n(s, None, actor=nets["actor"], critic=nets["critic"], num_samples=8, noise=z, backend="cuda")
    cc().check_best_of_n(res2, s, None, nets["actor"], nets["critic"], z, cc().TOLERANCES["tf32"])
    assert not torch.equal(res.chunks, res2.chunks)


def test_non_contiguous_inputs():
    from mac.rollout import best_of_n
    nets = make_nets(5, 2, 4, (23, 23))
    s = torch.randn(20, 5, device=DEV)[::2]
    g = torch.randn(2, 10, device=DEV).t()
    z = torch.randn(3, 10, 8, device=DEV)[:, :, ::2]
    assert not (s.is_contiguous() or g.is_contiguous() or z.is_contiguous())
    res = best_of_n(s, g, actor=nets["actor"], critic=nets["critic"], num_samples=3, noise=z, backend="cuda")
    cc().check_best_of_n(res, s, g, nets["actor"], nets["critic"], z, cc().TOLERANCES["tf32"])


def test_deepest_supported_network():
    """11 hidden layers + head (the most one network may have). Randomly initialised deep narrow
    networks amplify TF32 rounding (up to ~1e-1 against float32 here), so this compares the kernel
    with its host emulation (identical operand rounding), not with the float32 reference."""
    nets = make_nets(5, 2, 4, (23,) * 11)
    s, g = inputs(10, 5, 2, True)
    z = torch.randn(3, 10, 4, device=DEV)
    dev = cc().best_of_n(s, g, nets["actor"], nets["critic"], 3, z, None, precision="tf32")
    host = cc().emulate_best_of_n(s.cpu(), g.cpu(), nets["actor"].cpu(), nets["critic"].cpu(), 3, noise=z.cpu(),
                                  precision="tf32")
    assert torch.equal(dev.indices.cpu(), host.indices)
    torch.testing.assert_close(dev.scores.cpu(), host.scores, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(dev.chunks.cpu(), host.chunks, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_paper_shape_rollout():
    from mac.rollout import imagine
    h = (1024,) * 4
    S, C, B, N, H = 28, 50, 1024, 8, 2
    torch.manual_seed(0)
    nets = {k: MLP(S + C, o, h).to(DEV) for k, o in (("actor", C), ("critic", 1), ("dynamics", S),
                                                      ("reward", 1), ("success", 1))}
    s = 0.5 * torch.randn(B, S, device=DEV)
    z = torch.randn(H, N, B, C, device=DEV)
    ro = imagine(s, None, **nets, steps=H, num_samples=N, noise=z, backend="cuda")
    cc().check_rollout(ro, s, None, *(nets[k] for k in ("actor", "critic", "dynamics", "reward", "success")), z,
                       cc().TOLERANCES["tf32"])


def test_kernel_info_and_auto_backend():
    from mac.rollout import best_of_n
    info = cc().kernel_info()
    assert 0 < info["num_regs"] <= 255 and info["blocks_per_sm"] >= 1 and info["num_sms"] >= 1
    nets = make_nets(3, 0, 2, (8,))
    s, _ = inputs(4, 3, 0, False)
    res = best_of_n(s, None, actor=nets["actor"], critic=nets["critic"], num_samples=2, seed=0)  # auto
    assert res.chunks.device == s.device
    from mac.rollout import AUTO_USES_CUDA_KERNELS, _resolve_backend
    assert _resolve_backend("auto", s) == ("cuda" if AUTO_USES_CUDA_KERNELS else "torch")


def test_bench_quick_runs():
    """The CUDA report at the quick shapes, both precisions, every backend but max-autotune (its
    compile takes minutes; benchmarks/gpu_check.sh runs it on eval-b1): the native core checked,
    the CUDA graph captured, every cell timed."""
    import argparse

    from mac import bench_cuda
    out = bench_cuda.run_cuda_bench(argparse.Namespace(quick=True, no_compile=True, warmup=1, train_step="none",
                                                       cuda_cases="rollout-s28,eval-b1"))
    assert "tf32, bf16: check ok" in out and "MISMATCH" not in out and "failed:" not in out
    for case in ("rollout-s28", "eval-b1"):
        for backend in ("native core", "torch eager", "eager + CUDA graph"):
            row = next(line for line in out.splitlines() if line.startswith(f"| {case} | {backend} |"))
            assert "—" not in row.split("|")[3] and "—" not in row.split("|")[6]  # tf32 and bf16 medians
    assert "skipped: left out: not in --compile-cases" in out


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("case", ["rollout-s28", "eval-b1"])
def test_cuda_graph_replay_gives_the_eager_result(case, precision):
    """mac.bench_cuda.GraphedCall on a real CUDA graph: new inputs go through the static buffers and
    each replay computes what eager computes on them (same kernels: float32 round-off at most)."""
    from mac import bench_cuda as bc
    spec = bc.case_spec(case, "tiny")
    nets, states, noise, _ = bc.build_case(spec, DEV)
    reference = bc.reference_fn(spec, nets)
    with torch.no_grad(), bc.torch_precision(precision, "cuda"):
        graphed = bc.GraphedCall(reference, (states, noise))
        for k in range(2):
            s, z = states * (k + 2), torch.randn_like(noise)
            got = graphed(s, z)
            for g, want in zip(got, reference(s, z), strict=True):
                torch.testing.assert_close(g, want)


def test_checkpoint_rng_state_restores_and_forks_the_cuda_generator():
    """Exact resume on a GPU: the CUDA generator is saved and restored with the checkpoint's RNG
    state, and evaluation/diagnostics (forked_rng) leave it where training had it."""
    from mac import checkpoint
    torch.randn(3, device=DEV)                                   # CUDA initialised, generator used
    st = checkpoint.rng_state()
    assert len(st["cuda"]) == torch.cuda.device_count()
    expected = torch.randn(16, device=DEV)
    checkpoint.set_rng_state(st)
    assert torch.equal(torch.randn(16, device=DEV), expected)
    checkpoint.set_rng_state(st)
    with checkpoint.forked_rng(torch.device(DEV)):
        torch.randn(1000, device=DEV)
    assert torch.equal(torch.randn(16, device=DEV), expected)
