"""Design -> patched model: freeze the backbone, insert per-layer modules, report the counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pdspace.design.budget import DEFAULT_BUDGET_FRACTION, BudgetSolution, StrategyCost, solve_budget
from pdspace.design.space import Design
from pdspace.peft.families import LayerSpec, layer_map
from pdspace.peft.strategies import LoraLinear, PatchModule, flat_options, parse_options, strategies

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
    # every registered strategy option as flat keys (what `save_pretrained` writes; not part of result.json)
    options: dict[str, Any] = field(default_factory=dict)

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
        """Whether every module has a fixed size (BitFit, IA3), so no budget can change the count."""
        return all(strategies()[s].size_name is None for row in self.layers for s in row.sizes)

    def _fixed_titles(self) -> str:
        used = dict.fromkeys(s for row in self.layers for s in row.sizes)
        return "/".join(strategies()[s].title for s in used)

    def budget_line(self) -> str | None:
        """One line on why the count is below the budget or not budgeted at all; None when on target."""
        if self.below_budget:
            fixed = f"{self._fixed_titles()} modules have a fixed size"
            why = fixed if self.fixed_size else "integer module sizes get no closer"
            budget = self.budget_fraction or self.target_params / self.backbone_params
            return f"trainable {self.fraction:.3%} is below the {budget:.3%} budget: {why}"
        if self.budget_fraction is None and self.fixed_size:
            return (f"trainable {self.fraction:.3%} is {self._fixed_titles()}'s natural size (budget_fraction=null: "
                    f"no budget solved; the default budget is {DEFAULT_BUDGET_FRACTION:.3%})")
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
        registry = strategies()
        for g, r in enumerate(self.design.group_ranges()):
            rows = [row for row in self.layers if row.group == g]
            sizes = ", ".join(f"{registry[k].size_name}={v}" if registry[k].size_name else registry[k].name
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


def layer_costs(layer: LayerSpec, **options: Any) -> dict[str, StrategyCost]:
    """Parameter cost of every registered strategy in `layer`, with the strategy options of `apply_design`."""
    return _costs(layer, parse_options(options))


def _costs(layer: LayerSpec, parsed: Mapping[str, Any]) -> dict[str, StrategyCost]:
    return {letter: s.cost(layer, parsed[letter]) for letter, s in strategies().items()}


def _fixed_sizes(design: Design, layers: list[LayerSpec], sizes: Mapping[str, int] | Sequence[Mapping[str, int]],
                 costs: list[dict[str, StrategyCost]], backbone: int) -> BudgetSolution:
    """Given sizes, no budget solving: the same for every tuned layer, or one mapping per layer."""
    registry = strategies()
    letter_of = {s.size_name: letter for letter, s in registry.items() if s.size_name}  # "lora_rank" -> "L"
    per_layer = [sizes] * len(layers) if isinstance(sizes, Mapping) else list(sizes)
    if len(per_layer) != len(layers):
        raise ValueError(f"sizes gives {len(per_layer)} layers but the model has {len(layers)}")
    sol = BudgetSolution(backbone, None, 0)
    groups = design.layer_group()
    for i, given in enumerate(per_layer):
        letters = {letter_of.get(k, k): int(v) for k, v in given.items()}
        row = {}
        for s in design.strategies[groups[i]]:
            if registry[s].size_name and s not in letters:
                raise ValueError(f"sizes={dict(given)} gives no size for {registry[s].size_name}, used in group "
                                 f"{groups[i] + 1}")
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
    sizes: Mapping[str, int] | Sequence[Mapping[str, int]] | None = None,
    train_head: bool = True,
    **options: Any,
) -> PatchReport:
    """Patch `model` in place with `design` at `budget_fraction` of its backbone parameters.

    Freezes every backbone weight, inserts each layer's strategies (Adapter, Prefix, BitFit,
    LoRA, IA3, any registered one) with the solved sizes, and unfreezes exactly the PEFT
    parameters (and the task head when `train_head`). `sizes` (e.g. {"lora_rank": 8}) skips the
    solver and gives every tuned layer the same sizes (a list: one mapping per layer). `options`
    are the strategies' options as `<name>_<field>` (`option_defaults()` lists them with their
    defaults): `lora_alpha` (8.0; each LoRA module is scaled by `lora_alpha / r`, r the rank
    solved for its layer, as HF peft does), `lora_rslora` (`lora_alpha / sqrt(r)`),
    `lora_dropout`, `adapter_activation` ('relu'), `adapter_placement` ('ffn' or 'attn_ffn'),
    `prefix_init_std` (0.02), `prefix_reparam_dim` (0: no MLP), `ia3_feedforward` (True; False:
    IA3 rescales keys and values only).
    """
    parsed = parse_options(options)
    layers = _patchable_layers(model, design)
    backbone, head = count_params(model)
    costs = [_costs(layer, parsed) for layer in layers]
    if sizes is not None:
        sol = _fixed_sizes(design, layers, sizes, costs, backbone)
    else:
        sol = solve_budget(design, costs, backbone, budget_fraction)

    model.requires_grad_(False)
    if train_head:
        for m in head_modules(model):
            m.requires_grad_(True)
    report = PatchReport(design, backbone, 0, head, sol.target_params, sol.budget_fraction, notes=list(sol.notes),
                         options=flat_options(parsed))
    if not train_head and head:
        report.notes.append(f"task head ({head:,} params) left frozen")
    letter_of = _insert(model, design, layers, sol, parsed, report)
    model.pdspace_report = report
    # which strategy trains each parameter (by name, so it survives deepcopy and pickling): per-strategy learning rates
    model.pdspace_param_letters = {n: letter_of[id(p)] for n, p in model.named_parameters() if id(p) in letter_of}
    return report


def _patchable_layers(model: nn.Module, design: Design) -> list[LayerSpec]:
    """The model's layers, refused when `design` covers another count or pdspace already patched the model."""
    layers = layer_map(model)
    if len(layers) != design.num_layers:
        stacks = {s: sum(1 for x in layers if x.stack == s) for s in ("encoder", "decoder")}
        raise ValueError(
            f"design {design} covers {design.num_layers} layers but {type(model).__name__} has {len(layers)} "
            f"({stacks['encoder']} encoder + {stacks['decoder']} decoder); use groups summing to {len(layers)}"
        )
    if any(isinstance(m, PatchModule) for m in model.modules()):
        raise ValueError("model is already patched by pdspace; patch a fresh copy of the backbone")
    return layers


