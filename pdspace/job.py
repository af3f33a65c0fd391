"""The life of one job, whatever it trains: its dir's lock, the run already there, status, signals, errors,
timings and versions, and its last result.json.

`run_job` hands a `Job` (the dir, the record being written, the prior run) to a pipeline and turns every
way it can end into a status: `completed` (it returned), `dry_run` (it said so), `pruned` (it raised
`RunPruned`), `failed` (any other exception: the error, the traceback, whether the user can fix it),
`interrupted` (SIGINT, SIGTERM). The record is on disk from the start (status `running`) and after the
end. A dir already holding a completed run with the same settings is not run again; one whose completed,
running, interrupted or pruned run was made with other settings is refused (`JobRefused`, naming the
keys that differ); a failed or dry run with other settings is kept aside as `result.<status>-<n>.json`.
In a multirun a job that fails or is refused returns NaN so the others go on; a single run raises.

This module knows no pipeline: it imports neither `pdspace.train` nor `pdspace.search`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pdspace import results, tracking
from pdspace.config import differing_keys, fingerprint
from pdspace.errors import PDSpaceError
from pdspace.results import CHECKPOINT_FILE, FIT_STATE_FILE, LAST_CHECKPOINT, PREDICTIONS_FILE, RESULT_FILE

log = logging.getLogger("pdspace")
VERSIONED = ("pdspace", "torch", "lightning", "transformers", "peft", "optuna", "hydra-core", "omegaconf",
             "datasets", "torchmetrics", "wandb")
# what a replaced run leaves beside its result.json: kept under the same suffix, never resumed from
RUN_FILES = (LAST_CHECKPOINT, CHECKPOINT_FILE, PREDICTIONS_FILE, FIT_STATE_FILE)


class JobFailed(RuntimeError):
    """A single run failed; its result.json holds the traceback (`path`; None for a user error, whose message
    names the fix)."""

    def __init__(self, error: str, path: Path | None) -> None:
        super().__init__(error)
        self.path = path


class JobRefused(RuntimeError):
    """The job was not run and nothing was written: its dir is busy or holds a run with other settings."""


class JobInterrupted(BaseException):
    """SIGTERM or SIGINT reached a running job (a BaseException, like KeyboardInterrupt, so nothing swallows it)."""


class RunPruned(Exception):
    """Raised inside a pipeline when a study stopped its run early: neither a failure nor a finished run."""


# the signals that reached the running job: an exception raised in a signal handler can land where Python only
# prints it (a __del__, a weakref callback), so pdspace.callbacks.InterruptCheck raises it again at the next batch
PENDING: list[str] = []


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Inside: SIGTERM (a scheduler's stop, `kill`) and Ctrl-C raise `JobInterrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        PENDING.append(signal.Signals(signum).name)
        raise JobInterrupted(PENDING[-1])

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        PENDING.clear()


def versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


class Clock:
    """Wall time split into named laps (setup / data / fit / teardown ...)."""

    def __init__(self) -> None:
        self.t0 = self._last = time.perf_counter()
        self.marks: dict[str, float] = {}

    def lap(self, name: str) -> None:
        """Add the time since the previous lap to `name`."""
        now = time.perf_counter()
        self.marks[name] = self.marks.get(name, 0.0) + now - self._last
        self._last = now


@dataclass
class Job:
    """What a pipeline gets: its dir, the record that becomes result.json (status `running` until it ends), the
    run found there before (None: a fresh dir), and where its loggers and end hooks go."""

    out: Path
    record: dict[str, Any]
    prior: dict[str, Any] | None
    rank0: bool
    multirun: bool
    clock: Clock = field(default_factory=Clock)
    loggers: list[Any] = field(default_factory=list)
    # told (status, record) when the job ends, before its last result.json is written
    on_end: list[Callable[[str, dict[str, Any]], None]] = field(default_factory=list)

    @property
    def dir_key(self) -> str:
        """The setting that moves the job's output elsewhere."""
        return dir_key(self.multirun)

    def save(self) -> None:
        """Write the record as it stands (status `running`), e.g. once a trial is known."""
        if self.rank0:
            results.write(self.out / RESULT_FILE, {**self.record, "status": "running"})


