"""Benchmarks that print a table: `python -m pdspace.bench step|sweep --help`.

step: one training step (fwd + bwd + AdamW) of a patched model, every method side by side
in one process, with ratios to full fine-tuning and to the *floor* (every weight frozen and
one trainable scalar scaling the word-embedding output: backward runs through every layer
but computes no weight gradient). sweep: a sequential multirun and where each job's time goes.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pdspace import results as results_io
from pdspace.archs import build_model
from pdspace.design.space import named_design
from pdspace.peft.families import layer_map
from pdspace.peft.patch import apply_design, count_params

METHODS = ("full", "floor", "peft-lora", "adapter", "prefix", "lora", "bitfit", "s4")


def _floor(model: nn.Module) -> None:
    """Freeze everything; one trainable scalar multiplies the word-embedding output."""
    model.requires_grad_(False)
    scale = nn.Parameter(torch.ones((), device=next(model.parameters()).device))
    model.pdspace_floor_scale = scale
    weight = model.get_input_embeddings().weight
    # encoder-decoders look tokens up through their stacks' own (tied) embedding modules
    for m in model.modules():
        if isinstance(m, nn.Embedding) and m.weight is weight:
            m.register_forward_hook(lambda mod, inp, out: out * scale)


def _peft_lora(model: nn.Module, budget_fraction: float) -> nn.Module:
    """HF peft LoRA on q and v with the rank that comes closest to the budget."""
    from peft import LoraConfig, get_peft_model

    layers = layer_map(model)
    per_rank = sum(p.in_features + p.out_features for la in layers
                   for p in (getattr(parent, name) for parent, name in la.lora_targets))
    rank = max(1, round(budget_fraction * count_params(model)[0] / per_rank))
    names = sorted({name for la in layers for _, name in la.lora_targets})
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=names, lora_dropout=0.0))


def prepare(arch: str, method: str, base: nn.Module, budget_fraction: float) -> nn.Module:
    """A copy of `base` set up for `method`."""
    model = copy.deepcopy(base)
    n = len(layer_map(model))
    if method == "full":
        model.requires_grad_(True)
    elif method == "floor":
        _floor(model)
    elif method == "peft-lora":
        model = _peft_lora(model, budget_fraction)
    else:
        design = named_design("s4-model" if method == "s4" else method, n)
        # BitFit alone has a natural size (budget None); the others get the budget
        apply_design(model, design, None if method == "bitfit" else budget_fraction, train_head=False)
    return model


def _batch(model: nn.Module, batch: int, length: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(5, vocab, (batch, length), generator=g).to(device)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if model.config.is_encoder_decoder:
        out["labels"] = torch.randint(5, vocab, (batch, 8), generator=g).to(device)
    else:
        out["labels"] = torch.randint(0, 2, (batch,), generator=g).to(device)
    return out


def time_steps(step: Callable[[], None], reps: int, warmup: int, device: str) -> float:
    """Median seconds of `step` over `reps` after `warmup` (CUDA events on a GPU)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_step(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time every method on every architecture; rows with absolute and relative numbers."""
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else None
    rows = []
    for arch in args.archs:
        head = "seq2seq" if "t5" in arch or "bart" in arch else "classification"
        base = build_model(arch, head, device=device, **({} if head == "seq2seq" else {"num_labels": 2}))
        results: dict[str, dict[str, Any]] = {}
        for method in args.methods:
            model = prepare(arch, method, base, args.budget_fraction).train()
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-5)
            batch = _batch(model, args.batch, args.length, device)

            def step() -> None:
                with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                    loss = model(**batch).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = time_steps(step, args.reps, args.warmup, device)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
            results[method] = {"arch": arch, "method": method, "ms": seconds * 1000, "peak_gib": peak,
                               "trainable": sum(p.numel() for p in params)}
            del model, opt
        for r in results.values():
            for ref in ("full", "floor"):
                r[f"x_{ref}"] = r["ms"] / results[ref]["ms"] if ref in results else None
            r["mem_x_full"] = (r["peak_gib"] / results["full"]["peak_gib"]
                               if r["peak_gib"] and "full" in results else None)
            rows.append(r)
    return rows


def bench_sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run a sequential multirun and split each job's wall time from its result.json."""
    out = Path(args.out or tempfile.mkdtemp(prefix="pdspace-bench-"))
    cmd = [sys.executable, "-m", "pdspace.train", "-m", f"hydra.sweep.dir={out}", "logger=none", "callbacks=none",
           f"backbone={args.backbone}", f"task={args.task}", f"task.max_train_samples={args.train_samples}",
           f"task.max_eval_samples={args.eval_samples}", "trainer.max_epochs=1", "ckpt_path=null",
           # one training seed (a random backbone is drawn per seed), so every job after the first is cached
           "save_checkpoint=false", f"design_seed={','.join(str(s) for s in range(args.jobs))}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "WANDB_MODE": "disabled"})
    wall = time.perf_counter() - t0
    found, _ = results_io.read_all(results_io.sweep_paths(out))
    rows = []
    for r in sorted(found, key=lambda r: r["design_seed"]):
        t = r["timings"]
        rows.append({"job": r["design_seed"], "model_s": t["model_s"], "data_s": t["data_s"],
                     "setup_s": t.get("setup_s", 0.0), "train_s": t["train_s"], "eval_s": t["eval_s"],
                     "total_s": t["total_s"], "cached": r.get("backbone_cached")})
    jobs = sum(r["total_s"] for r in rows)
    rows.append({"job": "process", "startup_s": wall - jobs, "wall_s": wall})
    return rows


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec) if isinstance(x, float) else str(x)


def print_step(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Markdown table of `bench_step` rows."""
    print(f"| arch | method | trainable | step ms | × full FT | × floor | peak GiB | mem × full |\n|{'---|' * 8}")
    for r in rows:
        print(f"| {r['arch']} | {r['method']} | {r['trainable']:,} | {r['ms']:.1f} | {_fmt(r['x_full'])} | "
              f"{_fmt(r['x_floor'])} | {_fmt(r['peak_gib'])} | {_fmt(r['mem_x_full'])} |")


def print_sweep(rows: list[dict[str, Any]]) -> None:
    """Markdown table of `bench_sweep` rows and the non-training share."""
    print(f"| job | backbone | model+patch s | data s | setup s | train s | eval s | total s |\n|{'---|' * 8}")
    jobs = [r for r in rows if r["job"] != "process"]
    for r in jobs:
        print(f"| {r['job']} | {'cached' if r['cached'] else 'loaded'} | {r['model_s']:.2f} | {r['data_s']:.2f} | "
              f"{r['setup_s']:.2f} | {r['train_s']:.2f} | {r['eval_s']:.2f} | {r['total_s']:.2f} |")
    proc = rows[-1]
    train = sum(r["train_s"] for r in jobs)
    print(f"\nprocess start-up and Hydra: {proc['startup_s']:.2f} s; wall {proc['wall_s']:.2f} s; "
          f"non-training share {(proc['wall_s'] - train) / proc['wall_s']:.1%} (eval counted as non-training)")


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m pdspace.bench step|sweep`."""
    p = argparse.ArgumentParser(prog="python -m pdspace.bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("step", help="training-step time and memory per method")
    s.add_argument("--archs", nargs="+", default=["t5-base", "roberta-base", "bart-base"])
    s.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    s.add_argument("--batch", type=int, default=None, help="default 32 on a GPU, 8 on CPU")
    s.add_argument("--length", type=int, default=None, help="default 128 on a GPU, 64 on CPU")
    s.add_argument("--reps", type=int, default=30)
    s.add_argument("--warmup", type=int, default=10)
    s.add_argument("--budget-fraction", type=float, default=0.005)
    s.add_argument("--cpu", action="store_true", help="stay on CPU even with a GPU")
    w = sub.add_parser("sweep", help="per-job time split of a sequential multirun")
    w.add_argument("--jobs", type=int, default=4)
    w.add_argument("--backbone", default="minilm")
    w.add_argument("--task", default="sst2")
    w.add_argument("--train-samples", type=int, default=500)
    w.add_argument("--eval-samples", type=int, default=200)
    w.add_argument("--out", default=None)
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available() and not getattr(args, "cpu", False)
    device = torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores)"
    print(f"# {time.strftime('%Y-%m-%d')} · {device} · torch {torch.__version__} · python {platform.python_version()}"
          f" · {' '.join(sys.argv[1:] if argv is None else argv)}\n")
    if args.what == "step":
        args.batch = args.batch or (32 if gpu else 8)
        args.length = args.length or (128 if gpu else 64)
        print_step(bench_step(args), args)
    else:
        print_sweep(bench_sweep(args))


if __name__ == "__main__":
    main()