def _insert(model: nn.Module, design: Design, layers: list[LayerSpec], sol: BudgetSolution,
            parsed: Mapping[str, Any], report: PatchReport) -> dict[int, str]:
    """Attach every layer's strategies at the solved sizes (in `order` within a layer), unfreeze their parameters,
    fill `report` with the layers and the count, and run each used strategy's `finish` once; returns the letter
    that trains each new parameter, by `id`."""
    in_order = sorted(strategies().values(), key=lambda s: s.order)
    groups = design.layer_group()
    used = set()
    letter_of: dict[int, str] = {}
    for layer, row in zip(layers, sol.sizes):
        params: list[nn.Parameter] = []
        for s in in_order:
            if s.letter in row:
                attached = s.attach(layer, row[s.letter], parsed[s.letter])
                letter_of.update((id(p), s.letter) for p in attached)
                params += attached
                used.add(s.letter)
        for p in params:
            p.requires_grad_(True)
        n = sum(p.numel() for p in params)
        report.layers.append(LayerReport(layer.index, layer.stack, groups[layer.index],
                                         design.strategies[groups[layer.index]], dict(row), n))
    report.trainable_params = sum(r.params for r in report.layers)
    if report.trainable_params != sol.trainable_params:
        raise AssertionError(f"inserted {report.trainable_params} params but the solver planned {sol.trainable_params}")
    for s in in_order:
        if s.letter in used and s.finish is not None:
            s.finish(model)
    return letter_of


def parameter_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The trainable parameters by who trains them: a strategy letter, "head" (the task head) or "backbone"
    (full fine-tuning)."""
    letters = getattr(model, "pdspace_param_letters", {})
    head = {id(p) for m in head_modules(model) for p in m.parameters()}
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = letters.get(name) or ("head" if id(p) in head else "backbone")
            groups.setdefault(key, []).append((name, p))
    return groups


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
    shapes = [f"{n} {tuple(t.shape)} vs {tuple(params[n].shape)}" for n, t in state.items()
              if t.shape != params[n].shape]
    if shapes:
        raise ValueError(f"checkpoint tensors do not fit the patched model (checkpoint vs model): {shapes[:3]}; "
                         "load it into the backbone it was trained on")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def main_output(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The model's main output tensor for `batch` (logits, else the last hidden state), without gradients."""
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@dataclass
class MergeReport:
    """What `merge` folded into the backbone's weights, what stays a module, and the output change it made."""

    merged: dict[str, int]  # strategy letter -> modules folded
    kept: dict[str, int]  # strategy letter -> modules that cannot be folded (adapters, prefixes)
    max_abs_diff: float | None = None  # merged vs unmerged outputs on the batch given to `merge`

    def __str__(self) -> str:
        def show(counts: dict[str, int]) -> str:
            return ", ".join(f"{strategies()[k].title} {n}" for k, n in counts.items()) or "none"

        diff = "" if self.max_abs_diff is None else f"; max |merged - unmerged| = {self.max_abs_diff:.3g}"
        return f"merged: {show(self.merged)}; kept as modules: {show(self.kept)}{diff}"


def merge(model: nn.Module, batch: Mapping[str, torch.Tensor] | None = None) -> MergeReport:
    """Fold every module that is a pure change of a base weight (LoRA; IA3 where exact) into it, for inference.

    With `batch`, the report holds the largest absolute output difference merged vs unmerged.
    """
    before = main_output(model, batch) if batch is not None else None
    merged: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    # modules() lists an outer wrapper before the one it wraps: reversed, inner modules merge first
    for m in reversed([m for m in model.modules() if isinstance(m, PatchModule)]):
        (merged if m.merge() else kept)[m.letter] += 1
    diff = None
    if before is not None:
        diff = (main_output(model, batch).float() - before.float()).abs().max().item()
    order = list(strategies())
    return MergeReport(*({k: c[k] for k in order if k in c} for c in (merged, kept)), diff)


def unmerge(model: nn.Module) -> int:
    """Undo `merge` (outer modules first); returns how many modules were unmerged."""
    done = [m for m in model.modules() if isinstance(m, PatchModule) and m.merged]
    for m in done:
        m.unmerge()
    return len(done)


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
