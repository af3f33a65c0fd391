"""The LightningModule: a patched backbone trained on one task (classification, regression, text-to-text)."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import transformers
from torch import nn
from torchmetrics.aggregation import MeanMetric

from pdspace.compile import CompiledModel, check_compile_mode, check_compile_scope
from pdspace.data.tasks import TaskSpec, add_score, make_metrics, parse_prediction
from pdspace.peft.patch import parameter_groups, trainable_state_dict

log = logging.getLogger(__name__)


class PEFTModule(L.LightningModule):
    """Trains only the parameters the patch left trainable; tracks per-epoch metrics and the best epoch.

    Heads: a classification/regression head (`text_to_text=False`) scores logits directly;
    text-to-text (T5/BART) trains on target tokens and scores generated text, decoded back to
    labels for GLUE tasks or compared as strings for seq2seq tasks (XSum: ROUGE, objective
    ``rougeL``, the ROUGE-L F-measure; WMT16 en-ro: SacreBLEU / 100, objective ``bleu``).

    Text-to-text GLUE answers that are no label word score as wrong (a label of their own, see
    `make_metrics`); an unparsable STS-B answer scores 0.0. Either way it counts in the per-epoch
    ``invalid_rate``, the fraction of answers that decode to no label / no number: reported
    next to the task's metrics, never in ``score`` and never the objective.

    `generation` sets decoding (keys ``num_beams``, ``max_new_tokens``, ``length_penalty``);
    None or a missing key: greedy, ``max_new_tokens = max_target_length``, length penalty 1.0.

    `compile=True` runs the training forward (and so its backward, through AOTAutograd) with
    `torch.compile` (`compile_mode`: its mode, None for the default; `compile_scope`: "regional",
    each transformer block, or "model"), batch and sequence dimensions dynamic; see
    `CompiledModel`. Validation (the loss/logits forward and T5/BART generation) stays eager on
    the same parameters, so it computes exactly what an eager run does. `compile_stats()`
    counts compilations and recompiles.
    """

    def __init__(self, model: nn.Module, spec: TaskSpec, tokenizer: Any, *, text_to_text: bool,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None, scheduler: str = "linear",
                 warmup_ratio: float = 0.0, max_target_length: int | None = None,
                 checkpoint_path: str | Path | None = None,
                 generation: Mapping[str, Any] | None = None, compile: bool = False,
                 compile_mode: str | None = None, lr_scale: Mapping[str, float] | None = None,
                 compile_scope: str = "regional", compile_cache_dir: str | None = None) -> None:
        super().__init__()
        # backbones are cached in eval mode; training needs dropout back on
        self.model, self.spec, self.tokenizer = model.train(), spec, tokenizer
        self.text_to_text = text_to_text or spec.kind == "seq2seq"
        self.optimizer_factory = optimizer or (lambda params: torch.optim.AdamW(params, lr=5e-5))
        self.lr_scale = dict(lr_scale or {})
        self.scheduler, self.warmup_ratio = scheduler, warmup_ratio
        self.max_target_length = max_target_length or spec.max_target_length
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.metrics = make_metrics(spec, text_to_text=self.text_to_text)
        self.generation = _generation_kwargs(generation, self.max_target_length)
        # seq2seq answers are free text: any string is an answer, so only labels/scores can be invalid
        self.invalid_rate = MeanMetric() if self.text_to_text and spec.kind != "seq2seq" else None
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] | None = None
        self._val_loss: list[torch.Tensor] = []
        # per-example dev predictions of every evaluation (classification ids, -1: no label; regression scores),
        # in validation order, for tests paired by example (see `predictions`)
        self.pred_history: list[dict[str, Any]] = []
        self.pred_gold: torch.Tensor | None = None
        self._val_preds: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self.compile, self.compile_mode = bool(compile), compile_mode
        self.compile_scope, self.compile_cache_dir = compile_scope, compile_cache_dir
        if self.compile:
            check_compile_mode(compile_mode)
            check_compile_scope(compile_scope)
        # built in configure_model (in every process a strategy starts); never pickled, never a submodule,
        # so the state dict and the checkpoints keep the plain model's keys
        self._compiled: CompiledModel | None = None

    @property
    def objective(self) -> str:
        """The metric the run maximises."""
        return self.spec.objective

    @classmethod
    def from_config(cls, cfg: Any, spec: TaskSpec, backbone: Any, checkpoint_path: Path | None) -> PEFTModule:
        """The module of a run's config (`optimizer:` with per-strategy `lr_scale`, `scheduler:`, `train:`, the
        task's generation) on its patched backbone; `learning_rates` holds what result.json records of them."""
        import hydra
        from omegaconf import OmegaConf

        optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
        lr_scale = optimizer.pop("lr_scale", None) or {}
        generation = cfg.task.get("generation")
        module = cls(backbone.model, spec, backbone.tokenizer, text_to_text=backbone.text_to_text, lr_scale=lr_scale,
                     optimizer=hydra.utils.instantiate(optimizer), scheduler=cfg.scheduler.name,
                     warmup_ratio=cfg.scheduler.warmup_ratio, max_target_length=cfg.task.get("max_target_length"),
                     checkpoint_path=checkpoint_path, compile=bool(cfg.train.compile),
                     generation=OmegaConf.to_container(generation) if generation is not None else None,
                     compile_mode=cfg.train.compile_mode, compile_scope=cfg.train.get("compile_scope", "regional"),
                     compile_cache_dir=cfg.train.get("compile_cache_dir"))
        module.learning_rates = learning_rates(backbone.model, float(optimizer.get("lr", 0.0)), lr_scale)
        return module

    def _inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in batch.items() if k not in ("gold", "index")}

    def configure_model(self) -> None:
        """Compile the training forward once (`compile=True`); Lightning calls this at the start of fit."""
        if self.compile and self._compiled is None:
            self._compiled = CompiledModel(self.model, self.compile_mode, scope=self.compile_scope,
                                           cache_dir=self.compile_cache_dir)

    def compile_stats(self) -> dict[str, Any]:
        """Compilations of this module's model (see `CompiledModel.stats`); ``{"enabled": False}`` when eager."""
        if self._compiled is None:
            return {"enabled": False} if not self.compile else {"enabled": True, "compiles": 0, "recompiles": 0}
        return self._compiled.stats()

    def __getstate__(self) -> dict[str, Any]:
        # compiled code cannot be pickled (ddp_spawn pickles the module); configure_model compiles again there
        state = super().__getstate__()
        state["_compiled"] = None
        return state

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        forward = self._compiled if self._compiled is not None else self.model
        loss = forward(**self._inputs(batch)).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        index = batch.get("index")
        if not self.text_to_text:
            out = self.model(**self._inputs(batch))
            self._val_loss.append(out.loss.detach().float())
            preds = out.logits.argmax(-1) if self.spec.kind == "classification" else out.logits.squeeze(-1)
            self.metrics.update(preds, batch["labels"])
            self._keep_predictions(preds, batch["labels"], index)
            return
        texts = self._loss_and_generate(batch)
        if self.spec.kind == "seq2seq":
            self.metrics.update([t.strip() for t in texts], list(batch["gold"]))
            return
        gold = batch["gold"]
        parsed = [parse_prediction(self.spec, t) for t in texts]
        preds = torch.tensor([p for p, _ in parsed], device=gold.device, dtype=gold.dtype)
        self.metrics.update(preds, gold)
        self._keep_predictions(preds, gold, index)
        if self.invalid_rate is not None:
            self.invalid_rate.update(torch.tensor([float(not ok) for _, ok in parsed], device=gold.device))

    def _loss_and_generate(self, batch: dict[str, Any]) -> list[str]:
        """A text-to-text batch's validation loss (kept) and its generated answers; an encoder-decoder runs its
        encoder once for both, not once for the loss and again inside `generate`."""
        inputs = self._inputs(batch)
        if getattr(self.model.config, "is_encoder_decoder", False):
            encoded = self.model.get_encoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                               return_dict=True)
            out = self.model(encoder_outputs=encoded, attention_mask=inputs["attention_mask"], labels=inputs["labels"])
            generated = self.model.generate(encoder_outputs=encoded, attention_mask=inputs["attention_mask"],
                                            do_sample=False, **self.generation)
        else:
            out = self.model(**inputs)
            generated = self.model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                            do_sample=False, **self.generation)
        self._val_loss.append(out.loss.detach().float())
        return self.tokenizer.batch_decode(generated, skip_special_tokens=True)

    def _keep_predictions(self, preds: torch.Tensor, gold: torch.Tensor, index: torch.Tensor | None) -> None:
        if not self.trainer.sanity_checking and self.trainer.world_size == 1:  # DDP ranks see a share of the set
            self._val_preds.append((preds.detach().cpu(), gold.detach().cpu(),
                                    None if index is None else index.detach().cpu()))

    def _end_predictions(self) -> None:
        if self._val_preds:
            preds, gold = (torch.cat(t) for t in list(zip(*self._val_preds))[:2])
            if all(index is not None for _, _, index in self._val_preds):
                # back in split order: an evaluation visits the rows sorted by length
                order = torch.argsort(torch.cat([index for _, _, index in self._val_preds]), stable=True)
                preds, gold = preds[order], gold[order]
            self.pred_history.append({"epoch": self.current_epoch, "step": self.global_step, "pred": preds})
            self.pred_gold = gold
        self._val_preds.clear()

    def predictions(self) -> dict[str, Any] | None:
        """The dev predictions as arrays: index and gold (n,), pred (evaluations, n), epoch and step per
        evaluation, in the order of the metric history; None when none were kept (seq2seq text, DDP)."""
        if not self.pred_history or self.pred_gold is None:
            return None
        import numpy as np

        pred = torch.stack([h["pred"] for h in self.pred_history]).numpy()
        return {"index": np.arange(pred.shape[1], dtype=np.int64), "gold": self.pred_gold.numpy(),
                "pred": pred.astype(np.float32 if self.spec.kind == "regression" else np.int64),
                "epoch": np.array([h["epoch"] for h in self.pred_history], dtype=np.int64),
                "step": np.array([h["step"] for h in self.pred_history], dtype=np.int64)}

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._end_predictions()
        self._val_preds.clear()
        values = add_score(self.spec, {k: v.item() for k, v in self.metrics.compute().items()})
        self.metrics.reset()
        if self.invalid_rate is not None and self.invalid_rate.update_called:
            # added after `add_score`: a diagnostic, not part of the task's score
            values["invalid_rate"] = self.invalid_rate.compute().item()
            self.invalid_rate.reset()
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
        # one key for every task (W&B keeps its max), so dashboards sort any sweep by it
        self.log("objective", values[self.objective], sync_dist=True)
        if self.best is None or values[self.objective] > self.best[self.objective]:
            self.best = dict(values)
            self.log("val/best_" + self.objective, values[self.objective], sync_dist=True)
            if self.checkpoint_path is not None and self.trainer.is_global_zero:
                torch.save({"state_dict": trainable_state_dict(self.model), "epoch": self.current_epoch,
                            "metrics": values}, self.checkpoint_path)

    # Lightning checkpoints (resume) hold only what training changes: the trainable tensors, the optimizer
    # and loop state, the metric history and the RNG states; the frozen backbone is rebuilt by the job.
    # Lightning's strict loading would demand the frozen weights too: on_load_checkpoint checks the keys.
    strict_loading = False

    def _trainable_keys(self) -> set[str]:
        return {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = self._trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["pdspace"] = {"history": self.history, "best": self.best, "rng": rng,
                                 "predictions": {"history": self.pred_history, "gold": self.pred_gold}}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved, expected = set(checkpoint.get("state_dict", {})), self._trainable_keys()
        if saved != expected:
            missing, unexpected = sorted(expected - saved), sorted(saved - expected)
            raise ValueError(
                f"the checkpoint's trainable tensors do not match this patched model (missing {missing[:4]}, "
                f"unexpected {unexpected[:4]}; {len(missing)} and {len(unexpected)} in all): it was made with another "
                "design or settings; resume with the run's own settings, or delete its checkpoints/ to start over")
        state = checkpoint.get("pdspace", {})
        self.history, self.best = list(state.get("history", [])), state.get("best")
        kept = state.get("predictions") or {}
        self.pred_history, self.pred_gold = list(kept.get("history", [])), kept.get("gold")
        # dropout and the rest continue the stream of the interrupted run
        rng = state.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        # the data continues where the run stopped: the epoch's order, minus the batches already trained
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
        done = progress.get("current", {}).get("processed", 0)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if hasattr(datamodule, "resume_at"):
            datamodule.resume_at(checkpoint.get("epoch", 0), done)

    def fit_state(self) -> dict[str, Any]:
        """The metric history and the best epoch (what result.json reports)."""
        return {"history": self.history, "best": self.best}

    def configure_optimizers(self) -> Any:
        groups = learning_rate_groups(self.model, self.lr_scale)
        if not groups:
            raise ValueError("nothing to train: the design left no trainable parameter; tune at least one group")
        optimizer = self.optimizer_factory([{"params": g["params"], "name": g["name"]} for g in groups])
        for group, spec in zip(optimizer.param_groups, groups):
            group["lr"] = group["lr"] * spec["lr_scale"]  # before the scheduler reads each group's initial lr
        if self.scheduler == "constant" and not self.warmup_ratio:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = transformers.get_scheduler(self.scheduler, optimizer, num_warmup_steps=int(self.warmup_ratio * total),
                                              num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def learning_rates(model: nn.Module, lr: float, lr_scale: Mapping[str, float]) -> dict[str, Any]:
    """The effective learning rate of every optimizer group (what result.json records)."""
    return {"lr": lr, "groups": {g["name"]: {"lr": lr * g["lr_scale"], "lr_scale": g["lr_scale"], "params": g["numel"]}
                                 for g in learning_rate_groups(model, lr_scale)}}


def set_accumulation(trainer: Any, batch_size: int, effective: int | None) -> dict[str, Any]:
    """Set `accumulate_grad_batches` so that per-device batch x devices x steps reaches `effective`; the numbers."""
    world = int(trainer.world_size)
    if effective:
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(f"data.effective_batch_size={effective} sets accumulate_grad_batches itself; drop "
                             f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}")
        trainer.accumulate_grad_batches = math.ceil(int(effective) / (batch_size * world))
    accumulate = int(trainer.accumulate_grad_batches)
    return {"per_device": batch_size, "devices": world, "accumulate_grad_batches": accumulate,
            "effective": batch_size * world * accumulate, "requested_effective": effective}


def learning_rate_groups(model: nn.Module, lr_scale: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """One optimizer parameter group per strategy letter (and "head", "backbone"), each with its learning-rate
    scale (`lr_scale[name]`, default 1): the group trains at base lr x scale."""
    scales = dict(lr_scale or {})
    return [{"name": name, "params": [p for _, p in params], "lr_scale": float(scales.get(name, 1.0)),
             "numel": sum(p.numel() for _, p in params)} for name, params in parameter_groups(model).items()]


GENERATION_KEYS = ("num_beams", "max_new_tokens", "length_penalty")


def _generation_kwargs(generation: Mapping[str, Any] | None, max_target_length: int) -> dict[str, Any]:
    """Keyword arguments for `generate` from a task's `generation` block (missing keys: greedy decoding)."""
    given = dict(generation or {})
    unknown = sorted(set(given) - set(GENERATION_KEYS))
    if unknown:
        raise ValueError(f"generation: unknown key(s) {unknown}; use {list(GENERATION_KEYS)}.")
    # a null in the task config means "the default", as a missing key does
    defaults = {"num_beams": 1, "max_new_tokens": max_target_length, "length_penalty": 1.0}
    out = {k: d if given.get(k) is None else given[k] for k, d in defaults.items()}
    out = {"num_beams": int(out["num_beams"]), "max_new_tokens": int(out["max_new_tokens"]),
           "length_penalty": float(out["length_penalty"])}
    if out["num_beams"] < 1 or out["max_new_tokens"] < 1:
        raise ValueError(f"generation: num_beams and max_new_tokens must be >= 1, got {out['num_beams']} and "
                         f"{out['max_new_tokens']}.")
    return out
