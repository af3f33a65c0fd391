"""The benchmarks run at a tiny size and print their tables (timings are not asserted: benchmarks, not tests)."""

from __future__ import annotations

from pdspace.bench.__main__ import main


def test_step_bench_prints_every_method_with_ratios(capsys):
    methods = ["full", "floor", "peft-lora", "adapter", "prefix", "lora", "bitfit"]
    main(["step", "--archs", "tiny-bert", "tiny-t5", "--methods", *methods, "--reps", "1", "--warmup", "1",
          "--batch", "2", "--length", "8", "--cpu"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| tiny-")]
    assert len(rows) == 2 * len(methods)
    floor = [r for r in rows if "| floor |" in r]
    assert all("| 1 |" in r and "| 1.00 |" in r for r in floor)  # one trainable scalar, its own reference


def test_sweep_bench_splits_job_time(capsys, tmp_path):
    main(["sweep", "--jobs", "2", "--backbone", "tiny-bert", "--task", "synthetic_cls", "--train-samples", "32",
          "--eval-samples", "16", "--out", str(tmp_path / "sweep")])
    out = capsys.readouterr().out
    assert "| 0 | loaded |" in out and "| 1 | cached |" in out and "non-training share" in out
