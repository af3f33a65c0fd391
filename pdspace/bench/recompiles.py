"""`pdspace-bench compile`: compilations across the jobs of one process, as a sequential sweep runs them.

Each job takes a fresh deep copy of one backbone (the sweep's cached backbone), patches it
with its design, compiles it as `train.compile=true` does (`pdspace.compile.CompiledModel`,
`--scope regional` by default: each transformer block), trains a few steps on batches padded
to different lengths (the last one smaller, as an epoch's last batch is), then times compiled
and eager training steps side by side (`--rounds`, the two in a fresh random order each round,
on one batch) and runs a few validation forwards (eager under the regional scope, as a job
validates; compiled under `--scope model`). `--designs 8` samples 8 distinct feasible S0
designs (`--space-seed`); names (adapter, lora, s4-model, ...) give one job each. The table
says, per job, how much it compiled, how much it reused, whether anything recompiled (with
dynamo's reasons under it), and its compiled step against eager; the line under it, the
sweep's compile seconds against its first job's. `--scope model` compiles the whole forward,
`--plain` the model itself (`torch.compile(model)`, automatic dynamic shapes), for comparison.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from typing import Any

import torch
from torch import nn

from pdspace.archs import ARCHITECTURES, build_model
from pdspace.compile import CompiledModel
from pdspace.design.space import Design, DesignSpace, named_design
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


def designs(base: nn.Module, args: argparse.Namespace) -> list[Design]:
    """The jobs' designs: `--designs N` samples N distinct S0 designs the budget can build; names, one each."""
    layers = len(layer_map(base))
    if len(args.designs) == 1 and args.designs[0].isdigit():
        from pdspace.search.plans import design_check

        check = design_check(base, args.budget_fraction)
        return DesignSpace(layers).sample(int(args.designs[0]), args.space_seed, accept=lambda d: check(d) is None)
    return [named_design(name, layers) for name in args.designs]


