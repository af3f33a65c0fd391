"""LoRA: a low-rank update `B @ A` added to a frozen linear projection (attention q and v).

Scaling follows HF peft: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA, where `r` is the rank
of that very module. The budget solver gives layers different ranks (increasing/decreasing
allocation); with one constant scaling for all, `B A x` is a sum of r rank-1 terms, so a
layer's update, and in effect its learning rate, would grow with the rank it was allotted.
"""

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


def lora_scaling(alpha: float, rank: int, rslora: bool = False) -> float:
    """peft's LoRA scaling: `alpha / rank`, or `alpha / sqrt(rank)` for rsLoRA."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    return alpha / math.sqrt(rank) if rslora else alpha / rank


class LoraLinear(WrappedLinear):
    """`y = W x + scaling * B A x` with `scaling = alpha / rank` (rsLoRA: `alpha / sqrt(rank)`).

    B starts at zero so the patched model starts as the backbone; `scaling` is fixed at
    construction (it is what `merge` folds in and `unmerge` takes out again).
    """

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float = 8.0, dropout: float = 0.0,
                 rslora: bool = False) -> None:
        super().__init__(base_layer)
        w = base_layer.weight
        self.rank, self.alpha, self.rslora = rank, alpha, rslora
        self.scaling = lora_scaling(alpha, rank, rslora)
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
