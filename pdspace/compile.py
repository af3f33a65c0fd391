"""`train.compile=true`: the training forward through `torch.compile`, one graph per model layout, counted.

Dynamo keeps compiled code per *code object*; `CompiledModel` gives each model layout its own entry
function, so a sweep's designs neither share nor exhaust one cache (see `_ENTRY_CACHE`).
"""

from __future__ import annotations

import hashlib
import logging
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

log = logging.getLogger("pdspace.module")

# Dynamo keeps compiled code per *code object*, at most `recompile_limit` (8) entries each. Compiling the HF model
# itself puts every job's graphs on one code object that all HF forwards share (transformers' `wrapper`), so in a
# sweep the 5th design or so hits the limit and silently runs eager. Each model layout gets its own entry function
# instead: a job repeating a layout (same design, another seed) reuses the compiled code, and a new layout starts
# with an empty cache. The oldest layouts are dropped, and their compiled code with them.
_ENTRY_CACHE: OrderedDict[str, Callable[..., Any]] = OrderedDict()
_ENTRY_CACHE_SIZE = 8


def _entry(model: nn.Module, inputs: dict[str, Any]) -> Any:
    return model(**inputs)


def model_layout(model: nn.Module) -> str:
    """A short digest of the model's class and its parameters' names, shapes, dtypes and trainability."""
    h = hashlib.sha1(type(model).__qualname__.encode())
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}:{p.requires_grad};".encode())
    h.update(str(getattr(getattr(model, "config", None), "_attn_implementation", "")).encode())
    return h.hexdigest()[:12]


def _entry_for(layout: str) -> Callable[..., Any]:
    fn = _ENTRY_CACHE.pop(layout, None)
    if fn is None:
        code = _entry.__code__.replace(co_name=f"pdspace_forward_{layout}")
        fn = types.FunctionType(code, _entry.__globals__, code.co_name)
    _ENTRY_CACHE[layout] = fn
    while len(_ENTRY_CACHE) > _ENTRY_CACHE_SIZE:
        _ENTRY_CACHE.popitem(last=False)
    return fn


def _settle_problem_type(model: nn.Module, inputs: Mapping[str, Any]) -> None:
    # HF sequence classifiers choose `config.problem_type` on their first forward with labels and store it: a graph
    # compiled before is guarded on the old value (None) and recompiles at step 2. Choose it first, by HF's rule.
    # (one label per example: sequence classification or regression; token-level LM labels never read it)
    config, labels = getattr(model, "config", None), inputs.get("labels")
    if config is None or not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        return
    if getattr(config, "problem_type", "") is not None:
        return
    if config.num_labels == 1:
        config.problem_type = "regression"
    elif labels.dtype in (torch.long, torch.int):
        config.problem_type = "single_label_classification"


def check_compile_mode(mode: str | None) -> None:
    """Raise ValueError for a mode torch.compile does not know (None: its default)."""
    if mode is None:
        return
    import torch._inductor

    modes = list(torch._inductor.list_mode_options())
    if mode not in modes:
        raise ValueError(f"train.compile_mode={mode!r} is no torch.compile mode; use one of {modes} or null")


def _mark_dynamic(inputs: Mapping[str, Any]) -> None:
    # batches are padded to their longest sequence and the last one is smaller: with batch and sequence dims
    # dynamic from the first call one graph serves every batch (automatic dynamic shapes would compile a static
    # graph first and recompile at the first new length, and again at the first new batch size)
    import torch._dynamo

    for value in inputs.values():
        if isinstance(value, torch.Tensor):
            for dim in range(min(value.ndim, 2)):
                torch._dynamo.maybe_mark_dynamic(value, dim)


class CompiledModel:
    """`model(**inputs)` through `torch.compile` (one graph for every batch shape), with its compilations counted.

    A compilation in a context (train: grad enabled and `model.training`; eval: anything else)
    after that context's first call is a recompile: it is logged with dynamo's reason and
    counted in `stats()`. `dynamic=False` leaves shapes to dynamo's defaults (static first).
    """

    def __init__(self, model: nn.Module, mode: str | None = None, *, dynamic: bool = True,
                 backend: str = "inductor", per_layout: bool = True) -> None:
        check_compile_mode(mode)
        self.model, self.mode, self.dynamic, self.backend = model, mode, dynamic, backend
        self.layout = model_layout(model)
        # `mode` is inductor's; other backends (tests use aot_eager) take none
        kwargs = {"mode": mode} if backend == "inductor" else {}
        self.per_layout = per_layout
        if per_layout:
            self._fn = torch.compile(_entry_for(self.layout), backend=backend, **kwargs)
        else:
            # plain torch.compile(model), kept to measure what the per-layout entry avoids
            plain = torch.compile(model, backend=backend, **kwargs)
            self._fn = lambda model, inputs: plain(**inputs)
        self.calls: dict[str, int] = {}
        self.compiles: dict[str, int] = {}
        self.recompiles = 0
        self.failed = 0  # compilations dynamo gave up on (e.g. its recompile limit): those calls ran eager
        self.reasons: list[str] = []
        self.compile_s = 0.0

    def __call__(self, **inputs: Any) -> Any:
        """The model's output for `inputs`, computed by the compiled graph."""
        from torch._dynamo import utils as dynamo_utils

        if self.dynamic:
            _mark_dynamic(inputs)
        _settle_problem_type(self.model, inputs)
        context = "train" if torch.is_grad_enabled() and self.model.training else "eval"
        seen = dynamo_utils.get_compilation_metrics()
        last = seen[-1] if seen else None
        out = self._fn(self.model, inputs)
        new = []
        for m in reversed(dynamo_utils.get_compilation_metrics()):
            if m is last:
                break
            new.append(m)
        if new:
            new.reverse()
            self.compiles[context] = self.compiles.get(context, 0) + len(new)
            self.compile_s += sum(m.entire_frame_compile_time_s or 0.0 for m in new)
            first = not self.calls.get(context, 0)
            for m in new:
                reason = (m.recompile_reason or "").strip().splitlines()[0] if m.recompile_reason else ""
                if m.fail_type:
                    self.failed += 1
                    reason = f"not compiled, ran eager: {m.fail_type}: {(m.fail_reason or '').splitlines()[0][:200]}"
                elif first:
                    continue
                else:
                    self.recompiles += 1
                self.reasons.append(reason or "unknown")
                log.warning("torch.compile recompiled %s (%s call %d): %s", m.co_name, context,
                            self.calls.get(context, 0) + 1, reason or "unknown")
        self.calls[context] = self.calls.get(context, 0) + 1
        return out

    def stats(self) -> dict[str, Any]:
        """Counts for result.json: compilations per context, recompiles (with reasons) and compile seconds."""
        return {"enabled": True, "backend": self.backend, "mode": self.mode, "dynamic": self.dynamic,
                "per_layout": self.per_layout, "layout": self.layout,
                "compiles": sum(self.compiles.values()), "by_context": dict(self.compiles),
                "recompiles": self.recompiles, "failed": self.failed, "reasons": self.reasons[:10],
                "compile_s": round(self.compile_s, 3),
                "calls": dict(self.calls)}
