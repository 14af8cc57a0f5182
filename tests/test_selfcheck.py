"""`mac info --check` and the once-per-device proof that guards "auto" before it may use CUDA kernels."""

import types
import warnings

import pytest
import torch

from mac import _cpu_core, _native, rollout, selfcheck
from mac.cli import main as cli


def test_mac_info_check_passes_on_this_cpu(capsys):
    assert cli(["info", "--check"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == len(selfcheck.CASES) and "FAIL" not in out


@pytest.mark.parametrize("what", ["chunks", "next states"])
def test_a_wrong_core_fails_the_check(monkeypatch, what):
    """A core that is off by 1e-3 (far beyond float32 rounding) must be reported, with the output."""
    if what == "chunks":
        real = _cpu_core.best_of_n

        def wrong(*a, **k):
            r = real(*a, **k)
            return r._replace(chunks=(r.chunks + 1e-3).clamp(-1, 1))
        monkeypatch.setattr(_cpu_core, "best_of_n", wrong)
        case = selfcheck.CASES[1]
    else:
        real = _cpu_core.imagine

        def wrong(*a, **k):
            r = real(*a, **k)
            return r._replace(states=r.states + 1e-3)
        monkeypatch.setattr(_cpu_core, "imagine", wrong)
        case = selfcheck.CASES[3]
    res = selfcheck.check_case("cpu", case, torch.device("cpu"), "fp32")
    assert not res.passed and what in res.detail


def test_auto_uses_cuda_kernels_only_after_they_pass_on_that_device(monkeypatch):
    fake = types.SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float32)
    monkeypatch.setattr(_native, "cuda_backend_ready", lambda states: True)
    monkeypatch.setattr(rollout, "AUTO_USES_CUDA_KERNELS", True)
    monkeypatch.setattr(rollout, "_cuda_proofs", {})
    calls = []

    def failing(backend, device=None):
        calls.append(device)
        return [selfcheck.CheckResult("cuda", "case", False, "chunks: error 1 against float64")]
    monkeypatch.setattr(selfcheck, "check_backend", failing)
    with pytest.warns(RuntimeWarning, match="failed their check on cuda:0"):
        assert rollout._resolve_backend("auto", fake) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # one warning only, one check only
        assert rollout._resolve_backend("auto", fake) == "torch"
    assert len(calls) == 1
    monkeypatch.setattr(rollout, "_cuda_proofs", {})
    monkeypatch.setattr(selfcheck, "check_backend",
                        lambda backend, device=None: [selfcheck.CheckResult("cuda", "case", True, "")])
    assert rollout._resolve_backend("auto", fake) == "cuda"
