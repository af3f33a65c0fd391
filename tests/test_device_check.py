"""benchmarks/device_check.sh: the GPU check script, run here in its --smoke mode (CPU, tiny models and data).

The smoke run goes through the same four steps as on a GPU (imports, step bench eager and compiled, the
comparison multirun of every method over two seeds, pdspace-report), so a broken command line fails here
before it costs device time. Also the time guard, bad input, and the step bench's additions the script needs
(architectures with config overrides, the CPU peak-RSS column).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pdspace.bench.step import parse_arch, peak_rss_gib

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"
METHODS = ("full", "floor", "peft-lora", "adapter", "prefix", "lora", "bitfit", "s4")
COMPARED = ("s4_model", "full_finetune", "lora", "adapter", "prefix", "bitfit")

pytestmark = pytest.mark.skipif(not os.environ.get("GLUE_DIR") or shutil.which("bash") is None,
                                reason="needs bash and GLUE_DIR (SST-2) like the other SST-2 tests")


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    # the venv's python first on PATH, as CI has it: the script runs `python3 -m pdspace...`
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env, check=False)


def _summary_rows(out: Path) -> dict[str, list[str]]:
    """summary.md's step table: step name -> [status, seconds, output, note]."""
    rows = {}
    for line in (out / "summary.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("step", "---"):
            rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_check")
    t0 = time.perf_counter()
    proc = _run("--smoke", "--out", str(out))
    return out, proc, time.perf_counter() - t0


def test_smoke_run_writes_every_table(smoke):
    out, proc, wall = smoke
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _summary_rows(out)
    assert list(rows) == ["install", "step-tiny-eager", "compare-all", "report", "step-tiny-compiled"]
    assert all(r[0] == "done" for r in rows.values()), rows
    assert "everything importable" in rows["install"][3]  # smoke mode never runs pip
    assert "pip install" not in (out / "device_check.log").read_text()
    versions = (out / "versions.txt").read_text()
    assert re.search(r"^torch \d", versions, re.MULTILINE) and re.search(r"^python 3\.", versions, re.MULTILINE)
    assert versions.splitlines()[1].startswith("gpu ")

    # step tables: every method of every (6-layer) tiny architecture, with a memory column
    eager = (out / "step-tiny-eager.md").read_text()
    header = next(line for line in eager.splitlines() if line.startswith("| arch |"))
    assert "peak RSS GiB" in header
    mem = [c.strip() for c in header.strip("|").split("|")].index("peak RSS GiB")
    table = [line for line in eager.splitlines() if line.startswith("| tiny-")]
    assert len(table) == 3 * len(METHODS)
    for arch in ("tiny-t5", "tiny-roberta", "tiny-bart"):
        assert {r.split("|")[2].strip() for r in table if r.startswith(f"| {arch}:")} == set(METHODS)
    assert all(float(r.strip("|").split("|")[mem]) > 0 for r in table)
    compiled = [line for line in (out / "step-tiny-compiled.md").read_text().splitlines()
                if line.startswith("| tiny-")]
    assert sorted(r.split("|")[3].strip() for r in compiled) == ["compiled", "compiled", "eager", "eager"]
    assert json.loads((out / "step-tiny-eager.json").read_text())[0]["peak_rss_gib"] > 0

    # the comparison: every method over seeds 0 and 1, completed, with predictions for the bootstrap
    results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/*/result.json"))]
    assert sorted((r["method"], r["seed"]) for r in results) == sorted((m, s) for m in COMPARED for s in (0, 1))
    assert all(r["status"] == "completed" and r["backbone"] == "tiny-bert" for r in results)
    assert all(r["data"]["rows"] == {"train": 48, "validation": 48} for r in results)
    by = {(r["method"], r["seed"]): r for r in results}
    # the measured per-strategy scales on the quick regime's base lr
    assert {k: g["lr_scale"] for k, g in by["s4_model", 0]["optimizer"]["groups"].items()} == {
        "A": 1.0, "P": 10.0, "B": 1.0, "L": 3.33, "head": 1.0}
    assert by["full_finetune", 0]["design_id"] == "full" and by["full_finetune", 0]["optimizer"]["lr"] == 5e-5
    assert by["s4_model", 0]["design_id"].startswith("g1-2-2-1.") and "A+L|A+P|A+P+B|P+B+L" in by["s4_model", 0]["design_id"]
    assert "B|B|B|B" in by["bitfit", 1]["design_id"] and by["bitfit", 1]["budget_fraction"] is None
    assert all(list((out / "runs").glob(f"*/{k}/predictions.npz")) for k in range(12))

    # the report: a row per method and the significance table with both tests
    report = (out / "report.md").read_text()
    for method in COMPARED:
        assert re.search(rf"^\| {method} \| tiny-bert \|.*\(n=2\)", report, re.MULTILINE), method
    assert "| Δ vs best | 95 % CI | p (t) | p (bootstrap) |" in report
    assert (out / "report.csv").exists()
    print(f"smoke wall time {wall:.0f} s")


def test_time_guard_skips_later_steps_and_keeps_what_finished(tmp_path):
    # 0.1 min: the install check starts at once (the guard is checked before it), nothing after 6 s
    proc = _run("--smoke", "--budget-min", "0.1", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]  # skipped is no failure
    rows = _summary_rows(tmp_path)
    assert rows["install"][0] == "done" and (tmp_path / "versions.txt").exists()
    for name in ("compare-all", "step-tiny-compiled"):
        assert rows[name][0] == "skipped" and rows[name][3].startswith("time guard:"), rows
    assert rows["report"][0] == "skipped" and "no comparison run" in rows["report"][3]
    assert not list(tmp_path.glob("runs/*/*/result.json")) and not (tmp_path / "step-tiny-compiled.md").exists()
    # the step bench may or may not have started within the 6 s; if it did, its table is complete
    assert rows["step-tiny-eager"][0] in ("done", "skipped")
    assert (tmp_path / "step-tiny-eager.md").exists() == (rows["step-tiny-eager"][0] == "done")
    assert "time guard: skipped compare-all" in proc.stderr
    summary = (tmp_path / "summary.md").read_text()
    assert "- finished: exit code 0" in summary and "Skipped: " in summary and "larger --budget-min" in summary


@pytest.mark.parametrize("args,message", [
    (["--smoke", "--nosuch"], "unknown argument '--nosuch'"),
    (["--smoke", "--budget-min", "soon"], "--budget-min 'soon' is not a number of minutes"),
    (["--smoke", "--jobs", "0"], "--jobs '0' is not a positive whole number"),
    (["--wheels", "/nonexistent/wheels"], "--wheels /nonexistent/wheels: no such folder; fetch the wheels with --download"),
    (["--smoke", "--glue-dir", "/nonexistent"], "no /nonexistent/SST-2/train.tsv; pass --glue-dir DIR"),
    (["--smoke", "--out"], "--out needs a value"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    proc = _run(*args, *([] if args[-1] == "--out" else ["--out", str(tmp_path / "out")]), timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("device_check.sh: error: ") and message in lines[0], lines


def test_gpu_mode_without_a_gpu_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the GPU mode would run")
    proc = _run("--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "device_check.sh: error: no CUDA GPU visible to torch (gpu none")
    assert _summary_rows(tmp_path)["install"][0] == "done"  # everything importable here: nothing installed


def test_arch_specs_take_config_overrides():
    assert parse_arch("tiny-t5") == ("tiny-t5", {})
    assert parse_arch("tiny-t5:num_layers=3,num_decoder_layers=3") == (
        "tiny-t5", {"num_layers": 3, "num_decoder_layers": 3})
    assert parse_arch("tiny-bert:hidden_dropout_prob=0.2,hidden_act=relu") == (
        "tiny-bert", {"hidden_dropout_prob": 0.2, "hidden_act": "relu"})
    with pytest.raises(ValueError, match="unknown architecture 'tiny-gpt'"):
        parse_arch("tiny-gpt:num_layers=2")
    with pytest.raises(ValueError, match="expected ARCH or ARCH:KEY=VALUE"):
        parse_arch("tiny-t5:num_layers")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc")
def test_peak_rss_follows_a_large_allocation_and_resets():
    before = peak_rss_gib(reset=True)
    x = torch.ones(64 * 2**20)  # 256 MiB, touched
    peak = peak_rss_gib()
    del x
    assert peak - before > 0.2
    after = peak_rss_gib(reset=True)
    try:
        Path("/proc/self/clear_refs").open("w").close()
    except OSError:
        assert after >= peak  # no reset allowed: the mark counts from the process's start
    else:
        assert after < peak - 0.2  # reset to what is resident now, the tensor freed
