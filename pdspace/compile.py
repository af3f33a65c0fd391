"""`train.compile=true`: the training forward through `torch.compile`, counted.

Two scopes. `regional` (the default) compiles each transformer block, or where the family's layer map names them
its parts (`LayerSpec.regions`: BERT's attention, intermediate and output; T5's layers, the first one's position
bias computed before it), as PyTorch's regional compilation recipe does: regions with the same module layout share
one graph, within a design and across a sweep's designs, module sizes (LoRA rank, adapter width, prefix length) are
dynamic dimensions, BitFit and a region's place before or after the first trained layer make no graph of their own
(`_Region`), and a frozen region runs the same code as the untouched region of a trained layer (see
`_REGION_CACHE`). `model` compiles the whole forward, one entry function per model layout (see `_ENTRY_CACHE`).
Either way dynamo keeps compiled code per *code object*, so each layout gets its own, and neither a sweep's designs
nor one recompile limit are shared.
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
from contextlib import ExitStack, contextmanager, nullcontext
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


def block_layout(block: nn.Module, skip: str | None = None) -> str:
    """A digest of what a block's compiled code depends on: its modules' classes, its parameters' names, shapes,
    dtypes and trainability, with the module sizes (`SIZED_PARAMETERS`) left out, as the graph has them dynamic;
    only a size of 1 counts (dynamo specialises sizes 0 and 1: such a block gets a graph of its own). `skip`: a
    submodule the graph never runs (its dotted name), left out with its parameters."""
    h = hashlib.sha1()
    for name, m in block.named_modules():
        if skip and (name == skip or name.startswith(skip + ".")):
            continue
        h.update(f"{name}={type(m).__module__}.{type(m).__qualname__};".encode())
    for name, p in block.named_parameters():
        if skip and name.startswith(skip + "."):
            continue
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
def _compile_config(regional: bool, cpu: bool) -> Iterator[None]:
    """The settings a compiled call runs under (read when a graph compiles; entered once per model call).

    regional: the module sizes are dynamic sources, and no duck sizing (a first batch whose size equals its length
    would otherwise tie the two for good). cpu: random numbers come from aten (`fallback_random`), as in eager:
    inductor's own CPU code draws them one element at a time (`normalized_rand_cpu`), slower than aten's dropout,
    and its masks differ from eager's for one seed; on a GPU its fused philox stays."""
    import torch._inductor.config as inductor_config
    import torch.fx.experimental._config as fx_config

    with ExitStack() as stack:
        if regional:
            stack.enter_context(torch.compiler.config.patch(dynamic_sources=dynamic_sources()))
            stack.enter_context(fx_config.patch(use_duck_shape=False))
        if cpu:
            stack.enter_context(inductor_config.patch(fallback_random=True))
        yield


class _Region:
    """One compiled region (`LayerSpec.regions`: a block, or the parts of one) and what its key is made of.

    A region whose gradient is needed runs one graph whatever BitFit does: every bias BitFit could train in it
    (`bitfit_biases`, the ones a bias-free family lacks included) enters as a leaf that needs a gradient (a frozen
    bias as an alias of itself, a missing one as zeros; those gradients are thrown away), and so does its hidden-state
    input (a view of it when it needs none, as in the first trained layer). Values and the trained parameters'
    gradients are eager's; the price is a bias-sized reduction per bias and, in the first trained layer, the input's
    gradient. A region that needs no gradient (a frozen layer before the first trained one) runs its inference graph.
    """

    def __init__(self, module: nn.Module, spec: Any) -> None:
        from pdspace.peft.strategies.bitfit import bitfit_biases

        # weak references: the module holds this (through its call hook), so a strong one would keep a dropped
        # model alive until the garbage collector finds the cycle
        self._module = weakref.ref(module)
        inside = {id(m) for m in module.modules()}
        self.slots = [(weakref.ref(m), n) for m, n in bitfit_biases(spec, add_missing=True) if id(m) in inside]
        self.trainable = any(p.requires_grad for p in module.parameters())
        # the attention implementation matters only where an attention is
        self.has_attention = id(spec.self_attn) in inside
        self.position_bias, skip = _position_bias_source(module)
        self.layouts = {False: block_layout(module, skip)}
        with self.bias_leaves():
            self.layouts[True] = block_layout(module, skip)

    @property
    def module(self) -> nn.Module:
        module = self._module()
        assert module is not None, "a region outlived its module"
        return module

    @contextmanager
    def bias_leaves(self) -> Iterator[None]:
        """Every BitFit slot of the region holds a parameter that needs a gradient, for the duration."""
        swapped = []
        for ref, name in self.slots:
            module = ref()
            p = module._parameters.get(name)
            if p is not None and p.requires_grad:
                continue
            if p is None:
                w = module.weight
                leaf = nn.Parameter(torch.zeros(module.out_features, dtype=w.dtype, device=w.device))
            else:
                leaf = nn.Parameter(p.detach())
            module._parameters[name] = leaf
            swapped.append((module, name, p))
        try:
            yield
        finally:
            for module, name, p in reversed(swapped):
                module._parameters[name] = p


