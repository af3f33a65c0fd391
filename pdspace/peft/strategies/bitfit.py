"""BitFit: train a layer's bias terms; add zero-initialised biases where a family has none (T5, Llama)."""

from __future__ import annotations

import torch
from torch import nn

from pdspace.design.budget import StrategyCost
from pdspace.peft.families import LayerSpec, get
from pdspace.peft.strategies.base import NoOptions, Strategy, base_linear, register


def bitfit_biases(layer: LayerSpec, add_missing: bool) -> list[tuple[nn.Module, str]]:
    """The (module, 'bias') slots BitFit trains in `layer`; with `add_missing`, linears without bias count too."""
    slots = []
    for slot in layer.linears:
        lin = base_linear(get(slot))
        if lin.bias is not None or add_missing:
            slots.append((lin, "bias"))
    slots += [(norm, "bias") for norm in layer.norms if getattr(norm, "bias", None) is not None]
    return slots


def _family_has_biases(layer: LayerSpec) -> bool:
    return any(base_linear(get(s)).bias is not None for s in layer.linears)


def bitfit_cost(layer: LayerSpec, options: NoOptions | None = None) -> StrategyCost:
    """Parameters BitFit trains in `layer` (existing biases, or the ones it would add): a fixed cost."""
    slots = bitfit_biases(layer, add_missing=not _family_has_biases(layer))
    return StrategyCost(fixed=sum(m.out_features if getattr(m, n) is None else getattr(m, n).numel() for m, n in slots))


def apply_bitfit(layer: LayerSpec, size: int = 1, options: NoOptions | None = None) -> list[nn.Parameter]:
    """Unfreeze the layer's biases (adding zero biases to bias-free linears); returns them."""
    params = []
    for module, name in bitfit_biases(layer, add_missing=not _family_has_biases(layer)):
        if getattr(module, name) is None:
            w = module.weight
            module.bias = nn.Parameter(torch.zeros(module.out_features, device=w.device, dtype=w.dtype))
        p = getattr(module, name)
        p.requires_grad_(True)
        params.append(p)
    return params


# first in a layer: the biases belong to the backbone's own linears, before anything wraps them
register(Strategy("B", "bitfit", "BitFit", None, bitfit_cost, apply_bitfit, order=10))
