"""LoRA: a low-rank update `B @ A` added to a frozen linear projection (attention q and v)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class WrappedLinear(nn.Module):
    """Base for modules that wrap a linear layer and keep it intact as `base_layer`."""

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer

    # model code reads these off the projection it calls (e.g. T5 checks `wo.weight.dtype`)
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features


class LoraLinear(WrappedLinear):
    """`y = W x + scaling * B A x`; B starts at zero so the patched model starts as the backbone."""

    def __init__(self, base_layer: nn.Linear, rank: int, scaling: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__(base_layer)
        w = base_layer.weight
        self.rank, self.scaling = rank, scaling
        self.lora_A = nn.Parameter(torch.empty(rank, base_layer.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        return y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The update `scaling * B @ A` in the base weight's shape."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (for inference)."""
        if not self.merged:
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo `merge`."""
        if self.merged:
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = False
