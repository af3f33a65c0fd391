"""`pdspace-bench step`: one training step (forward, backward, AdamW) per method, interleaved.

Every method of an architecture is set up first (its own optimizer, one shared batch, the
frozen weights shared with the backbone), then timed round-robin: each round runs `reps`
steps of every method, in an order shuffled from round to round (seeded), so a slow spell
of the machine (another process, a frequency drop) hits every method rather than the one
measured at that moment, and no method always follows the same one. Ratios are paired per round (a method's round median over its reference's
median in that same round) and their median over rounds is reported.

The *floor*: every weight frozen and one trainable scalar scaling the output of the first
layer (of the layer map: encoder layer 0). Its forward is the frozen model's and its backward
reaches layer 0's output but computes no weight gradient: what every design with a module in
layer 0 computes at least (its modules add to the forward, and its backward must reach them).
A PEFT row below it is an error, and the table says which kind: fewer FLOPs than the floor is a
set-up error (the method skips work the floor does); less time with no fewer FLOPs is a
measurement error.

Peak memory: on a GPU, per row, `torch.cuda.max_memory_allocated` over the row's set-up and warm-up (its frozen
weights counted, as a standalone run would hold them). On CPU, `--peak-rss` adds the process's resident
high-water mark (Linux VmHWM, reset before each row where the kernel allows): a process figure that includes
the backbone and every row set up before it, not the method's own.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pdspace.archs import ARCHITECTURES, build_model
from pdspace.compile import CompiledModel
from pdspace.design.space import named_design
from pdspace.peft.families import layer_map
from pdspace.peft.patch import apply_design, count_params

METHODS = ("full", "floor", "peft-lora", "adapter", "prefix", "lora", "bitfit", "s4")
MODES = ("eager", "compiled")
REFERENCES = ("full", "floor")
# CPU use (process CPU time / wall time x threads) below which the cores were shared with other processes
CONTENDED = 0.8
# device defaults: (rounds, timed steps per method and round, untimed warm-up steps per method)
DEFAULTS = {"cuda": (5, 5, 5), "cpu": (3, 2, 1)}


def _floor(model: nn.Module) -> None:
    """Freeze everything; one trainable scalar multiplies the output of the first layer."""
    model.requires_grad_(False)
    scale = nn.Parameter(torch.ones((), device=next(model.parameters()).device))
    model.pdspace_floor_scale = scale

    def hook(module: nn.Module, args: Any, out: Any) -> Any:
        # T5 blocks return (hidden states, position bias, ...); the others the hidden states alone
        return (out[0] * scale, *out[1:]) if isinstance(out, tuple) else out * scale

    # not the word embeddings: they feed layer 0 (and the decoder of an encoder-decoder), whose backward a module
    # placed inside layer 0 (an adapter after its feed-forward, a prefix) never needs: such a floor costs more FLOPs
    # than adapter, prefix or BitFit steps (3-5 % on RoBERTa, T5 and BART base), so it was no lower bound
    layer_map(model)[0].block.register_forward_hook(hook)


def _peft_lora(model: nn.Module, budget_fraction: float) -> nn.Module:
    """HF peft LoRA on q and v with the rank that comes closest to the budget."""
    from peft import LoraConfig, get_peft_model

    layers = layer_map(model)
    per_rank = sum(p.in_features + p.out_features for la in layers
                   for p in (getattr(parent, name) for parent, name in la.lora_targets))
    rank = max(1, round(budget_fraction * count_params(model)[0] / per_rank))
    names = sorted({name for la in layers for _, name in la.lora_targets})
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=names, lora_dropout=0.0))


def _copy_sharing_frozen(base: nn.Module) -> nn.Module:
    """A deep copy of `base` whose parameters and buffers share storage with it (new Parameter objects)."""
    memo: dict[int, Any] = {id(p): nn.Parameter(p.data, requires_grad=p.requires_grad) for p in base.parameters()}
    memo.update({id(b): b for b in base.buffers()})
    return copy.deepcopy(base, memo)


def prepare(arch: str, method: str, base: nn.Module, budget_fraction: float) -> nn.Module:
    """A copy of `base` set up for `method`; frozen weights are shared with `base` (only full FT copies them)."""
    if method == "full":
        model = copy.deepcopy(base)
        model.requires_grad_(True)
        return model
    model = _copy_sharing_frozen(base)
    shared = {p.data_ptr() for p in base.parameters()}
    if method == "floor":
        _floor(model)
    elif method == "peft-lora":
        model = _peft_lora(model, budget_fraction)
    else:
        design = named_design("s4-model" if method == "s4" else method, len(layer_map(model)))
        # BitFit alone has a natural size (budget None); the others get the budget
        apply_design(model, design, None if method == "bitfit" else budget_fraction, train_head=False)
    for p in model.parameters():
        if p.requires_grad and p.data_ptr() in shared:
            # BitFit trains existing biases: the optimizer must not write into the weights the other methods share
            p.data = p.data.clone()
    return model


def parse_arch(spec: str) -> tuple[str, dict[str, Any]]:
    """'tiny-t5:num_layers=3,num_decoder_layers=3' -> ('tiny-t5', {'num_layers': 3, 'num_decoder_layers': 3})."""
    name, _, rest = spec.partition(":")
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r} in {spec!r}; use one of {', '.join(ARCHITECTURES)}")
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"{spec!r}: expected ARCH or ARCH:KEY=VALUE[,KEY=VALUE...] (a config override such "
                             "as num_layers=3)")
        for kind in (int, float):
            try:
                overrides[key] = kind(value)
                break
            except ValueError:
                overrides[key] = value
    return name, overrides


def peak_rss_gib(reset: bool = False) -> float | None:
    """The process's peak resident set size (Linux VmHWM) in GiB; `reset`: restart it from the current RSS first.

    None where /proc is not there. Where the kernel refuses the reset, the peak counts from the process's start.
    """
    try:
        if reset:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            except OSError:
                pass
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return None
    return kib / 2**20


def make_batch(model: nn.Module, batch: int, length: int, device: str) -> dict[str, torch.Tensor]:
    """A random batch of `batch` x `length` tokens (8 target tokens for encoder-decoders, else a class label)."""
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(5, vocab, (batch, length), generator=g).to(device)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if model.config.is_encoder_decoder:
        out["labels"] = torch.randint(5, vocab, (batch, 8), generator=g).to(device)
    else:
        out["labels"] = torch.randint(0, 2, (batch,), generator=g).to(device)
    return out


def quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    """(q1, median, q3) of `xs` (inclusive method: defined for a single value too)."""
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


@dataclass
class Case:
    """One (method, mode) of one architecture: its model, optimizer, step and measurements."""

    method: str
    mode: str
    step: Callable[[], None]
    trainable: int
    compiled: CompiledModel | None = None
    flops: int | None = None
    first_step_s: float | None = None
    peak_gib: float | None = None
    peak_rss_gib: float | None = None  # CPU, --peak-rss: the process's resident high-water mark
    times: list[list[float]] = field(default_factory=list)  # per round, seconds per timed step
    cpu: list[float] = field(default_factory=list)  # process CPU seconds per timed step

    @property
    def key(self) -> tuple[str, str]:
        """(method, mode)."""
        return self.method, self.mode


def _count_flops(model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Forward + backward FLOPs of one step (matmuls and attention, as torch's FlopCounterMode counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _setup(arch: str, base: nn.Module, method: str, mode: str, batch: dict[str, torch.Tensor],
           args: argparse.Namespace, device: str) -> Case:
    """Build, compile (compiled mode), count FLOPs and warm up one case; GPU peak memory of a standalone run."""
    dtype = torch.bfloat16 if device == "cuda" else None
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    elif args.peak_rss:
        peak_rss_gib(reset=True)
    model = prepare(arch, method, base, args.budget_fraction).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)  # a fresh optimizer (and state) per case
    compiled = CompiledModel(model, args.compile_mode, backend=args.compile_backend) if mode == "compiled" else None
    forward = compiled if compiled is not None else model

    def step() -> None:
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            loss = forward(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    case = Case(method, mode, step, sum(p.numel() for p in params), compiled)
    # an eager step, counted: the FLOPs are the method's whatever the mode, and it warms the allocator
    with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
        case.flops = _count_flops(model, batch)
    t0 = time.perf_counter()
    step()  # compiled mode: the compilation happens here
    _sync(device)
    case.first_step_s = time.perf_counter() - t0
    for _ in range(max(0, args.warmup - 1)):
        step()
    print(f"{arch} {method} ({mode}): set up, first step {case.first_step_s:.1f} s", file=sys.stderr, flush=True)
    if device == "cuda":
        # frozen weights are shared with the backbone (allocated before): a standalone run would hold them too
        shared = {p.data_ptr() for p in base.parameters()}
        shared_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.data_ptr() in shared)
        case.peak_gib = (torch.cuda.max_memory_allocated() - before + shared_bytes) / 2**30
    elif args.peak_rss:
        case.peak_rss_gib = peak_rss_gib()
    return case


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(case: Case, reps: int, device: str) -> None:
    """Run `reps` timed steps of `case` (CUDA events on a GPU; wall and process CPU time on a CPU)."""
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            case.step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            c0, t0 = time.process_time(), time.perf_counter()
            case.step()
            times.append(time.perf_counter() - t0)
            case.cpu.append(time.process_time() - c0)
    case.times.append(times)


def _paired(case: Case, ref: Case | None) -> tuple[float, float, float] | None:
    """Quartiles over rounds of (case's round median / ref's round median)."""
    if ref is None:
        return None
    ratios = [statistics.median(a) / statistics.median(b) for a, b in zip(case.times, ref.times)]
    return quartiles(ratios)


def _check(case: Case, floor: Case | None, row: dict[str, Any]) -> str:
    """The row's verdict against the floor: '' (above it), '~ floor', or one of the two errors."""
    if floor is None or case.method in REFERENCES:
        return ""
    if case.flops is not None and floor.flops is not None and case.flops < floor.flops:
        return "BELOW FLOOR in FLOPs: set-up error"
    f_q1, _, f_q3 = quartiles([t for r in floor.times for t in r])
    if row["q3_ms"] / 1000 < f_q1:
        return "BELOW FLOOR in time only: measurement error"
    if row["q1_ms"] / 1000 <= f_q3:
        return "~ floor (IQRs overlap)"
    return ""


