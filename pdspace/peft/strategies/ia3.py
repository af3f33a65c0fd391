"""IA3 (Liu et al. 2022): learned vectors that rescale keys, values and the feed-forward activation.

Letter I. In every attention of a layer (self and cross, as HF peft's IA3 does) one vector
rescales the key and one the value projection's output; one more rescales the input of the
feed-forward output projection, i.e. the activation. That one is the option `feedforward`
(`apply_design(..., ia3_feedforward=False)`, config `peft.ia3_feedforward=false`: keys and
values only; true, the default, is the paper's IA3). The vectors start at one, so a fresh
patch computes what the backbone does. IA3 has no size to solve (a fixed cost, like BitFit).
Each vector is a rescaling of its projection's weight rows (keys, values: bias included) or
columns (the activation), so it merges into the backbone, and HF peft's IA3 expresses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pdspace.design.budget import StrategyCost
from pdspace.peft.families import LayerSpec, Slot, get
from pdspace.peft.strategies.base import PeftExport, Strategy, WrappedLinear, register


class IA3Linear(WrappedLinear):
    """`y = l * (W x + b)` (keys, values) or, `feedforward`, `y = W (l * x) + b`; `l` starts at one."""

    letter = "I"

    def __init__(self, base_layer: nn.Module, feedforward: bool) -> None:
        super().__init__(base_layer)
        w = base_layer.weight
        self.feedforward = feedforward
        self.reads_input = feedforward
        n = base_layer.in_features if feedforward else base_layer.out_features
        self.ia3_l = nn.Parameter(torch.ones(n, device=w.device, dtype=w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        if self.feedforward:
            return self.base_layer(x * self.ia3_l)
        return self.base_layer(x) * self.ia3_l

    def _foldable(self) -> bool:
        # exact only if nothing between this vector and the weight adds a branch it would not rescale:
        # an output rescaling passes through every inner module, an input rescaling through those reading x
        inner = self.base_layer
        while isinstance(inner, WrappedLinear):
            if not inner.merged and (inner.reads_input or not self.feedforward):
                return False
            inner = inner.base_layer
        return True

    @torch.no_grad()
    def merge(self) -> bool:
        """Rescale the base weight's columns (activation) or rows and bias (keys, values)."""
        if not self.merged and self._foldable():
            lin = self.linear()
            if self.feedforward:
                lin.weight *= self.ia3_l
            else:
                lin.weight *= self.ia3_l[:, None]
                if lin.bias is not None:
                    lin.bias *= self.ia3_l
            self.merged = True
        return self.merged

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo `merge` (a division: exact up to rounding while no entry of the vector is near zero)."""
        if self.merged:
            lin = self.linear()
            if self.feedforward:
                lin.weight /= self.ia3_l
            else:
                lin.weight /= self.ia3_l[:, None]
                if lin.bias is not None:
                    lin.bias /= self.ia3_l
            self.merged = False


@dataclass(frozen=True)
class IA3Options:
    """IA3's option: `feedforward` (true: also rescale the feed-forward activation; false: keys and values only)."""

    feedforward: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.feedforward, bool):
            raise ValueError(f"ia3_feedforward={self.feedforward!r}; use true or false")


def _slots(layer: LayerSpec, options: IA3Options) -> list[tuple[Slot, bool]]:
    """(slot, feedforward) of every projection IA3 rescales in `layer`."""
    return [(s, False) for s in layer.projections("k", "v")] + ([(layer.ffn_out, True)] if options.feedforward else [])


def ia3_cost(layer: LayerSpec, options: IA3Options) -> StrategyCost:
    """One entry per key and value channel, and per feed-forward activation: a fixed cost."""
    return StrategyCost(fixed=sum(get(s).in_features if ff else get(s).out_features
                                  for s, ff in _slots(layer, options)))


def attach_ia3(layer: LayerSpec, size: int, options: IA3Options) -> list[nn.Parameter]:
    """Wrap the layer's keys, values and (`feedforward`) feed-forward output projection."""
    params = []
    for (parent, name), feedforward in _slots(layer, options):
        wrapped = IA3Linear(getattr(parent, name), feedforward)
        setattr(parent, name, wrapped)
        params.append(wrapped.ia3_l)
    return params


def ia3_peft_config(modules: Mapping[str, IA3Linear], options: IA3Options, common: Mapping[str, Any]) -> Any:
    """peft's IA3Config naming exactly these modules."""
    from peft import IA3Config

    return IA3Config(target_modules=sorted(modules),
                     feedforward_modules=sorted(n for n, m in modules.items() if m.feedforward), **common)


def ia3_to_peft(ours: IA3Linear, theirs: nn.Module) -> None:
    """peft keeps the vector as (out, 1) or (1, in)."""
    target = theirs.ia3_l["default"]
    target.copy_(ours.ia3_l.view_as(target))


# last in a layer: outside LoRA on v, so LoRA merges first and this vector then rescales W + BA as a whole
register(Strategy("I", "ia3", "IA3", None, ia3_cost, attach_ia3, IA3Options, order=50,
                  peft=PeftExport(ia3_peft_config, ia3_to_peft)))
