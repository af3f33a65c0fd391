"""`pdspace-bench sweep`: a sequential multirun and where each job's time goes."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pdspace import results as results_io


def bench_sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run a sequential multirun and split each job's wall time from its result.json."""
    out = Path(args.out or tempfile.mkdtemp(prefix="pdspace-bench-"))
    cmd = [sys.executable, "-m", "pdspace.train", "-m", f"hydra.sweep.dir={out}", "logger=none", "callbacks=none",
           f"backbone={args.backbone}", f"task={args.task}", f"task.max_train_samples={args.train_samples}",
           f"task.max_eval_samples={args.eval_samples}", "trainer.max_epochs=1", "ckpt_path=null",
           # one training seed (a random backbone is drawn per seed), so every job after the first is cached
           "save_checkpoint=false", f"design_seed={','.join(str(s) for s in range(args.jobs))}"]
    if args.compile:
        cmd += ["train.compile=true"] + ([f"train.compile_mode={args.compile_mode}"] if args.compile_mode else [])
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"pdspace-bench sweep: the multirun failed (exit {done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    found, _ = results_io.read_all(results_io.sweep_paths(out))
    rows = []
    for r in sorted(found, key=lambda r: r["design_seed"]):
        t = r["timings"]
        # result.json carries the module's compile_stats() under "compile" (train.compile=true runs only)
        comp = r.get("compile") or {}
        rows.append({"job": r["design_seed"], "design": r.get("design_id"), "model_s": t["model_s"],
                     "data_s": t["data_s"], "setup_s": t.get("setup_s", 0.0), "train_s": t["train_s"],
                     "eval_s": t["eval_s"], "total_s": t["total_s"], "cached": r.get("backbone_cached"),
                     "steps": r.get("global_step"), "compiles": comp.get("compiles"),
                     "recompiles": comp.get("recompiles"), "compile_s": comp.get("compile_s")})
    jobs = sum(r["total_s"] for r in rows)
    rows.append({"job": "process", "startup_s": wall - jobs, "wall_s": wall})
    return rows


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec) if isinstance(x, float) else str(x)


def print_sweep(rows: list[dict[str, Any]]) -> None:
    """Markdown table of `bench_sweep` rows and the non-training share."""
    jobs = [r for r in rows if r["job"] != "process"]
    compiled = any(r["compiles"] is not None for r in jobs)
    cols = ["job", "backbone", "model+patch s", "data s", "setup s", "train s", "steps", "eval s", "total s"]
    cols += ["compiles", "recompiles", "compile s"] if compiled else []
    cols += ["design"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in jobs:
        cells = [str(r["job"]), "cached" if r["cached"] else "loaded", f"{r['model_s']:.2f}",
                 f"{r['data_s']:.2f}", f"{r['setup_s']:.2f}", f"{r['train_s']:.2f}", _fmt(r["steps"]),
                 f"{r['eval_s']:.2f}", f"{r['total_s']:.2f}"]
        cells += [_fmt(r["compiles"]), _fmt(r["recompiles"]), _fmt(r["compile_s"])] if compiled else []
        cells += [f"`{r['design']}`"]
        print("| " + " | ".join(cells) + " |")
    proc = rows[-1]
    train = sum(r["train_s"] for r in jobs)
    print(f"\nprocess start-up and Hydra: {proc['startup_s']:.2f} s; wall {proc['wall_s']:.2f} s; "
          f"non-training share {(proc['wall_s'] - train) / proc['wall_s']:.1%} (eval counted as non-training)")


def add_parser(sub: Any) -> None:
    """`pdspace-bench sweep ...`."""
    w = sub.add_parser("sweep", help="per-job time split of a sequential multirun")
    w.add_argument("--jobs", type=int, default=4)
    w.add_argument("--backbone", default="minilm")
    w.add_argument("--task", default="sst2")
    w.add_argument("--train-samples", type=int, default=500)
    w.add_argument("--eval-samples", type=int, default=200)
    w.add_argument("--compile", action="store_true", help="train.compile=true for every job")
    w.add_argument("--compile-mode", default=None)
    w.add_argument("--out", default=None)
    w.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Bench and print."""
    print_sweep(bench_sweep(args))