def bench_arch(arch: str, args: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    """Set up every (method, mode) of `arch`, time them round-robin, return one row each."""
    name, overrides = parse_arch(arch)
    head = "seq2seq" if "t5" in name or "bart" in name else "classification"
    base = build_model(name, head, device=device, **overrides, **({} if head == "seq2seq" else {"num_labels": 2}))
    batch = make_batch(base, args.batch, args.length, device)  # the same batch for every method
    cases = [_setup(arch, base, m, mode, batch, args, device) for mode in args.modes for m in args.methods]
    threads = torch.get_num_threads()
    for r in range(args.rounds):
        # every case once per round, in a fresh order: no case always runs first, last or right after another
        # (a step right after full FT's can pay for memory that full FT handed back to the system)
        for case in random.Random(r).sample(cases, len(cases)):
            _time(case, args.reps, device)
        print(f"{arch}: round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    by_key = {c.key: c for c in cases}
    rows = []
    for case in cases:
        flat = [t for r in case.times for t in r]
        q1, med, q3 = quartiles(flat)
        row: dict[str, Any] = {
            "arch": arch, "method": case.method, "mode": case.mode, "trainable": case.trainable,
            "gflop": case.flops / 1e9 if case.flops is not None else None, "ms": med * 1000, "q1_ms": q1 * 1000,
            "q3_ms": q3 * 1000, "steps": len(flat), "times_ms": [[t * 1000 for t in r] for r in case.times],
            "peak_gib": case.peak_gib, "peak_rss_gib": case.peak_rss_gib, "first_step_s": case.first_step_s,
            "cpu_use": (sum(case.cpu) / (sum(flat) * threads)) if case.cpu else None}
        for ref in REFERENCES:
            paired = _paired(case, by_key.get((ref, case.mode)))
            row[f"x_{ref}"] = paired[1] if paired else None
            row[f"x_{ref}_iqr"] = (paired[0], paired[2]) if paired else None
        eager = by_key.get((case.method, "eager")) if case.mode != "eager" else None
        row["x_eager"] = _paired(case, eager)[1] if eager else None
        full = by_key.get(("full", case.mode))
        row["mem_x_full"] = (case.peak_gib / full.peak_gib if case.peak_gib and full and full.peak_gib else None)
        floor = by_key.get(("floor", case.mode))
        if floor is not None and floor.flops and case.flops:
            row["flops_x_floor"] = case.flops / floor.flops
        if case.compiled is not None:
            stats = case.compiled.stats()
            row.update(compiles=stats["compiles"], recompiles=stats["recompiles"], compile_s=stats["compile_s"],
                       recompile_reasons=stats["reasons"])
        row["check"] = _check(case, floor, row)
        rows.append(row)
    del cases, base
    return rows


def bench_step(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time every method (in every mode) on every architecture; one row per (arch, method, mode)."""
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    rows = []
    for arch in args.archs:
        rows += bench_arch(arch, args, device)
    return rows


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec) if isinstance(x, float) else str(x)


def print_step(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Markdown table of `bench_step` rows, then what its flags mean."""
    modes = {r["mode"] for r in rows}
    gpu = any(r["peak_gib"] is not None for r in rows)
    rss = not gpu and any(r.get("peak_rss_gib") is not None for r in rows)
    cols = ["arch", "method", "mode", "trainable", "GFLOP", "step ms", "IQR ms", "× full FT", "× floor"]
    cols += ["× eager"] if len(modes) > 1 else []
    cols += ["CPU use"] if not gpu else ["peak GiB", "mem × full"]
    cols += ["peak RSS GiB"] if rss else []
    cols += ["compile s", "recompiles"] if "compiled" in modes else []
    cols += ["check"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        cells = [r["arch"], r["method"], r["mode"], f"{r['trainable']:,}", _fmt(r["gflop"], ".4g"),
                 f"{r['ms']:.1f}", f"{r['q1_ms']:.0f}–{r['q3_ms']:.0f}", _fmt(r["x_full"]), _fmt(r["x_floor"])]
        cells += [_fmt(r["x_eager"])] if len(modes) > 1 else []
        cells += [_fmt(r["cpu_use"])] if not gpu else [_fmt(r["peak_gib"]), _fmt(r["mem_x_full"])]
        cells += [_fmt(r.get("peak_rss_gib"), ".3f")] if rss else []
        if "compiled" in modes:
            cells += [_fmt(r.get("compile_s"), ".1f"), _fmt(r.get("recompiles"))]
        cells += [r["check"] or " "]
        print("| " + " | ".join(cells) + " |")
    print()
    steps = {r["steps"] for r in rows}
    print(f"step ms: median of {'/'.join(str(s) for s in sorted(steps))} timed steps per row ({args.rounds} rounds of "
          f"{args.reps}, methods interleaved, after {args.warmup} untimed); IQR: their 25th–75th percentiles. × full FT, "
          "× floor, × eager: median over rounds of the ratio of round medians (same mode). GFLOP: forward + backward "
          "(matmul and attention FLOPs, torch's FlopCounterMode)." + ("" if gpu else " CPU use: process CPU time / "
                                                                      "(wall time × threads) over the timed steps.") + (
              " peak GiB: torch.cuda.max_memory_allocated over the row's set-up and warm-up, its frozen weights "
              "counted; mem × full: over full fine-tuning's (same mode)." if gpu else "") + (
              " peak RSS GiB: the process's resident high-water mark during the row's set-up and warm-up: it "
              "includes the backbone and every row set up before it, so it is no per-method figure (that needs a "
              "GPU)." if rss else ""))
    for r in rows:
        if r["check"].startswith("BELOW"):
            kind = ("it does less work than the floor: the floor or the method is set up wrong"
                    if "FLOPs" in r["check"] else "it does at least the floor's work, so the timing is wrong: "
                    "rerun with more --rounds, or on a quiet machine")
            print(f"- {r['arch']} {r['method']} ({r['mode']}) is below the floor, which is a lower bound: {kind}.")
    overlap = [f"{r['arch']} {r['method']} ({r['mode']})" for r in rows if r["check"].startswith("~")]
    if overlap:
        print(f"- within the floor's spread (IQRs overlap; the difference is not resolved by this run): "
              f"{', '.join(overlap)}.")
    recompiled = [r for r in rows if r.get("recompiles")]
    for r in recompiled:
        print(f"- {r['arch']} {r['method']} recompiled {r['recompiles']}x after its first step: "
              f"{'; '.join(r['recompile_reasons'])}")
    if "compiled" in modes and not recompiled:
        print("- compiled rows: no recompilation after the first step.")
    for arch in dict.fromkeys(r["arch"] for r in rows):
        use = [r["cpu_use"] for r in rows if r["arch"] == arch and r["cpu_use"] is not None]
        if use and min(use) < CONTENDED:
            print(f"- {arch}: CPU contention: this process got {min(use):.0%}–{max(use):.0%} of its "
                  f"{torch.get_num_threads()} threads' time (CPU use); other processes shared the cores, so its "
                  "times are inflated, by more for methods with more (parallel) ops, each of which waits for a "
                  "descheduled thread. Rerun on a quiet machine, or with `--threads 1` to measure work rather "
                  "than scheduling.")


def add_parser(sub: Any) -> None:
    """`pdspace-bench step ...`."""
    s = sub.add_parser("step", help="training-step time per method, methods interleaved round-robin")
    s.add_argument("--archs", nargs="+", default=["t5-base", "roberta-base", "bart-base"],
                   help="architectures (pdspace.archs), each optionally with config overrides, "
                   "e.g. tiny-t5:num_layers=3,num_decoder_layers=3")
    s.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    s.add_argument("--modes", nargs="+", default=None, choices=MODES,
                   help="eager and/or compiled (torch.compile of the model, as train.compile=true); default eager")
    s.add_argument("--compile", action="store_true", help="shorthand for --modes compiled")
    s.add_argument("--compile-mode", default=None, help="torch.compile mode (default: its default)")
    s.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: a quick check)")
    s.add_argument("--batch", type=int, default=None, help="default 32 on a GPU, 8 on CPU")
    s.add_argument("--length", type=int, default=None, help="default 128 on a GPU, 64 on CPU")
    s.add_argument("--rounds", type=int, default=None, help="rounds over all methods (default 5 on a GPU, 3 on CPU)")
    s.add_argument("--reps", type=int, default=None, help="timed steps per method and round (default 5 GPU, 2 CPU)")
    s.add_argument("--warmup", type=int, default=None, help="untimed steps per method first (default 5 GPU, 1 CPU)")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, one per core)")
    s.add_argument("--budget-fraction", type=float, default=0.005)
    s.add_argument("--cpu", action="store_true", help="stay on CPU even with a GPU")
    s.add_argument("--peak-rss", action="store_true",
                   help="CPU: add the process's peak RSS per row (on a GPU peak memory is always reported)")
    s.add_argument("--json", default=None, help="also write the rows to this JSON file")
    s.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Fill in the device defaults, bench, print."""
    gpu = torch.cuda.is_available() and not args.cpu
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        _run(args, gpu)
    finally:
        torch.set_num_threads(threads)  # a caller in this process (a test) keeps its own setting


def _run(args: argparse.Namespace, gpu: bool) -> None:
    import json

    rounds, reps, warmup = DEFAULTS["cuda" if gpu else "cpu"]
    args.rounds, args.reps = args.rounds or rounds, args.reps or reps
    args.warmup = warmup if args.warmup is None else args.warmup
    args.batch = args.batch or (32 if gpu else 8)
    args.length = args.length or (128 if gpu else 64)
    args.modes = args.modes or (["compiled"] if args.compile else ["eager"])
    if args.rounds < 1 or args.reps < 1 or args.warmup < 1:
        raise SystemExit("pdspace-bench step: error: --rounds, --reps and --warmup must be >= 1")
    for arch in args.archs:
        try:
            parse_arch(arch)
        except ValueError as e:
            raise SystemExit(f"pdspace-bench step: error: --archs {e}") from None
    print(f"threads {torch.get_num_threads()}; batch {args.batch} x {args.length}; load average at start "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    rows = bench_step(args)
    print_step(rows, args)
    print(f"- load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
