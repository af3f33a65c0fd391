"""pdspace: parameter-efficient fine-tuning design spaces (Chen et al., ICLR 2023).

Patch a Hugging Face model with a design, the way `peft.get_peft_model` is used, and ship it::

    from pdspace import Design, apply_design, save_pretrained, from_pretrained
    report = apply_design(model, Design([4, 8, 8, 4], "uniform", None, ["AL", "AP", "APB", "PBL"]))
    save_pretrained(model, "my-design")            # after training
    from_pretrained(fresh_backbone, "my-design")   # elsewhere
"""

from pdspace.design import BudgetError, Design, DesignSpace, named_design
from pdspace.export import export_peft, from_pretrained, save_pretrained
from pdspace.peft import (
    MergeReport,
    PatchReport,
    apply_design,
    load_trainable_state_dict,
    merge,
    merge_lora,
    trainable_state_dict,
    unmerge,
    unmerge_lora,
)
from pdspace.version import __version__

__all__ = [
    "__version__", "BudgetError", "Design", "DesignSpace", "MergeReport", "PatchReport", "apply_design", "export_peft",
    "from_pretrained", "load_trainable_state_dict", "merge", "merge_lora", "named_design", "save_pretrained",
    "trainable_state_dict", "unmerge", "unmerge_lora",
]