def _step(forward: Any, model: nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    t0 = time.perf_counter()
    forward(**batch).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def side_by_side(compiled: CompiledModel, model: nn.Module, opt: torch.optim.Optimizer,
                 args: argparse.Namespace) -> tuple[float, float, float]:
    """(compiled ms, eager ms, compiled / eager): medians over `args.rounds` rounds of one step each, in a fresh
    random order every round, on one batch; the ratio is the median of the rounds' ratios."""
    batch = _batch(model, args.batch, args.lengths[-1], 7)
    rng = random.Random(0)
    times: dict[str, list[float]] = {"compiled": [], "eager": []}
    for _ in range(args.rounds):
        order = ["compiled", "eager"]
        rng.shuffle(order)
        for mode in order:  # eager: the model's own forward (regional blocks run compiled only through `compiled`)
            times[mode].append(_step(compiled if mode == "compiled" else model, model, opt, batch))
    ratios = [c / e for c, e in zip(times["compiled"], times["eager"])]
    return (statistics.median(times["compiled"]) * 1000, statistics.median(times["eager"]) * 1000,
            statistics.median(ratios))


def run_job(base: nn.Module, design: Design, args: argparse.Namespace) -> dict[str, Any]:
    """One job: copy, patch, compile, train `len(lengths)` steps (+ a smaller last batch), time compiled against
    eager steps, validate; its counts."""
    model = copy.deepcopy(base)
    apply_design(model, design, args.budget_fraction)
    model.train()
    scope = "model" if args.plain else args.scope
    compiled = CompiledModel(model, args.compile_mode, backend=args.backend, dynamic=not args.plain,
                             per_layout=not args.plain, scope=scope, cache_dir=args.cache_dir)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    shapes = [(args.batch, n) for n in args.lengths] + [(max(2, args.batch // 2), args.lengths[-1])]
    times = [_step(compiled, model, opt, _batch(model, b, n, i)) for i, (b, n) in enumerate(shapes)]
    compiled_ms, eager_ms, ratio = side_by_side(compiled, model, opt, args) if args.rounds else (None, None, None)
    model.eval()
    with torch.no_grad():
        for i, n in enumerate(args.lengths[:2]):
            (compiled if scope == "model" else model)(**_batch(model, args.batch, n, 100 + i))
    stats = compiled.stats()
    return {"design": str(design), "layout": stats["layout"], "scope": scope, "stats": stats,
            "train": stats["by_context"].get("train", 0), "eval": stats["by_context"].get("eval", 0),
            "recompiles": stats["recompiles"], "failed": stats["failed"], "compile_s": stats["compile_s"],
            "first_s": times[0], "compiled_ms": compiled_ms, "eager_ms": eager_ms, "ratio": ratio,
            "reasons": stats["reasons"]}


def _ms(value: float | None, fmt: str = ".0f") -> str:
    return "—" if value is None else format(value, fmt)


def print_jobs(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Markdown table of the jobs, the sweep's compile seconds against its first job's, and the recompile reasons."""
    print("| job | design | layout | region layouts | graphs run | compiled | reused | recompiles | ran eager | "
          "compile s | first step s | compiled step ms | eager step ms | × eager |\n|" + "---|" * 14)
    for i, r in enumerate(rows):
        st = r["stats"]
        regional = [st.get(k, "—") for k in ("layouts", "graphs")]
        print(f"| {i} | {r['design']} | {r['layout'][:6]} | {regional[0]} | {regional[1]} | {r['train'] + r['eval']} | "
              f"{st.get('reused', '—')} | {r['recompiles']} | {r['failed']} | {r['compile_s']:.1f} | "
              f"{r['first_s']:.1f} | {_ms(r['compiled_ms'])} | {_ms(r['eager_ms'])} | {_ms(r['ratio'], '.2f')} |")
    what = {"regional": "pdspace CompiledModel, regional (each transformer block)",
            "model": "pdspace CompiledModel, whole model (one entry per layout)"}[rows[0]["scope"]] if rows else ""
    plain = "plain torch.compile(model), automatic dynamic shapes"
    print(f"\n{plain if args.plain else what}; backend {args.backend}; "
          f"train batches {args.batch} x {args.lengths} then a batch of {max(2, args.batch // 2)}; "
          f"{args.rounds} rounds of one compiled and one eager step ({args.batch} x {args.lengths[-1]}); "
          f"2 validation batches per job")
    total, first = sum(r["compile_s"] for r in rows), rows[0]["compile_s"] if rows else 0.0
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    print(f"\nsweep compile s: {total:.1f} over {len(rows)} jobs, first job {first:.1f}: "
          f"{total / first if first else float('nan'):.2f} x the first job's"
          + (f"; compiled step / eager: median {statistics.median(ratios):.2f} over jobs "
             f"({min(ratios):.2f}–{max(ratios):.2f})" if ratios else ""))
    for i, r in enumerate(rows):
        for reason in r["reasons"]:
            print(f"- job {i} ({r['design']}): {reason}")


def add_parser(sub: Any) -> None:
    """`pdspace-bench compile ...`."""
    c = sub.add_parser("compile", help="compilations and recompiles across the jobs of one process")
    c.add_argument("--backbone", default="tiny-bert", help="an architecture name or a backbone (e.g. minilm)")
    c.add_argument("--designs", nargs="+", default=["lora", "lora", "adapter", "prefix", "bitfit", "adapter"],
                   help="one job per name (named designs: adapter, prefix, lora, bitfit, s4-model, ...), or one "
                        "number N: N distinct S0 designs the budget can build")
    c.add_argument("--space-seed", type=int, default=0, help="the seed S0 designs are sampled with")
    c.add_argument("--lengths", nargs="+", type=int, default=[24, 40, 33])
    c.add_argument("--batch", type=int, default=8)
    c.add_argument("--rounds", type=int, default=3, help="compiled and eager steps timed side by side (0: none)")
    c.add_argument("--budget-fraction", type=float, default=0.005)
    c.add_argument("--backend", default="inductor", help="inductor, or aot_eager to count compilations quickly")
    c.add_argument("--compile-mode", default=None)
    c.add_argument("--scope", default="regional", choices=["regional", "model"],
                   help="regional: each transformer block (train.compile_scope's default); model: the whole forward")
    c.add_argument("--cache-dir", default=None, help="inductor's on-disk cache (default ~/.cache/pdspace/compile)")
    c.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    c.add_argument("--plain", action="store_true", help="torch.compile(model) with automatic dynamic shapes")
    c.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Run the jobs in this process and print them."""
    if args.threads:
        torch.set_num_threads(args.threads)
    base = _backbone(args.backbone)
    rows = []
    for i, design in enumerate(designs(base, args)):
        rows.append(run_job(base, design, args))
        print(f"job {i} ({design}): compile {rows[-1]['compile_s']:.1f} s", file=sys.stderr, flush=True)
    print_jobs(rows, args)
