"""`mac bench --device cuda` (python/mac/bench_cuda.py) without a GPU: the timing statistics, the
refusal of too few repeats, the goal verdicts from synthetic timings, the CUDA-graph runner's
static-buffer plumbing (with a CPU stand-in for the capture), the train-step projection, and the
whole report run on the CPU (where the CUDA-only cells must say why they are empty). The same
report on a GPU: tests/test_cuda.py::test_bench_quick_runs."""

from __future__ import annotations

import argparse

import pytest
import torch

pytest.importorskip("mac._C")  # the native CPU core stands in for the CUDA one in the CPU runs

from mac import bench_cuda as bc  # noqa: E402
from mac.bench_timing import MIN_REPEATS, Timing, hours_for_steps, time_calls  # noqa: E402

TINY_TRAIN = dict(hidden_dims=(16, 16), batch_size=32, rollout_batch=16, rollout_steps=2)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny ops; a 2-thread pool on a shared 2-core machine crawls."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def cpu_options(**kw) -> bc.BenchOptions:
    opts = dict(device="cpu", size="tiny", cases=("rollout-s28", "eval-b1"), train_step="none",
                train_overrides=TINY_TRAIN)
    opts.update(kw)
    return bc.BenchOptions(**opts)


# ------------------------------------------------------------------------------------ statistics

def test_timing_reports_median_and_deciles():
    t = Timing(tuple(float(x) for x in range(20, 0, -1)))  # 1..20 ms, in any order
    assert t.median == 10.5
    assert t.p10 == pytest.approx(2.9) and t.p90 == pytest.approx(18.1)  # inclusive deciles
    assert t.summary() == "10.5 [2.9, 18.1]"


def test_time_calls_warms_up_then_times_each_call():
    calls = []
    t = time_calls(lambda: calls.append(1), repeats=MIN_REPEATS, warmup=4, device="cpu")
    assert len(calls) == 4 + MIN_REPEATS and len(t.samples_ms) == MIN_REPEATS
    assert all(ms >= 0 for ms in t.samples_ms)


@pytest.mark.parametrize("field", ["repeats", "train_repeats"])
def test_fewer_than_20_repeats_are_refused(field):
    with pytest.raises(ValueError, match=f"at least {MIN_REPEATS} timed calls"):
        cpu_options(train_step="cpu", **{field: MIN_REPEATS - 1}).validate()
    cpu_options(train_step="cpu", **{field: MIN_REPEATS}).validate()


def test_cli_refuses_few_repeats_before_looking_for_a_gpu(capsys):
    from mac.cli import main
    assert main(["bench", "--device", "cuda", "--repeats", "5"]) == 2
    assert f"--repeats=5: at least {MIN_REPEATS}" in capsys.readouterr().err


def test_cli_options_default_to_both_precisions_every_backend_and_20_repeats():
    opts = bc.options_from_args(argparse.Namespace())
    assert opts.precisions == ("tf32", "bf16") and opts.backends == bc.BACKENDS and opts.cases == bc.CASES
    assert opts.repeats == 20 and opts.train_step == "paper" and opts.train_repeats == 20
    opts = bc.options_from_args(argparse.Namespace(cuda_precision="bf16", compile_cases="eval-b1", quick=True))
    assert opts.precisions == ("bf16",) and opts.compile_cases == ("eval-b1",) and opts.size == "quick"
    assert opts.train_step == "cpu"  # --quick: the small preset, unless asked for another
    assert bc.options_from_args(argparse.Namespace(quick=True, train_step="paper")).train_step == "paper"
    assert bc.options_from_args(argparse.Namespace(no_compile=True)).compile_cases == ()
    with pytest.raises(ValueError, match="unknown CUDA bench precision 'fp16'"):
        bc.options_from_args(argparse.Namespace(cuda_precision="tf32,fp16"))


# ------------------------------------------------------------------------------------ verdicts

def _by_goal(rows):
    return {(v.case, v.precision, v.goal): v for v in rows}


