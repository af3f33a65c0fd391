"""Beyond one process: joblib and submitit_local sweeps, DDP with 2 CPU ranks, a killed job resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pdspace import results

TINY = ["backbone=tiny-bert", "logger=none", "callbacks=none", "trainer.max_epochs=1", "task.max_train_samples=32",
        "task.max_eval_samples=16", "data.batch_size=16"]
ENV = {**os.environ, "WANDB_MODE": "disabled"}


def _train(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pdspace.train", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _results(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))]


# CI: joblib (~15 s); submitit_local is slow
@pytest.mark.parametrize(("launcher", "jobs", "workers"),
                         [("joblib", 4, 2), pytest.param("submitit_local", 2, None, marks=pytest.mark.slow)])
def test_sweep_through_a_launcher_then_refinement(tmp_path, launcher, jobs, workers):
    sweep = tmp_path / "sweep"
    extra = [f"hydra.launcher.n_jobs={workers}"] if workers else []
    proc = _train("-m", f"hydra/launcher={launcher}", *extra, "space=S0", f"space.num_samples={jobs}",
                  "space.tasks=[synthetic_cls]", *TINY, f"hydra.sweep.dir={sweep}", f"data.cache_dir={tmp_path}/cache",
                  "+hydra.callbacks.refine._target_=pdspace.search.refine.RefineCallback",
                  "+hydra.callbacks.refine.dimension=tunable")
    # the workers as quiet as a sequential sweep: no Hydra schema-matching deprecation (composed in each worker),
    # no Lightning INFO lines, no upstream deprecations, no note on each resume checkpoint saved
    out = proc.stdout + proc.stderr
    for noise in ("validated against ConfigStore schema", "GPU available", "LeafSpec", "weights_only"):
        assert noise not in out, out[-3000:]
    results = _results(sweep)
    assert len(results) == jobs and all(r["status"] == "completed" for r in results)
    pids = {r["host"]["pid"] for r in results}
    # real worker processes, not the launching one
    assert len(pids) == (workers or jobs)
    report = json.loads((sweep / "refine_report.json").read_text())
    assert report["n_completed"] == jobs and report["winner"]
    assert list((sweep / "conf" / "space").glob("*.yaml"))


def test_ddp_with_two_cpu_ranks_writes_one_result(tmp_path):
    run = tmp_path / "run"
    _train("trainer=ddp", "trainer.accelerator=cpu", "task=synthetic_cls", *TINY, "task.max_train_samples=64",
           "trainer.max_epochs=2", "data.batch_size=16", f"hydra.run.dir={run}", f"data.cache_dir={tmp_path}/cache")
    (r,) = _results(tmp_path)
    assert r["status"] == "completed" and r["world_size"] == 2
    # 64 examples, batch 16 per rank, 2 ranks: 2 steps per epoch
    assert [e["step"] for e in r["metrics"]["per_epoch"]] == [2, 4]
    assert list(tmp_path.rglob("result.json")) == [run / "result.json"]


@pytest.mark.slow  # CI keeps tests/test_trust.py::test_a_killed_run_resumes_exactly (mid-epoch)
def test_killed_job_resumes_from_its_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pdspace.train", "backbone=tiny-bert", "task=synthetic_cls", "logger=none",
           "callbacks=none", "trainer.max_epochs=3", "data.batch_size=8", "task.synthetic_size=256",
           "checkpoint_every_n_steps=10",
           f"hydra.run.dir={run}", f"data.cache_dir={tmp_path}/cache"]
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline:
        assert first.poll() is None
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    # its result.json said `running`; its process is gone, so it reads as interrupted
    assert ckpt.exists() and results.read(run / "result.json")["status"] == "interrupted"
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((run / "result.json").read_text())
    assert r["status"] == "completed" and r["resumed_from"]["global_step"] >= 10
    # 256 examples / batch 8 = 32 steps an epoch: the count went on from the checkpoint to the end
    assert r["global_step"] == 3 * 32
    assert [e["epoch"] for e in r["metrics"]["per_epoch"]] == [0, 1, 2]
    assert list(tmp_path.rglob("result.json")) == [run / "result.json"]


def test_a_launcher_that_is_not_installed_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    import importlib.util

    from pdspace import train

    real = importlib.util.find_spec
    gone = ("ray", "hydra_plugins.hydra_ray_launcher")  # as on a machine without the scale extra (CI's)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in gone else real(name, *a))
    monkeypatch.setattr(sys, "argv", ["pdspace-train", "-m", "hydra/launcher=ray", f"hydra.sweep.dir={tmp_path}",
                                      "backbone=tiny-bert", "task=synthetic_cls"])
    from pdspace.config import one_line_errors

    with pytest.raises(SystemExit) as e, one_line_errors("pdspace-train"):
        train.main()
    assert str(e.value) == ('pdspace-train: error: hydra/launcher=ray needs hydra_ray_launcher and ray, which are '
                            'not installed; pip install -e ".[scale]" (see the README\'s Run at scale)')
    assert not any(tmp_path.iterdir())  # nothing launched, nothing written


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local", "submitit_slurm"])
def test_a_launcher_config_composes_without_hydras_schema_matching_warning(launcher, recwarn):
    """The README's `hydra/launcher=joblib` printed Hydra's five-line deprecation of schema matching; the
    console script's quiet() leaves it out."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pdspace.config import CONF_DIR
    from pdspace.tracking import quiet

    quiet()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    assert launcher.split("_")[0] in cfg.hydra.launcher._target_.lower()
    assert not [w for w in recwarn if "validated against ConfigStore schema" in str(w.message)]
