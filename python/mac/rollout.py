"""The fast-path API: best-of-N action selection and batched imagined rollouts.

``backend="torch"`` is the pure-PyTorch reference twin of the native kernels (:mod:`mac.reference`,
also the oracle of the tests and of :mod:`mac.selfcheck`; both sit below this module); ``"cpu"`` and
``"cuda"`` are the fused native cores; ``"auto"`` picks the native CPU core for CPU tensors when it is
available and can run the networks (on CUDA tensors the reference, see ``AUTO_USES_CUDA_KERNELS``)
(see :func:`native_unsupported`; ``mac.config.native_rollout_supported`` answers the same from an
AgentConfig), else the reference.

Noise: give ``noise`` explicitly, or a ``seed`` (the shared Philox stream of :mod:`mac.noise`, the same
numbers on every backend), or neither (the reference draws from torch's global generator; native
backends draw a seed from it), so runs are reproducible from torch's RNG state alone.
"""

from __future__ import annotations

import os

import torch

from mac import precision as precision_api
from mac.config import CUDA_MAX_LAYERS
from mac.nets import MLP, GaussianActor
from mac.noise import check_seed, philox_normal
# The reference backend (mac.reference), re-exported as part of the rollout API.
from mac.reference import (best_of_n_reference, candidate_scores, candidates,  # noqa: F401
                           imagine_reference, reward_and_mask, select_best)
from mac.results import BestOfN, Rollout  # noqa: F401  (re-exported: part of the rollout API)

BACKENDS = ("auto", "torch", "cpu", "cuda")


# ------------------------------------------------------------------------------------ validation

def _check_net(name: str, net, in_dim: int, out_dim: int, device, dtype) -> None:
    if not isinstance(net, MLP):
        raise TypeError(f"{name} must be a mac.nets.MLP, got {type(net).__name__}")
    if net.in_dim != in_dim or net.out_dim != out_dim:
        raise ValueError(f"{name} maps {net.in_dim} -> {net.out_dim}, but these inputs need "
                         f"{in_dim} -> {out_dim}")
    p = net.layers[0].weight
    if p.device != device:
        raise ValueError(f"{name} is on {p.device} but the states are on {device}; move one of them")
    if p.dtype != dtype:
        raise TypeError(f"{name} has dtype {p.dtype} but the states are {dtype}")


def _check_inputs(states, goals, actor, critic, num_samples):
    if not isinstance(states, torch.Tensor):
        raise TypeError(f"states must be a torch.Tensor, got {type(states).__name__}")
    if states.dim() != 2:
        raise ValueError(f"states must have shape (B, S), got {tuple(states.shape)}")
    if not states.is_floating_point():
        raise TypeError(f"states must be floating point, got {states.dtype}")
    B, S = states.shape
    if B < 1 or S < 1:
        raise ValueError(f"states must be non-empty, got shape {tuple(states.shape)}")
    G = 0
    if goals is not None:
        if not isinstance(goals, torch.Tensor):
            raise TypeError(f"goals must be a torch.Tensor or None, got {type(goals).__name__}")
        if goals.dim() != 2 or goals.shape[0] != B:
            raise ValueError(f"goals must have shape (B={B}, G), got {tuple(goals.shape)}")
        if goals.device != states.device or goals.dtype != states.dtype:
            raise ValueError(f"goals ({goals.dtype}, {goals.device}) must match states "
                             f"({states.dtype}, {states.device})")
        G = goals.shape[1]
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if isinstance(actor, GaussianActor):     # [s, g] -> tanh-Gaussian over chunks (no noise input)
        C = actor.out_dim
        _check_net("actor", actor.net, S + G, 2 * C, states.device, states.dtype)
    elif isinstance(actor, MLP):              # the one-step actor [s, g, z] -> chunk
        C = actor.out_dim
        _check_net("actor", actor, S + G + C, C, states.device, states.dtype)
    else:
        raise TypeError(f"actor must be a mac.nets.MLP or GaussianActor, got {type(actor).__name__}")
    _check_net("critic", critic, S + G + C, 1, states.device, states.dtype)
    return B, S, G, C