def test_goal_verdicts_from_synthetic_timings():
    medians = {
        ("rollout-s28", "tf32", "native"): 4.0,
        ("rollout-s28", "tf32", "eager"): 10.0,         # exactly 2.5x: met
        ("rollout-s28", "tf32", "eager+graph"): 5.2,    # exactly 1.3x: met
        ("rollout-s28", "tf32", "max-autotune"): 5.1,   # 1.275x: not met
        ("rollout-s28", "bf16", "native"): 3.01,        # over 3 ms: not met
        ("rollout-s55", "tf32", "native"): 99.0,        # no goal for S=55
        ("eval-b1", "tf32", "native"): 0.050,           # exactly 50 µs: met
        ("eval-b1", "bf16", "native"): 0.0501,
        ("eval-b64", "tf32", "native"): None,           # skipped: not measured
        ("eval-b64", "tf32", "eager"): 0.5,
    }
    v = _by_goal(bc.verdicts(medians))
    assert v["rollout-s28", "tf32", "native core ≤ 5 ms"].met is True
    assert v["rollout-s28", "tf32", "native core ≥ 2.5x faster than torch eager"].met is True
    assert v["rollout-s28", "tf32", "native core ≥ 2.5x faster than torch eager"].measured.startswith("2.50x")
    assert v["rollout-s28", "tf32", "native core ≥ 1.3x faster than eager + CUDA graph"].met is True
    assert v["rollout-s28", "tf32", "native core ≥ 1.3x faster than torch.compile max-autotune"].met is False
    assert v["rollout-s28", "bf16", "native core ≤ 3 ms"].met is False
    assert v["eval-b1", "tf32", "native core ≤ 50 µs"].met is True
    assert v["eval-b1", "bf16", "native core ≤ 50 µs"].met is False
    assert v["eval-b64", "tf32", "native core ≤ 150 µs"].met is None
    assert v["eval-b64", "tf32", "native core ≤ 150 µs"].measured == "not measured"
    assert not any(r.case == "rollout-s55" for r in v.values())
    assert ("eval-b64", "bf16", "native core ≤ 150 µs") not in v  # bf16 not run for eval-b64


def test_speedup_goal_is_not_measured_when_a_baseline_is_missing():
    medians = {("rollout-s28", "tf32", "native"): 1.0, ("rollout-s28", "tf32", "eager"): 9.0}
    v = _by_goal(bc.verdicts(medians))
    assert v["rollout-s28", "tf32", "native core ≥ 2.5x faster than torch eager"].met is True
    assert v["rollout-s28", "tf32", "native core ≥ 1.3x faster than eager + CUDA graph"].met is None
    table = "\n".join(bc.goals_table(list(v.values())))
    graph_goal = "| rollout-s28 | tf32 | native core ≥ 1.3x faster than eager + CUDA graph |"
    assert f"{graph_goal} not measured | not measured |" in table
    assert "| yes |" in table


def test_train_step_goal_and_projection():
    assert hours_for_steps(bc.TRAIN_STEP_GOAL_MS) == pytest.approx(1.0)  # 3.6 ms x 1M steps = 1 h
    assert hours_for_steps(36.0) == pytest.approx(10.0)
    assert hours_for_steps(2.0, steps=1800) == pytest.approx(0.001)
    goals = [bc.Goal(bc.TRAIN_STEP_CASE, "as mac train", max_ms=3.6, subject=b) for b in ("torch", "cuda")]
    rows = bc.verdicts({(bc.TRAIN_STEP_CASE, "as mac train", "torch"): 3.7,
                        (bc.TRAIN_STEP_CASE, "as mac train", "cuda"): 3.6}, goals)
    assert [(r.goal, r.met) for r in rows] == [("torch ≤ 3.6 ms", False), ("cuda ≤ 3.6 ms", True)]
    table = bc.train_step_table({"torch": Timing((36.0,) * 20), "cuda": Timing((3.6,) * 20)}, "torch")
    assert "| torch (`mac train`'s default here) | 36 [36, 36] | 10.00 h |" in table
    assert "| cuda | 3.6 [3.6, 3.6] | 1.00 h |" in table


# ------------------------------------------------------------------------------------ CUDA graph plumbing

class RerunCapture:
    """A CPU stand-in for CudaGraphCapture with a graph's contract: the work is recorded once with
    the buffers it was captured on, and a replay redoes it into the same output tensors."""

    def capture(self, run, warmup):
        self.warmup_calls = warmup
        for _ in range(warmup):
            run()
        self.run = run
        self.output = run()
        return self.output

    def replay(self):
        for static, fresh in zip(self.output, self.run(), strict=True):
            static.copy_(fresh)


