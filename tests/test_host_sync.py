"""A training step never reads a value back to the host (issue 20): on a GPU each read waits for all the
queued work, and the host then cannot queue the next kernels meanwhile.

On the CPU every way a tensor's value reaches Python (``item``, ``tolist``, ``float()``, ``bool()``,
``numpy`` ...) is counted during :meth:`MACAgent.update` with the settings a CUDA run uses (the torch
rollout, which ``auto`` picks for CUDA tensors, and fused Adam); on a GPU torch's own sync detector
(``torch.cuda.set_sync_debug_mode``) watches a real step. The logged values are read once, at log
steps, by :func:`mac.agent.fetch_floats`.
"""

from __future__ import annotations

import contextlib
import traceback

import numpy as np
import pytest
import torch

from mac import agent as agent_module
from mac.agent import MACAgent, fetch_floats
from mac.batches import to_device
from test_agent import A, S, batch, tiny_config

# Each of these hands a tensor's value to Python: on CUDA a device-to-host copy that waits for the GPU.
HOST_READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__",
              "__array__", "__format__")

SETTINGS = {"reward task": (0, {}), "goal task": (3, {}),
            "q_gradient": (3, dict(extraction="q_gradient")),
            "gaussian": (0, dict(actor_type="gaussian")),
            "bce, lam < 1": (3, dict(value_loss="bce", gc_negative=False, lam=0.5)),
            "no target network": (0, dict(target_network=False))}


@contextlib.contextmanager
def counting_host_reads(monkeypatch):
    """Yields a list that gets one "name from file:line" per host read of a tensor meanwhile."""
    reads: list[str] = []

    def counted(name, real):
        def read(self, *args, **kwargs):
            caller = next((f for f in reversed(traceback.extract_stack()[:-1])
                           if "/mac/" in f.filename or "/tests/" in f.filename), None)
            reads.append(f"{name} from {caller.filename}:{caller.lineno}" if caller else name)
            return real(self, *args, **kwargs)
        return read

    with monkeypatch.context() as m:
        for name in HOST_READS:
            m.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
        yield reads


@pytest.fixture
def cuda_like_adam(monkeypatch):
    """Fused Adam on the CPU as on CUDA: torch's CPU default keeps its step counts on the host and
    reads them with item() (harmless there, and what FUSED_ADAM_DEVICES avoids on CUDA)."""
    monkeypatch.setattr(agent_module, "FUSED_ADAM_DEVICES", ("cpu", "cuda"))


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_a_training_step_reads_nothing_back(setting, monkeypatch, cuda_like_adam):
    goal_dim, overrides = SETTINGS[setting]
    agent = MACAgent(S, A, goal_dim, tiny_config(rollout_backend="torch", **overrides))
    agent.update(batch(goal_dim=goal_dim, seed=0))          # the first step creates the Adam state
    with counting_host_reads(monkeypatch) as reads:
        info = agent.update(batch(goal_dim=goal_dim, seed=1))
    assert reads == [], f"{len(reads)} host reads in one training step:\n" + "\n".join(reads)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in info.values())
    assert agent.optimizer.param_groups[0]["fused"]


def test_logged_values_are_fetched_in_one_transfer_as_the_same_floats(monkeypatch):
    torch.manual_seed(0)
    agent = MACAgent(S, A, 3, tiny_config(extraction="q_gradient"))
    info = agent.update(batch(goal_dim=3))
    info["threads"] = 2                                      # numbers pass through (train.py adds it)
    with counting_host_reads(monkeypatch) as reads:
        fetched = fetch_floats(info)
    assert [r.split()[0] for r in reads] == ["tolist"]
    assert list(fetched) == list(info)
    want = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in info.items()}
    assert fetched == want and all(type(v) is float for k, v in fetched.items() if k != "threads")
    assert fetch_floats({"threads": 1}) == {"threads": 1}


def test_eval_losses_are_floats():
    agent = MACAgent(S, A, 0, tiny_config())
    assert all(type(v) is float for v in agent.eval_losses(batch()).values())


def test_adam_follows_the_parameters_device_and_keeps_its_step_count(monkeypatch):
    """Unfused (the CPU's default) -> fused -> unfused, as a checkpoint saved on one device and loaded
    on another: the step counts move with the flag and keep counting."""
    agent = MACAgent(S, A, 0, tiny_config())
    agent.update(batch(seed=0))
    group, state = agent.optimizer.param_groups[0], agent.optimizer.state
    assert not group["fused"] and all(s["step"].device.type == "cpu" for s in state.values())
    monkeypatch.setattr(agent_module, "FUSED_ADAM_DEVICES", ("cpu",))
    agent.update(batch(seed=1))
    assert group["fused"] and all(s["step"].dtype == torch.float32 and float(s["step"]) == 2
                                  for s in state.values())
    monkeypatch.setattr(agent_module, "FUSED_ADAM_DEVICES", ("cuda",))
    agent.update(batch(seed=2))
    assert group["fused"] is None and all(float(s["step"]) == 3 for s in state.values())
    assert all(torch.isfinite(p).all() for p in agent.parameters())


def test_polyak_moves_every_target_tensor_as_lerp():
    agent = MACAgent(S, A, 0, tiny_config(tau=0.3))
    with torch.no_grad():
        for p in agent.value.parameters():
            p.add_(torch.randn_like(p))
    want = [t.detach().lerp(v.detach(), 0.3) for t, v in zip(agent.target_value.parameters(),
                                                              agent.value.parameters())]
    agent.polyak_update()
    for got, w in zip(agent.target_value.parameters(), want):
        assert torch.equal(got, w)


def test_batches_reach_the_cpu_without_a_copy():
    arrays = {"observations": np.ones((4, 3), np.float32), "index": np.arange(4)}
    out = to_device(arrays, "cpu")
    assert list(out) == ["observations"]                     # only the float32 arrays
    assert out["observations"].data_ptr() == arrays["observations"].ctypes.data


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_a_training_step_never_synchronises():
    """torch's sync detector over a real CUDA step: batch copy (pinned, asynchronous), losses, fused
    Adam, Polyak. Then the one read of the logged values agrees with the values."""
    device = torch.device("cuda")
    for goal_dim, overrides in SETTINGS.values():
        agent = MACAgent(S, A, goal_dim, tiny_config(rollout_backend="auto", **overrides)).to(device)
        host = {k: v.numpy() for k, v in batch(goal_dim=goal_dim).items()}
        agent.update(to_device(host, device))                  # warm-up: lazy CUDA init, Adam state
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            info = agent.update(to_device(host, device))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert agent.optimizer.param_groups[0]["fused"]
        fetched = fetch_floats(info)
        assert fetched == {k: float(v) for k, v in info.items()}
