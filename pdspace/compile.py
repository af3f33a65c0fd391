"""`train.compile=true`: the training forward through `torch.compile`, counted.

Two scopes. `regional` (the default) compiles each transformer block, as PyTorch's regional
compilation recipe does: blocks with the same module layout share one graph, within a design
and across a sweep's designs, module sizes (LoRA rank, adapter width, prefix length) are
dynamic dimensions, and a block without modules runs the frozen block's code (see
`_REGION_CACHE`). `model` compiles the whole forward, one entry function per model layout
(see `_ENTRY_CACHE`). Either way dynamo keeps compiled code per *code object*, so each
layout gets its own, and neither a sweep's designs nor one recompile limit are shared.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
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


SCOPES = ("regional", "model")
# inductor's FX-graph and AOTAutograd caches on disk (`train.compile_cache_dir`): a later process compiling a block it
# has compiled before loads the kernels instead of generating and building them again
DEFAULT_CACHE_DIR = "~/.cache/pdspace/compile"
_USER_CACHE_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")

# The sizes the budget solver gives a layer's modules (LoRA rank, adapter width, prefix length), as the parameter
# (dotted name within a block) and the dim that holds the size: dynamic in a block's graph, so one graph serves
# every size. Dynamo keeps parameter shapes static; entries of `torch.compiler.config.dynamic_sources` win over that.
SIZED_PARAMETERS = (("lora_A", 0), ("lora_B", 1), ("down.weight", 0), ("down.bias", 0), ("up.weight", 1),
                    ("pdspace_prefix.key", 1), ("pdspace_prefix.value", 1), ("pdspace_prefix.embedding", 0))
# ints the modules' forwards read (PrefixKV.extend reads its length)
SIZED_ATTRIBUTES = ("pdspace_prefix.prefix_len",)

# compiled block entries by region key (block layout, mode, grad state, backend), oldest dropped first
_REGION_CACHE: OrderedDict[str, Callable[..., Any]] = OrderedDict()
_REGION_CACHE_SIZE = 256
_REGION_KEYS: dict[str, str] = {}  # entry name (what dynamo's metrics call it) -> region key


def _block_entry(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return module.forward(*args, **kwargs)


def _source_pattern(dotted: str, kind: str) -> str:
    *modules, leaf = dotted.split(".")
    path = "".join(rf"\._modules\['{m}'\]" for m in modules)
    return rf".*{path}\._parameters\['{leaf}'\]" if kind == "param" else rf".*{path}\.{leaf}"


def dynamic_sources() -> str:
    """`torch.compiler.config.dynamic_sources` for a block's graph: the size dims of `SIZED_PARAMETERS` and the ints
    of `SIZED_ATTRIBUTES`."""
    entries = [f"{_source_pattern(name, 'param')}:{dim}" for name, dim in SIZED_PARAMETERS]
    return ",".join(entries + [_source_pattern(name, "attr") for name in SIZED_ATTRIBUTES])


def _sized_dims(name: str) -> set[int]:
    return {dim for suffix, dim in SIZED_PARAMETERS if name == suffix or name.endswith("." + suffix)}


def block_layout(block: nn.Module) -> str:
    """A digest of what a block's compiled code depends on: its modules' classes, its parameters' names, shapes,
    dtypes and trainability, with the module sizes (`SIZED_PARAMETERS`) left out, as the graph has them dynamic;
    only a size of 1 counts (dynamo specialises sizes 0 and 1: such a block gets a graph of its own)."""
    h = hashlib.sha1()
    for name, m in block.named_modules():
        h.update(f"{name}={type(m).__module__}.{type(m).__qualname__};".encode())
    for name, p in block.named_parameters():
        sized = _sized_dims(name)
        shape = tuple("*" if d in sized and n > 1 else n for d, n in enumerate(p.shape))
        h.update(f"{name}:{shape}:{p.dtype}:{p.requires_grad};".encode())
    return h.hexdigest()[:12]


def _region_fn(key: str) -> Callable[..., Any]:
    """The compiled entry of a region key: its own code object, so every key has its own cache and recompile limit."""
    fn = _REGION_CACHE.pop(key, None)
    if fn is None:
        backend, mode = key.split("|")[1:3]
        name = f"pdspace_block_{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        code = _block_entry.__code__.replace(co_name=name)
        kwargs = {"mode": None if mode == "None" else mode} if backend == "inductor" else {}
        fn = torch.compile(types.FunctionType(code, _block_entry.__globals__, name), backend=backend, dynamic=True,
                           **kwargs)
        _REGION_KEYS[name] = key
    _REGION_CACHE[key] = fn
    while len(_REGION_CACHE) > _REGION_CACHE_SIZE:
        _REGION_CACHE.popitem(last=False)
    return fn


@contextmanager
def _region_config() -> Iterator[None]:
    # no duck sizing: a first batch whose size equals its length would otherwise tie the two for good
    import torch.fx.experimental._config as fx_config

    with torch.compiler.config.patch(dynamic_sources=dynamic_sources()), fx_config.patch(use_duck_shape=False):
        yield


class _RegionCall:
    """What a block calls instead of its `_call_impl` (the hook `nn.Module.compile` uses): its compiled graph while
    its `CompiledModel` runs the model, its own eager forward otherwise (validation, generation, a copy)."""

    def __init__(self, owner: CompiledModel, block: nn.Module, layout: str) -> None:
        self.owner, self.block, self.layout = weakref.ref(owner), weakref.ref(block), layout

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        owner, block = self.owner(), self.block()
        if owner is None or not owner.active or block._forward_hooks or block._forward_pre_hooks:
            return block._call_impl(*args, **kwargs)
        return owner.run_region(block, self.layout, args, kwargs)


def use_compile_cache(cache_dir: str | Path | None = None) -> str:
    """Point inductor's on-disk caches (FX graphs, AOTAutograd) at `cache_dir` (None: `TORCHINDUCTOR_CACHE_DIR` when
    the user set it, else `DEFAULT_CACHE_DIR`) and turn them on; returns the directory."""
    import torch._functorch.config
    import torch._inductor.config

    path = Path(cache_dir or _USER_CACHE_DIR or DEFAULT_CACHE_DIR).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True
    return str(path)


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


def check_compile_scope(scope: str) -> None:
    """Raise ValueError for a scope `CompiledModel` does not know."""
    if scope not in SCOPES:
        raise ValueError(f"train.compile_scope={scope!r}; use one of {', '.join(SCOPES)}")


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

    `scope="regional"` compiles each transformer block (`layer_map`) instead of the whole model: blocks of one
    layout (`block_layout`) share a graph in this model and with every model of the process that has such blocks,
    module sizes are dynamic, and only calls through this object run compiled (the model's own forward stays
    eager). `scope="model"` compiles the whole forward, one entry per model layout.

    A compilation in a context (train: grad enabled and `model.training`; eval: anything else)
    after that context's first call is a recompile (regional: any compilation of a region that
    had compiled before): it is logged with dynamo's reason and counted in `stats()`.
    `dynamic=False` (model scope) leaves shapes to dynamo's defaults (static first).
    """

    def __init__(self, model: nn.Module, mode: str | None = None, *, dynamic: bool = True,
                 backend: str = "inductor", per_layout: bool = True, scope: str = "regional",
                 cache_dir: str | Path | None = None) -> None:
        check_compile_mode(mode)
        check_compile_scope(scope)
        self.model, self.mode, self.dynamic, self.backend, self.scope = model, mode, dynamic, backend, scope
        self.layout = model_layout(model)
        self.cache_dir = use_compile_cache(cache_dir) if backend == "inductor" else None
        # `mode` is inductor's; other backends (tests use aot_eager) take none
        kwargs = {"mode": mode} if backend == "inductor" else {}
        self.per_layout = per_layout
        self.active = False
        self.regions: dict[str, int] = {}  # block layout -> blocks of this model with it
        self.used: set[str] = set()  # region keys this model ran
        self.compiled_here: set[str] = set()  # region keys whose graph was compiled during this model's calls
        if scope == "regional":
            self._install()
            # a training forward needs no key/value cache, and a cache object handed from block to block is state
            # each block's graph would be guarded on (its layer index): one graph per layer
            no_cache = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
            self._fn = lambda model, inputs: model(**{**no_cache, **inputs})
        elif per_layout:
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
        self.cache_hits = {"fx_graph": 0, "autograd": 0}

    def _install(self) -> None:
        from pdspace.peft.families import layer_map

        for spec in layer_map(self.model):
            layout = block_layout(spec.block)
            self.regions[layout] = self.regions.get(layout, 0) + 1
            spec.block._compiled_call_impl = _RegionCall(self, spec.block, layout)

    def run_region(self, block: nn.Module, layout: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One block's forward through the compiled entry of its region key."""
        # which inputs need a gradient changes the graph (a block before the first trained one needs none): a key each
        grads = "".join("1" if t.requires_grad else "0" for t in (*args, *kwargs.values())
                        if isinstance(t, torch.Tensor))
        attn = getattr(getattr(self.model, "config", None), "_attn_implementation", "")
        # a batch of 1 (an epoch's last) or a length of 1 is specialised by dynamo: a graph of its own, not a recompile
        first = next((t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), None)
        ones = "".join("1" if n == 1 else "n" for n in (first.shape[:2] if first is not None else ()))
        key = (f"{layout}|{self.backend}|{self.mode}|{attn}|{'train' if block.training else 'eval'}|"
               f"{int(torch.is_grad_enabled())}{grads}|{ones}")
        self.used.add(key)
        with _region_config():
            return _region_fn(key)(block, args, kwargs)

    def __call__(self, **inputs: Any) -> Any:
        """The model's output for `inputs`, computed by the compiled graph(s)."""
        from torch._dynamo import utils as dynamo_utils

        if self.dynamic and self.scope == "model":
            _mark_dynamic(inputs)
        _settle_problem_type(self.model, inputs)
        context = "train" if torch.is_grad_enabled() and self.model.training else "eval"
        seen = dynamo_utils.get_compilation_metrics()
        last = seen[-1] if seen else None
        self.active = True
        try:
            out = self._fn(self.model, inputs)
        finally:
            self.active = False
        new = []
        for m in reversed(dynamo_utils.get_compilation_metrics()):
            if m is last:
                break
            new.append(m)
        self._count(new[::-1], context)
        self.calls[context] = self.calls.get(context, 0) + 1
        return out

    def _count(self, new: list[Any], context: str) -> None:
        if not new:
            return
        self.compiles[context] = self.compiles.get(context, 0) + len(new)
        self.compile_s += sum(m.entire_frame_compile_time_s or 0.0 for m in new)
        self.cache_hits["fx_graph"] += sum(m.inductor_fx_local_cache_hit_count or 0 for m in new)
        self.cache_hits["autograd"] += sum(m.aotautograd_local_cache_hit_count or 0 for m in new)
        first = not self.calls.get(context, 0)
        for m in new:
            if m.co_name in _REGION_KEYS:
                self.compiled_here.add(_REGION_KEYS[m.co_name])
            reason = (m.recompile_reason or "").strip().splitlines()[0] if m.recompile_reason else ""
            if m.fail_type:
                self.failed += 1
                reason = f"not compiled, ran eager: {m.fail_type}: {(m.fail_reason or '').splitlines()[0][:200]}"
            elif (first and self.scope == "model") or (self.scope == "regional" and not reason):
                continue
            else:
                self.recompiles += 1
            self.reasons.append(reason or "unknown")
            log.warning("torch.compile recompiled %s (%s call %d): %s", m.co_name, context,
                        self.calls.get(context, 0) + 1, reason or "unknown")

    def stats(self) -> dict[str, Any]:
        """Counts for result.json: compilations per context, recompiles (with reasons) and compile seconds; regional:
        the block layouts, the region graphs run, and how many of those an earlier model had compiled."""
        out = {"enabled": True, "scope": self.scope, "backend": self.backend, "mode": self.mode,
               "dynamic": self.dynamic, "per_layout": self.per_layout, "layout": self.layout,
               "compiles": sum(self.compiles.values()), "by_context": dict(self.compiles),
               "recompiles": self.recompiles, "failed": self.failed, "reasons": self.reasons[:10],
               "compile_s": round(self.compile_s, 3), "calls": dict(self.calls)}
        if self.scope == "regional":
            out.update(blocks=sum(self.regions.values()), block_layouts=len(self.regions), graphs=len(self.used),
                       reused=len(self.used - self.compiled_here), cache_hits=dict(self.cache_hits))
        if self.cache_dir:
            out["cache_dir"] = self.cache_dir
        return out
