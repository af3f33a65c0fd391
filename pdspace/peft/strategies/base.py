"""What a PEFT strategy is to pdspace, and the call that adds one to the design space.

A strategy is one module (`ia3.py` here is a whole one; a plug-in may live anywhere). It
states its letter, name and size name, its options (a dataclass), its cost in a layer
(`fixed + unit * size`), how it attaches to a `LayerSpec`, and, where it has them, its merge
rule (the `merge` of the module it inserts) and its HF peft form. `register(Strategy(...))`
adds it to the one registry (`pdspace.design.registry`; `register` and `strategies` here are
that registry's): designs accept its letter, the solver sizes it, `apply_design` inserts it,
the dry-run table shows it, spaces with its letter draw it, `apply_design(...,
<name>_<option>=...)` sets it, and the `peft:` config block gets its options
(`peft.<name>_<option>`, typed and defaulted by its dataclass) and its size
(`peft.sizes.<size_name>`).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from pdspace.design.budget import StrategyCost
from pdspace.design.registry import register, strategies  # noqa: F401  (the one registry, re-exported)
from pdspace.peft.families import LayerSpec


class PatchModule(nn.Module):
    """A module pdspace inserts; `merge` folds it into the backbone's weights where that is exact."""

    letter: ClassVar[str] = ""
    merged: bool = False

    def merge(self) -> bool:
        """Fold into the base weights (inference); False where this module cannot be folded."""
        return False

    def unmerge(self) -> None:
        """Undo `merge`."""


class WrappedLinear(PatchModule):
    """Base for modules that wrap a linear layer and keep it intact as `base_layer`."""

    # whether the module reads the projection's input itself (LoRA does, an adapter reads only its output):
    # an input rescaling outside it can then be folded into the base weight only once it is merged
    reads_input: bool = True

    def __init__(self, base_layer: nn.Module) -> None:
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

    def linear(self) -> nn.Linear:
        """The backbone's own linear layer under every wrapper."""
        inner = self.base_layer
        return inner.linear() if isinstance(inner, WrappedLinear) else inner


def base_linear(module: nn.Module) -> nn.Module:
    """The backbone's own layer in a slot, unwrapped."""
    return module.linear() if isinstance(module, WrappedLinear) else module


@dataclass(frozen=True)
class NoOptions:
    """A strategy without options."""


@dataclass(frozen=True)
class PeftExport:
    """How a strategy's modules become one HF peft adapter."""

    # (our modules by name, the strategy's options, task_type/modules_to_save) -> a peft config
    config: Callable[[Mapping[str, nn.Module], Any, Mapping[str, Any]], Any]
    # (our module, peft's layer at the same name): copy the trained tensors across
    copy: Callable[[nn.Module, nn.Module], None]


# the names beside the strategy options in `apply_design`'s arguments and the `peft:` config block: no option's
# flat key may be one of them
RESERVED_KEYS = ("model", "design", "budget_fraction", "sizes", "train_head", "full_finetune")


@dataclass(frozen=True)
class Strategy:
    """One registered strategy; see the module docstring."""

    letter: str  # one upper-case letter, what designs and ids use
    name: str  # lower case; its options are set as `<name>_<field>` (lora_alpha)
    title: str  # for people: 'LoRA'
    size_name: str | None  # what the solver sizes ('lora_rank'); None: a module of fixed size (BitFit, IA3)
    cost: Callable[[LayerSpec, Any], StrategyCost]  # (layer, options) -> its parameters at `fixed + unit * size`
    attach: Callable[[LayerSpec, int, Any], list[nn.Parameter]]  # (layer, size, options) -> the new parameters
    options: type = NoOptions  # a frozen dataclass of the strategy's options, all with defaults
    # within a layer strategies attach in this order, so a later wrapper sits outside an earlier one
    order: int = 100
    finish: Callable[[nn.Module], None] | None = None  # once per patched model that got this strategy
    peft: PeftExport | None = None  # None: HF peft cannot express it

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.options):
            raise TypeError(f"strategy {self.name}: options must be a dataclass, got {self.options!r}")
        missing = [f.name for f in dataclasses.fields(self.options)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise TypeError(f"strategy {self.name}: option(s) {', '.join(missing)} need a default")
        taken = sorted(set(self.option_keys()) & set(RESERVED_KEYS))
        if taken:
            raise ValueError(f"strategy {self.name}: option key(s) {', '.join(taken)} are taken by apply_design and "
                             "the peft: config block; rename the option")

    def option_keys(self) -> dict[str, str]:
        """Flat option key -> field of `options` ('lora_alpha' -> 'alpha')."""
        return {f"{self.name}_{f.name}": f.name for f in dataclasses.fields(self.options)}


def parse_options(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat option keys (`lora_alpha=16`, `adapter_activation='gelu'`) -> each strategy's options, by letter."""
    known = {key: (s, field) for s in strategies().values() for key, field in s.option_keys().items()}
    unknown = sorted(set(flat) - set(known))
    if unknown:
        sizes = [k for k in unknown if k in {s.size_name for s in strategies().values()}]
        hint = f" ({', '.join(sizes)}: a size, given as sizes={{{sizes[0]!r}: ...}})" if sizes else ""
        raise TypeError(f"unknown strategy option(s) {', '.join(unknown)}{hint}; the registered strategies take "
                        f"{', '.join(sorted(known))}")
    given: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        s, field = known[key]
        given.setdefault(s.letter, {})[field] = value
    return {letter: s.options(**given.get(letter, {})) for letter, s in strategies().items()}


def flat_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `parse_options`: each strategy's options as flat keys (what configs and saved designs hold)."""
    out = {}
    for letter, s in strategies().items():
        values = dataclasses.asdict(options[letter])
        out.update({key: values[field] for key, field in s.option_keys().items()})
    return out


def option_defaults() -> dict[str, Any]:
    """Every registered option with its default, as flat keys (the `peft:` config block's strategy options)."""
    return flat_options(parse_options({}))


def option_types() -> dict[str, Any]:
    """Every registered option's declared type, as flat keys (`lora_alpha` -> float): what the `peft:` config
    block types it as. Any where an annotation cannot be resolved (a class defined inside a function)."""
    out: dict[str, Any] = {}
    for s in strategies().values():
        try:
            hints = typing.get_type_hints(s.options)
        except (NameError, TypeError):
            hints = {}
        out.update({key: hints.get(field, Any) for key, field in s.option_keys().items()})
    return out
