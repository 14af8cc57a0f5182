"""`mac info --check`: each usable native core against the PyTorch reference, on this machine, now.

Small shapes that cover the code paths (no goals and goals, reward and goal tasks, with and without
a success net, several row and column tiles, a 1024-wide layer), explicit noise, and a float64 run
of the reference as the judge. Per output the native core's max error against float64 must stay
within a precision's budget: float32 cores (the CPU) within 8x the float32 reference's own error
plus 1e-5 relative (as tests/test_native_cpu.py); TF32 / bf16 CUDA kernels within the absolute
tolerances of mac._cuda_core.TOLERANCES (10 / 7 mantissa bits, docs/CUDA.md). Only rows whose
float64 best candidate leads the second by more than that budget are compared (elsewhere another
pick is a legitimate rounding outcome), and rollouts are judged on their first step (after a
legitimately different pick, trajectories part).

The same check guards ``backend="auto"`` where it may use the CUDA kernels
(mac.rollout.AUTO_USES_CUDA_KERNELS): once per device and process, before first use. So this module
calls the native cores directly and takes its references from :mod:`mac.reference`: it sits below
:mod:`mac.rollout`, never importing it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from mac import _cpu_core, _cuda_core
from mac.nets import MLP
from mac.reference import best_of_n_reference, candidate_scores, imagine_reference

# name, kind, B, N, S, G, C, hidden, reward net, success net
CASES = (
    ("best_of_n B1 N8", "best_of_n", 1, 8, 5, 0, 4, (33, 17), False, False),
    ("best_of_n goals B17 N8", "best_of_n", 17, 8, 7, 3, 6, (130, 70), False, False),
    ("best_of_n B64 N32 w1024", "best_of_n", 64, 32, 28, 0, 50, (1024,), False, False),
    ("imagine reward task B17", "imagine", 17, 8, 11, 0, 6, (47, 31), True, True),
    ("imagine goal task B64", "imagine", 64, 4, 9, 5, 4, (100, 100), False, True),
)
FLOAT32_FACTOR, FLOAT32_FLOOR = 8.0, 1e-5


@dataclass
class CheckResult:
    backend: str
    case: str
    passed: bool
    detail: str


def _budget(err32: float, scale: float, precision: str) -> float:
    if precision == "fp32":
        return FLOAT32_FACTOR * err32 + FLOAT32_FLOOR * scale
    from mac._cuda_core import TOLERANCES
    return TOLERANCES[precision] * scale


def _nets(kind, S, G, C, hidden, reward, success, seed):
    torch.manual_seed(seed)
    nets = dict(actor=MLP(S + G + C, C, hidden), critic=MLP(S + G + C, 1, hidden))
    if kind == "imagine":
        nets.update(dynamics=MLP(S + C, S, hidden), reward=MLP(S + G + C, 1, hidden) if reward else None,
                    success=MLP(S + G + C, 1, hidden[::-1]) if success else None)
    return nets


def _clear_rows(nets64, s, g, z, budget):
    """(B,) rows whose float64 best candidate leads the second by more than ``budget``."""
    if z.shape[0] == 1:
        return torch.ones(s.shape[0], dtype=torch.bool)
    q = candidate_scores(s, g, nets64["actor"], nets64["critic"], z)[1]
    top = q.topk(2, dim=0).values
    return (top[0] - top[1]) > budget


def _max_err(x, ref, rows):
    d = (x.detach().cpu().double() - ref)[..., rows] if x.dim() == 1 else (x.detach().cpu().double() - ref)[rows]
    return float(d.abs().max()) if d.numel() else 0.0


@torch.no_grad()
def check_case(backend: str, case, device, precision: str, seed: int = 0) -> CheckResult:
    name, kind, B, N, S, G, C, hidden, reward, success = case
    nets = _nets(kind, S, G, C, hidden, reward, success, seed)
    nets64 = {k: (copy.deepcopy(v).double() if v is not None else None) for k, v in nets.items()}
    gen = torch.Generator().manual_seed(seed + 1)
    s = torch.randn(B, S, generator=gen)
    g = torch.randn(B, G, generator=gen) if G else None
    H = 2 if kind == "imagine" else 1
    z = torch.randn(H, N, B, C, generator=gen)
    dev = {k: (v.to(device) if v is not None else None) for k, v in nets.items()}
    s_d, g_d, z_d = s.to(device), (g.to(device) if g is not None else None), z.to(device)
    s64, g64, z64 = s.double(), (g.double() if g is not None else None), z.double()
    core = _cpu_core if backend == "cpu" else _cuda_core
    if kind == "best_of_n":
        nat = core.best_of_n(s_d, g_d, dev["actor"], dev["critic"], N, z_d[0], None)
        ref32 = best_of_n_reference(s, g, nets["actor"], nets["critic"], z[0])
        ref64 = best_of_n_reference(s64, g64, nets64["actor"], nets64["critic"], z64[0])
        outputs = {"chunks": (nat.chunks, ref32.chunks, ref64.chunks), "scores": (nat.scores, ref32.scores,
                                                                                  ref64.scores)}
        picks = (nat.indices.cpu(), ref64.indices)
    else:
        order = ("actor", "critic", "dynamics", "reward", "success")
        nat = core.imagine(s_d, g_d, *(dev[k] for k in order), H, N, z_d, None)
        ref32 = imagine_reference(s, g, *(nets[k] for k in order), z)
        ref64 = imagine_reference(s64, g64, *(nets64[k] for k in order), z64)
        if not all(bool(torch.isfinite(t).all()) for t in nat):
            return CheckResult(backend, name, False, "non-finite outputs")
        outputs = {"next states": (nat.states[1], ref32.states[1], ref64.states[1]),
                   "chunks": (nat.chunks[0], ref32.chunks[0], ref64.chunks[0]),
                   "q": (nat.q[0], ref32.q[0], ref64.q[0]),
                   "rewards": (nat.rewards[0], ref32.rewards[0], ref64.rewards[0])}
        picks = None
    scale = max(1.0, max(float(r.abs().max()) for _, _, r in outputs.values()))
    err32_all = max(float((r32.double() - r64).abs().max()) for _, r32, r64 in outputs.values())
    rows = _clear_rows(nets64, s64, g64, z64[0], _budget(err32_all, scale, precision))
    if picks is not None and not torch.equal(picks[0][rows], picks[1][rows]):
        return CheckResult(backend, name, False, "chose other candidates than float64 where the choice is clear")
    worst = []
    for out, (x, r32, r64) in outputs.items():
        err32 = _max_err(r32, r64, rows)
        err, budget = _max_err(x, r64, rows), _budget(err32, scale, precision)
        worst.append(err / budget if budget else 0.0)
        if not err <= budget:
            return CheckResult(backend, name, False, f"{out}: error {err:.3g} against float64, allowed "
                                                     f"{budget:.3g} ({precision})")
    return CheckResult(backend, name, True, f"{int(rows.sum())}/{B} rows compared, worst error "
                                            f"{max(worst):.2f}x the budget ({precision})")


def usable_backends() -> list[str]:
    from mac import _native
    out = []
    if _native.cpu_ext is not None and hasattr(_native.cpu_ext, "best_of_n"):
        out.append("cpu")
    if _native.cuda_status()["usable"] and hasattr(_native.cuda_ext, "best_of_n"):
        out.append("cuda")
    return out


def check_backend(backend: str, device=None) -> list[CheckResult]:
    """All CASES on one native backend; an exception in a case is a failed case."""
    if backend == "cpu":
        device, precision = torch.device("cpu"), "fp32"
    else:
        from mac._cuda_core import get_precision
        device, precision = torch.device(device or "cuda"), get_precision()
    results = []
    for case in CASES:
        try:
            results.append(check_case(backend, case, device, precision))
        except Exception as exc:  # noqa: BLE001 (a CUDA error, a crash of the check itself: a failure)
            results.append(CheckResult(backend, case[0], False, f"{type(exc).__name__}: {exc}"))
    return results


def format_results(results: list[CheckResult]) -> str:
    if not results:
        return "no native core is usable here: nothing to check (backend='torch' is the reference)"
    lines = [f"{'backend':8s} {'case':26s} result"]
    for r in results:
        lines.append(f"{r.backend:8s} {r.case:26s} {'PASS' if r.passed else 'FAIL'}  {r.detail}")
    return "\n".join(lines)
