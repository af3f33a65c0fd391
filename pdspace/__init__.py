"""pdspace: parameter-efficient fine-tuning design spaces (Chen et al., ICLR 2023).

Patch a Hugging Face model with a design, the way `peft.get_peft_model` is used::

    from pdspace import Design, apply_design
    report = apply_design(model, Design([4, 8, 8, 4], "uniform", None, ["AL", "AP", "APB", "PBL"]))
"""

from pdspace.design import BudgetError, Design, DesignSpace, named_design
from pdspace.peft import (
    PatchReport,
    apply_design,
    load_trainable_state_dict,
    merge_lora,
    trainable_state_dict,
)

__version__ = "0.1.0"
__all__ = [
    "BudgetError", "Design", "DesignSpace", "PatchReport", "apply_design", "load_trainable_state_dict",
    "merge_lora", "named_design", "trainable_state_dict",
]