def _position_bias_source(module: nn.Module) -> tuple[Any, str | None]:
    """T5's attention layers (a `T5Attention` as `SelfAttention` or `EncDecAttention`): the attention, and the name of
    the relative-position embedding the region would compute its bias from (None where it has none).

    A T5 stack's first layer computes the position bias its later layers are handed (from the embedding in
    self-attention, zeros in cross-attention). Computed before the region runs (`_first_position_bias`), the bias
    enters the first layer's graph as it enters the others', so the first layer runs their graph instead of one of
    its own per strategy set."""
    for name in ("SelfAttention", "EncDecAttention"):
        attention = getattr(module, name, None)
        if attention is not None and hasattr(attention, "compute_bias") and hasattr(attention, "n_heads"):
            embedding = f"{name}.relative_attention_bias" if attention.has_relative_attention_bias else None
            return weakref.ref(attention), embedding
    return None, None


def _first_position_bias(attention: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` with the position bias T5's attention would compute when handed none, as its forward computes it
    (no key/value cache in a training forward: nothing seen before)."""
    hidden = args[0] if args else kwargs["hidden_states"]
    keys = kwargs.get("key_value_states")
    q_len, k_len = hidden.shape[1], (hidden if keys is None else keys).shape[1]
    if attention.has_relative_attention_bias:
        bias = attention.compute_bias(q_len, k_len, device=hidden.device)
    else:
        # the dtype of the queries, from which T5 takes it (under autocast, autocast's)
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        bias = torch.zeros((1, attention.n_heads, q_len, k_len), device=hidden.device, dtype=dtype)
        if attention.gradient_checkpointing and attention.training:
            bias.requires_grad = True
    return {**kwargs, "position_bias": bias}


def _with_input_grad(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The hidden states (the first tensor, or `hidden_states`) and every floating input of their rank, batch and
    length (a residual) as tensors that need a gradient (views of those that need none); masks and position biases
    (another rank) as they are."""
    first = kwargs.get("hidden_states")
    if not isinstance(first, torch.Tensor):
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
    if first is None:
        return args, kwargs

    def leaf(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or t.requires_grad or not t.is_floating_point() \
                or t.shape[:-1] != first.shape[:-1]:
            return t
        return t.detach().requires_grad_(True)

    return tuple(leaf(a) for a in args), {k: leaf(v) for k, v in kwargs.items()}


class _RegionCall:
    """What a region calls instead of its `_call_impl` (the hook `nn.Module.compile` uses): its compiled graph while
    its `CompiledModel` runs the model, its own eager forward otherwise (validation, generation, a copy)."""

    def __init__(self, owner: CompiledModel, region: _Region) -> None:
        self.owner, self.region = weakref.ref(owner), region

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        owner, block = self.owner(), self.region._module()
        if owner is None or not owner.active or block._forward_hooks or block._forward_pre_hooks:
            return block._call_impl(*args, **kwargs)
        return owner.run_region(self.region, args, kwargs)


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

    `scope="regional"` compiles each transformer block or its parts (`LayerSpec.regions`) instead of the whole model:
    regions of one layout (`block_layout`) share a graph in this model and with every model of the process that
    has such blocks, module sizes are dynamic, and only calls through this object run compiled (the model's own
    forward stays eager). `scope="model"` compiles the whole forward, one entry per model layout.

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
        self._masks: Callable[[], Any] = nullcontext  # what builds the masks in a call (`_install`)
        self.region_count = self.blocks = 0
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
        from pdspace.peft.strategies.prefix import ATTN_IMPLEMENTATION, full_masks, use_pdspace_attention

        config = getattr(self.model, "config", None)
        if getattr(config, "_attn_implementation", None) == "sdpa":
            # pdspace's attention is SDPA's (with a layer's prefix where it has one): on it, a layer's attention runs
            # the same graph whether or not a prefix sits in another layer of the design
            use_pdspace_attention(self.model)
        if getattr(config, "_attn_implementation", None) == ATTN_IMPLEMENTATION and \
                getattr(config, "is_encoder_decoder", False):
            # an encoder-decoder's self-attention runs one graph in both stacks when both are handed a mask tensor
            # (the encoder's all true without padding, the decoder's causal), not None and SDPA's is_causal; on
            # pdspace's attention whether the switch was made here or by a prefix in the design
            self._masks = full_masks

        specs = layer_map(self.model)
        for spec in specs:
            for module in spec.regions:
                self.region_count += 1
                module._compiled_call_impl = _RegionCall(self, _Region(module, spec))
        self.blocks = len(specs)

    def run_region(self, region: _Region, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One region's forward through the compiled entry of its key."""
        if region.position_bias is not None and kwargs.get("position_bias") is None:
            kwargs = _first_position_bias(region.position_bias(), args, kwargs)
        tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        grad = torch.is_grad_enabled() and (region.trainable or any(t.requires_grad for t in tensors))
        if grad:
            args, kwargs = _with_input_grad(args, kwargs)
            tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        # which inputs need a gradient changes the graph (the attention mask never does): part of the key
        grads = "".join("1" if t.requires_grad else "0" for t in tensors)
        attn = getattr(getattr(self.model, "config", None), "_attn_implementation", "") if region.has_attention else ""
        # a batch of 1 (an epoch's last) or a length of 1 is specialised by dynamo: a graph of its own, not a recompile
        ones = "".join("1" if n == 1 else "n" for n in (tensors[0].shape[:2] if tensors else ()))
        # dynamo guards on the thread count (global state): another count is a graph of its own, not a recompile
        key = (f"{region.layouts[grad]}|{self.backend}|{self.mode}|{attn}|"
               f"{'train' if region.module.training else 'eval'}|{int(torch.is_grad_enabled())}{grads}|{ones}|"
               f"t{torch.get_num_threads()}")
        self.used.add(key)
        with region.bias_leaves() if grad else nullcontext():
            return _region_fn(key)(region.module, args, kwargs)

    def __call__(self, **inputs: Any) -> Any:
        """The model's output for `inputs`, computed by the compiled graph(s)."""
        from torch._dynamo import utils as dynamo_utils

        if self.dynamic and self.scope == "model":
            _mark_dynamic(inputs)
        _settle_problem_type(self.model, inputs)
        context = "train" if torch.is_grad_enabled() and self.model.training else "eval"
        seen = dynamo_utils.get_compilation_metrics()
        last = seen[-1] if seen else None
        param = next(self.model.parameters(), None)
        self.active = True
        try:
            with _compile_config(self.scope == "regional", param is None or param.device.type == "cpu"), self._masks():
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
            out.update(blocks=self.blocks, regions=self.region_count,
                       layouts=len({key.split('|')[0] for key in self.used}), graphs=len(self.used),
                       reused=len(self.used - self.compiled_here), cache_hits=dict(self.cache_hits))
        if self.cache_dir:
            out["cache_dir"] = self.cache_dir
        return out