def dir_key(multirun: bool) -> str:
    """The setting that moves a job's output elsewhere: the sweep dir of a multirun, else the run dir."""
    return "hydra.sweep.dir" if multirun else "hydra.run.dir"


def keep_aside(out: Path, status: str) -> Path:
    """Rename the run in `out` (result.json and its checkpoints) to `<name>.<status>-<n>`; the kept result's path."""
    n = 1
    while (out / f"result.{status}-{n}.json").exists():
        n += 1
    for name in RUN_FILES:
        if (out / name).exists():
            (out / name).replace(out / f"{name}.{status}-{n}")
    kept = out / f"result.{status}-{n}.json"
    (out / RESULT_FILE).replace(kept)
    return kept


def prior_run(out: Path, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The run already in `out` (None: none, unreadable, or a failed / dry run with other settings, which is kept
    aside); refuses a completed, running, interrupted or pruned one made with other settings."""
    path = out / RESULT_FILE
    if not path.exists():
        return None
    try:
        prior = results.read(path)
    except results.ResultError:
        return None  # half a file from a killed process: run the job again
    old = prior.get("config")
    if isinstance(old, dict) and fingerprint(old) != fingerprint(config):
        keys = differing_keys(old, config)
        changed = f"{'; '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
        if prior["status"] in results.REPLACEABLE_STATUSES:
            kept = keep_aside(out, prior["status"])
            log.info("%s held a %s run made with other settings (%s); kept it as %s, this job runs afresh", out,
                     prior["status"], changed, kept)
            return None
        raise JobRefused(f"{out} holds a {prior['status']} run made with other settings ({changed}); relaunch with "
                         "the same settings to resume it, or choose a new dir (hydra.run.dir / hydra.sweep.dir)")
    return prior


def where(out: Path) -> str:
    """The job's dir and result file, for a log line."""
    return f"run dir {out}; result {out / RESULT_FILE}"


Pipeline = Callable[[Job], float]
Fields = Callable[[dict[str, Any] | None], dict[str, Any]]


def run_job(out: Path, config: dict[str, Any], pipeline: Pipeline, fields: Fields, *, multirun: bool,
            rank0: bool = True) -> float:
    """Run `pipeline` as the job of dir `out` (composed `config`); `fields(prior)` gives the record's own first
    fields. Returns the pipeline's objective (NaN when the job failed, was pruned or was not run); a single run
    raises `JobRefused` for a busy or refused dir, `JobFailed` for a failed run."""
    tracking.quiet()  # in every process that runs a job: a launcher's workers run no console script's quiet()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with results.job_lock(out) if rank0 else contextlib.nullcontext():
            prior = prior_run(out, config) if rank0 else None
            if prior is not None and prior["status"] == "completed":
                log.info("already completed with the same settings, not trained again; %s", where(out))
                value = results.objective(prior)
                return float("nan") if value is None else value
            record = {"status": "running", "error": None, **fields(prior), "output_dir": str(out),
                      "started": now(), "versions": versions(),
                      "host": {"hostname": platform.node(), "pid": os.getpid()}, "config": config,
                      "fingerprint": fingerprint(config)}
            return _live(Job(out, record, prior, rank0, multirun), pipeline)
    except (results.JobBusy, JobRefused) as e:
        if not multirun:
            raise JobRefused(str(e)) from None
        log.error("job not run: %s", e)
        return float("nan")
    except OSError as e:
        # the disk refused the job's first write (its dir, lock or result.json): nothing ran
        line = results.disk_error(e, out, dir_key(multirun))
        if line is None:
            raise
        if not multirun:
            raise JobRefused(line) from None
        log.error("job not run: %s", line)
        return float("nan")


def now() -> str:
    """UTC now, to the second (the record's `started` / `ended`)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _live(job: Job, pipeline: Pipeline) -> float:
    """The job from its first result.json to its last: every end is a status (see the module docstring)."""
    record = job.record
    if job.rank0:
        results.write(job.out / RESULT_FILE, record)
    objective = float("nan")
    try:
        with signals_interrupt():
            objective = pipeline(job)
            if record["status"] == "running":
                record["status"] = "completed"
    except (JobInterrupted, KeyboardInterrupt, SystemExit) as e:
        # Lightning turns Ctrl-C into SystemExit(1) after its own clean-up
        record["status"] = "interrupted"
        record["error"] = f"interrupted ({e if isinstance(e, JobInterrupted) else 'SIGINT'})"
        log.error("job interrupted; relaunch it in the same dir to resume from its last checkpoint (%s)",
                  "same hydra.sweep.dir" if job.multirun else f"hydra.run.dir={job.out}")
        raise
    except RunPruned as e:
        record["status"], record["error"] = "pruned", str(e)
        tracking.describe(job.loggers, tags=["pruned"])
    except Exception as e:  # noqa: BLE001 - every failure must end in result.json
        _record_failure(job, e)
    finally:
        unwritten = _end(job)
    if record["status"] == "failed" and not job.multirun:
        raise JobFailed(record["error"], None if record.get("user_error") or unwritten else job.out / RESULT_FILE)
    if unwritten is not None:
        # trained, but nothing says so on disk: a sweep's summary counts the job as not completed
        if not job.multirun:
            raise JobFailed(unwritten, None)
        return float("nan")
    return objective if record["status"] == "completed" else float("nan")


def _record_failure(job: Job, e: Exception) -> None:
    # a user error's message names the fix, so does a full or read-only disk; anything else keeps its type (the
    # traceback is in result.json)
    record = job.record
    record["status"] = "failed"
    disk = results.disk_error(e, job.out, job.dir_key) or stream_write_error(e, job.out, job.dir_key)
    record["user_error"] = isinstance(e, PDSpaceError) or disk is not None
    record["error"] = disk or (str(e) if isinstance(e, PDSpaceError) else f"{type(e).__name__}: {e}")
    record["traceback"] = traceback.format_exc()
    if job.multirun:
        log.error("job failed: %s (traceback in %s)", record["error"], job.out / RESULT_FILE)


def _end(job: Job) -> str | None:
    """Tell the end hooks, write the last result.json, end the loggers; None, or why the result is unwritten."""
    record = job.record
    for hook in job.on_end:
        try:
            hook(record["status"], record)
        except Exception as e:  # noqa: BLE001 - a hook must not cost the job its result
            log.error("job end hook failed: %s: %s", type(e).__name__, e)
    job.clock.lap("teardown")
    record["ended"] = now()
    record["timings"] = {**record.get("timings", {}), "total_s": time.perf_counter() - job.clock.t0}
    unwritten = None
    if job.rank0:
        # a full disk must not hide the job's own error behind a traceback of this write
        unwritten = write_final(job.out, record, job.dir_key)
        if unwritten is None:
            log.info("%s: %s", record["status"], where(job.out))
        else:
            log.error("%s, but its result.json could not be written: %s", record["status"], unwritten)
    tracking.finish(job.loggers, record["status"])
    return unwritten


def write_final(out: Path, record: dict[str, Any], dir_key: str) -> str | None:
    """Write the job's last result.json; on a full disk try once more without the traceback. None, or why not."""
    try:
        results.write(out / RESULT_FILE, record)
        return None
    except OSError as e:
        line = results.disk_error(e, out, dir_key) or f"cannot write {out / RESULT_FILE}: {e}"
    try:
        results.write(out / RESULT_FILE, {k: v for k, v in record.items() if k != "traceback"})
        return None
    except OSError:
        return line


def stream_write_error(e: BaseException, out: Path, dir_key: str) -> str | None:
    """torch.save reports a failed file write as a RuntimeError of its zip writer, without errno or path: that
    error as one line naming the dir (None for any other error)."""
    text = str(e)
    if not isinstance(e, RuntimeError) or not any(m in text for m in ("StreamWriter failed", "file write failed")):
        return None
    try:
        full = shutil.disk_usage(out).free < 1 << 20
    except OSError:
        full = False
    reason = "No space left on device" if full else text.strip().splitlines()[-1][:200]
    return f"cannot write in {out}: {reason}; {'free space or ' if full else ''}choose another {dir_key}"
