"""Adapter: a bottleneck MLP at Houlsby et al.'s (2019) feed-forward position.

Sequential and inside the sub-layer's residual: it follows the feed-forward output projection
and comes before that sub-layer's dropout, residual addition and, in post-norm families (BERT,
RoBERTa, BART), its LayerNorm; pre-norm families (T5, mBART, Llama) have no LayerNorm there.
By default only Houlsby's FFN adapter is inserted; `placement="attn_ffn"` adds his second one,
at the same position after the self-attention's output projection. This is not Pfeiffer et
al.'s placement, which applies its one adapter after the feed-forward sub-layer's residual
addition and LayerNorm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pdspace.design.budget import StrategyCost
from pdspace.peft.families import LayerSpec, Slot, get
from pdspace.peft.strategies.base import Strategy, WrappedLinear, register

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
PLACEMENTS = ("ffn", "attn_ffn")


class AdapterLinear(WrappedLinear):
    """Wraps the feed-forward output projection: `h = W x; y = h + up(act(down(h)))` (Houlsby's FFN adapter).

    The adapter sits sequentially right after the projection, so dropout, the sub-layer's
    residual connection and (post-norm) LayerNorm all come after it.

    `up` starts at zero, so a freshly patched layer computes exactly what the backbone does.
    """

    letter = "A"
    reads_input = False  # it transforms the projection's output only

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


@dataclass(frozen=True)
class AdapterOptions:
    """The adapter's activation and placement: 'ffn' (Houlsby's FFN adapter) or 'attn_ffn' (both of his)."""

    activation: str = "relu"  # relu, gelu or silu
    # ffn: Houlsby's feed-forward adapter; attn_ffn: both of his (after the attention and the feed-forward)
    placement: str = "ffn"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"adapter_activation={self.activation!r}; use one of {', '.join(ACTIVATIONS)}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"adapter_placement={self.placement!r}; use one of {', '.join(PLACEMENTS)}")


def _slots(layer: LayerSpec, options: AdapterOptions) -> list[Slot]:
    return ([layer.attentions[0]["o"]] if options.placement == "attn_ffn" else []) + [layer.ffn_out]


def adapter_cost(layer: LayerSpec, options: AdapterOptions) -> StrategyCost:
    """Width r costs `d + r * (2d + 1)` per adapter, d the width of the projection it follows."""
    dims = [get(s).out_features for s in _slots(layer, options)]
    return StrategyCost(fixed=sum(adapter_params(d, 0) for d in dims),
                        unit=sum(adapter_params(d, 1) - adapter_params(d, 0) for d in dims))


def attach_adapter(layer: LayerSpec, adapter_dim: int, options: AdapterOptions) -> list[nn.Parameter]:
    """Wrap the projection(s) the placement names."""
    params: list[nn.Parameter] = []
    for parent, name in _slots(layer, options):
        wrapped = AdapterLinear(getattr(parent, name), adapter_dim, options.activation)
        setattr(parent, name, wrapped)
        params += [*wrapped.down.parameters(), *wrapped.up.parameters()]
    return params


register(Strategy("A", "adapter", "Adapter", "adapter_dim", adapter_cost, attach_adapter, AdapterOptions, order=30))
