"""The table and figure of benchmarks/hard_task_study.sh: ``python benchmarks/study_report.py OUT``.

Reads OUT/budget-<recipe>.json (the calibrated step time and step budget), OUT/<recipe>/eval.csv
(the training evaluations) and OUT/<recipe>/final-<step>-x<execute>.json (the fresh finals), and
writes OUT/study.md and OUT/study.png (success vs gradient steps and vs training time). Recipes
without a run yet are left out; a run short of its budget is reported as far as it got.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mac.logging_utils import read_csv
from mac.plot import plot_runs

RECIPES = ("preset", "wide", "n32", "rb256")


def final(run: Path, step: int, execute: int) -> str:
    path = run / f"final-{step}-x{execute}.json"
    if not path.is_file():
        return "—"
    r = json.loads(path.read_text())
    return f"{r['success']:.0%} ({r['return']:.0f})"


def row(out: Path, label: str, run: Path, steps: int, step_s: float) -> str:
    ev = read_csv(run / "eval.csv") if (run / "eval.csv").is_file() else {"step": [], "success": [], "time_s": []}
    upto = [i for i, s in enumerate(ev["step"]) if s <= steps]
    reached = int(ev["step"][upto[-1]]) if upto else 0
    best = max(upto, key=lambda i: ev["success"][i], default=None)
    best_txt = f"{ev['success'][best]:.0%} at {int(ev['step'][best]) / 1000:g}k" if best is not None else "—"
    minutes = f"{ev['time_s'][upto[-1]] / 60:.0f}" if upto else "—"
    stride = -(-len(upto) // 8)   # at most 8 points: the table stays readable; the figure has them all
    curve = ", ".join(f"{int(ev['step'][i]) / 1000:g}k {ev['success'][i]:.0%}" for i in upto[::-stride][::-1]) or "—"
    return (f"| {label} | {step_s * 1000:.0f} | {steps / 1000:g}k | {reached / 1000:g}k | {minutes} | {best_txt} "
            f"| {final(run, steps, 10)} | {final(run, steps, 1)} | {curve} |")


def main(out: Path) -> None:
    lines = ["| recipe | ms/step | budget | reached | training min | best training eval | "
             "final, whole chunk | final, first action | training evals (whole chunk) |",
             "|---|---|---|---|---|---|---|---|---|"]
    runs, labels = [], []
    for recipe in RECIPES:
        budget, run = out / f"budget-{recipe}.json", out / recipe
        if not budget.is_file() or not run.is_dir():
            continue
        b = json.loads(budget.read_text())
        lines.append(row(out, recipe, run, b["steps"], b["step_s"]))
        if recipe == "preset":
            longest = max((int(p.name.split("-")[1]) for p in run.glob("final-*-x10.json")), default=0)
            if longest > b["steps"]:   # the long run: the preset continued past its budget
                lines.append(row(out, f"long ({longest // b['steps']}x)", run, longest, b["step_s"]))
        if (run / "eval.csv").is_file():
            runs.append(run)
            labels.append(recipe)
    table = "\n".join(lines) + "\n"
    (out / "study.md").write_text(table)
    print(table)
    if runs:
        print(plot_runs(runs, out / "study.png", labels))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/study_report.py OUT (the study's run folder)")
    main(Path(sys.argv[1]))
