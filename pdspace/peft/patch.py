"""Design -> patched model: freeze the backbone, insert per-layer modules, report the counts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pdspace.design.budget import (
    DEFAULT_BUDGET_FRACTION,
    SIZE_NAMES,
    BudgetSolution,
    StrategyCost,
    solve_budget,
)
from pdspace.design.space import Design
from pdspace.peft.adapter import AdapterLinear, adapter_params
from pdspace.peft.bitfit import apply_bitfit, bitfit_cost
from pdspace.peft.families import LayerSpec, get, layer_map
from pdspace.peft.lora import LoraLinear
from pdspace.peft.prefix import PrefixKV, use_pdspace_attention

SIZE_KEYS = {v: k for k, v in SIZE_NAMES.items()}  # "lora_rank" -> "L", ...
# the solver lands within a fraction of a module size of the target; this far below it is not rounding
BELOW_BUDGET_RATIO = 0.9


@dataclass
class LayerReport:
    """What one layer got."""

    index: int
    stack: str
    group: int
    strategies: str
    sizes: dict[str, int]
    params: int


@dataclass
class PatchReport:
    """Per-layer modules and exact parameter counts of a patched model."""

    design: Design
    backbone_params: int
    trainable_params: int
    head_params: int
    target_params: int
    budget_fraction: float | None
    layers: list[LayerReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        """Trainable PEFT parameters over the backbone's own parameters (head excluded)."""
        return self.trainable_params / self.backbone_params

    @property
    def budget_ratio(self) -> float:
        """Trainable PEFT parameters over the target (1.0 at natural size, `budget_fraction=None`)."""
        return self.trainable_params / self.target_params if self.target_params else 1.0

    @property
    def below_budget(self) -> bool:
        """Whether the design stays well below its budget (BitFit-only designs: modules of fixed size)."""
        return self.budget_ratio < BELOW_BUDGET_RATIO

    @property
    def fixed_size(self) -> bool:
        """Whether every module has a fixed size (BitFit only), so no budget can change the count."""
        return all(set(row.sizes) <= {"B"} for row in self.layers)

    def budget_line(self) -> str | None:
        """One line on why the count is below the budget or not budgeted at all; None when on target."""
        if self.below_budget:
            why = "BitFit modules have a fixed size" if self.fixed_size else "integer module sizes get no closer"
            budget = self.budget_fraction or self.target_params / self.backbone_params
            return f"trainable {self.fraction:.3%} is below the {budget:.3%} budget: {why}"
        if self.budget_fraction is None and self.fixed_size:
            return (f"trainable {self.fraction:.3%} is BitFit's natural size (budget_fraction=null: no budget "
                    f"solved; the default budget is {DEFAULT_BUDGET_FRACTION:.3%})")
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (what `result.json` stores)."""
        return {
            "design": self.design.to_dict(),
            "backbone_params": self.backbone_params,
            "trainable_params": self.trainable_params,
            "head_params": self.head_params,
            "target_params": self.target_params,
            "budget_fraction": self.budget_fraction,
            "fraction": self.fraction,
            "budget_ratio": self.budget_ratio,
            "below_budget": self.below_budget,
            "fixed_size": self.fixed_size,
            "layers": [vars(row) for row in self.layers],
            "notes": list(self.notes),
        }

    def table(self) -> str:
        """A plain-text table: one row per group, then the totals."""
        lines = [f"design {self.design}", f"{'group':>5} {'layers':>9} {'strategies':>10}  {'sizes (first layer)':<42}"
                 f"{'params':>12}"]
        for g, r in enumerate(self.design.group_ranges()):
            rows = [row for row in self.layers if row.group == g]
            sizes = ", ".join(f"{SIZE_NAMES.get(k, 'bitfit')}={v}" if k != "B" else "bitfit"
                              for k, v in rows[0].sizes.items()) or "frozen"
            lines.append(f"{g + 1:>5} {f'{r.start}-{r.stop - 1}':>9} {'+'.join(rows[0].strategies) or '-':>10}  "
                         f"{sizes:<42}{sum(x.params for x in rows):>12,}")
        target = f"{self.target_params:,}" + (f" ({self.budget_fraction:.3%})" if self.budget_fraction else "")
        lines += [
            f"backbone params  {self.backbone_params:,}",
            f"target           {target}",
            f"trainable        {self.trainable_params:,} ({self.fraction:.4%} of backbone)",
            f"task head        {self.head_params:,} (counted apart)",
        ]
        budget_line = self.budget_line()
        return "\n".join(lines + ([budget_line] if budget_line else []) + self.notes)


def head_modules(model: nn.Module) -> list[nn.Module]:
    """Task-head modules: children outside the base model, except pretrained output embeddings."""
    base = getattr(model, "base_model", model)
    if base is model:
        return []
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [m for m in model.children() if m is not base and m is not out_emb]


def count_params(model: nn.Module) -> tuple[int, int]:
    """(backbone params, task-head params); tied weights are counted once."""
    head = {id(p) for m in head_modules(model) for p in m.parameters()}
    backbone = sum(p.numel() for p in model.parameters() if id(p) not in head)
    return backbone, sum(p.numel() for p in model.parameters() if id(p) in head)


def layer_costs(layer: LayerSpec) -> dict[str, StrategyCost]:
    """Parameter cost of each strategy in `layer`."""
    d = get(layer.ffn_out).out_features
    return {
        "A": StrategyCost(fixed=adapter_params(d, 0), unit=adapter_params(d, 1) - adapter_params(d, 0)),
        "P": StrategyCost(fixed=0, unit=2 * layer.num_kv_heads * layer.head_dim),
        "L": StrategyCost(fixed=0, unit=sum(get(s).in_features + get(s).out_features for s in layer.lora_targets)),
        "B": StrategyCost(fixed=bitfit_cost(layer)),
    }


def _fixed_sizes(design: Design, layers: list[LayerSpec], sizes: Mapping[str, int],
                 costs: list[dict[str, StrategyCost]], backbone: int) -> BudgetSolution:
    """Every tuned layer gets the same given sizes (no budget solving)."""
    letters = {SIZE_KEYS.get(k, k): int(v) for k, v in sizes.items()}
    sol = BudgetSolution(backbone, None, 0)
    groups = design.layer_group()
    for i in range(len(layers)):
        strat = design.strategies[groups[i]]
        row = {}
        for s in strat:
            if s != "B" and s not in letters:
                raise ValueError(f"sizes={dict(sizes)} gives no size for {SIZE_NAMES[s]}, used in group {groups[i] + 1}")
            row[s] = letters.get(s, 1)
        sol.sizes.append(row)
        sol.layer_params.append(sum(costs[i][s].params(n) for s, n in row.items()))
    sol.target_params = sol.trainable_params
    return sol


def apply_design(
    model: nn.Module,
    design: Design,
    budget_fraction: float | None = DEFAULT_BUDGET_FRACTION,
    *,
    sizes: Mapping[str, int] | None = None,
    train_head: bool = True,
    lora_alpha: float = 8.0,
    lora_rslora: bool = False,
    lora_dropout: float = 0.0,
    adapter_activation: str = "relu",
    prefix_init_std: float = 0.02,
) -> PatchReport:
    """Patch `model` in place with `design` at `budget_fraction` of its backbone parameters.

    Freezes every backbone weight, inserts Adapter / Prefix / LoRA / BitFit per layer with
    the solved sizes, and unfreezes exactly the PEFT parameters (and the task head when
    `train_head`). `sizes` (e.g. {"lora_rank": 8}) skips the solver and gives every tuned
    layer the same sizes. Each LoRA module is scaled by `lora_alpha / r` (`lora_alpha / sqrt(r)`
    with `lora_rslora`), r being the rank solved for its layer, as HF peft does.
    """
    layers = layer_map(model)
    if len(layers) != design.num_layers:
        stacks = {s: sum(1 for x in layers if x.stack == s) for s in ("encoder", "decoder")}
        raise ValueError(
            f"design {design} covers {design.num_layers} layers but {type(model).__name__} has {len(layers)} "
            f"({stacks['encoder']} encoder + {stacks['decoder']} decoder); use groups summing to {len(layers)}"
        )
    if any(isinstance(m, (LoraLinear, AdapterLinear, PrefixKV)) for m in model.modules()):
        raise ValueError("model is already patched by pdspace; patch a fresh copy of the backbone")
    backbone, head = count_params(model)
    costs = [layer_costs(layer) for layer in layers]
    if sizes is not None:
        sol = _fixed_sizes(design, layers, sizes, costs, backbone)
    else:
        sol = solve_budget(design, costs, backbone, budget_fraction)

    model.requires_grad_(False)
    if train_head:
        for m in head_modules(model):
            m.requires_grad_(True)
    groups = design.layer_group()
    report = PatchReport(design, backbone, 0, head, sol.target_params, sol.budget_fraction, notes=list(sol.notes))
    if not train_head and head:
        report.notes.append(f"task head ({head:,} params) left frozen")
    any_prefix = False
    for layer, row in zip(layers, sol.sizes):
        params: list[nn.Parameter] = []
        if "B" in row:
            params += apply_bitfit(layer)
        if "L" in row:
            for parent, name in layer.lora_targets:
                wrapped = LoraLinear(getattr(parent, name), row["L"], lora_alpha, lora_dropout, lora_rslora)
                setattr(parent, name, wrapped)
                params += [wrapped.lora_A, wrapped.lora_B]
        if "A" in row:
            parent, name = layer.ffn_out
            wrapped = AdapterLinear(getattr(parent, name), row["A"], adapter_activation)
            setattr(parent, name, wrapped)
            params += [*wrapped.down.parameters(), *wrapped.up.parameters()]
        if "P" in row:
            w = next(layer.self_attn.parameters())
            layer.self_attn.pdspace_prefix = PrefixKV(layer.num_kv_heads, row["P"], layer.head_dim,
                                                      init_std=prefix_init_std, device=w.device, dtype=w.dtype)
            params += list(layer.self_attn.pdspace_prefix.parameters())
            any_prefix = True
        for p in params:
            p.requires_grad_(True)
        n = sum(p.numel() for p in params)
        report.layers.append(LayerReport(layer.index, layer.stack, groups[layer.index],
                                         design.strategies[groups[layer.index]], dict(row), n))
    report.trainable_params = sum(r.params for r in report.layers)
    if report.trainable_params != sol.trainable_params:
        raise AssertionError(f"inserted {report.trainable_params} params but the solver planned {sol.trainable_params}")
    if any_prefix:
        use_pdspace_attention(model)
    model.pdspace_report = report
    return report


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the trainable tensors (PEFT modules and task head): a small checkpoint."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a `trainable_state_dict` into a model patched with the same design."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the patched model: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            "patch the backbone with the checkpoint's design before loading"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA update into its base weight (inference); returns how many were merged."""
    merged = [m for m in model.modules() if isinstance(m, LoraLinear) and not m.merged]
    for m in merged:
        m.merge()
    return len(merged)


def unmerge_lora(model: nn.Module) -> int:
    """Undo `merge_lora`."""
    done = [m for m in model.modules() if isinstance(m, LoraLinear) and m.merged]
    for m in done:
        m.unmerge()
    return len(done)
