"""--precision fp32|bf16|auto (mac.precision): resolution and its errors, the rollout API on each
engine, the training step's autocast, and the CLI. The bf16 arithmetic itself is judged against
float64 in tests/test_native_cpu.py (the native bf16 mode's error model)."""

from __future__ import annotations

import csv

import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import cpu_has_bf16
from mac import precision as P
from mac import rollout as R
from mac.agent import MACAgent
from test_agent import A, S as AGENT_S, batch, tiny_config
from test_rollout import C, G, S, nets

NO_BF16 = "no AVX512-BF16 on this CPU: the bf16 mode is refused here"


@pytest.fixture
def bf16_unit(monkeypatch):
    """A CPU that reports a bf16 unit (torch's CPU autocast runs everywhere: the torch engine's bf16
    path can be tested on any CPU; the native core's needs the real unit)."""
    monkeypatch.setattr(P, "cpu_bf16_unit", lambda: "AVX512-BF16")


@pytest.fixture
def no_bf16_unit(monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_unit", lambda: None)


# ------------------------------------------------------------------------------------ resolution

@settings(max_examples=40, deadline=None)
@given(st.one_of(st.text(max_size=6), st.none(), st.integers()))
def test_only_the_three_precisions_are_accepted(value):
    if value in P.PRECISIONS:
        assert P.check_precision(value) == value
    else:
        with pytest.raises(ValueError, match="fp32, bf16, auto"):
            P.check_precision(value)


def test_auto_is_bf16_only_on_a_unit_listed_as_checked(bf16_unit, monkeypatch):
    monkeypatch.setattr(P, "AUTO_BF16_UNITS", ())
    assert P.resolve("auto", "cpu") == "fp32"
    monkeypatch.setattr(P, "AUTO_BF16_UNITS", ("AVX512-BF16",))
    assert P.resolve("auto", "cpu") == "bf16"
    assert P.resolve("fp32", "cpu") == "fp32" and P.resolve("bf16", "cpu") == "bf16"
    monkeypatch.setattr(P, "cpu_bf16_unit", lambda: "AMX")    # a unit the check has not covered
    assert P.resolve("auto", "cpu") == "fp32"


def test_auto_lists_exactly_the_units_the_learning_check_passed_on():
    """benchmarks/bf16_learning_check.sh passed on AVX512-BF16 (2026-12-07, benchmarks/RESULTS.md);
    AMX (oneDNN's tiles under autocast) is unchecked. A unit added here needs its own check."""
    assert P.AUTO_BF16_UNITS == ("AVX512-BF16",)


def test_mac_train_defaults_to_auto_and_a_resume_keeps_its_own(tmp_path):
    """The main job takes the fastest precision known to be safe on the machine; a run started
    before that default (flags.json: fp32) resumes as it was started, unless told otherwise."""
    import json

    from mac.train import adopt_run_flags, parse_train_args
    assert parse_train_args([])[0].precision == "auto"
    (tmp_path / "flags.json").write_text(json.dumps({"args": {"precision": "fp32"}}))
    args = parse_train_args([])[0]
    assert adopt_run_flags(args, set(), tmp_path) == {"precision": "fp32"} and args.precision == "fp32"
    args = parse_train_args(["--precision", "bf16"])[0]
    assert adopt_run_flags(args, {"precision"}, tmp_path) == {} and args.precision == "bf16"


def test_bf16_without_a_unit_is_refused_with_the_reason(no_bf16_unit):
    with pytest.raises(ValueError, match="needs a bf16 matrix unit: a CPU with AVX512-BF16"):
        P.resolve("bf16", "cpu")
    assert P.resolve("auto", "cpu") == "fp32"
    states = torch.zeros(2, S)
    n = nets()
    with pytest.raises(ValueError, match="needs a bf16 matrix unit"):
        R.best_of_n(states, torch.zeros(2, G), actor=n["actor"], critic=n["critic"], num_samples=2,
                    seed=0, precision="bf16")


def test_the_default_is_fp32_and_precision_mode_restores_it(bf16_unit):
    assert P.get_precision() == "fp32"
    with P.precision_mode("bf16"):
        assert P.get_precision() == "bf16" and P.resolve(None, "cpu") == "bf16"
    assert P.get_precision() == "fp32"


# ------------------------------------------------------------------------------------ rollout API

def _inputs(B=6):
    g = torch.Generator().manual_seed(4)
    return torch.randn(B, S, generator=g), torch.randn(B, G, generator=g)


def test_torch_engine_in_bf16_is_the_reference_under_autocast(bf16_unit):
    """backend=torch, precision=bf16: bitwise the reference under torch.autocast(bfloat16), returned in
    the states' dtype; and not the float32 numbers."""
    n = nets()
    states, goals = _inputs()
    noise = torch.randn(2, 3, 6, C, generator=torch.Generator().manual_seed(1))
    got = R.imagine(states, goals, **n, steps=2, num_samples=3, noise=noise, backend="torch", precision="bf16")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        want = R.imagine_reference(states, goals, n["actor"], n["critic"], n["dynamics"], n["reward"],
                                   n["success"], noise)
    for name, a, b in zip(got._fields, got, want):
        assert a.dtype == (torch.int64 if name == "indices" else torch.float32), name
        torch.testing.assert_close(a, b.to(a.dtype), rtol=0, atol=0, msg=name)
    fp32 = R.imagine(states, goals, **n, steps=2, num_samples=3, noise=noise, backend="torch")
    assert not torch.equal(got.states, fp32.states)
    torch.testing.assert_close(got.states, fp32.states, rtol=0.1, atol=0.1)   # bf16: ~3 significant digits

    x = torch.cat([states, goals, torch.rand(6, C)], dim=-1)
    out = R.mlp_forward(n["critic"], x, backend="torch", precision="bf16")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        torch.testing.assert_close(out, n["critic"](x).float(), rtol=0, atol=0)
    assert out.dtype == torch.float32


@pytest.mark.skipif(not cpu_has_bf16(), reason=NO_BF16)
def test_native_engine_in_bf16_is_the_cores_bf16_mode_from_its_minimum_rows():
    """precision=bf16 on the native core: its bf16 mode where a call puts at least R.BF16_MIN_ROWS
    rows through each network (steps included), float32 below (the per-call weight conversion would
    cost more than it saves); fp32 and the default: float32."""
    from mac import _cpu_core

    n = nets()
    B, N = 43, 3                                              # 129 rows a step
    states, goals = _inputs(B)
    for steps, prec, bf16 in ((2, "bf16", True), (1, "bf16", False), (2, "fp32", False), (2, None, False)):
        got = R.imagine(states, goals, **n, steps=steps, num_samples=N, seed=7, backend="cpu", precision=prec)
        want = _cpu_core.imagine(states, goals, n["actor"], n["critic"], n["dynamics"], n["reward"],
                                 n["success"], steps, N, None, 7, bf16=bf16)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    for n_samples, bf16 in ((6, True), (5, False)):           # 258 and 215 rows
        best = R.best_of_n(states, goals, actor=n["actor"], critic=n["critic"], num_samples=n_samples,
                           seed=7, backend="cpu", precision="bf16")
        ref = _cpu_core.best_of_n(states, goals, n["actor"], n["critic"], n_samples, None, 7, bf16=bf16)
        torch.testing.assert_close(best.chunks, ref.chunks, rtol=0, atol=0)
    actor = n["actor"]                                        # (16, 16): one bf16 (hidden->hidden) layer
    for rows, bf16 in ((256, True), (255, False)):
        x = torch.randn(rows, S + G + C)
        torch.testing.assert_close(R.mlp_forward(actor, x, backend="cpu", precision="bf16"),
                                   _cpu_core.mlp_forward(actor, x, bf16=bf16), rtol=0, atol=0)
    assert not torch.equal(_cpu_core.mlp_forward(actor, x, bf16=True),
                           _cpu_core.mlp_forward(actor, x))         # the two modes differ here


# ------------------------------------------------------------------------------------ training step

def _first_update(precision):
    torch.manual_seed(0)
    agent = MACAgent(AGENT_S, A, 0, tiny_config())
    with P.precision_mode(precision):
        info = {k: float(v) for k, v in agent.update(batch()).items()}
    return agent, info


def test_a_bf16_step_keeps_float32_weights_state_and_losses(bf16_unit):
    agent, bf16 = _first_update("bf16")
    _, fp32 = _first_update("fp32")
    assert all(p.dtype == torch.float32 for p in agent.parameters())
    for state in agent.optimizer.state.values():
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    assert bf16.keys() == fp32.keys()
    # autocast ran in the differentiable part itself: the model losses involve no rollout
    assert bf16["loss/dynamics"] != fp32["loss/dynamics"] and bf16["loss/flow"] != fp32["loss/flow"]
    for k in fp32:                                           # and computed the same losses, roughly
        assert abs(bf16[k] - fp32[k]) <= 0.05 * abs(fp32[k]) + 0.02, (k, bf16[k], fp32[k])


# ------------------------------------------------------------------------------------ CLI

def test_train_refuses_bf16_without_a_unit(no_bf16_unit):
    from mac.train import set_run_precision
    with pytest.raises(SystemExit, match="--precision bf16: precision='bf16' needs a bf16 matrix unit"):
        set_run_precision("bf16", torch.device("cpu"))
    assert set_run_precision("auto", torch.device("cpu"), say=lambda *a, **k: None) == "fp32"


@pytest.mark.skipif(not cpu_has_bf16(), reason=NO_BF16)
def test_a_bf16_training_run_resumes_in_bf16(tiny_cube_dir, tmp_path, capsys):
    """`mac train --precision bf16`: says so, trains with the native core's bf16 mode, records the flag
    and a resume (without the flag) continues in bf16: the same curve as the straight run."""
    from test_train import TINY, run_train

    tiny = [f for f in TINY if not f.startswith("--agent.rollout_backend")] + ["--agent.rollout_backend=cpu"]
    try:
        straight = run_train(tiny_cube_dir, tmp_path, "straight", 4, *tiny, "--precision", "bf16")
        said = capsys.readouterr()
        assert "[mac] precision: bf16" in said.out + said.err
        assert P.get_precision() == "fp32"                   # the run's setting ends with the run
        half = run_train(tiny_cube_dir, tmp_path, "half", 2, *tiny, "--precision", "bf16")
        resumed = run_train(tiny_cube_dir, tmp_path, "x", 4, "--restore_path", str(half))
    finally:
        P.set_precision("fp32")

    def rows(run):
        with open(run / "train.csv", newline="") as f:
            return [(r["step"], r["loss/total"], r["loss/value"]) for r in csv.DictReader(f)]
    assert rows(resumed) == rows(straight)


# ------------------------------------------------------------------------------------ mac bench

def test_bench_adds_each_backends_bf16_twin():
    from mac.bench import precision_backends
    assert precision_backends(["native", "eager", "compile"], ["fp32"]) == ["native", "eager", "compile"]
    assert precision_backends(["native", "eager", "compile"], ["fp32", "bf16"]) == [
        "native", "native-bf16", "eager", "eager-bf16", "compile"]
    assert precision_backends(["native", "compile"], ["bf16"]) == ["native-bf16", "compile"]


def test_bench_bf16_peak_is_twice_the_fma_peak_where_there_is_a_unit(bf16_unit, monkeypatch):
    from mac.bench import bf16_peak
    value, how = bf16_peak({"gflops": 100.0})
    assert value == 200.0 and "AVX512-BF16" in how
    monkeypatch.setattr(P, "cpu_bf16_unit", lambda: None)
    assert bf16_peak({"gflops": 100.0}) == (None, "no bf16 unit")
