"""Ship a found design: `save_pretrained` / `from_pretrained`, export to HF peft, and `pdspace-export` for runs.

A saved design is a directory: `pdspace_config.json` (the design, the solved sizes per layer,
the strategy options, the backbone's layer map and the counts), `pdspace_model.safetensors`
(the trainable tensors) and a model card `README.md`. `from_pretrained` patches a fresh copy
of the backbone with exactly those sizes and loads the tensors. `export_peft` writes what
`peft.PeftModel.from_pretrained` loads, for designs peft can express (LoRA, IA3).
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pdspace.design.space import Design
from pdspace.errors import PDSpaceError, exit_error
from pdspace.peft.families import layer_map
from pdspace.peft.patch import (
    PatchReport,
    apply_design,
    head_modules,
    layer_costs,
    load_trainable_state_dict,
    trainable_state_dict,
)
from pdspace.peft.strategies import (
    PatchModule,
    WrappedLinear,
    parse_options,
    strategies,
)

CONFIG_FILE = "pdspace_config.json"
WEIGHTS_FILE = "pdspace_model.safetensors"
CARD_FILE = "README.md"
FORMAT_VERSION = 1


class ExportError(PDSpaceError, ValueError):
    """A design that cannot be saved, loaded or exported as asked; the message names the fix."""


def _report(model: nn.Module) -> PatchReport:
    report = getattr(model, "pdspace_report", None)
    if report is None:
        raise ExportError(f"{type(model).__name__} carries no pdspace design; patch it with pdspace.apply_design first")
    return report


def _layer_map_of(model: nn.Module) -> dict[str, Any]:
    layers = layer_map(model)
    return {"model_type": model.config.model_type, "class": type(model).__name__,
            "stacks": {s: sum(x.stack == s for x in layers) for s in ("encoder", "decoder")}}


def save_pretrained(model: nn.Module, save_directory: str | Path, *, base_model: str | None = None,
                    training: Mapping[str, Any] | None = None) -> Path:
    """Write the model's design, solved sizes, strategy options and trainable tensors (safetensors), plus a card.

    `base_model` names the backbone in the card; `training` (task, epoch, metrics, ...) is kept as given.
    """
    from safetensors.torch import save_file

    report = _report(model)
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in trainable_state_dict(model).items()}
    head = {id(p) for m in head_modules(model) for p in m.parameters()}
    config = {
        "format_version": FORMAT_VERSION,
        "pdspace_version": _version(),
        "design": report.design.to_dict(),
        "budget_fraction": report.budget_fraction,
        "backbone_params": report.backbone_params,
        "target_params": report.target_params,
        "trainable_params": report.trainable_params,
        "head_params": report.head_params,
        "train_head": any(p.requires_grad for p in model.parameters() if id(p) in head),
        "options": dict(report.options),
        "backbone": {"base_model": base_model, **_layer_map_of(model)},
        "layers": [{"index": r.index, "stack": r.stack, "sizes": r.sizes, "params": r.params} for r in report.layers],
        "training": dict(training or {}),
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str))
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CARD_FILE).write_text(_card(report, config))
    return out


def from_pretrained(backbone: nn.Module, directory: str | Path) -> nn.Module:
    """Patch a fresh `backbone` with the saved design and sizes and load its tensors; returns the backbone.

    Refuses, naming the difference, a backbone of another family or layer map, or one whose
    widths give the saved modules other sizes.
    """
    from safetensors.torch import load_file

    path = Path(directory)
    if not (path / CONFIG_FILE).exists():
        raise ExportError(f"{path} holds no {CONFIG_FILE}; save a design there with pdspace.save_pretrained")
    saved = json.loads((path / CONFIG_FILE).read_text())
    want, got = saved["backbone"], _layer_map_of(backbone)
    for key in ("model_type", "stacks"):
        if want[key] != got[key]:
            raise ExportError(f"{path} was saved from a {want['model_type']} backbone with {want['stacks']} layers; "
                              f"this one is {got['model_type']} with {got['stacks']}: load it into the backbone it "
                              f"was trained on ({want.get('base_model') or want['class']})")
    try:
        parse_options(saved["options"])
    except TypeError as e:
        raise ExportError(f"{path} was saved by pdspace {saved['pdspace_version']}: {e}") from None
    # before patching anything: the saved sizes must cost on this backbone what they cost on the trained one
    for row, layer in zip(saved["layers"], layer_map(backbone)):
        costs = layer_costs(layer, **saved["options"])
        params = sum(costs[s].params(n) for s, n in row["sizes"].items())
        if params != row["params"]:
            raise ExportError(
                f"layer {row['index']} ({row['stack']}): the saved modules {row['sizes']} hold {row['params']:,} "
                f"params, on this backbone {params:,}: its widths differ from the backbone the design was "
                f"trained on ({want.get('base_model') or want['class']})")
    _patch_as_saved(backbone, saved["design"], saved, load_file(str(path / WEIGHTS_FILE)),
                    train_head=saved["train_head"], **saved["options"])
    return backbone


def _patch_as_saved(model: nn.Module, design: Mapping[str, Any], counts: Mapping[str, Any],
                    state: Mapping[str, torch.Tensor], **options: Any) -> PatchReport:
    """Patch `model` with the very sizes a design was trained with (no solving: a later solver could size it
    otherwise), restore its budget bookkeeping (`counts`: layers, budget_fraction, target_params), load `state`."""
    report = apply_design(model, Design.from_dict(design), sizes=[row["sizes"] for row in counts["layers"]],
                          **options)
    report.budget_fraction, report.target_params = counts["budget_fraction"], counts["target_params"]
    load_trainable_state_dict(model, state)
    return report


def _version() -> str:
    from pdspace.version import __version__

    return __version__


def _card(report: PatchReport, config: Mapping[str, Any]) -> str:
    """A short model card: what the design is, its counts, how to load it."""
    base = config["backbone"]["base_model"] or config["backbone"]["class"]
    training = config["training"]
    head = ("no task head" if not report.head_params else
            f"task head ({report.head_params:,}) {'included' if config['train_head'] else 'not trained'}")
    about = (f"A parameter-efficient fine-tuning design (Chen et al., ICLR 2023 design spaces) for `{base}`, saved "
             f"by pdspace {config['pdspace_version']}: {report.trainable_params:,} trainable parameters "
             f"({report.fraction:.4%} of the backbone's {report.backbone_params:,}), {head}.")
    lines = ["---", "library_name: pdspace", *([f"base_model: {base}"] if config["backbone"]["base_model"] else []),
             "tags: [pdspace, peft, parameter-efficient-fine-tuning]", "---", "", f"# {report.design}", "", about, "",
             "```", report.table(), "```", ""]
    if training:
        lines += ["## Training", "", *(f"- {k}: {v}" for k, v in training.items()), ""]
    lines += ["## Use", "", "```python", "import pdspace", "",
              f"model = ...  # a fresh {config['backbone']['class']} of {base}",
              "pdspace.from_pretrained(model, \"<this directory>\")", "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# HF peft

TASK_TYPES = (("ForSequenceClassification", "SEQ_CLS"), ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
              ("ForCausalLM", "CAUSAL_LM"), ("ForTokenClassification", "TOKEN_CLS"),
              ("ForQuestionAnswering", "QUESTION_ANS"))


def export_peft(model: nn.Module, save_directory: str | Path) -> Path:
    """Write the design as an HF peft adapter (`PeftModel.from_pretrained(backbone, dir)` loads it).

    Only designs whose tuned groups all use one strategy peft expresses (LoRA, with per-layer
    ranks, or IA3); anything else is refused, naming the groups peft cannot express.
    """
    report = _report(model)
    design, registry = report.design, strategies()
    used: dict[str, list[int]] = {}
    for g, letters in enumerate(design.strategies):
        for s in letters:
            used.setdefault(s, []).append(g + 1)
    blocked = [f"{registry[s].title} in group(s) {', '.join(map(str, gs))}" for s, gs in used.items()
               if registry[s].peft is None]
    if blocked or len(used) != 1:
        why = (f"peft cannot express {'; '.join(blocked)}" if blocked else
               f"a peft adapter holds one method, this design mixes {' and '.join(registry[s].title for s in used)}")
        raise ExportError(f"design {design} cannot be exported to peft: {why}; use pdspace.save_pretrained")
    (letter,) = used
    strategy = registry[letter]
    modules = {n: m for n, m in model.named_modules() if isinstance(m, PatchModule) and m.letter == letter}
    if any(m.merged for m in modules.values()):
        raise ExportError("the model is merged; call pdspace.unmerge(model) before exporting to peft")
    task_type = next((t for suffix, t in TASK_TYPES if type(model).__name__.endswith(suffix)), None)
    heads = [n for n, m in model.named_children() if m in head_modules(model) and
             any(p.requires_grad for p in m.parameters())]
    options = parse_options(report.options)[letter]
    config = strategy.peft.config(modules, options, {"task_type": task_type, "modules_to_save": heads or None})

    from peft import get_peft_model

    peft_model = get_peft_model(_unpatched_copy(model), config)
    with torch.no_grad():
        for name, ours in modules.items():
            strategy.peft.copy(ours, peft_model.base_model.model.get_submodule(name))
    out = Path(save_directory)
    peft_model.save_pretrained(str(out))
    return out


def _unpatched_copy(model: nn.Module) -> nn.Module:
    """The backbone without pdspace's wrappers (trained head kept); shares every frozen tensor, copies no weight."""
    frozen = {id(p): p for p in model.parameters() if not p.requires_grad}
    clean = copy.deepcopy(model, memo=dict(frozen))
    for name, module in list(clean.named_modules()):
        parent_name, _, attr = name.rpartition(".")
        parent = clean.get_submodule(parent_name)
        if isinstance(module, WrappedLinear) and not isinstance(parent, WrappedLinear):  # outermost wrappers
            setattr(parent, attr, module.linear())
    del clean.pdspace_report
    return clean


