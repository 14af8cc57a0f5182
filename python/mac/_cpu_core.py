"""The native CPU backend of :mod:`mac.rollout` (``backend="cpu"``).

:mod:`mac._native` calls :func:`best_of_n` / :func:`imagine` after :mod:`mac.rollout` validated the
shapes, devices and dtypes. This module re-checks what the native code relies on (mac.nets.MLP
networks with matching layer sizes, float32, CPU), makes contiguous copies of non-contiguous
*inputs* only, allocates the outputs, and hands everything to ``mac._C`` as numpy views of the
tensors' memory (zero copy). Weights are read in place from the live parameters on every call, so
an optimiser step is seen by the next call; nothing is cached.

Threads: the OpenMP thread count is ``num_threads`` if given, else :func:`set_num_threads`'s value,
else ``torch.get_num_threads()`` (which follows ``OMP_NUM_THREADS``). The kernels release the GIL.
"""

from __future__ import annotations

from typing import Any

import torch

from mac.nets import MLP
from mac.noise import check_seed
from mac.results import BestOfN, Rollout

_num_threads: int | None = None
_isa: str = ""


def _ext():
    from mac._native import require_cpu_ext
    return require_cpu_ext()


def set_num_threads(n: int | None) -> None:
    """Threads used by the CPU core (None: follow ``torch.get_num_threads()``)."""
    global _num_threads
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_threads must be a positive int or None, got {n!r}")
    _num_threads = n


def get_num_threads() -> int:
    if _num_threads is not None:
        return _num_threads
    return max(1, int(torch.get_num_threads()))


def set_isa(isa: str | None) -> None:
    """Force an instruction-set copy of the kernels ("generic", "avx2", "avx512"; None/"auto" =
    the best this CPU has, honouring MAC_CPU_ISA). Never above what the CPU supports."""
    global _isa
    isa = "" if isa in (None, "auto") else isa
    if isa not in ("", "generic", "avx2", "avx512"):
        raise ValueError(f"isa must be one of None, 'auto', 'generic', 'avx2', 'avx512', got {isa!r}")
    _isa = isa


def active_isa(isa: str | None = None) -> str:
    """The ISA copy the next call would run."""
    return _ext().resolve_isa(_isa if isa is None else ("" if isa == "auto" else isa))


# ------------------------------------------------------------------------------------ conversion

def _as_input(name: str, t: torch.Tensor, shape=None):
    """A C-contiguous float32 CPU numpy view of ``t`` (a contiguous copy only if ``t`` is strided)."""
    from mac._native import contiguous_float32
    return contiguous_float32(name, t, "cpu", shape, core="native CPU").numpy()


def net_arrays(name: str, net: Any, in_dim: int, out_dim: int) -> list[tuple]:
    """The layers of ``net`` as (weight, bias, norm_weight, norm_bias) numpy views (None norms for
    the head), checked against the sizes this call needs."""
    from mac._native import checked_layers
    return [tuple(None if t is None else t.numpy() for t in layer)
            for layer in checked_layers(name, net, in_dim, out_dim, "cpu", core="native CPU")]


def _isa_arg(isa):
    return _isa if isa is None else ("" if isa == "auto" else isa)


def _threads(num_threads):
    n = get_num_threads() if num_threads is None else num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads must be a positive int, got {n!r}")
    return n


def _noise_args(noise, seed, shape):
    if (noise is None) == (seed is None):
        raise ValueError("exactly one of noise and seed must be given")
    if noise is not None:
        return _as_input("noise", noise, shape), None
    return None, check_seed(seed)


def _dims(states, goals, actor):
    if not isinstance(states, torch.Tensor) or states.dim() != 2:
        raise ValueError("states must be a (B, S) tensor")
    if not isinstance(actor, MLP):
        raise TypeError(f"actor must be a mac.nets.MLP, got {type(actor).__name__}")
    B, S = states.shape
    G = 0
    if goals is not None:
        if not isinstance(goals, torch.Tensor) or goals.dim() != 2 or goals.shape[0] != B:
            raise ValueError(f"goals must be a (B={B}, G) tensor or None")
        G = goals.shape[1]
    return B, S, G, actor.out_dim


def _goals(goals):
    """(B, 0) goals are the same as no goals."""
    if goals is None or goals.shape[1] == 0:
        return None
    return _as_input("goals", goals)


# ------------------------------------------------------------------------------------ entry points

