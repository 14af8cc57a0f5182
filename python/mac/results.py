"""What the rollout API returns (shared by the reference and the native cores, so that the cores
need not import :mod:`mac.rollout`, which dispatches to them: the dependency stays one-way)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class BestOfN(NamedTuple):
    chunks: torch.Tensor   # (B, C) the chosen candidate per row, in [-1, 1]
    scores: torch.Tensor   # (B,) critic value of the chosen candidate
    indices: torch.Tensor  # (B,) int64 index of the chosen candidate in [0, N)


class Rollout(NamedTuple):
    states: torch.Tensor   # (H+1, B, S) imagined states, states[0] = start states
    chunks: torch.Tensor   # (H, B, C) chosen chunks
    rewards: torch.Tensor  # (H, B)
    masks: torch.Tensor    # (H, B) 0 after success/termination is predicted, else 1
    q: torch.Tensor        # (H, B) critic value of the chosen chunk
