"""The LightningModule: a patched backbone trained on one task (classification, regression, text-to-text)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import transformers
from torch import nn

from pdspace.data.tasks import TaskSpec, add_score, decode_prediction, make_metrics
from pdspace.peft.patch import trainable_state_dict


class PEFTModule(L.LightningModule):
    """Trains only the parameters the patch left trainable; tracks per-epoch metrics and the best epoch.

    Heads: a classification/regression head (`text_to_text=False`) scores logits directly;
    text-to-text (T5/BART) trains on target tokens and scores generated text, decoded back to
    labels for GLUE tasks or compared as strings for seq2seq tasks.
    """

    def __init__(self, model: nn.Module, spec: TaskSpec, tokenizer: Any, *, text_to_text: bool,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None, scheduler: str = "linear",
                 warmup_ratio: float = 0.0, max_target_length: int | None = None,
                 checkpoint_path: str | Path | None = None) -> None:
        super().__init__()
        # backbones are cached in eval mode; training needs dropout back on
        self.model, self.spec, self.tokenizer = model.train(), spec, tokenizer
        self.text_to_text = text_to_text or spec.kind == "seq2seq"
        self.optimizer_factory = optimizer or (lambda params: torch.optim.AdamW(params, lr=5e-5))
        self.scheduler, self.warmup_ratio = scheduler, warmup_ratio
        self.max_target_length = max_target_length or spec.max_target_length
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.metrics = make_metrics(spec)
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] | None = None
        self._val_loss: list[torch.Tensor] = []

    @property
    def objective(self) -> str:
        """The metric the run maximises."""
        return self.spec.objective

    def _inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if k != "gold"}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.model(**self._inputs(batch)).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.model(**self._inputs(batch))
        self._val_loss.append(out.loss.detach().float())
        if not self.text_to_text:
            preds = out.logits.argmax(-1) if self.spec.kind == "classification" else out.logits.squeeze(-1)
            self.metrics.update(preds, batch["labels"])
            return
        generated = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                        max_new_tokens=self.max_target_length, do_sample=False, num_beams=1)
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        if self.spec.kind == "seq2seq":
            self.metrics.update([t.strip() for t in texts], list(batch["gold"]))
            return
        gold = batch["gold"]
        preds = torch.tensor([decode_prediction(self.spec, t) for t in texts], device=gold.device,
                             dtype=gold.dtype)
        self.metrics.update(preds, gold)

    def on_validation_epoch_end(self) -> None:
        values = add_score(self.spec, {k: v.item() for k, v in self.metrics.compute().items()})
        self.metrics.reset()
        values = {k: (0.0 if math.isnan(v) else v) for k, v in values.items()}
        if self._val_loss:
            values["loss"] = torch.stack(self._val_loss).mean().item()
        self._val_loss.clear()
        if self.trainer.sanity_checking:
            return
        values["epoch"] = self.current_epoch
        values["step"] = self.global_step
        self.history.append(values)
        # the values come from synced torchmetrics already; sync_dist only keeps Lightning quiet under DDP
        self.log_dict({f"val/{k}": v for k, v in values.items() if k not in ("epoch", "step")}, sync_dist=True)
        if self.best is None or values[self.objective] > self.best[self.objective]:
            self.best = dict(values)
            self.log("val/best_" + self.objective, values[self.objective], sync_dist=True)
            if self.checkpoint_path is not None and self.trainer.is_global_zero:
                torch.save({"state_dict": trainable_state_dict(self.model), "epoch": self.current_epoch,
                            "metrics": values}, self.checkpoint_path)

    # Lightning checkpoints (resume) hold only what training changes: the trainable tensors, the
    # optimizer and loop state, and the metric history; the frozen backbone is rebuilt by the job
    strict_loading = False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["pdspace"] = {"history": self.history, "best": self.best}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("pdspace", {})
        self.history, self.best = list(state.get("history", [])), state.get("best")

    def fit_state(self) -> dict[str, Any]:
        """The metric history and the best epoch (what result.json reports)."""
        return {"history": self.history, "best": self.best}

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: the design left no trainable parameter; tune at least one group")
        optimizer = self.optimizer_factory(params)
        if self.scheduler == "constant" and not self.warmup_ratio:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = transformers.get_scheduler(self.scheduler, optimizer, num_warmup_steps=int(self.warmup_ratio * total),
                                              num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class EvalTimer(L.Callback):
    """Seconds spent in validation loops (the rest of `fit` is training)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._t = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.seconds += time.perf_counter() - self._t


class FitState(L.Callback):
    """Rank 0 writes the metric history at the end of fit: spawned ranks cannot hand it back."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_fit_end(self, trainer: L.Trainer, module: PEFTModule) -> None:
        if trainer.is_global_zero:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(module.fit_state(), default=float))
            tmp.replace(self.path)
