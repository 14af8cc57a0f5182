"""CPU-only tests of the CUDA core (no GPU needed; they run wherever mac._C_cuda was built).

1. Launch planning (mac._C_cuda.launch_plan, cuda/plan.h + cuda/program.h): phases, ops, work items
   (tile counts with remainders), workspace layout and grid size against an independent spec
   written here in Python.
2. The kernel's program executed on the host (mac._cuda_core.emulate_*, cuda/emulate.cpp): the same
   phases, work items, workspace regions and element math as the kernel, with GEMM operands rounded
   as the tensor cores see them, every access bounds-checked. In "fp32" it must equal the float32
   PyTorch reference to rounding; in "tf32" / "bf16" it must pass the same tolerance-aware checks
   as the GPU suite (tests/test_cuda.py), which calibrates those tolerances.
"""

import pytest
import torch

from mac import _native
from mac.nets import MLP
from mac.noise import philox_normal
from mac.rollout import best_of_n_reference, imagine_reference

pytestmark = pytest.mark.skipif(_native.cuda_ext is None,
                                reason="mac._C_cuda is not built (nvcc was not found at build time)")

BM = BN = 128
THREADS, WARPS = 256, 8
ALIGN = 32


def cdiv(a, b):
    return -(-a // b)


# ------------------------------------------------------------------------------------ plan spec

def spec(B, N, S, C, G=0, H=1, actor=(), critic=(), dynamics=None, reward=None, success=None,
         imagine=False, seeded=False):
    """Independent statement of the launch plan: (phase_ops, phase_items, region sizes)."""
    steps = H if imagine else 1
    M = N * B
    phases_ops, phases_items = [], []

    def gemm_items(rows, out):
        return cdiv(rows, BM) * cdiv(out, BN)

    if seeded or imagine:
        ops, items = [], []
        if seeded:
            ops.append("noise")
            items.append(cdiv(cdiv(steps * N * B * C, 4), THREADS))
        if imagine:
            ops.append("copy")
            items.append(cdiv(B * S, THREADS))
        phases_ops.append(ops)
        phases_items.append(items)
    a_outs = list(actor) + [C]
    for w in a_outs:
        phases_ops.append(["actor"])
        phases_items.append([gemm_items(M, w)])
    for w in critic:
        phases_ops.append(["critic"])
        phases_items.append([gemm_items(M, w)])
    phases_ops.append(["select"])
    phases_items.append([cdiv(B, WARPS)])
    if imagine:
        d_outs = list(dynamics) + [S]
        lr = len(reward) if reward is not None else 0
        ls = len(success) if success is not None else 0
        rm = max(lr, ls)
        for j in range(max(len(d_outs), rm + 1)):
            ops, items = [], []
            if j < len(d_outs):
                ops.append("dynamics")
                items.append(gemm_items(B, d_outs[j]))
            if reward is not None and j < lr:
                ops.append("reward")
                items.append(gemm_items(B, reward[j]))
            if success is not None and j < ls:
                ops.append("success")
                items.append(gemm_items(B, success[j]))
            if j == rm:
                ops.append("reward_mask")
                items.append(cdiv(B, WARPS))
            phases_ops.append(ops)
            phases_items.append(items)
    wb = max([*actor, *critic, 0])
    sizes = {"cand": M * C}
    if seeded:
        sizes["noise"] = steps * M * C
    if wb:
        for i in (0, 1):
            sizes[f"act{i}"] = M * wb
            sizes[f"stats{i}"] = M * cdiv(wb, BN) * 2
    if imagine:
        for name, hid in (("dynamics", dynamics), ("reward", reward), ("success", success)):
            w = max(hid or (0,))
            if w:
                for i in (0, 1):
                    sizes[f"{name}_act{i}"] = B * w
                    sizes[f"{name}_stats{i}"] = B * cdiv(w, BN) * 2
    return phases_ops, phases_items, sizes


PLAN_CASES = [
    dict(B=1, N=1, S=3, C=2, actor=(5,), critic=(7,)),
    dict(B=1, N=32, S=28, C=50, actor=(1024,) * 4, critic=(1024,) * 4, seeded=True),
    dict(B=64, N=32, S=28, C=50, actor=(1024,) * 4, critic=(1024,) * 4),
    dict(B=17, N=8, S=7, G=2, C=6, actor=(127, 128, 129), critic=(), seeded=True),
    dict(B=3, N=4, S=5, G=3, C=4, actor=(), critic=(1,)),
    dict(B=1024, N=8, S=28, C=50, H=10, actor=(1024,) * 4, critic=(1024,) * 4, dynamics=(1024,) * 4,
         reward=(1024,) * 4, success=(1024,) * 4, imagine=True, seeded=True),
    dict(B=1024, N=8, S=55, C=50, H=10, actor=(1024,) * 4, critic=(1024,) * 4, dynamics=(1024,) * 4,
         reward=(1024,) * 4, success=(1024,) * 4, imagine=True),
    dict(B=17, N=3, S=6, G=4, C=5, H=3, actor=(20,), critic=(30, 31), dynamics=(9,), reward=(8, 8, 8),
         success=None, imagine=True),
    dict(B=129, N=1, S=6, C=5, H=2, actor=(300,), critic=(300,), dynamics=(129, 1, 40), reward=None,
         success=(10,), imagine=True, seeded=True),
    dict(B=5, N=2, S=2, C=1, H=4, actor=(), critic=(), dynamics=(), imagine=True),
    dict(B=2, N=2, S=2, C=3, H=1, actor=(4,), critic=(4,), dynamics=(), reward=(), success=(6, 7),
         imagine=True),
]


@pytest.mark.parametrize("case", PLAN_CASES, ids=lambda c: f"B{c['B']}N{c['N']}{'img' if c.get('imagine') else 'bon'}")
def test_plan_matches_spec(case):
    plan = _native.cuda_ext.launch_plan(**case)
    ops, items, sizes = spec(**case)
    assert plan["phase_ops"] == ops
    assert plan["phase_items"] == items
    assert plan["prologue_phases"] == (1 if case.get("seeded") or case.get("imagine") else 0)
    assert plan["step_phases"] == len(ops) - plan["prologue_phases"]
    steps = case.get("H", 1) if case.get("imagine") else 1
    assert plan["total_phases"] == plan["prologue_phases"] + steps * plan["step_phases"]
    assert plan["max_items"] == max(sum(i) for i in items)
    regions = plan["regions"]
    assert {k: v[1] for k, v in regions.items()} == sizes
    # disjoint, 128-byte aligned, inside the workspace
    spans = sorted(regions.values())
    for (o, n) in spans:
        assert o % ALIGN == 0 and n > 0
    for (o1, n1), (o2, _) in zip(spans, spans[1:]):
        assert o1 + n1 <= o2
    assert spans[-1][0] + spans[-1][1] <= plan["workspace_floats"] <= spans[-1][0] + spans[-1][1] + ALIGN


def test_paper_shape_plan():
    p = _native.cuda_ext.launch_plan(**PLAN_CASES[5], num_sms=132)
    # 8192 candidate rows x 1024 columns = 64 x 8 tiles per hidden layer; one 50-column head tile row
    assert p["phase_items"][1] == [512] and p["phase_items"][5] == [64]
    assert p["phase_ops"][-1] == ["dynamics", "reward_mask"]
    assert p["step_phases"] == 15 and p["total_phases"] == 151
    assert p["grid"] == 132  # one persistent CTA per SM
    assert p["tile"] == {"BM": 128, "BN": 128, "BK": 32} and p["threads"] == 256
    assert p["program_bytes"] <= 4000  # by-value kernel argument within the 4 KiB parameter space
    assert p["smem_bytes"]["tf32"] <= 99 * 1024 and p["smem_bytes"]["bf16"] <= 99 * 1024


@pytest.mark.parametrize("max_items,sms,bps,expected", [(1, 132, 1, 1), (7, 132, 1, 7), (4112, 132, 1, 132),
                                                        (500, 108, 2, 216), (0, 10, 1, 1)])
def test_grid_size(max_items, sms, bps, expected):
    # grid = min(most work items of any phase, co-resident CTAs), at least 1
    B = max(1, max_items) * WARPS  # select phase: B / 8 items; 1x1 nets keep the GEMM phases at 1 item
    p = _native.cuda_ext.launch_plan(B=B, N=1, S=1, C=1, actor=(), critic=(), num_sms=sms, blocks_per_sm=bps)
    assert p["max_items"] == max(1, max_items)
    assert p["grid"] == expected
    assert _native.cuda_ext.launch_plan(B=1, N=1, S=1, C=1, actor=(), critic=())["grid"] == 0  # no device given


def test_plan_rejects_bad_shapes():
    lp = _native.cuda_ext.launch_plan
    with pytest.raises(ValueError, match="at most 12"):
        lp(B=1, N=1, S=1, C=1, actor=(4,) * 12, critic=())
    lp(B=1, N=1, S=1, C=1, actor=(4,) * 11, critic=())
    with pytest.raises(ValueError, match="2\\^31"):
        lp(B=2 ** 20, N=2 ** 12, S=1, C=1, actor=(), critic=())
    with pytest.raises(ValueError, match="dynamics network is required"):
        lp(B=1, N=1, S=1, C=1, actor=(), critic=(), imagine=True)
    with pytest.raises(ValueError, match="only used by imagine"):
        lp(B=1, N=1, S=1, C=1, actor=(), critic=(), reward=(3,))
    with pytest.raises(ValueError):
        lp(B=0, N=1, S=1, C=1, actor=(), critic=())
    # layer chaining is checked from the per-layer (in, out) of an argument dict
    args = dict(kind="best_of_n", B=2, N=1, S=3, G=0, C=2, seed=0,
                nets={"actor": [(1, 1, 1, 1, 5, 4), (1, 1, None, None, 5, 2)],
                      "critic": [(1, 1, None, None, 5, 1)]})
    with pytest.raises(ValueError, match="actor layer 1 maps 5 -> 2 but its input has 4"):
        _native.cuda_ext.plan(args)


# ------------------------------------------------------------------------------------ emulation

from mac import _cuda_core as cc  # noqa: E402  (after the skip marker: needs the extension)

TOL = cc.TOLERANCES  # fp32 1e-4, tf32 2e-2, bf16 1e-1; rationale in docs/CUDA.md


def make_nets(S, G, C, hidden, seed=0, reward=True, success=True):
    torch.manual_seed(seed)
    sgc = S + G + C
    return dict(actor=MLP(sgc, C, hidden), critic=MLP(sgc, 1, hidden), dynamics=MLP(S + C, S, hidden),
                reward=MLP(sgc, 1, hidden[:1]) if reward else None,
                success=MLP(sgc, 1, hidden[::-1]) if success else None)


# B, N, goals, S, G, C, hidden
GRID = [
    (1, 1, False, 3, 0, 2, (20,)),
    (1, 8, True, 5, 3, 4, (33, 17)),
    (3, 4, True, 5, 3, 4, (33, 20, 9)),
    (3, 1, False, 28, 0, 50, (45,)),
    (17, 8, True, 7, 2, 6, (130, 70)),  # 136 rows: two row tiles; 130 columns: two column tiles
    (17, 4, False, 11, 0, 3, ()),       # heads straight on the gathered input
    (64, 8, False, 28, 0, 50, (100, 100)),
    (64, 1, True, 4, 5, 7, (47, 31, 15)),
]


def grid_id(c):
    return f"B{c[0]}N{c[1]}{'g' if c[2] else ''}S{c[3]}C{c[5]}d{len(c[6])}"


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("case", GRID, ids=grid_id)
def test_emulated_best_of_n_matches_reference(case, precision):
    B, N, goal, S, G, C, hidden = case
    G = G if goal else 0
    nets = make_nets(S, G, C, hidden)
    torch.manual_seed(1)
    s = torch.randn(B, S)
    g = torch.randn(B, G) if goal else None
    z = torch.randn(N, B, C)
    res = cc.emulate_best_of_n(s, g, nets["actor"], nets["critic"], N, noise=z, precision=precision)
    cc.check_best_of_n(res, s, g, nets["actor"], nets["critic"], z, TOL[precision])
    assert res.chunks.abs().max() <= 1 and res.indices.dtype == torch.int64
    if precision == "fp32":  # the program's semantics equal the reference's up to float32 rounding
        ref = best_of_n_reference(s, g, nets["actor"], nets["critic"], z)
        torch.testing.assert_close(res.scores, ref.scores, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(res.chunks, ref.chunks, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("case", GRID[1:7:2] + GRID[4:5], ids=grid_id)
@pytest.mark.parametrize("task", ["reward", "goal", "no_success"])
def test_emulated_imagine_matches_reference(case, precision, task):
    B, N, goal, S, G, C, hidden = case
    G = G if goal else 0
    nets = make_nets(S, G, C, hidden, reward=task == "reward", success=task != "no_success")
    torch.manual_seed(2)
    s = torch.randn(B, S)
    g = torch.randn(B, G) if goal else None
    H = 3
    z = torch.randn(H, N, B, C)
    ro = cc.emulate_imagine(s, g, *nets.values(), H, N, noise=z, precision=precision)
    cc.check_rollout(ro, s, g, *nets.values(), z, TOL[precision])
    if task == "no_success":
        assert bool((ro.masks == 1).all()) and bool((ro.rewards == -1).all())
    if precision == "fp32":
        ref = imagine_reference(s, g, *nets.values(), z)
        for a, b in zip(ro, ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_emulated_seeded_noise_is_the_shared_philox_stream():
    nets = make_nets(5, 3, 4, (16, 16))
    s, g = torch.randn(6, 5), torch.randn(6, 3)
    seed = 2 ** 64 - 12345
    a = cc.emulate_best_of_n(s, g, nets["actor"], nets["critic"], 5, seed=seed, precision="fp32")
    b = cc.emulate_best_of_n(s, g, nets["actor"], nets["critic"], 5, noise=philox_normal(seed, (5, 6, 4)),
                             precision="fp32")
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    r1 = cc.emulate_imagine(s, g, *nets.values(), 4, 3, seed=7, precision="tf32")
    r2 = cc.emulate_imagine(s, g, *nets.values(), 4, 3, noise=philox_normal(7, (4, 3, 6, 4)), precision="tf32")
    for x, y in zip(r1, r2):
        assert torch.equal(x, y)
    ref = imagine_reference(s, g, *nets.values(), philox_normal(7, (4, 3, 6, 4)))
    cc.check_rollout(r1, s, g, *nets.values(), philox_normal(7, (4, 3, 6, 4)), TOL["tf32"])
    assert ref.states.shape == r1.states.shape


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_emulated_ties_go_to_the_lowest_index(precision):
    nets = make_nets(4, 0, 3, (12,))
    torch.nn.init.zeros_(nets["critic"].layers[-1].weight)  # every candidate scores the bias exactly
    with torch.no_grad():
        nets["critic"].layers[-1].bias.fill_(0.25)
    res = cc.emulate_best_of_n(torch.randn(9, 4), None, nets["actor"], nets["critic"], 6, seed=3,
                               precision=precision)
    assert res.indices.tolist() == [0] * 9
    assert res.scores.tolist() == [0.25] * 9


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_emulated_nan_never_wins(precision):
    nets = make_nets(4, 2, 3, (12,))
    s, g = torch.randn(5, 4), torch.randn(5, 2)
    z = torch.randn(4, 5, 3)
    ref_q = best_of_n_reference(s, g, nets["actor"], nets["critic"], z)
    z[ref_q.indices, torch.arange(5)] = float("nan")  # the former winners now score NaN
    res = cc.emulate_best_of_n(s, g, nets["actor"], nets["critic"], 4, noise=z, precision=precision)
    assert bool((res.indices != ref_q.indices).all())
    assert not bool(torch.isnan(res.scores).any())
    cc.check_best_of_n(res, s, g, nets["actor"], nets["critic"], z, TOL[precision])
    # all NaN: index 0, NaN score, the (NaN) candidate 0 is returned
    z[:] = float("nan")
    res = cc.emulate_best_of_n(s, g, nets["actor"], nets["critic"], 4, noise=z, precision=precision)
    assert res.indices.tolist() == [0] * 5 and bool(torch.isnan(res.scores).all())


def test_emulated_goal_task_rewards_and_masks():
    nets = make_nets(4, 2, 3, (10,), reward=False)
    with torch.no_grad():  # success logit = +-5 by row sign of the first state feature
        head = nets["success"].layers[-1]
        head.weight.zero_()
        head.bias.fill_(5.0)
    s, g = torch.randn(6, 4), torch.randn(6, 2)
    ro = cc.emulate_imagine(s, g, *nets.values(), 2, 3, seed=1, precision="tf32")
    assert bool((ro.rewards == 0).all()) and bool((ro.masks == 0).all())  # success: r = 0, m = 0
    with torch.no_grad():
        head.bias.fill_(-5.0)
    ro = cc.emulate_imagine(s, g, *nets.values(), 2, 3, seed=1, precision="tf32")
    assert bool((ro.rewards == -1).all()) and bool((ro.masks == 1).all())


def test_emulated_non_contiguous_inputs():
    nets = make_nets(5, 2, 4, (16,))
    s = torch.randn(10, 5)[::2]                      # strided rows
    g = torch.randn(2, 5).t()                        # transposed
    z = torch.randn(4, 5, 8)[:, :, ::2]              # strided columns
    assert not (s.is_contiguous() or g.is_contiguous() or z.is_contiguous())
    res = cc.emulate_best_of_n(s, g, nets["actor"], nets["critic"], 4, noise=z, precision="fp32")
    ref = best_of_n_reference(s, g, nets["actor"], nets["critic"], z)
    torch.testing.assert_close(res.chunks, ref.chunks, rtol=1e-5, atol=1e-5)


def test_emulate_checks_arguments():
    nets = make_nets(3, 0, 2, (8,))
    s = torch.randn(2, 3)
    with pytest.raises(ValueError, match="exactly one of noise and seed"):
        cc.emulate_best_of_n(s, None, nets["actor"], nets["critic"], 2)
    with pytest.raises(ValueError, match="noise must have shape"):
        cc.emulate_best_of_n(s, None, nets["actor"], nets["critic"], 2, noise=torch.randn(3, 2, 2))
    with pytest.raises(TypeError, match="float32"):
        cc.emulate_best_of_n(s.double(), None, nets["actor"], nets["critic"], 2, seed=0)
    with pytest.raises(ValueError, match="critic maps"):
        cc.emulate_best_of_n(s, None, nets["actor"], nets["actor"], 2, seed=0)
    with pytest.raises(ValueError, match="precision"):
        cc.emulate_best_of_n(s, None, nets["actor"], nets["critic"], 2, seed=0, precision="fp16")
    # a workspace smaller than the plan is refused before anything runs
    args, _, keep = cc._prepare("best_of_n", s, None, dict(actor=nets["actor"], critic=nets["critic"]), 1, 2,
                                None, 0, "fp32", "cpu")
    args["workspace_floats"] -= 1
    with pytest.raises(ValueError, match="workspace has"):
        _native.cuda_ext.emulate(args)
    args["workspace_floats"] += 1
    args["goals"] = keep[0].data_ptr()  # goals pointer without G > 0
    with pytest.raises(ValueError, match="goals pointer"):
        _native.cuda_ext.emulate(args)


# ------------------------------------------------------------------------------------ GPU-less machines

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a usable GPU")
def test_without_gpu_cuda_is_reported_unusable_and_refused():
    import mac
    st = _native.cuda_status()
    assert st["built"] and not st["usable"] and st["reason"]
    info = mac.info()
    assert info["cuda_status"]["usable"] is False and "cuda_archs" in info["cuda_core"]
    from mac.rollout import best_of_n
    nets = make_nets(3, 0, 2, (8,))
    with pytest.raises((RuntimeError, ValueError)):
        best_of_n(torch.randn(2, 3), actor=nets["actor"], critic=nets["critic"], num_samples=2, seed=0,
                  backend="cuda")
    with pytest.raises(ValueError, match="cuda device"):
        cc.best_of_n(torch.randn(2, 3), None, nets["actor"], nets["critic"], 2, None, 0)
    # "auto" falls back to a CPU backend
    res = best_of_n(torch.randn(2, 3), actor=nets["actor"], critic=nets["critic"], num_samples=2, seed=0)
    assert res.chunks.shape == (2, 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a usable GPU")
def test_bench_cuda_errors_clearly_without_gpu():
    import argparse

    from mac import bench_cuda
    with pytest.raises(RuntimeError, match="CUDA"):
        bench_cuda.run_cuda_bench(argparse.Namespace())

