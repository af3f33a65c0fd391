"""Full fine-tuning: the baseline outside the design space (every backbone and head parameter trains)."""

from __future__ import annotations

from typing import Any

from pdspace.peft.patch import count_params

FULL_DESIGN_ID = "full"


class FullFinetune:
    """Full fine-tuning: every parameter trains; reports the counts the way `PatchReport` does."""

    def __init__(self, model: Any) -> None:
        model.requires_grad_(True)
        self.backbone_params, self.head_params = count_params(model)

    def to_dict(self) -> dict[str, Any]:
        """The `params` entry of result.json: trainable = the whole backbone, fraction 1.0."""
        return {"backbone_params": self.backbone_params, "trainable_params": self.backbone_params,
                "head_params": self.head_params, "target_params": self.backbone_params, "budget_fraction": None,
                "fraction": 1.0, "layers": [], "notes": ["full fine-tuning: every backbone and head parameter trains"]}

    def table(self) -> str:
        """One line per count (what a dry run prints)."""
        return (f"design {FULL_DESIGN_ID} (full fine-tuning)\nbackbone params  {self.backbone_params:,}\n"
                f"trainable        {self.backbone_params:,} (100% of backbone)\ntask head        {self.head_params:,}")