@pytest.mark.parametrize("case", ["rollout-s28", "eval-b1"])
def test_graphed_call_gives_eager_results_through_static_buffers(case):
    spec = bc.case_spec(case, "tiny")
    nets, states, noise, _ = bc.build_case(spec, "cpu")
    reference = bc.reference_fn(spec, nets)
    capture = RerunCapture()
    with torch.no_grad():
        graphed = bc.GraphedCall(reference, (states, noise), warmup=2, capture=capture)
        assert capture.warmup_calls == 2
        first = graphed(states * 2, torch.randn_like(noise))  # new inputs go through the static buffers
        s2, z2 = states - 1, torch.randn_like(noise)
        second = graphed(s2, z2)
        assert second is first and second is graphed.static_output  # the same output tensors every call
        for got, want in zip(second, reference(s2, z2), strict=True):
            assert torch.equal(got, want)
        states.add_(5)  # the caller's tensors are not the graph's buffers
        assert torch.equal(graphed(s2, z2)[0], reference(s2, z2)[0])


def test_a_capture_that_fails_is_a_cell_that_says_so():
    """measure() reports a failing CUDA graph capture (here: no CUDA at all) instead of crashing."""
    spec = bc.case_spec("eval-b1", "tiny")
    nets, states, noise, _ = bc.build_case(spec, "cpu")
    cell = bc.measure("eager+graph", spec, nets, states, noise, "tf32", torch.device("cpu"), cpu_options())
    assert cell.timing is None and cell.note.startswith("failed: ")


# ------------------------------------------------------------------------------------ the report on the CPU

def test_cpu_report_has_every_backend_and_precision_and_says_why_cells_are_empty():
    logged = []
    md = bc.run_bench(cpu_options(), log=logged.append)
    header = next(line for line in md.splitlines() if line.startswith("| case | backend |"))
    for p in bc.PRECISIONS:
        for column in (f"{p} median [p10, p90] ms", f"{p} TFLOP/s (% of peak)", f"{p} vs eager"):
            assert f"| {column} |" in header
    for case in ("rollout-s28", "eval-b1"):
        for backend in bc.BACKENDS:
            start = f"| {case} | {bc.BACKEND_LABELS[backend]} |"
            row = next(line for line in md.splitlines() if line.startswith(start))
            assert row.count("|") == header.count("|")
        assert f"| {case} | torch eager | " in md
    assert "tf32, bf16: skipped: eager + CUDA graph is timed on CUDA only" in md
    assert "tf32, bf16: skipped: torch.compile max-autotune is timed on CUDA only" in md
    assert "tf32: check ok (CPU core, float32)" in md
    assert "Rollout and best-of-N goals not judged: they are for the paper shapes, this run used the tiny ones." in md
    assert len(logged) == 2 * len(bc.BACKENDS) * len(bc.PRECISIONS)  # one progress line per cell


def test_goals_are_judged_from_the_measured_cells_at_the_paper_size(monkeypatch):
    """The path from measured cells (and the train step) to the goals table, with the paper size
    shrunk so that it runs on a CPU."""
    monkeypatch.setitem(bc.SIZES, "paper", bc.SIZES["tiny"])
    opts = cpu_options(size="paper", cases=("rollout-s28",), precisions=("tf32",), train_step="paper")
    md = bc.run_bench(opts, log=lambda s: None)
    goals = md.split("### Goals (issue 20)")[1]
    assert "| rollout-s28 | tf32 | native core ≤ 5 ms |" in goals
    assert "| rollout-s28 | tf32 | native core ≥ 1.3x faster than eager + CUDA graph | not measured |" in goals
    assert "rollout-s28 | bf16" not in goals and "eval-b1" not in goals  # not run
    for backend in ("torch", "cpu"):
        assert f"| train-step | as mac train | {backend} ≤ 3.6 ms |" in goals
    train = md.split("### One training step")[1].split("### Goals")[0]
    assert "preset `paper`" in train and "1M steps at the median" in train
    assert "`mac train`'s default here" in train