def _check_noise(noise, shape, states):
    if noise is None:
        return
    if not isinstance(noise, torch.Tensor):
        raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise must have shape {tuple(shape)}, got {tuple(noise.shape)}")
    if noise.device != states.device or noise.dtype != states.dtype:
        raise ValueError(f"noise ({noise.dtype}, {noise.device}) must match states "
                         f"({states.dtype}, {states.device})")




def native_unsupported(nets: dict, backend: str) -> str | None:
    """Why the native ``backend`` ("cpu" | "cuda") cannot run these networks, or None if it can.
    ``nets``: name -> MLP or None. The native cores fuse Linear -> GELU -> LayerNorm in every hidden
    layer, so a network built with ``layer_norm=False`` needs the PyTorch reference."""
    for name, net in nets.items():
        if net is None:
            continue
        if isinstance(net, GaussianActor):
            return (f"{name} is a tanh-Gaussian chunk policy (actor_type=gaussian) and the native cores "
                    "run the flow one-step actor")
        if not getattr(net, "layer_norm", True):
            return (f"{name} has no LayerNorm (layer_norm=False) and the native cores fuse "
                    "Linear -> GELU -> LayerNorm in every hidden layer")
        if backend == "cuda" and len(net.hidden_dims) + 1 > CUDA_MAX_LAYERS:
            return (f"{name} has {len(net.hidden_dims) + 1} layers; the CUDA core supports at most "
                    f"{CUDA_MAX_LAYERS} (hidden layers + head)")
    return None


# "auto" on CUDA tensors runs the torch reference, not the CUDA kernels: on their first GPU run
# (H200, benchmarks/gpu_check.sh, docs/CUDA.md) they passed every GPU test but ran at 0.23-0.66x the
# speed of torch eager at the paper's shapes. Until a faster path is measured, the kernels run only
# when asked for (backend="cuda", or MAC_AUTO_CUDA_KERNELS=1 for "auto").
AUTO_USES_CUDA_KERNELS = os.environ.get("MAC_AUTO_CUDA_KERNELS", "0") == "1"


_cuda_proofs: dict[int, bool] = {}


def _cuda_proven(device: torch.device) -> bool:
    """Whether the CUDA kernels passed mac.selfcheck on ``device`` in this process (run once per
    device, before "auto" first uses them). On a mismatch or any CUDA error: one warning, and "auto"
    uses the torch reference on that device from then on."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _cuda_proofs:
        import warnings

        from mac import selfcheck
        failed = [r for r in selfcheck.check_backend("cuda", torch.device("cuda", index)) if not r.passed]
        _cuda_proofs[index] = not failed
        if failed:
            warnings.warn(f"mac: the CUDA kernels failed their check on cuda:{index} "
                          f"({failed[0].case}: {failed[0].detail}); backend='auto' uses the torch "
                          "reference on this device (run `mac info --check` for the full report)",
                          RuntimeWarning, stacklevel=3)
    return _cuda_proofs[index]


def _native_core(backend: str):
    """The module that runs ``backend`` ("cpu" or "cuda"); imported on first use."""
    if backend == "cpu":
        from mac import _cpu_core
        return _cpu_core
    from mac import _cuda_core
    return _cuda_core


def _resolve_backend(backend: str, states: torch.Tensor, nets: dict | None = None) -> str:
    """The backend to run: "auto" picks the native core of the states' device when it is built and
    can serve ``nets``, else the reference; an explicit native backend that cannot raises."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    from mac import _native
    nets = nets or {}
    if backend == "auto":
        if (states.device.type == "cpu" and _native.cpu_backend_ready(states)
                and native_unsupported(nets, "cpu") is None):
            return "cpu"
        if (states.device.type == "cuda" and AUTO_USES_CUDA_KERNELS and _native.cuda_backend_ready(states)
                and native_unsupported(nets, "cuda") is None and _cuda_proven(states.device)):
            return "cuda"
        return "torch"
    if backend in ("cpu", "cuda"):
        why = native_unsupported(nets, backend)
        if why is not None:
            raise ValueError(f"backend={backend!r} cannot run these networks: {why}; use backend='torch' "
                             "or 'auto' (which falls back to it)")
    if backend == "cpu":
        if states.device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, got {states.device}")
        _native.require_cpu_backend(states)
    if backend == "cuda":
        if states.device.type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors, got {states.device}")
        _native.require_cuda_backend(states)
    return backend


