"""PEFT modules (Adapter, Prefix, LoRA, BitFit), family layer maps, and design -> patched model."""

from pdspace.peft.adapter import AdapterLinear
from pdspace.peft.families import FAMILIES, LayerSpec, layer_map
from pdspace.peft.lora import LoraLinear
from pdspace.peft.patch import (
    LayerReport,
    PatchReport,
    apply_design,
    count_params,
    load_trainable_state_dict,
    merge_lora,
    trainable_state_dict,
    unmerge_lora,
)
from pdspace.peft.prefix import PrefixKV, register_attention

__all__ = [
    "FAMILIES", "AdapterLinear", "LayerReport", "LayerSpec", "LoraLinear", "PatchReport", "PrefixKV",
    "apply_design", "count_params", "layer_map", "load_trainable_state_dict", "merge_lora", "register_attention",
    "trainable_state_dict", "unmerge_lora",
]
