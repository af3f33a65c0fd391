"""Test-only Lightning callbacks that real `pdspace-train` processes load (PYTHONPATH=tests)."""

from __future__ import annotations

import os
import signal

import lightning as L
import torch


class KillAt(L.Callback):
    """SIGKILL this process at the end of training step `step` (before that step's checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAt(L.Callback):
    """Send the signal called `name` (e.g. SIGTERM) to this process at the end of training step `step`."""

    def __init__(self, step: int, name: str = "SIGTERM") -> None:
        self.step, self.signum = step, getattr(signal, name)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class SwallowedSignalAt(SignalAt):
    """Send the signal at step `step` where its exception is swallowed, as in a `__del__` or a weakref callback."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            try:
                os.kill(os.getpid(), self.signum)
                for _ in range(100):  # the handler runs between these bytecodes
                    sum(range(1000))
            except BaseException:  # noqa: BLE001
                pass


class DumpAtTrainStart(L.Callback):
    """Save what training starts from (trainable tensors, optimizer state, metric history) to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, module) -> None:
        trainable = {f"model.{n}": p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
        torch.save({"state_dict": trainable, "optimizer": trainer.optimizers[0].state_dict(),
                    "history": list(module.history), "global_step": trainer.global_step}, self.path)