def best_of_n(states, goals, actor, critic, num_samples, noise, seed, *, num_threads=None,
              isa=None, bf16=False, parallel="auto") -> BestOfN:
    """Native best-of-N; same semantics as :func:`mac.reference.best_of_n_reference`.

    ``num_threads``: OpenMP threads (default :func:`get_num_threads`); ``isa``: force an
    instruction-set copy; ``bf16``: opt-in bfloat16 dot products where the CPU has them;
    ``parallel``: "auto", or force "tiles" / "columns" parallelism (for tests)."""
    B, S, G, C = _dims(states, goals, actor)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    s = _as_input("states", states)
    g = _goals(goals)
    a = net_arrays("actor", actor, S + G + C, C)
    q = net_arrays("critic", critic, S + G + C, 1)
    z, seed = _noise_args(noise, seed, (num_samples, B, C))
    chunks = torch.empty(B, C, dtype=torch.float32)
    scores = torch.empty(B, dtype=torch.float32)
    indices = torch.empty(B, dtype=torch.int64)
    _ext().best_of_n(s, g, a, q, num_samples, z, seed, chunks.numpy(), scores.numpy(),
                     indices.numpy(), num_threads=_threads(num_threads),
                     isa=_isa_arg(isa), bf16=bool(bf16), parallel=parallel)
    return BestOfN(chunks, scores, indices)


def imagine(states, goals, actor, critic, dynamics, reward, success, steps, num_samples, noise, seed,
            *, num_threads=None, isa=None, bf16=False, parallel="auto") -> Rollout:
    """Native imagined rollout; same semantics as :func:`mac.reference.imagine_reference`."""
    B, S, G, C = _dims(states, goals, actor)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    s = _as_input("states", states)
    g = _goals(goals)
    a = net_arrays("actor", actor, S + G + C, C)
    q = net_arrays("critic", critic, S + G + C, 1)
    f = net_arrays("dynamics", dynamics, S + C, S)
    r = net_arrays("reward", reward, S + G + C, 1) if reward is not None else None
    c = net_arrays("success", success, S + G + C, 1) if success is not None else None
    z, seed = _noise_args(noise, seed, (steps, num_samples, B, C))
    out = Rollout(torch.empty(steps + 1, B, S), torch.empty(steps, B, C), torch.empty(steps, B),
                  torch.empty(steps, B), torch.empty(steps, B))
    _ext().imagine(s, g, a, q, f, r, c, steps, num_samples, z, seed,
                   *(t.numpy() for t in out), num_threads=_threads(num_threads),
                   isa=_isa_arg(isa), bf16=bool(bf16), parallel=parallel)
    return out


def parallel_plan(kind: str, B: int, S: int, G: int, C: int, num_samples: int, nets: dict,
                  steps: int = 1, *, num_threads=None, isa=None, parallel="auto") -> dict:
    """How :func:`best_of_n` (``kind="best_of_n"``) or :func:`imagine` would spread these sizes over
    threads: ``threads`` (1 below the core's work threshold under "auto"), ``team_bon`` /
    ``team_step`` (all threads on each tile, splitting layer outputs, vs whole tiles per thread) and
    the tile counts. ``nets``: name -> MLP or None. The kernels run exactly this plan."""
    sizes = {k: [(int(lay.weight.shape[1]), int(lay.weight.shape[0])) for lay in n.dense_layers()]
             for k, n in nets.items() if n is not None}
    return dict(_ext().parallel_plan(kind, B, S, G, C, num_samples, steps, sizes,
                                     num_threads=_threads(num_threads), isa=_isa_arg(isa),
                                     parallel=parallel))


def mlp_forward(net: MLP, x: torch.Tensor, *, num_threads=None, isa=None, parallel="auto",
                bf16=False) -> torch.Tensor:
    """One network on the rows of ``x`` (R, in) with the native core (used by tests/benchmarks)."""
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a mac.nets.MLP, got {type(net).__name__}")
    xa = _as_input("x", x)
    if xa.ndim != 2:
        raise ValueError("x must be (rows, in_dim)")
    arrays = net_arrays("net", net, x.shape[1], net.out_dim)
    y = torch.empty(x.shape[0], net.out_dim)
    _ext().mlp_forward(xa, arrays, y.numpy(), num_threads=_threads(num_threads), isa=_isa_arg(isa),
                       parallel=parallel, bf16=bool(bf16))
    return y


