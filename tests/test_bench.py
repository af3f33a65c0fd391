"""The benchmarks run at a tiny size and print their tables (timings are not asserted: benchmarks, not tests)."""

from __future__ import annotations

import pytest
import torch

from pdspace.archs import build_model
from pdspace.bench.__main__ import main
from pdspace.bench.step import Case, _check, _count_flops, make_batch, prepare

PEFT = ["peft-lora", "adapter", "prefix", "lora", "bitfit"]


@pytest.fixture
def one_thread():
    """Tiny models on a shared CPU: one thread is many times faster than waiting on a descheduled second one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_step_bench_prints_every_method_with_ratios(capsys):
    methods = ["full", "floor", *PEFT]
    main(["step", "--archs", "tiny-bert", "tiny-t5", "--methods", *methods, "--rounds", "3", "--reps", "1",
          "--warmup", "1", "--batch", "2", "--length", "8", "--cpu", "--threads", "1"])
    out = capsys.readouterr().out
    assert out.startswith("# ") and "torch " in out and "`pdspace-bench step --archs" in out
    rows = [line for line in out.splitlines() if line.startswith("| tiny-")]
    assert len(rows) == 2 * len(methods)
    assert all(len(r.split("|")) == 13 for r in rows)  # 11 columns: no GPU memory, no compile columns
    floor = [r for r in rows if "| floor |" in r]
    assert all("| 1 |" in r and "| 1.00 |" in r for r in floor)  # one trainable scalar, its own reference
    assert "median of 3 timed steps per row (3 rounds of 1" in out


def test_floor_is_a_lower_bound_in_flops(one_thread):
    """Every PEFT method on every family does at least the floor's forward and backward FLOPs.

    A floor on the word embeddings was none: it also back-propagates through layer 0 (and, in an
    encoder-decoder, the decoder's layer 0), which an adapter or a prefix in layer 0 never needs.
    """
    for arch, head in [("tiny-bert", "classification"), ("tiny-t5", "seq2seq"), ("tiny-bart", "seq2seq")]:
        base = build_model(arch, head, **({"num_labels": 2} if head == "classification" else {}))
        flops = {}
        for method in ["floor", *PEFT]:
            model = prepare(arch, method, base, 0.05).train()
            flops[method] = _count_flops(model, make_batch(model, 2, 16, "cpu"))
        assert all(flops[m] >= flops["floor"] for m in PEFT), (arch, flops)


def test_prepare_shares_frozen_weights_and_copies_trained_ones():
    base = build_model("tiny-bert", "classification", num_labels=2)
    ptrs = {p.data_ptr() for p in base.parameters()}
    bitfit = prepare("tiny-bert", "bitfit", base, 0.05)
    trained = [p for p in bitfit.parameters() if p.requires_grad]
    frozen = [p for p in bitfit.parameters() if not p.requires_grad]
    assert trained and all(p.data_ptr() not in ptrs for p in trained)  # the optimizer writes into its own biases
    assert all(p.data_ptr() in ptrs for p in frozen)
    assert all(p.requires_grad for p in prepare("tiny-bert", "full", base, 0.05).parameters())
    assert all(p.data_ptr() not in ptrs for p in prepare("tiny-bert", "full", base, 0.05).parameters())
    assert not any(p.requires_grad for p in base.parameters()) or all(p.requires_grad for p in base.parameters())


def _case(method: str, times: list[float], flops: int) -> Case:
    return Case(method, "eager", lambda: None, 1, flops=flops, times=[times])


@pytest.mark.parametrize("times,flops,verdict", [
    ([1.2, 1.3, 1.4], 110, ""),                      # above the floor
    ([0.95, 1.0, 1.05], 110, "~ floor"),             # spreads overlap
    ([0.5, 0.55, 0.6], 110, "BELOW FLOOR in time only"),  # less time for more work: the timing is wrong
    ([1.2, 1.3, 1.4], 90, "BELOW FLOOR in FLOPs"),   # less work than the floor: the set-up is wrong
])
def test_rows_are_checked_against_the_floor(times, flops, verdict):
    floor = _case("floor", [0.9, 1.0, 1.1], 100)
    q = sorted(times)
    row = {"q1_ms": q[0] * 1000, "q3_ms": q[-1] * 1000}
    got = _check(_case("lora", times, flops), floor, row)
    assert got.startswith(verdict) and (verdict or not got)


@pytest.mark.slow
def test_step_bench_compiled_mode(capsys):
    main(["step", "--archs", "tiny-bert", "--methods", "full", "floor", "lora", "--modes", "eager", "compiled",
          "--compile-backend", "aot_eager", "--rounds", "3", "--reps", "1", "--batch", "2", "--length", "8", "--cpu"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| tiny-bert")]
    assert len(rows) == 6 and sum("| compiled |" in r for r in rows) == 3
    assert "× eager" in out and "no recompilation after the first step" in out


def test_sweep_bench_splits_job_time(capsys, tmp_path):
    main(["sweep", "--jobs", "2", "--backbone", "tiny-bert", "--task", "synthetic_cls", "--train-samples", "32",
          "--eval-samples", "16", "--out", str(tmp_path / "sweep")])
    out = capsys.readouterr().out
    assert "| 0 | loaded |" in out and "| 1 | cached |" in out and "non-training share" in out


def _compile_rows(out: str) -> list[list[str]]:
    return [line.split(" | ") for line in out.splitlines() if line[:4] in {f"| {i} " for i in range(10)}]


def test_compile_bench_counts_compilations_per_job(capsys, one_thread):
    """Regional (the default): the 2nd job of a design compiles nothing and reuses the three region graphs of its
    layers (attention with LoRA, intermediate, output; layer 0 shares them); the model scope: one training and one
    eval graph."""
    main(["compile", "--backbone", "tiny-bert", "--designs", "lora", "lora", "--backend", "eager",
          "--lengths", "8", "12", "--rounds", "1"])
    out = capsys.readouterr().out
    # region layouts, graphs run, compiled, reused, recompiles, ran eager
    assert [r[3:9] for r in _compile_rows(out)] == [["3", "3", "3", "0", "0", "0"], ["3", "3", "0", "3", "0", "0"]]
    assert "regional (each transformer block)" in out and "sweep compile s:" in out and "compiled step / eager" in out
    main(["compile", "--backbone", "tiny-bert", "--designs", "adapter", "adapter", "--backend", "eager",
          "--lengths", "8", "12", "--rounds", "0", "--scope", "model"])
    out = capsys.readouterr().out
    assert [r[3:9] for r in _compile_rows(out)] == [["—", "—", "2", "—", "0", "0"], ["—", "—", "0", "—", "0", "0"]]


def test_bench_prints_no_load_report(capfd, one_thread):
    """A pretrained backbone's load report ("classifier ... MISSING ... consider training") and weight-loading bar
    are transformers' noise between the header and the table: the bench runs quiet, as pdspace-train does."""
    import transformers

    level, bars = transformers.logging.get_verbosity(), transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_warning()  # what a fresh process has, whatever ran before in this one
    transformers.utils.logging.enable_progress_bar()
    try:
        main(["compile", "--backbone", "minilm", "--designs", "lora", "--backend", "eager", "--lengths", "8",
              "--rounds", "0"])
    finally:  # this process's settings as they were
        transformers.logging.set_verbosity(level)
        (transformers.utils.logging.enable_progress_bar if bars else transformers.utils.logging.disable_progress_bar)()
    out, err = capfd.readouterr()
    assert "| 0 |" in out
    assert "LOAD REPORT" not in out + err and "Loading weights" not in out + err


def test_compile_bench_samples_s0_designs(capsys, one_thread):
    """`--designs N`: N distinct S0 designs, one job each, and the sweep's compile seconds against its first job's."""
    main(["compile", "--backbone", "tiny-bert", "--designs", "3", "--backend", "eager", "--lengths", "8",
          "--rounds", "1", "--space-seed", "1"])
    rows = _compile_rows(capsys.readouterr().out)
    assert len(rows) == 3 and len({r[1] for r in rows}) == 3 and all(r[1].startswith("g") for r in rows)
    assert all(r[7] == "0" and r[8] == "0" for r in rows)  # no recompiles, nothing ran eager
