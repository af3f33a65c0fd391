"""Benchmarks that print a table: `pdspace-bench step|sweep|compile|data|table|replay --help`
(or `python -m pdspace.bench ...`).

step: one training step (fwd + bwd + AdamW) of a patched model, every method interleaved
round-robin in one process, median and IQR per row, ratios to full fine-tuning and to the
*floor* (every weight frozen, one trainable scalar on the first layer's output: the least a
step with a module in layer 0 can cost); eager and/or compiled. sweep: a sequential multirun
and where each job's time goes. compile: compilations and recompiles across the jobs of one
process. table: finished sweeps collected into a design table of learning curves. replay: search
strategies replayed against a design table (regret vs compute).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
from typing import Any

import torch

# subcommand modules of pdspace.bench: each has add_parser(sub), which sets `run` as the parser's default
COMMANDS = ("step", "sweep", "recompiles", "data", "table", "replay")


def machine(gpu: bool = True) -> str:
    """The device the benchmarks run on, in words (`gpu=False`: the CPU even where there is a GPU)."""
    if gpu and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def header(argv: list[str], gpu: bool = True) -> str:
    """Date, machine, versions and the command, for the first line of a table."""
    import transformers

    return (f"# {time.strftime('%Y-%m-%d %H:%M')} · {machine(gpu)} · torch {torch.__version__} · transformers "
            f"{transformers.__version__} · python {platform.python_version()} · "
            f"`pdspace-bench {' '.join(argv)}`")


def main(argv: list[str] | None = None) -> None:
    """CLI: `pdspace-bench step|sweep|compile|table|replay`."""
    p = argparse.ArgumentParser(prog="pdspace-bench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    for name in COMMANDS:
        importlib.import_module(f"pdspace.bench.{name}").add_parser(sub)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    from pdspace.tracking import quiet

    quiet()  # a pretrained backbone's load report and progress bars are not the bench's table
    print(header(argv, gpu=not getattr(args, "cpu", False)) + "\n")
    run: Any = args.run
    run(args)


if __name__ == "__main__":
    main()
