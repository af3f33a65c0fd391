"""The Lightning callbacks every job adds: eval timing, signal checks, the rank-0 fit state, resume checkpoints."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L

log = logging.getLogger("pdspace")

class EvalTimer(L.Callback):
    """Seconds spent in validation loops (the rest of `fit` is training)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._t = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.seconds += time.perf_counter() - self._t


class InterruptCheck(L.Callback):
    """Raises `exc(name)` at the next batch once a signal's name is in `pending`.

    A signal handler's exception can land where Python only prints it (a `__del__`, a weakref
    callback) and training would go on; this ends the job anyway.
    """

    def __init__(self, pending: list[str], exc: type[BaseException]) -> None:
        self.pending, self.exc = pending, exc

    def _check(self, *args: Any) -> None:
        if self.pending:
            raise self.exc(self.pending[-1])

    on_train_batch_start = on_train_batch_end = on_validation_batch_end = _check


class FitState(L.Callback):
    """Rank 0 writes the metric history at the end of fit: spawned ranks cannot hand it back."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def restore(self, module: Any) -> None:
        """After a spawning strategy (ddp_spawn) trained copies of `module`: take rank 0's metrics from disk."""
        if not module.history and self.path.exists():
            state = json.loads(self.path.read_text())
            module.history, module.best = state["history"], state["best"]

    def on_fit_end(self, trainer: L.Trainer, module: Any) -> None:
        if trainer.is_global_zero:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(module.fit_state(), default=float))
            tmp.replace(self.path)


class ResumeCheckpoint(L.Callback):
    """Keeps `<run dir>/checkpoints/last.ckpt` for resuming: every `every_n_steps` optimiser steps inside an
    epoch, and after every validation.

    Never on an epoch's last batch: that checkpoint comes before the epoch's validation, and a run
    resumed from it would skip that validation. The file is replaced atomically.
    """

    def __init__(self, path: str | Path, every_n_steps: int) -> None:
        self.path, self.every = Path(path), max(1, int(every_n_steps))
        self._last_step = -1

    def resume_point(self) -> tuple[str | None, dict[str, Any]]:
        """The checkpoint to resume from (None: from scratch) and what result.json records of it. An unreadable
        file (half written, corrupted) would fail every relaunch, so it is moved aside (`.unreadable-<time>`)."""
        last = self.path
        last.parent.mkdir(parents=True, exist_ok=True)
        if not last.exists():
            return None, {}
        step, why = checkpoint_step(last)
        if why is None:
            log.info("resuming from %s (step %s)", last, step)
            return str(last), {"resumed_from": {"path": str(last), "global_step": step}}
        aside = last.with_name(f"{last.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
        last.replace(aside)
        log.warning("checkpoint %s is unreadable (%s); moved it to %s, this job trains from scratch (ckpt_path=null "
                    "trains without resume checkpoints)", last, why, aside)
        return None, {"resumed_from": None, "discarded_checkpoint": str(aside)}

    def _save(self, trainer: L.Trainer) -> None:
        self._last_step = trainer.global_step
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            trainer.save_checkpoint(tmp, weights_only=False)  # a full state to resume from (and Lightning quiet)
            if trainer.is_global_zero:
                tmp.replace(self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk leaves no half checkpoint behind; last.ckpt stays as it was
            raise

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        if step and step % self.every == 0 and step != self._last_step and not last_batch:
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._save(trainer)


def checkpoint_step(path: Path) -> tuple[Any, str | None]:
    """(global step, None) of a readable Lightning checkpoint; (None, why) for one that cannot be resumed from."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - pickle, zip and EOF errors alike: the file cannot be resumed from
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return None, f"{type(e).__name__}: {first}"
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        return None, "not a Lightning checkpoint"
    return ckpt["global_step"], None
