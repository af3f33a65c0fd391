"""Adapter: a bottleneck MLP with a residual connection after the feed-forward sub-layer."""

from __future__ import annotations

import torch
from torch import nn

from pdspace.peft.lora import WrappedLinear

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class AdapterLinear(WrappedLinear):
    """Wraps the feed-forward output projection: `h = W x; y = h + up(act(down(h)))` (Pfeiffer placement).

    `up` starts at zero, so a freshly patched layer computes exactly what the backbone does.
    """

    def __init__(self, base_layer: nn.Linear, adapter_dim: int, activation: str = "relu") -> None:
        super().__init__(base_layer)
        w = base_layer.weight
        d = base_layer.out_features
        self.adapter_dim = adapter_dim
        self.down = nn.Linear(d, adapter_dim, device=w.device, dtype=w.dtype)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(adapter_dim, d, device=w.device, dtype=w.dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        return h + self.up(self.act(self.down(h)))


def adapter_params(d_model: int, adapter_dim: int) -> int:
    """Parameters of one adapter: down (d*r + r) and up (r*d + d)."""
    return adapter_dim * (2 * d_model + 1) + d_model
