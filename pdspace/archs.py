"""Model architectures by name, built from transformers configs (no download).

The `*-base`/`*-large`/`t5-3b` entries reproduce the hub configs' shapes, so parameter
counts and budgets can be computed on the `meta` device and benchmarks can use random
weights; `tiny-*` entries are small random models for tests.
"""

from __future__ import annotations

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


def build_config(name: str, **overrides: Any) -> transformers.PretrainedConfig:
    """The transformers config of a named architecture, with overrides."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; use one of {', '.join(ARCHITECTURES)}")
    cls_name, kwargs = ARCHITECTURES[name]
    return getattr(transformers, cls_name)(**{**kwargs, **overrides})


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
