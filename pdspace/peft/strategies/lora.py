"""LoRA: a low-rank update `B @ A` added to a frozen linear projection (attention q and v).

Scaling follows HF peft: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA, where `r` is the rank
of that very module. The budget solver gives layers different ranks (increasing/decreasing
allocation); with one constant scaling for all, `B A x` is a sum of r rank-1 terms, so a
layer's update, and in effect its learning rate, would grow with the rank it was allotted.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pdspace.design.budget import StrategyCost
from pdspace.peft.families import LayerSpec, get
from pdspace.peft.strategies.base import PeftExport, Strategy, WrappedLinear, register


def lora_scaling(alpha: float, rank: int, rslora: bool = False) -> float:
    """peft's LoRA scaling: `alpha / rank`, or `alpha / sqrt(rank)` for rsLoRA."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    return alpha / math.sqrt(rank) if rslora else alpha / rank


class LoraLinear(WrappedLinear):
    """`y = W x + scaling * B A x` with `scaling = alpha / rank` (rsLoRA: `alpha / sqrt(rank)`).

    B starts at zero so the patched model starts as the backbone; `scaling` follows from alpha and
    the rank (it is what `merge` folds in and `unmerge` takes out again).
    """

    letter = "L"

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float = 8.0, dropout: float = 0.0,
                 rslora: bool = False) -> None:
        super().__init__(base_layer)
        w = base_layer.weight
        lora_scaling(alpha, rank, rslora)  # checks the rank
        self.rank, self.alpha, self.rslora = rank, alpha, rslora
        self.lora_A = nn.Parameter(torch.empty(rank, base_layer.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.merged = False

    @property
    def scaling(self) -> float:
        return lora_scaling(self.alpha, self.rank, self.rslora)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged:
            return y
        # the scaling from the rank in A's shape, not the float attribute: compiled, the rank is a dynamic size and so
        # is the scaling, where a float read from the module is a guard on its value in some graphs (T5's
        # cross-attention: one recompile per rank)
        scaling = lora_scaling(self.alpha, self.lora_A.shape[0], self.rslora)
        return y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * scaling

    def delta_weight(self) -> torch.Tensor:
        """The update `scaling * B @ A` in the base weight's shape."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> bool:
        """Fold the update into the base weight (for inference)."""
        if not self.merged:
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = True
        return True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo `merge`."""
        if self.merged:
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = False


@dataclass(frozen=True)
class LoraOptions:
    """LoRA's options: `alpha` (scaling `alpha / r`, rsLoRA `alpha / sqrt(r)`) and dropout on its input."""

    # each module's update is scaled by alpha / r, r the rank the solver gave its layer (as in HF peft)
    alpha: float = 8.0
    rslora: bool = False  # true: alpha / sqrt(r) (rsLoRA)
    dropout: float = 0.0  # on the module's input


def lora_cost(layer: LayerSpec, options: LoraOptions) -> StrategyCost:
    """Rank r on q and v of every attention costs r * (in + out) per projection."""
    return StrategyCost(unit=sum(get(s).in_features + get(s).out_features for s in layer.lora_targets))


def attach_lora(layer: LayerSpec, rank: int, options: LoraOptions) -> list[nn.Parameter]:
    """Wrap q and v of every attention in the layer."""
    params: list[nn.Parameter] = []
    for parent, name in layer.lora_targets:
        wrapped = LoraLinear(getattr(parent, name), rank, options.alpha, options.dropout, options.rslora)
        setattr(parent, name, wrapped)
        params += [wrapped.lora_A, wrapped.lora_B]
    return params


def lora_peft_config(modules: Mapping[str, LoraLinear], options: LoraOptions, common: Mapping[str, Any]) -> Any:
    """peft's LoraConfig for these modules: per-module ranks through `rank_pattern` (exact names)."""
    from peft import LoraConfig

    ranks = {name: m.rank for name, m in modules.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    return LoraConfig(r=r, lora_alpha=options.alpha, lora_dropout=options.dropout, use_rslora=options.rslora,
                      target_modules=sorted(ranks), rank_pattern={re.escape(n): k for n, k in ranks.items() if k != r},
                      **common)


def lora_to_peft(ours: LoraLinear, theirs: nn.Module) -> None:
    """Copy A and B into peft's LoRA layer."""
    theirs.lora_A["default"].weight.copy_(ours.lora_A)
    theirs.lora_B["default"].weight.copy_(ours.lora_B)


register(Strategy("L", "lora", "LoRA", "lora_rank", lora_cost, attach_lora, LoraOptions, order=20,
                  peft=PeftExport(lora_peft_config, lora_to_peft)))