def _noise_or_seed(noise, seed, shape, states):
    """Returns (noise, seed) with exactly one usable for the reference backend."""
    if noise is not None and seed is not None:
        raise ValueError("give either noise or seed, not both")
    if seed is not None:
        seed = check_seed(seed)
    _check_noise(noise, shape, states)
    return noise, seed


def _reference_noise(noise, seed, shape, states) -> torch.Tensor:
    """The explicit noise, else the Philox stream of ``seed``, else torch's global generator."""
    if noise is not None:
        return noise
    if seed is not None:
        return philox_normal(seed, shape, device=states.device, dtype=states.dtype)
    return torch.randn(shape, device=states.device, dtype=states.dtype)


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A 63-bit seed from torch's (global or given) CPU generator."""
    return int(torch.randint(0, 2 ** 63 - 1, (), generator=generator, dtype=torch.int64))


# ------------------------------------------------------------------------------------ public API

@torch.no_grad()
def best_of_n(states, goals=None, *, actor, critic, num_samples, noise=None, seed=None,
              backend="auto", precision=None) -> BestOfN:
    """Pick, per row, the actor candidate with the highest critic value.

    states (B, S), goals (B, G) or None; candidates c_i = clip(actor([s, g, z_i]), -1, 1) with
    z_i ~ N(0, I) given as ``noise`` (N, B, C) or drawn from ``seed``; returns the argmax of
    critic([s, g, c_i]) over i (ties to the lowest index, NaN never wins). A
    :class:`~mac.nets.GaussianActor` gives c_i = clip(tanh(mean + std z_i), -1, 1) instead (the
    PyTorch reference only). ``num_samples=1`` is the single sample of the policy (extraction=q_gradient).
    ``precision``: "fp32" | "bf16" | "auto" (None: :func:`mac.precision.get_precision`), see
    :mod:`mac.precision`; outputs are in the states' dtype either way.
    """
    B, S, G, C = _check_inputs(states, goals, actor, critic, num_samples)
    shape = (num_samples, B, C)
    noise, seed = _noise_or_seed(noise, seed, shape, states)
    prec = precision_api.resolve(precision, states.device)
    backend = _resolve_backend(backend, states, {"actor": actor, "critic": critic})
    if backend != "torch" and noise is None and seed is None:
        seed = draw_seed()  # native cores draw their own noise from a seed of torch's generator
    if backend == "torch":
        with precision_api.autocast(prec, states.device):
            res = best_of_n_reference(states, goals, actor, critic, _reference_noise(noise, seed, shape, states))
        return _in_dtype(res, states.dtype)
    return _native_core(backend).best_of_n(states, goals, actor, critic, num_samples, noise, seed,
                                           **_native_precision(backend, prec, B * num_samples))


