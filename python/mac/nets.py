"""The one network shape MAC uses everywhere.

Each hidden layer is Linear -> GELU (tanh approximation) -> LayerNorm(eps=1e-6, affine), followed by
a linear head. Weights are Xavier-uniform and biases zero, as in the authors' code. The native cores
read these parameters in place (see :meth:`MLP.dense_layers`), so the module layout is part of the
public contract: ``layers`` holds Linear and LayerNorm submodules in forward order.

``layer_norm=False`` (the authors' ``layer_norm`` option) puts an ``nn.Identity`` where each
LayerNorm would be, so the Linear layers keep their indices (and state-dict keys); such a network
has no LayerNorm parameters and only the PyTorch reference rollout can run it (the native cores
fuse Linear -> GELU -> LayerNorm).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn
from torch.nn import functional as F

LAYER_NORM_EPS = 1e-6
PAPER_HIDDEN_DIMS = (1024, 1024, 1024, 1024)


class DenseLayer(NamedTuple):
    """One layer as the native core sees it: weight (out, in), bias (out,), and for hidden layers
    the LayerNorm scale/shift (out,); ``norm_weight`` is None for the linear head."""

    weight: torch.Tensor
    bias: torch.Tensor
    norm_weight: torch.Tensor | None
    norm_bias: torch.Tensor | None


class MLP(nn.Module):
    """``(..., in_dim) -> (..., out_dim)``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dims: Sequence[int] = PAPER_HIDDEN_DIMS,
                 layer_norm: bool = True):
        super().__init__()
        dims = [int(in_dim), *map(int, hidden_dims)]
        if any(d < 1 for d in dims) or int(out_dim) < 1:
            raise ValueError(f"MLP sizes must be positive, got in_dim={in_dim}, "
                             f"hidden_dims={tuple(hidden_dims)}, out_dim={out_dim}")
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out),
                       nn.LayerNorm(d_out, eps=LAYER_NORM_EPS) if layer_norm else nn.Identity()]
        layers.append(nn.Linear(dims[-1], int(out_dim)))
        self.layers = nn.ModuleList(layers)
        self.in_dim = int(in_dim)
        self.out_dim = int(out_dim)
        self.hidden_dims = tuple(dims[1:])
        self.layer_norm = bool(layer_norm)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.layers:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = self.layers
        for i in range(0, len(layers) - 1, 2):
            x = layers[i + 1](F.gelu(layers[i](x), approximate="tanh"))
        return layers[-1](x)

    def dense_layers(self) -> list[DenseLayer]:
        """The parameters in forward order, as live tensors (no copies)."""
        out = []
        layers = self.layers
        for i in range(0, len(layers) - 1, 2):
            lin, norm = layers[i], layers[i + 1]
            if isinstance(norm, nn.LayerNorm):
                out.append(DenseLayer(lin.weight, lin.bias, norm.weight, norm.bias))
            else:  # layer_norm=False
                out.append(DenseLayer(lin.weight, lin.bias, None, None))
        out.append(DenseLayer(layers[-1].weight, layers[-1].bias, None, None))
        return out

    def flops_per_row(self) -> int:
        """Multiply-add FLOPs (2 per MAC) of one forward row, matmuls only."""
        dims = [self.in_dim, *self.hidden_dims, self.out_dim]
        return sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))

    def extra_repr(self) -> str:
        extra = "" if self.layer_norm else ", layer_norm=False"
        return f"in_dim={self.in_dim}, hidden_dims={self.hidden_dims}, out_dim={self.out_dim}{extra}"
