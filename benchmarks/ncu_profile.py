"""Nsight Compute profile of the paper-shape rollout, for benchmarks/gpu_check.sh.

    ncu --profile-from-start off ... python benchmarks/ncu_profile.py workload
    python benchmarks/ncu_profile.py summarize REPORT.ncu-rep [--ncu PATH]

``workload``: one step of an imagined rollout at the paper's shape (B=1024, N=8, 4x1024 MLPs,
S=28, C=50: mac.bench_cuda's "rollout-s28" case with H=1) with the native CUDA kernel, then the same
step in torch eager (about a hundred kernels); both are warmed up first, outside the profiled range
(cudaProfilerStart/Stop), so ncu sees the native kernel first and then eager's kernels in launch
order, and the time per kernel name compares like with like.

``summarize``: the report's kernels as markdown: the slowest launches with their throughput,
occupancy, registers and tensor-pipe use, and the time per kernel name. Columns ncu did not
collect are left out, so the table works with any section set.
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import subprocess
import sys

DURATION = "gpu__time_duration.sum"
# (column title, metric name or a function picking one among the columns) in display order.
COLUMNS = [
    ("SM throughput %", "sm__throughput.avg.pct_of_peak_sustained_elapsed"),
    ("memory throughput %", "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed"),
    ("achieved occupancy %", "sm__warps_active.avg.pct_of_peak_sustained_active"),
    ("registers", "launch__registers_per_thread"),
    ("dyn. shared B", "launch__shared_mem_per_block_dynamic"),
    ("grid", "launch__grid_size"),
    ("tensor pipe %", lambda names: next((n for n in names if "pipe_tensor" in n and "pct" in n), None)),
]
TOP_LAUNCHES = 15


def workload() -> None:
    import torch

    from mac.bench_cuda import build_case, case_spec
    from mac.rollout import imagine, imagine_reference

    case = dict(case_spec("rollout-s28"), H=1)
    nets, states, noise, _ = build_case(case, torch.device("cuda"))
    net_list = [nets[k] for k in ("actor", "critic", "dynamics", "reward", "success")]
    torch.set_float32_matmul_precision("high")  # TF32 matmuls: eager as mac bench times it (tf32)

    def native():
        return imagine(states, None, **nets, steps=case["H"], num_samples=case["N"], noise=noise, backend="cuda")

    def eager():
        return imagine_reference(states, None, *net_list, noise)

    with torch.no_grad():
        native(), eager()
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        native()
        eager()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def summarize(rows: list[dict[str, str]]) -> str:
    """Markdown tables from ``ncu --page raw --csv`` rows (the units row already dropped)."""
    launches = [r for r in rows if _number(r.get(DURATION, "")) is not None]
    if not launches:
        return "no profiled kernel with a duration in the report"
    names = list(launches[0])
    columns = [(title, pick(names) if callable(pick) else pick) for title, pick in COLUMNS]
    columns = [(title, metric) for title, metric in columns if metric in names]
    lines = [f"### Slowest {min(TOP_LAUNCHES, len(launches))} of {len(launches)} profiled launches", "",
             "| # | kernel | duration ns | " + " | ".join(t for t, _ in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    by_duration = sorted(launches, key=lambda r: -_number(r[DURATION]))
    for r in by_duration[:TOP_LAUNCHES]:
        name = r.get("Kernel Name", "?")
        lines.append(f"| {r.get('ID', '?')} | {name[:90]} | {r[DURATION]} | "
                     + " | ".join(r.get(m, "") for _, m in columns) + " |")
    totals = collections.defaultdict(lambda: [0, 0.0])
    for r in launches:
        entry = totals[r.get("Kernel Name", "?")]
        entry[0] += 1
        entry[1] += _number(r[DURATION])
    whole = sum(t for _, t in totals.values())
    lines += ["", "### Time per kernel name", "", "| kernel | launches | total ns | share |", "|---|---|---|---|"]
    for name, (count, total) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| {name[:90]} | {count} | {total:,.0f} | {100 * total / whole:.1f}% |")
    return "\n".join(lines)


def read_raw_csv(text: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    return [r for r in rows if _number(r.get("ID", "")) is not None]  # drops the units row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("workload", help="the profiled calls (run under ncu)")
    s = sub.add_parser("summarize", help="markdown summary of a .ncu-rep report")
    s.add_argument("report")
    s.add_argument("--ncu", default="ncu")
    args = p.parse_args(argv)
    if args.cmd == "workload":
        workload()
        return 0
    # Base units (ns, bytes) in every row; kernel names without their parameter lists.
    raw = subprocess.run([args.ncu, "--import", args.report, "--page", "raw", "--csv", "--print-units", "base",
                          "--print-kernel-base", "function"], capture_output=True, text=True, check=True).stdout
    print(summarize(read_raw_csv(raw)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
