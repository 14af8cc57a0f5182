"""Arithmetic precision of a run: ``fp32`` | ``bf16`` | ``auto`` (``mac train/eval/bench --precision``,
``precision=`` in :mod:`mac.rollout`).

bf16 means bf16 *operands* with float32 accumulation, and float32 everywhere else: master weights,
optimiser state, LayerNorm statistics, losses, returns. Concretely:
- the differentiable part of a training step runs under ``torch.autocast(dtype=torch.bfloat16)``
  (:func:`autocast`; torch keeps LayerNorm, softmax-like ops and losses in float32 there);
- the native CPU core's bf16 mode runs the hidden-to-hidden layers of every network (rollouts,
  best-of-N, the flow teacher, the value targets) as bf16 dot products (AVX512-BF16 ``vdpbf16ps``),
  the first layer and the head in float32;
- the CUDA core takes bf16 tensor-core operands; the torch reference runs under autocast.

``auto`` picks bf16 only where the machine has a bf16 matrix unit *and* a learning check
(``benchmarks/bf16_learning_check.sh``: cube-single task 2, 1M transitions, 10k steps, fp32 vs bf16,
two seeds, fresh evaluations in both acting modes) has shown no loss on that unit; elsewhere fp32.
``AUTO_BF16_UNITS`` lists those units: AVX512-BF16, checked on 2026-12-07 on a Zen 5 CPU (whole
chunk 54 +- 10% fp32 vs 50 +- 12% bf16, first action 10 +- 4% vs 14 +- 0%: benchmarks/RESULTS.md).
AMX CPUs are not listed: there torch's oneDNN runs the autocast matmuls on AMX tiles, which the check
has not covered.

Explicit ``bf16`` needs a bf16 matrix unit: on the CPU AVX512-BF16 (Intel Cooper Lake / Sapphire
Rapids and later, AMD Zen 4 and later; AMX where present is used by torch's oneDNN), on CUDA a GPU of
compute capability 8.0 or newer. Elsewhere it is refused with the reason, not emulated slowly.
"""

from __future__ import annotations

import contextlib
import functools

import torch

PRECISIONS = ("fp32", "bf16", "auto")
AUTO_BF16_UNITS: tuple[str, ...] = ("AVX512-BF16",)   # units where the learning check showed bf16 does not hurt
_default = "fp32"      # the rollout API's process default
CLI_DEFAULT = "auto"   # mac train / mac eval --precision: the fastest precision known to be safe here


def set_precision(precision: str) -> None:
    """The precision of later calls that do not name one (``mac train --precision`` sets it)."""
    global _default
    _default = check_precision(precision)


def get_precision() -> str:
    return _default


@contextlib.contextmanager
def precision_mode(precision: str):
    """``set_precision`` for the duration of a ``with`` block."""
    old = get_precision()
    set_precision(precision)
    try:
        yield
    finally:
        set_precision(old)


def check_precision(precision) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


# ------------------------------------------------------------------------------------ matrix units

@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=None)   # per process: every rollout API call resolves its precision
def cpu_bf16_unit() -> str | None:
    """The CPU's bf16 matrix unit as the native core and torch use it, or None: "AMX" (Intel AMX
    tiles: torch's oneDNN runs bf16 matmuls on them; the native core uses AVX512-BF16 there too),
    "AVX512-BF16" (vdpbf16ps), or None (float32 FMAs only)."""
    from mac import _native

    flags = _cpu_flags()
    native = _native.cpu_ext is not None and bool(_native.cpu_ext.build_info().get("bf16_mode"))
    if not (native or "avx512_bf16" in flags):
        return None
    return "AMX" if {"amx_bf16", "amx_tile"} <= flags else "AVX512-BF16"


def cuda_bf16_unit(device: torch.device) -> str | None:
    if not torch.cuda.is_available():
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return f"tensor cores (sm_{major}x)" if major >= 8 else None


def bf16_unit(device) -> str | None:
    device = torch.device(device)
    return cuda_bf16_unit(device) if device.type == "cuda" else cpu_bf16_unit()


def matrix_unit(device="cpu") -> str:
    """What runs a run's matrix products on ``device``, for ``mac info`` and benchmark notes."""
    device = torch.device(device)
    unit = bf16_unit(device)
    if device.type == "cuda":
        return (f"{unit}: TF32 or fp32 (--cuda_matmul), bf16 with --precision bf16" if unit else
                "CUDA cores (no bf16 tensor cores before sm_80)")
    from mac import _native
    isa = _native.cpu_ext.build_info().get("cpu_isa") if _native.cpu_ext is not None else "torch only"
    fp32 = f"float32 FMA ({isa})"
    return f"{fp32}; bf16: {unit}" if unit else f"{fp32}; no bf16 unit"


def resolve(precision: str | None, device) -> str:
    """``precision`` (None: :func:`get_precision`) as "fp32" or "bf16" on ``device``; an explicit bf16
    without a bf16 unit is a ValueError that says so."""
    precision = check_precision(get_precision() if precision is None else precision)
    if precision == "fp32":
        return precision
    device = torch.device(device)
    unit = bf16_unit(device)
    if precision == "auto":
        return "bf16" if unit is not None and unit in AUTO_BF16_UNITS else "fp32"
    if precision == "bf16" and unit is None:
        what = ("a GPU of compute capability 8.0 or newer" if device.type == "cuda" else
                "a CPU with AVX512-BF16 (Intel Cooper Lake / Sapphire Rapids or later, AMD Zen 4 or later)"
                " and the native core built")
        raise ValueError(f"precision='bf16' needs a bf16 matrix unit: {what}; this {device.type} has none. "
                         "Use precision fp32 (or auto, which picks bf16 only where it is measured to help)")
    return precision


def autocast(precision: str, device):
    """The autocast context of a resolved ``precision`` ("fp32": none) for work on ``device``."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, cache_enabled=False)


def describe() -> dict:
    """For ``mac info``: the defaults, what auto resolves to here and the units."""
    out = {"mac_train_and_eval_default": CLI_DEFAULT, "rollout_api_default": get_precision(),
           "cpu_matrix_unit": matrix_unit("cpu"),
           "auto_on_cpu": resolve("auto", "cpu"),
           "auto_bf16_units": list(AUTO_BF16_UNITS) or "none (no learning check has passed)"}
    if torch.cuda.is_available():
        out["cuda_matrix_unit"] = matrix_unit("cuda")
    return out

