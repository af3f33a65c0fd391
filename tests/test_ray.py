"""The Ray launcher run for real (slow; by hand: `pytest -m slow tests/test_ray.py`): a space sweep through a local
Ray instance gives the basic launcher's results, resume and failure summary.

Needs `pip install -e ".[scale]"` (ray and hydra-ray-launcher); CI installs `.[dev]` only, so there it is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

TESTS = Path(__file__).resolve().parent
# the Ray workers import this module for FailWhileFlagged: they inherit PYTHONPATH from the launching process
ENV = {**os.environ, "WANDB_MODE": "disabled",
       "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
TINY = ["backbone=tiny-bert", "logger=none", "callbacks=none", "trainer.max_epochs=1", "task.max_train_samples=32",
        "task.max_eval_samples=16", "data.batch_size=16"]
# a local Ray started by the launching process on this machine: 2 CPUs, one per job, so 2 jobs at a time
RAY = ["hydra/launcher=ray", "hydra.launcher.ray.init.address=null", "+hydra.launcher.ray.init.num_cpus=2",
       "+hydra.launcher.ray.init.include_dashboard=false", "hydra.launcher.ray.remote.num_cpus=1"]
FAILING = 2  # the job made to fail while its flag file exists
MISSING = [m for m in ("ray", "hydra_plugins.hydra_ray_launcher") if importlib.util.find_spec(m) is None]


class FailWhileFlagged(L.Callback):
    """Fail the sweep job numbered `job` while the file `flag` exists: removing it lets a relaunch of the very same
    command (same settings, so the completed jobs are skipped) run that job again."""

    def __init__(self, job: int, flag: str) -> None:
        self.job, self.flag = job, flag

    def setup(self, trainer, pl_module, stage) -> None:
        from hydra.core.hydra_config import HydraConfig

        if Path(HydraConfig.get().runtime.output_dir).name == str(self.job) and os.path.exists(self.flag):
            raise RuntimeError(f"injected failure in job {self.job}")


def _sweep(root: Path, launcher: list[str]) -> tuple[int, str, int]:
    """Run the 4-job space sweep in `root/sweep`; (exit code, stdout + stderr with `root` as ROOT, launcher's pid)."""
    cmd = [sys.executable, "-m", "pdspace.train", "-m", *launcher, "space=S0", "space.num_samples=4",
           "space.tasks=[synthetic_cls]", *TINY, "max_failure_rate=0.2", f"hydra.sweep.dir={root}/sweep",
           f"data.cache_dir={root}/cache", "+callbacks.fail._target_=test_ray.FailWhileFlagged",
           f"+callbacks.fail.job={FAILING}", f"+callbacks.fail.flag={root}/flag"]
    with subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            out, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()  # its local Ray goes with it (Ray's processes watch the process that started them)
            raise
    return proc.returncode, (out + err).replace(str(root), "ROOT"), proc.pid


def _summary(output: str) -> list[str]:
    """The sweep's summary: its head line and one line per job (status, objective, design, error)."""
    m = re.search(r"sweep ROOT/sweep: \d+/\d+ jobs without failure\n(?: +\d+ .*\n?){4}", output)
    assert m, output[-4000:]
    return m.group(0).rstrip("\n").splitlines()


def _results(sweep: Path) -> dict[int, dict]:
    return {int(p.parent.name): json.loads(p.read_text()) for p in sweep.glob("*/result.json")}


def _same(r: dict) -> dict:
    """What a result must share across launchers: the design, the outcome and the numbers."""
    return {"design_id": r["design_id"], "status": r["status"], "error": r["error"], "objective": r.get("objective"),
            "per_epoch": [{k: v for k, v in e.items() if not k.endswith("_s")} for e in r["metrics"]["per_epoch"]]
            if r["status"] == "completed" else None, "global_step": r.get("global_step")}


def _stamps(sweep: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob("*/result.json")}


def _fail_resume_relaunch(root: Path, launcher: list[str]) -> dict:
    """A sweep with one failing job, its relaunch once the cause is gone, and a third launch with nothing to do."""
    sweep = root / "sweep"
    root.mkdir()
    (root / "flag").touch()
    rc, out, pid = _sweep(root, launcher)
    first = _results(sweep)
    stamps = _stamps(sweep)
    (root / "flag").unlink()
    rc2, out2, _ = _sweep(root, launcher)
    second = _results(sweep)
    stamps2 = _stamps(sweep)
    rc3, out3, _ = _sweep(root, launcher)
    assert _stamps(sweep) == stamps2  # the third launch ran nothing
    return {"rc": (rc, rc2, rc3), "out": (out, out2, out3), "pid": pid, "first": first, "second": second,
            "stamps": (stamps, stamps2), "aside": sorted(p.name for p in (sweep / str(FAILING)).glob("result.*"))}


@pytest.mark.slow
@pytest.mark.skipif(bool(MISSING), reason=f"the Ray launcher is not installed (no {', '.join(MISSING)}); "
                                          "pip install -e '.[scale]'")
def test_a_space_sweep_through_a_local_ray_is_the_basic_launchers_sweep(tmp_path):
    basic = _fail_resume_relaunch(tmp_path / "basic", [])
    ray = _fail_resume_relaunch(tmp_path / "ray", RAY)
    for run in (basic, ray):
        out = run["out"]
        # one job failed: the others' results are kept and the sweep fails past max_failure_rate, with its summary
        assert run["rc"] == (1, 0, 0), out[0][-3000:] + out[1][-3000:]
        assert [run["first"][i]["status"] for i in range(4)] == ["completed", "completed", "failed", "completed"]
        assert run["first"][FAILING]["error"] == f"RuntimeError: injected failure in job {FAILING}"
        assert "pdspace-train: error: 1 of 4 jobs did not complete (jobs [2]); the sweep allows a failure rate " \
               "of 0.2; see their result.json under ROOT/sweep" in out[0]
        assert "4 jobs, 0 completed before, 0 running elsewhere, launching 4" in out[0]
        # the relaunch trains only the failed job (same settings: its failed result is replaced); the third nothing
        assert "4 jobs, 3 completed before, 0 running elsewhere, launching 1" in out[1]
        assert "4 jobs, 4 completed before, 0 running elsewhere, launching 0" in out[2]
        assert all(run["stamps"][1][k] == v for k, v in run["stamps"][0].items() if k != str(FAILING))
        assert all(r["status"] == "completed" for r in run["second"].values()) and len(run["second"]) == 4
        assert run["aside"] == ["result.json"]
        assert _summary(out[0])[0].endswith("3/4 jobs without failure")
        assert _summary(out[1])[0].endswith("4/4 jobs without failure") and _summary(out[2]) == _summary(out[1])
    # the same designs, outcomes, numbers and summaries under both launchers
    for key in ("first", "second"):
        assert {i: _same(r) for i, r in ray[key].items()} == {i: _same(r) for i, r in basic[key].items()}
    for b, r in zip(basic["out"], ray["out"]):
        assert _summary(r) == _summary(b)
    # the one error line, the same (under Ray it is not the last line: Ray prints its deduplicated worker lines
    # when it shuts down, after the launching process has written it)
    errors = [[line for line in run["out"][0].splitlines() if line.startswith("pdspace-train: error:")]
              for run in (basic, ray)]
    assert errors[0] == errors[1] and len(errors[0]) == 1
    # the basic launcher trains in the launching process; Ray in its workers, at most 2 at a time (num_cpus=2)
    assert {r["host"]["pid"] for r in basic["first"].values()} == {basic["pid"]}
    ray_pids = {r["host"]["pid"] for r in ray["first"].values()}
    assert ray["pid"] not in ray_pids and len(ray_pids) <= 2
    assert "Ray Launcher is launching 4 jobs" in ray["out"][0] and "Ray Launcher is launching 1 jobs" in ray["out"][1]
