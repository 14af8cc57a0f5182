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

import math
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


class GaussianActor(nn.Module):
    """A tanh-squashed diagonal Gaussian chunk policy ``[s, g] -> pi(a | s, g)``: the authors' GCActor as
    their "MAC (Gau)" ablation builds it (agents/mbrs_ac.py: ``tanh_squash=True``,
    ``state_dependent_std=True``, ``mean_tanh_squash=False``, ``actor_fc_scale=0.01``;
    utils/networks.py GCActor).

    The trunk is the usual hidden stack (Linear -> GELU -> LayerNorm per layer, ``layer_norm`` as in
    :class:`MLP`); the mean and the log standard deviation are two linear heads, stored as one
    ``Linear(hidden, 2C)`` (rows ``[:C]`` the mean, ``[C:]`` the log-std), each initialised as the
    authors' ``variance_scaling(0.01, 'fan_avg', 'uniform')`` of a ``Dense(C)``, biases zero. The
    log-std is clipped to ``[-5, 2]``; an action is ``tanh(mean + exp(log_std) * z)``, z ~ N(0, I).
    """

    LOG_STD_MIN = -5.0
    LOG_STD_MAX = 2.0

    def __init__(self, in_dim: int, chunk_dim: int, hidden_dims: Sequence[int] = PAPER_HIDDEN_DIMS,
                 layer_norm: bool = True, head_init_scale: float = 0.01):
        super().__init__()
        self.net = MLP(in_dim, 2 * int(chunk_dim), hidden_dims, layer_norm)
        self.in_dim = int(in_dim)
        self.out_dim = int(chunk_dim)          # the chunk, as an MLP actor's output
        self.hidden_dims = self.net.hidden_dims
        self.layer_norm = bool(layer_norm)
        self.head_init_scale = float(head_init_scale)
        self.reset_head()

    def reset_head(self) -> None:
        head = self.net.layers[-1]
        fan_in, C = head.in_features, self.out_dim
        # variance_scaling(scale, 'fan_avg', 'uniform') of each Dense(fan_in -> C) head
        limit = math.sqrt(3.0 * self.head_init_scale / ((fan_in + C) / 2.0))
        nn.init.uniform_(head.weight, -limit, limit)
        nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) of the pre-tanh Gaussian, each (..., C); log_std clipped to [-5, 2]."""
        out = self.net(x)
        mean, log_std = out[..., :self.out_dim], out[..., self.out_dim:]
        return mean, log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def sample(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """tanh(mean + exp(log_std) * noise): a sample for the standard normal ``noise`` (..., C)."""
        mean, log_std = self(x)
        return torch.tanh(mean + log_std.exp() * noise)

    def log_prob(self, x: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log pi(actions | x) (...,) of the tanh-transformed Gaussian: the Gaussian log-density of
        u = atanh(a) minus sum_i log(1 - tanh(u_i)^2), the latter written 2 (log 2 - u - softplus(-2u))
        as distrax's Tanh bijector does. ``actions`` must lie in (-1, 1) (the dataset's are clipped to
        +-(1 - 1e-5))."""
        mean, log_std = self(x)
        u = torch.atanh(actions)
        gauss = (-0.5 * ((u - mean) * torch.exp(-log_std)) ** 2 - log_std
                 - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_det = (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return gauss - log_det

    def flops_per_row(self) -> int:
        return self.net.flops_per_row()

    def extra_repr(self) -> str:
        return f"chunk_dim={self.out_dim}, log_std in [{self.LOG_STD_MIN}, {self.LOG_STD_MAX}]"
