"""PEFT strategies (registered plug-ins: Adapter, Prefix, BitFit, LoRA, IA3), layer maps, design -> patched model."""

from pdspace.peft.families import FAMILIES, LayerSpec, layer_map
from pdspace.peft.patch import (
    LayerReport,
    MergeReport,
    PatchReport,
    apply_design,
    count_params,
    layer_costs,
    load_trainable_state_dict,
    merge,
    merge_lora,
    trainable_state_dict,
    unmerge,
    unmerge_lora,
)
from pdspace.peft.strategies import (
    AdapterLinear,
    IA3Linear,
    LoraLinear,
    PrefixKV,
    Strategy,
    option_defaults,
    register,
    register_attention,
    strategies,
)

__all__ = [
    "FAMILIES", "AdapterLinear", "IA3Linear", "LayerReport", "LayerSpec", "LoraLinear", "MergeReport", "PatchReport",
    "PrefixKV", "Strategy", "apply_design", "count_params", "layer_costs", "layer_map", "load_trainable_state_dict",
    "merge", "merge_lora", "option_defaults", "register", "register_attention", "strategies", "trainable_state_dict",
    "unmerge", "unmerge_lora",
]
