"""How float32 matmuls run on NVIDIA GPUs: TF32 tensor cores (the default of ``mac train``) or full
float32. CPU matmuls are never affected.

TF32 rounds the operands to a 10-bit mantissa and accumulates in float32; it is what the authors'
JAX code gets on Ampere and later GPUs (XLA's default precision for float32 dots). torch's default is
full float32, about 8x slower on an H100/H200's tensor cores. Only torch's per-backend setting
(``torch.backends.cuda.matmul.fp32_precision``) is used: mixing it with the global
``torch.set_float32_matmul_precision`` makes torch refuse to report the precision.
"""

from __future__ import annotations

import contextlib

import torch

CUDA_MATMUL_MODES = {"tf32": "tf32", "fp32": "ieee"}   # our name -> torch's fp32_precision value
DEFAULT_CUDA_MATMUL = "tf32"                            # mac train's --cuda_matmul


def set_cuda_matmul(mode: str) -> None:
    """``mode`` "tf32" or "fp32" for float32 matmuls on CUDA from now on."""
    if mode not in CUDA_MATMUL_MODES:
        raise ValueError(f"cuda matmul mode must be one of {sorted(CUDA_MATMUL_MODES)}, got {mode!r}")
    torch.backends.cuda.matmul.fp32_precision = CUDA_MATMUL_MODES[mode]


def cuda_matmul() -> str:
    """The current mode: "tf32", "fp32", or torch's own value if it is neither."""
    value = torch.backends.cuda.matmul.fp32_precision
    return next((k for k, v in CUDA_MATMUL_MODES.items() if v == value), value)


@contextlib.contextmanager
def cuda_matmul_mode(mode: str):
    """``mode`` inside the block, the previous setting after it."""
    saved = torch.backends.cuda.matmul.fp32_precision
    set_cuda_matmul(mode)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = saved
