"""A real staged search S0 -> S4 on a tiny model: killed mid-stage, resumed, finished, then a no-op rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from pdspace.search import STAGES


def _results(root: Path) -> dict[Path, str]:
    return {p: p.read_text() for p in root.glob("*/*/result.json")}


def test_staged_search_killed_mid_stage_resumes_and_finishes(tmp_path):
    root = tmp_path / "search"
    cmd = [sys.executable, "-m", "pdspace.search", "--dir", str(root), "--tasks", "synthetic_cls", "--samples", "3",
           "--name", "tiny", "backbone=tiny-bert", "trainer.max_epochs=1", "task.max_train_samples=32",
           "task.max_eval_samples=16", "data.batch_size=16", "optimizer.lr=1e-2", "logger=none", "callbacks=none",
           f"data.cache_dir={tmp_path}/cache"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len([s for s in _results(root).values() if '"completed"' in s]) < 2:
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the whole process group: search, stage sweep and its job
    first.wait()
    done_before = {p: s for p, s in _results(root).items() if '"completed"' in s}
    assert len(done_before) >= 2 and not (root / "conf" / "space" / "tiny_S1.yaml").exists()

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    after = _results(root)
    # completed jobs were neither re-run nor lost
    assert all(after[p] == s for p, s in done_before.items())
    state = json.loads((root / "search.json").read_text())
    source = "S0"
    ran = []
    for stage in STAGES:
        sweep = root / stage.key
        if state["stages"][stage.key]["sweep"] is None:
            # a strategy stage for a group the found tunable mask leaves frozen: carried over, not trained
            assert stage.dimension.startswith("strategy_g") and not sweep.exists()
            source = f"tiny_{stage.key}"
            assert "not tuned in this space" in (root / "conf" / "space" / f"{source}.yaml").read_text()
            continue
        ran.append(stage.key)
        plan = OmegaConf.load(sweep / "samples.yaml")
        statuses = [json.loads((sweep / str(j.idx) / "result.json").read_text())["status"] for j in plan.jobs]
        assert statuses == ["completed"] * len(plan.jobs)
        # each stage sampled the space the previous one wrote
        assert OmegaConf.load(sweep / "multirun.yaml").space.name == source
        source = f"tiny_{stage.key}"
        assert (sweep / "refine_report.md").exists() and (root / "conf" / "space" / f"{source}.yaml").exists()
    assert ran[:3] == ["S1", "S2", "S3"] and len(ran) >= 4  # the found mask tunes at least one group
    final = state["final"]
    assert set(state["stages"]) == {s.key for s in STAGES}
    assert (root / "conf" / "grouping" / "tiny.yaml").exists() and (root / "conf" / "strategy" / "tiny.yaml").exists()
    assert final["command"] in second.stdout
    # the found design is a usable config pair
    train = [sys.executable, "-m", "pdspace.train", *final["command"].split()[1:], "backbone=tiny-bert", "dry_run=true",
             f"hydra.run.dir={tmp_path}/found"]
    proc = subprocess.run(train, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "found" / "result.json").read_text())["status"] == "dry_run"

    stamps = {p: p.stat().st_mtime_ns for p in after}
    third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in root.glob("*/*/result.json")} == stamps  # trained nothing new
