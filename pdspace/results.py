"""The `result.json` contract: one schema, one atomic writer, one reader that every consumer uses.

A run writes one `result.json` into its dir. Fields (schema version 2):

- `schema_version`, `status` (one of `STATUSES`), `error` and `traceback` when it failed;
- what ran: `task`, `backbone`, `seed` (training), `design_seed` (draws the design from a
  constraint), `budget_fraction`, `method`, `labels`, `design_id`, `design`, `design_dims`,
  `config` (the composed config) and its `fingerprint` (`pdspace.config.fingerprint`);
- what came out: `params` (backbone / trainable / head counts, `fraction`, per-layer sizes),
  `metrics.per_epoch` (one entry per evaluation: the curve), `metrics.best`, `objective`
  (`{name, value}`: the best value of the task's objective);
- where and when: `output_dir`, `host` (hostname, pid), `started`, `ended`, `timings`, `versions`;
- `optimizer`: the base learning rate and every parameter group's effective one (`groups`: name -> lr,
  lr_scale, params); `predictions`: the name of the per-example predictions file beside it
  (`PREDICTIONS_FILE`: arrays `index`, `gold` (n,), `pred` (evaluations, n), `epoch`, `step`).

Readers never parse the file themselves: `read` validates it and turns a `running` file whose
process is gone (same host) into `interrupted`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
RESULT_FILE = "result.json"
# the trainable tensors of a run's best epoch ({"state_dict", "epoch", "metrics"}), beside its result.json
CHECKPOINT_FILE = "best_trainable.pt"
# a run's dev predictions of every evaluation (classification and regression tasks), beside its result.json
PREDICTIONS_FILE = "predictions.npz"
# rank 0's metric history at the end of fit (spawned ranks cannot hand theirs back), beside its result.json
FIT_STATE_FILE = "fit_state.json"
# a run's resume checkpoint (trainable tensors, optimizer, loops, RNG, metric history), relative to its dir
LAST_CHECKPOINT = "checkpoints/last.ckpt"
STATUSES = ("running", "completed", "failed", "pruned", "interrupted", "dry_run")
# statuses that count as a failed job of a sweep (pruned and dry-run jobs are no failures)
FAILED_STATUSES = ("failed", "interrupted")
# a prior run of these made with other settings is no reason to refuse a job: nothing of it is worth resuming,
# so the job keeps it aside (result.failed-<n>.json) and runs; any other status is compared
REPLACEABLE_STATUSES = ("failed", "dry_run")


class ResultError(ValueError):
    """A result.json that cannot be read or does not follow the schema."""


def finite(x: Any) -> Any:
    """`x` with non-finite floats as None (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


# errors of the disk rather than of the run: full, over quota, read-only, forbidden
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


# a directory that cannot be made where its path runs through a file (or a place such as /proc)
MKDIR_ERRNOS = (errno.ENOTDIR, errno.EEXIST, errno.ENOENT)


def _in_mkdir(ex: BaseException) -> bool:
    """Whether `ex` was raised making a directory (`Path.mkdir`, `os.makedirs`): a write, whatever its errno."""
    tb = ex.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in ("mkdir", "makedirs"):
            return True
        tb = tb.tb_next
    return False


def disk_error(ex: BaseException, where: str | Path | None = None, dir_key: str = "hydra.run.dir") -> str | None:
    """One line for a write the disk refused (full, read-only, forbidden, or a directory its path cannot hold),
    naming the path (`where`, the run's dir, when the error names none) and the fix; None for any other error. An
    error raised `from` one counts too."""
    seen: BaseException | None = ex
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, OSError) and (seen.errno in DISK_ERRNOS
                                          or seen.errno in MKDIR_ERRNOS and _in_mkdir(seen)):
            break
        seen = seen.__cause__  # explicit chaining only: an earlier, handled error is no cause
    else:
        return None
    path = seen.filename or where
    shown, reason = path if path else "the output", seen.strerror or os.strerror(seen.errno)
    if seen.errno in MKDIR_ERRNOS:
        return f"cannot create the directory {shown}: {reason}; choose another {dir_key}"
    if seen.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {shown}: {reason}; free space or choose another {dir_key}"
    if seen.errno == errno.EROFS:
        return f"cannot write {shown}: {reason}; choose another {dir_key} (a writable place)"
    # permissions: the file may be one the run reads (a data file), so only an output's fix names the run dir
    output = path is None or where is None or Path(str(path)).absolute().is_relative_to(Path(where).absolute())
    return f"cannot access {shown}: {reason}; fix its permissions" + (f" or choose another {dir_key}" if output else "")


