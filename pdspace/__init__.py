"""pdspace: parameter-efficient fine-tuning design spaces (Chen et al., ICLR 2023).

Patch a Hugging Face model with a design, the way `peft.get_peft_model` is used, and ship it::

    from pdspace import Design, apply_design, save_pretrained, from_pretrained
    report = apply_design(model, Design([4, 8, 8, 4], "uniform", None, ["AL", "AP", "APB", "PBL"]))
    save_pretrained(model, "my-design")            # after training
    from_pretrained(fresh_backbone, "my-design")   # elsewhere

The names below load on first use (PEP 562): `import pdspace.design`, `pdspace.report` or the sweeper's config code
does not pay for torch and transformers, which only the patching and export names need.
"""

from __future__ import annotations

import importlib
from typing import Any

from pdspace.design import registry as _registry
from pdspace.version import __version__

# the shipped strategies register when a design is first read (`pdspace.peft.strategies` imports torch)
_registry.load_shipped_with(lambda: importlib.import_module("pdspace.peft.strategies"))

_HOMES = {
    "pdspace.design": ("BudgetError", "Design", "DesignSpace", "named_design"),
    "pdspace.export": ("export_peft", "from_pretrained", "save_pretrained"),
    "pdspace.peft": ("MergeReport", "PatchReport", "apply_design", "load_trainable_state_dict", "merge",
                     "merge_lora", "trainable_state_dict", "unmerge", "unmerge_lora"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = ["__version__", *_HOME]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'pdspace' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
