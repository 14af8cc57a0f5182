"""Counter-based Gaussian noise shared by every backend (the reference twin of csrc's philox.h).

Element ``e`` of a noise tensor drawn with ``seed`` is a pure function of (seed, e): Philox4x32-10
keyed by the 64-bit seed, counter (e // 4 as 64 bits, 0, 0), and Box-Muller on its four 32-bit
outputs (pairs (x0, x1) and (x2, x3)) evaluated in float64, then rounded to float32. So the PyTorch
reference, the CPU core and the CUDA core draw the same candidates for the same seed, for any tiling
and thread count. The layout is row-major over the tensor's shape, e.g. (N, B, C) for best-of-N and
(H, N, B, C) for a rollout.
"""

from __future__ import annotations

import numpy as np
import torch

PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint32(0x9E3779B9)
PHILOX_W1 = np.uint32(0xBB67AE85)
MASK32 = np.uint64(0xFFFFFFFF)
UINT32_TO_UNIT = 2.0 ** -32


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed


def philox4x32_10(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10. ``counter``: (n, 4) uint32 -> (n, 4) uint32."""
    c = [counter[:, i].astype(np.uint64) for i in range(4)]
    k0, k1 = np.uint32(key[0]), np.uint32(key[1])
    with np.errstate(over="ignore"):
        for _ in range(10):
            p0 = PHILOX_M0 * c[0]
            p1 = PHILOX_M1 * c[2]
            hi0, lo0 = p0 >> np.uint64(32), p0 & MASK32
            hi1, lo1 = p1 >> np.uint64(32), p1 & MASK32
            c = [hi1 ^ c[1] ^ np.uint64(k0), lo1, hi0 ^ c[3] ^ np.uint64(k1), lo0]
            k0 = np.uint32(k0 + PHILOX_W0)
            k1 = np.uint32(k1 + PHILOX_W1)
    return np.stack(c, axis=1).astype(np.uint32)


def philox_normal_numpy(seed: int, numel: int, start: int = 0) -> np.ndarray:
    """Elements ``start .. start+numel-1`` of the standard-normal stream of ``seed``, float32."""
    seed = check_seed(seed)
    if start < 0 or numel < 0 or start + numel > 2 ** 64:
        raise ValueError(f"need 0 <= start and start + numel <= 2**64 (the length of a noise stream), "
                         f"got start={start}, numel={numel}")
    if numel == 0:
        return np.zeros(0, np.float32)
    first, last = start // 4, (start + numel - 1) // 4
    idx = np.arange(first, last + 1, dtype=np.uint64)
    counter = np.zeros((idx.size, 4), np.uint32)
    counter[:, 0] = (idx & MASK32).astype(np.uint32)
    counter[:, 1] = (idx >> np.uint64(32)).astype(np.uint32)
    bits = philox4x32_10(counter, (seed & 0xFFFFFFFF, seed >> 32)).astype(np.float64)
    u = (bits + 0.5) * UINT32_TO_UNIT  # in (0, 1): log never sees 0
    r01 = np.sqrt(-2.0 * np.log(u[:, 0]))
    r23 = np.sqrt(-2.0 * np.log(u[:, 2]))
    t01 = 2.0 * np.pi * u[:, 1]
    t23 = 2.0 * np.pi * u[:, 3]
    z = np.stack([r01 * np.cos(t01), r01 * np.sin(t01), r23 * np.cos(t23), r23 * np.sin(t23)], axis=1)
    z = z.reshape(-1)[start - first * 4:start - first * 4 + numel]
    return z.astype(np.float32)


def philox_normal(seed: int, shape, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """A tensor of ``shape`` filled from the Philox stream of ``seed`` (row-major element order)."""
    shape = tuple(int(s) for s in shape)
    numel = int(np.prod(shape)) if shape else 1
    z = torch.from_numpy(philox_normal_numpy(seed, numel).reshape(shape))
    return z.to(device=device, dtype=dtype)