@contextmanager
def _atomic(path: Path, mode: str = "w") -> Iterator[Any]:
    # write a temp file beside `path`, then rename it over `path`; a failed write leaves neither half a file
    # nor the temp file, and its OSError names `path`
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException as e:
        with suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, str(tmp)):
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (a reader never sees half a file, even with writers in parallel; a failed write
    removes its temp file and raises an OSError naming `path`)."""
    text = json.dumps(finite(data), indent=2, default=str)
    with _atomic(Path(path)) as f:
        f.write(text)


def write(path: str | Path, result: Mapping[str, Any]) -> None:
    """Write a run's result (stamped with the schema version) atomically."""
    data = {"schema_version": SCHEMA_VERSION, **{k: v for k, v in result.items() if not k.startswith("_")}}
    if data.get("status") not in STATUSES:
        raise ResultError(f"status {data.get('status')!r} is not one of {STATUSES}")
    write_json(path, data)


def write_arrays(path: str | Path, arrays: Mapping[str, Any]) -> None:
    """Write numpy arrays as one compressed .npz, atomically."""
    import numpy as np

    with _atomic(Path(path), "wb") as f:
        np.savez_compressed(f, **arrays)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read(path: str | Path) -> dict[str, Any]:
    """A validated result (with its `_path`); a dead `running` run on this host reads as `interrupted`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ResultError(f"{path}: {type(e).__name__}: {e}") from None
    if not isinstance(data, dict):
        raise ResultError(f"{path}: not a JSON object")
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ResultError(f"{path}: schema_version {version!r} is newer than this pdspace reads ({SCHEMA_VERSION}); "
                          "upgrade pdspace")
    if data.get("status") not in STATUSES:
        raise ResultError(f"{path}: status {data.get('status')!r} is not one of {', '.join(STATUSES)}")
    host = data.get("host") or {}
    if data["status"] == "running" and host.get("hostname") == platform.node() and isinstance(host.get("pid"), int) \
            and not _alive(host["pid"]):
        data["status"] = "interrupted"
        data["status_note"] = f"process {host['pid']} ended without finishing (killed?)"
    data["_path"] = str(path)
    return data


def read_all(paths: Iterable[str | Path]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The readable results, and (path, reason) for each unreadable one."""
    results, unreadable = [], []
    for path in paths:
        try:
            results.append(read(path))
        except ResultError as e:
            unreadable.append((str(path), str(e)))
    return results, unreadable


def find(paths: Sequence[str | Path]) -> list[Path]:
    """Every result.json under `paths` (recursively; a path may be a result.json itself)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        found += [p] if p.is_file() else sorted(p.rglob(RESULT_FILE))
    return sorted(set(found))


def _job_key(path: Path) -> tuple[int, str]:
    name = path.parent.name
    return (int(name), name) if name.isdigit() else (10**9, name)


def sweep_paths(sweep_dir: str | Path) -> list[Path]:
    """The jobs' result.json files of one sweep dir (`<sweep>/<job>/result.json`), in job order."""
    return sorted(Path(sweep_dir).glob(f"*/{RESULT_FILE}"), key=_job_key)


def status(job_dir: str | Path) -> str | None:
    """The status of the result in `job_dir` (None when there is none or it is unreadable)."""
    path = Path(job_dir) / RESULT_FILE
    if not path.exists():
        return None
    try:
        return read(path)["status"]
    except ResultError:
        return None


def objective(result: Mapping[str, Any]) -> float | None:
    """The objective of a completed run; None for any other status or a non-finite value."""
    value = (result.get("objective") or {}).get("value")
    if result.get("status") != "completed" or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def curve(result: Mapping[str, Any]) -> list[float]:
    """The objective after every evaluation (the learning curve), in order."""
    name = (result.get("objective") or {}).get("name")
    return [float(e[name]) for e in (result.get("metrics") or {}).get("per_epoch") or [] if name in e]


class JobBusy(RuntimeError):
    """Another live process holds the job dir's lock (the job is running there)."""


LOCK_FILE = ".lock"


@contextmanager
def job_lock(job_dir: str | Path) -> Iterator[None]:
    """Hold the job dir's exclusive lock while a job runs, so no two processes ever train one job.

    An `flock` dies with its process, so a killed job leaves no stale lock behind.
    """
    path = Path(job_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise JobBusy(f"{job_dir} is in use by {owner}; a job never runs twice at once (wait for it, or use "
                      "another dir)") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {platform.node()}".encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def is_locked(job_dir: str | Path) -> bool:
    """Whether a live process holds the job dir's lock."""
    path = Path(job_dir) / LOCK_FILE
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