@torch.no_grad()
def mlp_forward(net, x: torch.Tensor, backend="auto", precision=None) -> torch.Tensor:
    """``net(x)`` without gradient, x (..., in) -> (..., out) in x's dtype: on the native CPU core where
    ``backend`` resolves to it (auto: CPU tensors, a built core, a network it runs), else torch (under
    bf16 autocast with ``precision`` bf16). Serves the inference passes of a training step, e.g. the K
    Euler steps of the flow teacher and the value targets."""
    prec = precision_api.resolve(precision, x.device)
    backend = _resolve_backend(backend, x, {"net": net})
    if backend != "cpu":
        with precision_api.autocast(prec, x.device):
            return net(x).to(x.dtype)
    rows = x.reshape(-1, x.shape[-1])
    return _native_core("cpu").mlp_forward(net, rows, **_native_precision("cpu", prec, rows.shape[0])
                                           ).view(*x.shape[:-1], -1)


@torch.no_grad()
def imagine(states, goals=None, *, actor, critic, dynamics, reward=None, success=None, steps,
            num_samples, noise=None, seed=None, backend="auto", precision=None) -> Rollout:
    """Imagined rollout of ``steps`` chunk-model calls with best-of-N action selection.

    Per step k: a_k = best_of_n(s_k); r_k, m_k from the reward/success nets (goal tasks, i.e.
    ``reward=None``: r = success - 1, m = 1 - success; reward tasks: r = reward, m = 1 - success, or 1
    without a success net); s_{k+1} = s_k + dynamics([s_k, a_k]). ``noise``: (steps, N, B, C).
    ``precision`` as in :func:`best_of_n`.
    """
    B, S, G, C = _check_inputs(states, goals, actor, critic, num_samples)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    _check_net("dynamics", dynamics, S + C, S, states.device, states.dtype)
    if reward is not None:
        _check_net("reward", reward, S + G + C, 1, states.device, states.dtype)
    if success is not None:
        _check_net("success", success, S + G + C, 1, states.device, states.dtype)
    shape = (steps, num_samples, B, C)
    noise, seed = _noise_or_seed(noise, seed, shape, states)
    prec = precision_api.resolve(precision, states.device)
    backend = _resolve_backend(backend, states, {"actor": actor, "critic": critic, "dynamics": dynamics,
                                                 "reward": reward, "success": success})
    if backend != "torch" and noise is None and seed is None:
        seed = draw_seed()
    if backend == "torch":
        with precision_api.autocast(prec, states.device):
            res = imagine_reference(states, goals, actor, critic, dynamics, reward, success,
                                    _reference_noise(noise, seed, shape, states))
        return _in_dtype(res, states.dtype)
    return _native_core(backend).imagine(states, goals, actor, critic, dynamics, reward, success,
                                         steps, num_samples, noise, seed,
                                         **_native_precision(backend, prec, B * num_samples * steps))


# The CPU core's bf16 mode converts every weight to bf16 per call (weights are read in place, so
# nothing can go stale); below this many rows through each network per call the conversion costs
# more than the bf16 dot products save, and the call runs in float32 (more accurate, and faster):
# best-of-32 for one state (32 rows) ran at 0.91x its float32 speed in bf16, for 64 states (2048
# rows) at 1.59x (Zen 5, benchmarks/RESULTS.md, "bf16 on AVX512-BF16"); the break-even estimated
# from those is ~150 rows.
BF16_MIN_ROWS = 256


def _native_precision(backend: str, precision: str, rows: int) -> dict:
    """The native core's keyword for a resolved precision: the CPU core's bf16 mode (from
    BF16_MIN_ROWS rows per call: ``rows`` = rows through each network, steps included), or the CUDA
    core's tensor-core operands (fp32 -> its default, TF32, as torch's matmuls under --cuda_matmul tf32)."""
    if backend == "cpu":
        return {"bf16": precision == "bf16" and rows >= BF16_MIN_ROWS}
    return {"precision": "bf16" if precision == "bf16" else None}


def _in_dtype(result, dtype):
    """A BestOfN / Rollout with its floating tensors in ``dtype`` (autocast leaves some in bf16)."""
    return type(result)(*(t.to(dtype) if t.is_floating_point() else t for t in result))
