"""`pdspace-bench compile`: compilations across the jobs of one process, as a sequential sweep runs them.

Each job takes a fresh deep copy of one backbone (the sweep's cached backbone), patches it
with its design, compiles it as `train.compile=true` does (`pdspace.compile.CompiledModel`),
trains a few steps on batches padded to different lengths (the last one smaller, as an
epoch's last batch is) and runs a few validation forwards. The table says, per job, how often
it compiled and whether anything recompiled; `--plain` compiles the model itself
(`torch.compile(model)`, automatic dynamic shapes) for comparison.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch
from torch import nn

from pdspace.archs import ARCHITECTURES, build_model
from pdspace.design.space import named_design
from pdspace.compile import CompiledModel
from pdspace.peft.families import layer_map
from pdspace.peft.patch import apply_design


def _backbone(name: str) -> nn.Module:
    """An architecture of `pdspace.archs` (random weights) or a backbone `load_backbone` knows (e.g. minilm)."""
    if name in ARCHITECTURES:
        head = "seq2seq" if "t5" in name or "bart" in name else "classification"
        return build_model(name, head, **({} if head == "seq2seq" else {"num_labels": 2}))
    from pdspace.backbones import load_backbone

    return load_backbone(name, name, cache=False).model


def _batch(model: nn.Module, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """A batch padded to `length`: the last row is shorter, as in a batch padded to its longest sequence."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, model.config.vocab_size, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, length // 2:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if model.config.is_encoder_decoder:
        out["labels"] = torch.randint(5, model.config.vocab_size, (batch, 4 + length % 5), generator=g)
    else:
        out["labels"] = torch.randint(0, 2, (batch,), generator=g)
    return out


def run_job(base: nn.Module, design_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One job: copy, patch, compile, train `len(lengths)` steps (+ a smaller last batch), validate; its counts."""
    model = copy.deepcopy(base)
    apply_design(model, named_design(design_name, len(layer_map(model))), args.budget_fraction)
    model.train()
    compiled = CompiledModel(model, args.compile_mode, backend=args.backend, dynamic=not args.plain,
                             per_layout=not args.plain)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    shapes = [(args.batch, n) for n in args.lengths] + [(max(2, args.batch // 2), args.lengths[-1])]
    times = []
    for i, (b, n) in enumerate(shapes):
        t0 = time.perf_counter()
        compiled(**_batch(model, b, n, i)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        for i, n in enumerate(args.lengths[:2]):
            compiled(**_batch(model, args.batch, n, 100 + i))
    stats = compiled.stats()
    return {"design": design_name, "layout": stats["layout"], "train": stats["by_context"].get("train", 0),
            "eval": stats["by_context"].get("eval", 0), "recompiles": stats["recompiles"], "failed": stats["failed"],
            "compile_s": stats["compile_s"], "first_s": times[0],
            "step_ms": statistics.median(times[1:]) * 1000 if len(times) > 1 else None, "reasons": stats["reasons"]}


def print_jobs(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Markdown table of the jobs and the recompile reasons under it."""
    print("| job | design | layout | train compiles | eval compiles | recompiles | ran eager | compile s | "
          "first step s | later steps ms |\n|" + "---|" * 10)
    for i, r in enumerate(rows):
        later = "—" if r["step_ms"] is None else f"{r['step_ms']:.0f}"
        print(f"| {i} | {r['design']} | {r['layout'][:6]} | {r['train']} | {r['eval']} | {r['recompiles']} | "
              f"{r['failed']} | {r['compile_s']:.1f} | {r['first_s']:.1f} | {later} |")
    print(f"\n{'plain torch.compile(model), automatic dynamic shapes' if args.plain else 'pdspace CompiledModel'}; "
          f"backend {args.backend}; train batches {args.batch} x {args.lengths} then a batch of "
          f"{max(2, args.batch // 2)}; 2 validation batches per job")
    for i, r in enumerate(rows):
        for reason in r["reasons"]:
            print(f"- job {i} ({r['design']}): {reason}")


def add_parser(sub: Any) -> None:
    """`pdspace-bench compile ...`."""
    c = sub.add_parser("compile", help="compilations and recompiles across the jobs of one process")
    c.add_argument("--backbone", default="tiny-bert", help="an architecture name or a backbone (e.g. minilm)")
    c.add_argument("--designs", nargs="+", default=["lora", "lora", "adapter", "prefix", "bitfit", "adapter"],
                   help="one job per name (named designs: adapter, prefix, lora, bitfit, s4-model, ...)")
    c.add_argument("--lengths", nargs="+", type=int, default=[24, 40, 33])
    c.add_argument("--batch", type=int, default=8)
    c.add_argument("--budget-fraction", type=float, default=0.005)
    c.add_argument("--backend", default="inductor", help="inductor, or aot_eager to count compilations quickly")
    c.add_argument("--compile-mode", default=None)
    c.add_argument("--plain", action="store_true", help="torch.compile(model) with automatic dynamic shapes")
    c.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Run the jobs in this process and print them."""
    base = _backbone(args.backbone)
    print_jobs([run_job(base, d, args) for d in args.designs], args)
