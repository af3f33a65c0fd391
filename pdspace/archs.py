"""Model architectures by name, built from transformers configs (no download).

The `*-base`/`*-large`/`t5-3b` entries reproduce the hub configs' shapes, so parameter
counts and budgets can be computed on the `meta` device and benchmarks can use random
weights; `tiny-*` entries are small random models for tests. Their configs also ship as
JSON in `pdspace/hub_configs/` under the hub ids of those checkpoints (`python -m
pdspace.archs` rewrites them), so that a dry run of a hub backbone plans offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

_T5 = dict(relative_attention_num_buckets=32, feed_forward_proj="relu", tie_word_embeddings=True,
           decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
_ROBERTA = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
_BART = dict(vocab_size=50265, max_position_embeddings=1024, pad_token_id=1, bos_token_id=0, eos_token_id=2,
             decoder_start_token_id=2, forced_eos_token_id=2)
_TINY = dict(vocab_size=1024)

ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "t5-base": ("T5Config", dict(_T5, vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12,
                                 num_decoder_layers=12, num_heads=12)),
    "t5-3b": ("T5Config", dict(_T5, vocab_size=32128, d_model=1024, d_kv=128, d_ff=16384, num_layers=24,
                               num_decoder_layers=24, num_heads=32)),
    "roberta-base": ("RobertaConfig", dict(_ROBERTA, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                           intermediate_size=3072)),
    "roberta-large": ("RobertaConfig", dict(_ROBERTA, hidden_size=1024, num_hidden_layers=24,
                                            num_attention_heads=16, intermediate_size=4096)),
    "bart-base": ("BartConfig", dict(_BART, d_model=768, encoder_layers=6, decoder_layers=6,
                                     encoder_attention_heads=12, decoder_attention_heads=12,
                                     encoder_ffn_dim=3072, decoder_ffn_dim=3072)),
    "bart-large": ("BartConfig", dict(_BART, d_model=1024, encoder_layers=12, decoder_layers=12,
                                      encoder_attention_heads=16, decoder_attention_heads=16,
                                      encoder_ffn_dim=4096, decoder_ffn_dim=4096)),
    "tiny-bert": ("BertConfig", dict(_TINY, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=256)),
    "tiny-roberta": ("RobertaConfig", dict(_ROBERTA, vocab_size=1024, hidden_size=64, num_hidden_layers=4,
                                           num_attention_heads=4, intermediate_size=128)),
    "tiny-t5": ("T5Config", dict(_T5, vocab_size=1024, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                 num_decoder_layers=2, num_heads=4)),
    "tiny-mt5": ("MT5Config", dict(_T5, vocab_size=1024, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                   num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                                   tie_word_embeddings=False)),
    "tiny-bart": ("BartConfig", dict(_BART, vocab_size=1024, d_model=64, encoder_layers=2, decoder_layers=2,
                                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                                     decoder_ffn_dim=128, max_position_embeddings=256)),
    "tiny-mbart": ("MBartConfig", dict(_BART, vocab_size=1024, d_model=64, encoder_layers=2, decoder_layers=2,
                                       encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                                       decoder_ffn_dim=128, max_position_embeddings=256)),
    "tiny-llama": ("LlamaConfig", dict(_TINY, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                                       pad_token_id=0, bos_token_id=1, eos_token_id=2)),
}


# the hub checkpoints whose shapes ARCHITECTURES reproduces (the paths of conf/backbone/*.yaml)
HUB_IDS: dict[str, str] = {
    "google-t5/t5-base": "t5-base", "google-t5/t5-3b": "t5-3b",
    "FacebookAI/roberta-base": "roberta-base", "FacebookAI/roberta-large": "roberta-large",
    "facebook/bart-base": "bart-base", "facebook/bart-large": "bart-large",
}
# pre-2024 ids the hub still redirects to the organisations' repos
HUB_ALIASES: dict[str, str] = {"t5-base": "google-t5/t5-base", "t5-3b": "google-t5/t5-3b",
                               "roberta-base": "FacebookAI/roberta-base", "roberta-large": "FacebookAI/roberta-large"}
HUB_CONFIGS = Path(__file__).resolve().parent / "hub_configs"
_NOTE_KEY = "_pdspace_note"


def build_config(name: str, **overrides: Any) -> transformers.PretrainedConfig:
    """The transformers config of a named architecture, with overrides."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; use one of {', '.join(ARCHITECTURES)}")
    cls_name, kwargs = ARCHITECTURES[name]
    return getattr(transformers, cls_name)(**{**kwargs, **overrides})


def hub_config_file(repo_id: str) -> Path:
    """Where the shipped architecture config of a hub id lives (it may not exist)."""
    repo_id = HUB_ALIASES.get(repo_id, repo_id)
    return HUB_CONFIGS / f"{repo_id.replace('/', '--')}.json"


def hub_config(repo_id: str, **overrides: Any) -> transformers.PretrainedConfig | None:
    """The shipped architecture config of a known hub id (None for others): shapes for counting, no weights."""
    if HUB_ALIASES.get(repo_id, repo_id) not in HUB_IDS:
        return None
    data = json.loads(hub_config_file(repo_id).read_text())
    data.pop(_NOTE_KEY, None)
    # from_dict with keyword overrides, exactly as AutoConfig.from_pretrained applies them to a config.json
    return transformers.CONFIG_MAPPING[data["model_type"]].from_dict(data, **overrides)


def write_hub_configs(folder: Path = HUB_CONFIGS) -> list[Path]:
    """Write the JSON architecture config of every hub id in HUB_IDS (the files in pdspace/hub_configs/)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for repo_id, name in HUB_IDS.items():
        config = json.loads(build_config(name).to_json_string(use_diff=False))
        config["_name_or_path"] = repo_id
        note = (f"architecture config of {repo_id} for counting parameters and layers offline (meta device, "
                f"no weights); generated from pdspace.archs (build_config({name!r})), not the hub's config.json")
        path = folder / f"{repo_id.replace('/', '--')}.json"
        path.write_text(json.dumps({_NOTE_KEY: note, **dict(sorted(config.items()))}, indent=2) + "\n")
        paths.append(path)
    return paths


def build_model(name: str, head: str = "base", device: str | torch.device | None = None,
                seed: int | None = 0, **overrides: Any) -> nn.Module:
    """A randomly initialised model of a named architecture.

    `head`: 'base' (no head), 'classification' (a sequence-classification head; pass
    `num_labels`), 'seq2seq' (encoder-decoder LM) or 'causal' (decoder-only LM).
    """
    config = build_config(name, **overrides)
    auto = {
        "base": transformers.AutoModel,
        "classification": transformers.AutoModelForSequenceClassification,
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
        "causal": transformers.AutoModelForCausalLM,
    }
    if head not in auto:
        raise ValueError(f"unknown head {head!r}; use one of {', '.join(auto)}")
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = auto[head].from_config(config, attn_implementation="sdpa")
    return model.eval()


if __name__ == "__main__":
    for written in write_hub_configs():
        print(written)
