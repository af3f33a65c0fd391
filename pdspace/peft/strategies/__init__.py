"""PEFT strategies as plug-ins: one module per strategy, each registering itself by letter.

The paper's four (Adapter A, Prefix P, BitFit B, LoRA L) and IA3 (I) ship here; a new strategy
is one more module that calls `register` (see `ia3.py`) and its name in the import line below
(a plug-in elsewhere: imported before designs use its letter). Its options dataclass is all
there is to its options: `apply_design` keywords and the `peft:` config block derive from it.
"""

from pdspace.peft.strategies import adapter, bitfit, ia3, lora, prefix  # noqa: F401  (each registers itself)
from pdspace.peft.strategies.adapter import AdapterLinear
from pdspace.peft.strategies.base import (
    NoOptions,
    PatchModule,
    PeftExport,
    Strategy,
    WrappedLinear,
    flat_options,
    option_defaults,
    option_types,
    parse_options,
    register,
    strategies,
)
from pdspace.peft.strategies.ia3 import IA3Linear
from pdspace.peft.strategies.lora import LoraLinear
from pdspace.peft.strategies.prefix import PrefixKV, register_attention

__all__ = [
    "AdapterLinear", "IA3Linear", "LoraLinear", "NoOptions", "PatchModule", "PeftExport", "PrefixKV", "Strategy",
    "WrappedLinear", "flat_options", "option_defaults", "option_types", "parse_options", "register",
    "register_attention", "strategies",
]
