"""Evaluation seconds per example, side by side in one process (rounds interleaved, fresh order each round).

MiniLM (pretrained, the S4 design at 0.5 %) on SST-2's dev set: validation batches in file order vs longest
first (`data.eval_sorted`). T5-base (random init, text-to-text SST-2, the first `--t5-examples` dev rows, greedy
generation of up to 8 tokens): the encoder run twice per batch (the loss forward, then again inside `generate`,
as before) vs once for both. Usage: `python benchmarks/eval_speed.py [--rounds 3] [--t5-examples 128]`.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from typing import Any

import torch

from pdspace.backbones import load_backbone
from pdspace.bench.__main__ import header
from pdspace.data import PDSpaceDataModule
from pdspace.design.space import named_design
from pdspace.module import PEFTModule
from pdspace.peft import apply_design, layer_map


def _twice(self: PEFTModule, batch: dict[str, Any]) -> list[str]:
    """The text-to-text validation step as it was: the loss forward and `generate` each run the encoder."""
    inputs = self._inputs(batch)
    self._val_loss.append(self.model(**inputs).loss.detach().float())
    generated = self.model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                    do_sample=False, **self.generation)
    return self.tokenizer.batch_decode(generated, skip_special_tokens=True)


def _setup(backbone: str, arch: str | None, text_to_text: bool, eval_samples: int | None) -> tuple:
    bb = load_backbone(backbone, None if arch else backbone, arch=arch, text_to_text=text_to_text, cache=False)
    apply_design(bb.model, named_design("s4-model", len(layer_map(bb.model))), 0.005)
    kw = dict(text_to_text=bb.text_to_text, glue_dir=os.environ.get("GLUE_DIR"), max_eval_samples=eval_samples,
              max_train_samples=8, eval_batch_size=64)
    module = PEFTModule(bb.model, __import__("pdspace.data", fromlist=["get_task"]).get_task("sst2"), bb.tokenizer,
                        text_to_text=bb.text_to_text)
    return module, bb.tokenizer, kw


def _validate(module: PEFTModule, dm: PDSpaceDataModule) -> float:
    import lightning as L

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    start = time.perf_counter()
    trainer.validate(module, datamodule=dm, verbose=False)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--t5-examples", type=int, default=128)
    args = p.parse_args()
    print(header(["(benchmarks/eval_speed.py)", f"--rounds {args.rounds}", f"--t5-examples {args.t5_examples}"],
                 gpu=False) + "\n")
    minilm, tok, kw = _setup("minilm", None, False, None)
    t5, t5_tok, t5_kw = _setup("t5-base", "t5-base", True, args.t5_examples)
    original = PEFTModule._loss_and_generate
    cases = {
        ("minilm S4, SST-2 dev", "file order"): lambda: _validate(minilm, PDSpaceDataModule("sst2", tok, eval_sorted=False, **kw)),
        ("minilm S4, SST-2 dev", "longest first"): lambda: _validate(minilm, PDSpaceDataModule("sst2", tok, **kw)),
    }

    def t5_case(fn: Any) -> float:
        PEFTModule._loss_and_generate = fn
        try:
            return _validate(t5, PDSpaceDataModule("sst2", t5_tok, eval_sorted=False, **t5_kw))
        finally:
            PEFTModule._loss_and_generate = original

    cases[("t5-base S4, text-to-text", "encoder twice")] = lambda: t5_case(_twice)
    cases[("t5-base S4, text-to-text", "encoder once")] = lambda: t5_case(original)
    examples = {"minilm S4, SST-2 dev": 872, "t5-base S4, text-to-text": args.t5_examples}
    for run in cases.values():  # warm-up: tokenisation and first-call costs out of the timings
        run()
    times: dict[tuple, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        order = list(cases)
        random.shuffle(order)
        for key in order:
            times[key].append(cases[key]())
    print("| model | evaluation | examples | s / example (median) | min–max | × the first row of its model |")
    print("|---|---|---:|---:|---|---:|")
    base: dict[str, float] = {}
    for (model, how), ts in times.items():
        per = [t / examples[model] for t in ts]
        med = statistics.median(per)
        base.setdefault(model, med)
        print(f"| {model} | {how} | {examples[model]} | {med * 1000:.2f} ms | {min(per) * 1000:.2f}–{max(per) * 1000:.2f} ms "
              f"| {med / base[model]:.2f} |")
    print(f"\ntorch threads {torch.get_num_threads()}; eval batch 64; rounds interleaved in a fresh random order.")


if __name__ == "__main__":
    main()