# ------------------------------------------------------------------------------------------------
# pdspace-export RUN_DIR OUT_DIR


def export_run(run_dir: str | Path, out_dir: str | Path, *, to_peft: bool = False) -> Path:
    """Rebuild a finished run's backbone, patch it with the run's design and sizes, load its best epoch, save."""
    from pdspace import results
    from pdspace.backbones import backbone_for
    from pdspace.data import task_spec
    from pdspace.results import CHECKPOINT_FILE

    run = Path(run_dir)
    result = results.read(run / results.RESULT_FILE)
    checkpoint = run / CHECKPOINT_FILE
    if result["status"] != "completed" or not result.get("design"):
        why = "is a full fine-tuning run" if result.get("design_id") == "full" else f"is {result['status']}"
        raise ExportError(f"{run} {why}; export needs a completed PEFT run with its {CHECKPOINT_FILE}")
    if not checkpoint.exists():
        how = ("it was trained with save_checkpoint=false" if (result.get("config") or {}).get("save_checkpoint")
               is False else "it was removed or never written")
        raise ExportError(f"{checkpoint} is missing ({how}); export needs it: train the run again with "
                          "save_checkpoint=true (in a new hydra.run.dir), then export that run")
    cfg = result["config"]
    bb = cfg["backbone"]
    model = backbone_for(bb, task_spec(cfg["task"]), int(cfg["seed"])).model
    options = {k: v for k, v in cfg["peft"].items() if k not in ("full_finetune", "sizes")}
    best = torch.load(checkpoint, map_location="cpu", weights_only=True)
    _patch_as_saved(model, result["design"], result["params"], best["state_dict"], **options)
    if to_peft:
        return export_peft(model, out_dir)
    training = {"task": cfg["task"]["name"], "seed": cfg["seed"], "epoch": best["epoch"], "metrics": best["metrics"],
                "backbone": bb, "run_dir": str(run.resolve())}
    return save_pretrained(model, out_dir, base_model=bb.get("path") or f"{bb['name']} (random, seed {cfg['seed']})",
                           training=training)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `pdspace-export RUN_DIR OUT_DIR [--peft]`: a user error exits 1 with one line
    (`pdspace.errors`)."""
    parser = argparse.ArgumentParser(prog="pdspace-export", description=export_run.__doc__)
    parser.add_argument("run_dir", help="a finished run's dir (holds result.json and best_trainable.pt)")
    parser.add_argument("out_dir", help="where to write the saved design")
    parser.add_argument("--peft", action="store_true", help="write an HF peft adapter instead (LoRA or IA3 designs)")
    args = parser.parse_args(argv)
    from pdspace.results import ResultError
    from pdspace.tracking import quiet

    quiet()  # the backbone's reload: no load report (its head is loaded from the run), no progress bar
    try:
        out = export_run(args.run_dir, args.out_dir, to_peft=args.peft)
    except (PDSpaceError, ResultError, OSError) as e:
        exit_error("pdspace-export", e)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    main()
