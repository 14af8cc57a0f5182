"""`mac bench` (python/mac/bench.py): every backend is timed on the same noise, the native core is
checked against the PyTorch reference before anything is timed, and both peaks are labelled."""

from __future__ import annotations

import argparse

import pytest
import torch

pytest.importorskip("mac._C")

from mac import bench  # noqa: E402
from mac.noise import philox_normal  # noqa: E402


def _args(**kw):
    a = dict(cases=["tiny"], backends=["native", "eager"], batch=16, steps=None, repeats=1, budget=0.05,
             threads=1, compile_mode="default", output=None, seed=3, train_step="none", train_repeats=1)
    a.update(kw)
    return argparse.Namespace(**a)


@pytest.fixture(autouse=True)
def _restore_threads():
    """One torch thread (tiny ops; a 2-thread pool on a shared 2-core machine crawls), restored."""
    from mac import _cpu_core
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
    _cpu_core.set_num_threads(None)


def test_every_backend_gets_the_native_cores_noise():
    kind, B, H, N, S, C, hidden = bench.CASES["tiny"]
    _, _, noise = bench._make(kind, 16, H, N, S, C, hidden, seed=7)
    assert torch.equal(noise, philox_normal(7, (H, N, 16, C)))  # what backend="cpu" draws from seed 7


@pytest.mark.parametrize("case", ["tiny", "eval-b1"])
def test_bench_checks_agreement_then_times_and_labels_both_peaks(case, capsys):
    assert bench.run(_args(cases=[case])) == 0
    out, err = capsys.readouterr()
    assert "check: native (seed 3) agrees with torch" in err
    assert "% of micro-kernel peak" in out and "% of theoretical peak" in out
    assert "Micro-kernel peak measured in this run" in out
    assert "Theoretical fp32 peak" in out and "clock from" in out
    assert f"| {case} |" in out and "agrees with torch on" in out


def test_bench_stops_when_the_torch_backends_get_other_noise(monkeypatch, capsys):
    make = bench._make

    def make_with_the_old_bug(kind, B, H, N, S, C, hidden, seed):  # torch backends got seed + 1
        nets, states, _ = make(kind, B, H, N, S, C, hidden, seed)
        shape = (N, B, C) if kind == "best_of_n" else (H, N, B, C)
        return nets, states, philox_normal(seed + 1, shape)

    monkeypatch.setattr(bench, "_make", make_with_the_old_bug)
    for case in ("tiny", "eval-b1"):
        assert bench.run(_args(cases=[case])) == 1
        out, err = capsys.readouterr()
        assert "mac bench: error:" in err and "disagree" in err or "chose other candidates" in err
        assert "| tiny |" not in out  # nothing timed, no table


@pytest.mark.parametrize("kind,case", [("imagine", "tiny"), ("best_of_n", "eval-b1")])
def test_agreement_check_catches_a_slightly_wrong_native_core(kind, case, monkeypatch):
    """A native result off by 1e-3 (~100x float32 error at these magnitudes) is a disagreement."""
    from mac import _cpu_core
    k, B, H, N, S, C, hidden = bench.CASES[case]
    nets, states, noise = bench._make(k, min(B, 16), H, N, S, C, hidden, 0)
    assert "agrees" in bench.check_agreement(case, k, nets, states, noise, H, N, 0)
    real = getattr(_cpu_core, kind)

    def off(*a, **kw):
        out = real(*a, **kw)
        field = "states" if kind == "imagine" else "scores"
        getattr(out, field)[-1].add_(1e-3)
        return out

    monkeypatch.setattr(_cpu_core, kind, off)
    with pytest.raises(bench.Disagreement, match="disagree"):
        bench.check_agreement(case, k, nets, states, noise, H, N, 0)


def test_theoretical_peak_is_cores_times_clock_times_flop_per_cycle(monkeypatch):
    t = bench.theoretical_peak(1, "avx512")
    assert t["flop_per_cycle"] == 16 * 2 * bench.FMA_PIPES and t["cores"] == 1
    assert t["clock_source"]
    if t["ghz"] is not None:
        assert t["gflops"] == pytest.approx(t["cores"] * t["ghz"] * t["flop_per_cycle"])
    assert bench.theoretical_peak(10 ** 6, "avx2")["cores"] == t["physical_cores"]  # capped
    monkeypatch.setattr(bench, "_cpu_clock", lambda: (None, "unknown (test)"))
    peak = {"theoretical": bench.theoretical_peak(1, "generic")}
    assert peak["theoretical"]["gflops"] is None and "unknown" in bench._theory_line(peak)
    monkeypatch.setattr(bench, "_cpu_clock", lambda: (3.0, "cpufreq cpuinfo_max_freq (test)"))
    t = bench.theoretical_peak(1, "avx2")
    assert t["gflops"] == pytest.approx(3.0 * 8 * 2 * bench.FMA_PIPES)
    assert "cpufreq cpuinfo_max_freq (test)" in bench._theory_line({"theoretical": t})


def test_the_timed_training_step_takes_agent_flags_as_mac_train_does():
    """`mac bench --agent.<key>=<value>` times the preset with that setting changed, and says so."""
    from mac.config import preset
    cfg = bench.train_step_config("cpu", ["--agent.num_samples_train=4", "--agent.lr=0.001"])
    assert (cfg.num_samples_train, cfg.lr) == (4, 0.001)
    assert cfg.hidden_dims == preset("cpu").hidden_dims and cfg.batch_size == preset("cpu").batch_size
    assert bench.train_step_config("cpu", ["--agent.num_samples_train=4"], {"num_samples_train": 2}).num_samples_train == 2
    table = bench.train_step_table("cpu", 1, 0, agent_flags=["--agent.num_samples_train=4"])
    assert "N=4," in table and "with --agent.num_samples_train=4" in table
    assert "N=8," in bench.train_step_table("cpu", 1, 0)


def test_mac_bench_refuses_an_unknown_agent_setting(capsys):
    from mac.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--agent.num_samples_trian=4"])
    assert exc.value.code == 2
    assert "unknown agent setting --agent.num_samples_trian" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--agent.num_samples_train=0"], "num_samples_train"),          # a value the config refuses
    (["--agent.lr=fast"], "lr"),                                      # a value of the wrong type
    (["--agent.num_samples_train=4", "--train-step", "none"], "--train-step none"),
])
def test_mac_bench_refuses_bad_agent_values_before_timing_anything(argv, message, capsys, monkeypatch):
    """The values are checked at parse time: no rollout case is timed first and then thrown away."""
    from mac import bench, bench_cuda
    from mac.cli import main

    def timed(*_):
        raise AssertionError("a benchmark ran before its arguments were checked")
    monkeypatch.setattr(bench, "run", timed)
    monkeypatch.setattr(bench_cuda, "run_cuda_bench", timed)
    with pytest.raises(SystemExit) as exc:
        main(["bench", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_the_cuda_bench_options_carry_the_agent_flags():
    from mac import bench_cuda
    opts = bench_cuda.options_from_args(argparse.Namespace(quick=True, agent_flags=["--agent.num_samples_train=4"]))
    assert opts.agent_flags == ("--agent.num_samples_train=4",)
    assert bench.train_step_config(opts.train_step, opts.agent_flags, opts.train_overrides).num_samples_train == 4
