"""Adapter: a bottleneck MLP at Houlsby et al.'s (2019) feed-forward position.

Sequential and inside the sub-layer's residual: it follows the feed-forward output projection
and comes before that sub-layer's dropout, residual addition and, in post-norm families (BERT,
RoBERTa, BART), its LayerNorm; pre-norm families (T5, mBART, Llama) have no LayerNorm there.
Only Houlsby's FFN adapter is inserted, not the second one after attention. This is not
Pfeiffer et al.'s placement, which applies its one adapter after the feed-forward sub-layer's
residual addition and LayerNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from pdspace.peft.lora import WrappedLinear

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class AdapterLinear(WrappedLinear):
    """Wraps the feed-forward output projection: `h = W x; y = h + up(act(down(h)))` (Houlsby's FFN adapter).

    The adapter sits sequentially right after the projection, so dropout, the sub-layer's
    residual connection and (post-norm) LayerNorm all come after it.

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
