"""Prefix: trainable key/value vectors prepended inside a layer's self-attention.

Every supported family calls attention through `transformers.AttentionInterface`, so the
prefix lives in one registered attention function ("pdspace"): for a module that carries a
`pdspace_prefix`, it prepends the prefix keys/values, opens the mask over the prefix
columns, gives them zero position bias (T5), and calls PyTorch's scaled-dot-product
attention through transformers' SDPA path. Real tokens keep their own positions; modules
without a prefix pass straight through. No model forward is copied.

With `reparam_dim` > 0 the prefix is reparameterised as Li and Liang (2021) train it: the
keys and values are an MLP (d -> reparam_dim -> tanh -> 2 x heads x head_dim) of `prefix_len`
trainable d-dimensional embeddings, one MLP per layer. The MLP is trained and so counted in
the budget (a fixed cost per layer, plus d per prefix position).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from pdspace.design.budget import StrategyCost
from pdspace.peft.families import LayerSpec, get
from pdspace.peft.strategies.base import PatchModule, Strategy, register

ATTN_IMPLEMENTATION = "pdspace"


class PrefixKV(PatchModule):
    """`prefix_len` trainable key and value vectors per key/value head (or, reparameterised, an MLP of embeddings)."""

    letter = "P"

    def __init__(self, num_kv_heads: int, prefix_len: int, head_dim: int, *, init_std: float = 0.02,
                 reparam_dim: int = 0, d_model: int = 0, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.prefix_len = prefix_len
        shape = (num_kv_heads, prefix_len, head_dim)
        if reparam_dim:
            self.embedding = nn.Parameter(torch.randn(prefix_len, d_model, device=device, dtype=dtype) * init_std)
            self.mlp = nn.Sequential(nn.Linear(d_model, reparam_dim, device=device, dtype=dtype), nn.Tanh(),
                                     nn.Linear(reparam_dim, 2 * num_kv_heads * head_dim, device=device, dtype=dtype))
            self.shape = shape
        else:
            self.key = nn.Parameter(torch.randn(shape, device=device, dtype=dtype) * init_std)
            self.value = nn.Parameter(torch.randn(shape, device=device, dtype=dtype) * init_std)

    def key_value(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix keys and values, each (heads, prefix_len, head_dim)."""
        if not hasattr(self, "mlp"):
            return self.key, self.value
        heads, p, head_dim = self.shape
        kv = self.mlp(self.embedding).view(p, 2, heads, head_dim).permute(1, 2, 0, 3)
        return kv[0], kv[1]

    def extend(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        kwargs: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Prepend the prefix to `key`/`value` and widen the mask and position bias (in `kwargs`) to match."""
        batch, p = key.shape[0], self.prefix_len
        q_len, k_len = query.shape[2], key.shape[2]
        prefix_key, prefix_value = self.key_value()
        pk = prefix_key.to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        pv = prefix_value.to(value.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        key, value = torch.cat([pk, key], dim=2), torch.cat([pv, value], dim=2)

        is_causal = kwargs.get("is_causal")
        if is_causal is None:
            is_causal = getattr(module, "is_causal", True)
        if attention_mask is None and is_causal and q_len > 1:
            # SDPA's own is_causal would align the triangle top-left over [prefix; real]: build it explicitly,
            # real tokens causal among themselves (with any cached offset), the prefix visible to all.
            offset = k_len - q_len
            rows = torch.arange(q_len, device=key.device)[:, None] + offset
            attention_mask = (torch.arange(k_len, device=key.device)[None, :] <= rows)[None, None]
        if attention_mask is not None:
            open_cols = torch.ones if attention_mask.dtype == torch.bool else torch.zeros
            pad = open_cols((*attention_mask.shape[:-1], p), dtype=attention_mask.dtype, device=attention_mask.device)
            attention_mask = torch.cat([pad, attention_mask], dim=-1)
        bias = kwargs.get("position_bias")
        if bias is not None:
            zeros = torch.zeros((*bias.shape[:-1], p), dtype=bias.dtype, device=bias.device)
            kwargs["position_bias"] = torch.cat([zeros, bias], dim=-1)
        return key, value, attention_mask


def pdspace_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA attention that prepends `module.pdspace_prefix` when the module has one."""
    prefix = getattr(module, "pdspace_prefix", None)
    if prefix is not None:
        key, value, attention_mask = prefix.extend(module, query, key, value, attention_mask, kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


_FULL_MASKS: ContextVar[bool] = ContextVar("pdspace_full_masks", default=False)


@contextmanager
def full_masks() -> Iterator[None]:
    """Masks built for pdspace's attention are tensors for the duration, never None: no causal mask is left to
    SDPA's `is_causal`, no mask without padding is skipped, and none is an expanded view. The values are the same;
    what changes is that an encoder's and a decoder's self-attention (an all-true mask, a causal one), with padding
    or without, trace the same code."""
    token = _FULL_MASKS.set(True)
    try:
        yield
    finally:
        _FULL_MASKS.reset(token)


def pdspace_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """SDPA's mask (`sdpa_mask`), built in full under `full_masks`."""
    if not _FULL_MASKS.get():
        return sdpa_mask(*args, **kwargs)
    kwargs.update(allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
    # a tensor of its own, contiguous: an expanded mask's strides (0 where it is broadcast) and a view's base are
    # guards of their own
    return sdpa_mask(*args, **kwargs).clone(memory_format=torch.contiguous_format)


def register_attention() -> str:
    """Register the pdspace attention (and its mask format, SDPA's) with transformers; idempotent."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, pdspace_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, pdspace_mask)
    return ATTN_IMPLEMENTATION


def use_pdspace_attention(model: nn.Module) -> None:
    """Switch `model` (and its sub-models' configs) to the pdspace attention function."""
    register_attention()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if getattr(module, "pdspace_prefix", None) is not None and cfg._attn_implementation != ATTN_IMPLEMENTATION:
            raise RuntimeError(
                f"{type(module).__name__} still uses attention {cfg._attn_implementation!r} after switching to "
                f"{ATTN_IMPLEMENTATION!r}; this model does not dispatch attention through AttentionInterface"
            )


# at import too: a patched model unpickled in another process (ddp_spawn ranks, joblib workers)
# imports this module through PrefixKV and must find its attention function registered
register_attention()


@dataclass(frozen=True)
class PrefixOptions:
    """Prefix init (std of the random vectors or embeddings) and optional reparameterisation (MLP width, 0: off)."""

    init_std: float = 0.02
    # > 0: prefix = MLP(d -> this -> tanh -> keys/values) of trainable embeddings (counted in the budget)
    reparam_dim: int = 0

    def __post_init__(self) -> None:
        if self.reparam_dim < 0:
            raise ValueError(f"prefix_reparam_dim={self.reparam_dim} must be >= 0 (0: no reparameterisation)")


def _d_model(layer: LayerSpec) -> int:
    return get(layer.attentions[0]["q"]).in_features


def prefix_cost(layer: LayerSpec, options: PrefixOptions) -> StrategyCost:
    """Length p costs p keys and values per key/value head; reparameterised, p embeddings plus the MLP."""
    kv = 2 * layer.num_kv_heads * layer.head_dim
    h, d = options.reparam_dim, _d_model(layer)
    if h:
        return StrategyCost(fixed=d * h + h + h * kv + kv, unit=d)
    return StrategyCost(unit=kv)


def attach_prefix(layer: LayerSpec, prefix_len: int, options: PrefixOptions) -> list[nn.Parameter]:
    """Give the layer's self-attention its prefix."""
    w = next(layer.self_attn.parameters())
    layer.self_attn.pdspace_prefix = PrefixKV(layer.num_kv_heads, prefix_len, layer.head_dim,
                                              init_std=options.init_std, reparam_dim=options.reparam_dim,
                                              d_model=_d_model(layer), device=w.device, dtype=w.dtype)
    return list(layer.self_attn.pdspace_prefix.parameters())


register(Strategy("P", "prefix", "Prefix", "prefix_len", prefix_cost, attach_prefix, PrefixOptions, order=40,
                  finish=use_pdspace_attention))
