"""Why does the CUDA kernel differ from its host emulation after step 0? (run on a GPU)

For the grid cases of tests/test_cuda.py, per rollout step: the error of the device kernel and of
the host emulation against a float64 run of the reference on the same noise, the device-vs-emulation
difference, run-to-run determinism of the device, and the Q margin between the best and second-best
candidate (float64). If the device's error against float64 is of the emulation's size, the two only
round differently (TF32/bf16 operands), and a different pick needs a margin below that error; a
device error far above the emulation's, or a non-deterministic device, means a bug.

    python benchmarks/gpu_gate_probe.py [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_cuda import GRID, float64_reference, grid_id, inputs, make_nets  # noqa: E402

from mac import _cuda_core as cc  # noqa: E402


DEVICE = "cuda"


def _f64(nets):
    return {k: (copy.deepcopy(v).cpu().double() if v is not None else None) for k, v in nets.items()}


@torch.no_grad()
def _margins(net64, states, goals, noise):
    """(B,) best minus second-best float64 critic score of the N candidates at ``states``."""
    n, b, c = noise.shape
    s = states.unsqueeze(0).expand(n, b, -1)
    parts = [s] + ([goals.unsqueeze(0).expand(n, b, -1)] if goals is not None else [])
    cand = net64["actor"](torch.cat(parts + [noise], -1)).clamp(-1, 1)
    q = net64["critic"](torch.cat(parts + [cand], -1)).squeeze(-1)          # (N, B)
    if n == 1:
        return torch.full((b,), float("inf"), dtype=torch.float64)
    top = q.topk(2, dim=0).values
    return top[0] - top[1]


@torch.no_grad()
def probe(case, precision, H=3):
    B, N, goal, S, G, C, hidden = case
    G = G if goal else 0
    nets = make_nets(S, G, C, hidden)
    s, g = inputs(B, S, G, goal)
    z = torch.randn(H, N, B, C, device=DEVICE)
    dev = cc.imagine(s, g, *nets.values(), H, N, z, None, precision=precision)
    dev2 = cc.imagine(s, g, *nets.values(), H, N, z, None, precision=precision)
    cpu = {k: (v.cpu() if v is not None else None) for k, v in nets.items()}
    emu = cc.emulate_imagine(s.cpu(), g.cpu() if g is not None else None, *cpu.values(), H, N,
                             noise=z.cpu(), precision=precision)
    n64 = _f64(nets)
    g64 = g.cpu().double() if g is not None else None
    ref = float64_reference(nets, s, g, z)
    rows = []
    for k in range(H):
        ds, es, rs = dev.states[k + 1].cpu().double(), emu.states[k + 1].double(), ref.states[k + 1]
        dc, ec = dev.chunks[k].cpu(), emu.chunks[k]
        same_pick = ((dc - ec).abs().amax(-1) < 1e-3)
        margin = _margins(n64, emu.states[k].double(), g64, z[k].cpu().double())
        rows.append({
            "step": k,
            "dev_vs_f64_state_max": float((ds - rs).abs().max()),
            "emu_vs_f64_state_max": float((es - rs).abs().max()),
            "dev_vs_emu_state_max": float((ds - es).abs().max()),
            "dev_vs_emu_state_gt_1e-3": int(((ds - es).abs() > 1e-3).sum()),
            "state_elements": ds.numel(),
            "same_pick_fraction": float(same_pick.float().mean()),
            "q_dev_vs_emu_max": float((dev.q[k].cpu() - emu.q[k]).abs().max()),
            "min_margin_where_pick_differs": (float(margin[~same_pick].min()) if (~same_pick).any()
                                              else None),
            "median_margin": float(margin.median()),
            "device_deterministic": bool(torch.equal(dev.states[k + 1], dev2.states[k + 1])
                                         and torch.equal(dev.chunks[k], dev2.chunks[k])),
        })
    return {"case": grid_id(case), "precision": precision, "steps": rows}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    results = [probe(case, prec) for case in GRID for prec in ("tf32", "bf16")]
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
