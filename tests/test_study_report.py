"""benchmarks/study_report.py: the table of issue 23's study reads each recipe's budget, its
training evaluations up to the budget, and its fresh finals (the long run: the preset past it)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "study_report.py"


def _report_module():
    spec = importlib.util.spec_from_file_location("study_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(out: Path, recipe: str, step_s: float, budget: int, evals: dict[int, float], finals: dict) -> None:
    (out / f"budget-{recipe}.json").write_text(json.dumps({"step_s": step_s, "steps": budget}))
    run = out / recipe
    run.mkdir(parents=True)
    rows = [f"{s},{s * step_s:.3f},{p},{-1000 + 1000 * p},500,50" for s, p in sorted(evals.items())]
    (run / "eval.csv").write_text("step,time_s,success,return,length,episodes\n" + "\n".join(rows) + "\n")
    for (step, execute), (success, ret) in finals.items():
        (run / f"final-{step}-x{execute}.json").write_text(json.dumps({"success": success, "return": ret}))


def test_the_table_has_each_recipe_at_its_budget_and_the_long_run_past_it(tmp_path, capsys):
    _run(tmp_path, "preset", 0.09, 5000, {2500: 0.0, 5000: 0.1, 7500: 0.3, 10000: 0.2},
         {(5000, 10): (0.12, -950.4), (5000, 1): (0.0, -1000.0), (10000, 10): (0.25, -880.0)})
    _run(tmp_path, "wide", 0.9, 2500, {2500: 0.04}, {})
    _report_module().main(tmp_path)
    table = (tmp_path / "study.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table.splitlines()[2:]}
    assert list(rows) == ["preset", "long (2x)", "wide"]          # n32, rb256: no run yet, no row
    preset, long_run, wide = rows["preset"], rows["long (2x)"], rows["wide"]
    assert preset[1:5] == ["90", "5k", "5k", "8"]                  # ms/step, budget, reached, minutes
    assert preset[5] == "10% at 5k"                                # evaluations past the budget ignored
    assert preset[6:8] == ["12% (-950)", "0% (-1000)"]
    assert long_run[2:4] == ["10k", "10k"] and long_run[5] == "30% at 7.5k" and long_run[6] == "25% (-880)"
    assert long_run[7] == "—"                                      # its first-action final not run yet
    assert wide[2:4] == ["2.5k", "2.5k"] and wide[6] == "—"
    assert (tmp_path / "study.png").stat().st_size > 0


def test_no_long_row_before_the_preset_runs_past_its_budget(tmp_path, capsys):
    _run(tmp_path, "preset", 0.09, 5000, {2500: 0.0, 5000: 0.1}, {(5000, 10): (0.1, -950.0)})
    _report_module().main(tmp_path)
    assert "long" not in (tmp_path / "study.md").read_text()
