"""Sampled batches (dicts of NumPy arrays, :meth:`mac.data.ChunkSampler.sample`) as torch tensors."""

from __future__ import annotations

import numpy as np
import torch


def to_device(batch: dict[str, np.ndarray], device) -> dict[str, torch.Tensor]:
    """The float32 arrays of ``batch`` as tensors on ``device``; other dtypes are left out.

    On the CPU the tensors share the arrays' memory (no copy). On CUDA each array is copied into
    pinned (page-locked) host memory and from there asynchronously: a copy from pageable memory
    makes the host wait until the GPU has finished all its queued work. PyTorch's caching host
    allocator reuses the pinned blocks and holds each one until its copy has completed."""
    tensors = {k: torch.from_numpy(v) for k, v in batch.items() if v.dtype == np.float32}
    if torch.device(device).type != "cuda":
        return {k: t.to(device) for k, t in tensors.items()}
    return {k: t.pin_memory().to(device, non_blocking=True) for k, t in tensors.items()}
