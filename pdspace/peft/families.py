"""Layer maps: where each family keeps its transformer layers and their sub-modules.

One small function per family turns a Hugging Face model into an ordered list of
`LayerSpec` (encoder layers first, then decoder layers); everything else in pdspace is
family-agnostic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

Slot = tuple[nn.Module, str]  # (parent module, attribute name) of a sub-module


ROLES = ("q", "k", "v", "o")


@dataclass
class LayerSpec:
    """One transformer layer and the places PEFT modules attach to, by role (so a strategy needs no family code)."""

    index: int
    stack: str  # "encoder" or "decoder"
    block: nn.Module
    self_attn: nn.Module  # the module handed to the attention function (gets the prefix)
    num_kv_heads: int
    head_dim: int
    attentions: list[dict[str, Slot]]  # per attention, self first then cross: its q, k, v, o projections
    ffn: list[Slot]  # the feed-forward projections, the output projection last
    norms: list[nn.Module] = field(default_factory=list)  # layer norms whose biases BitFit trains
    # the sub-modules `train.compile_scope=regional` compiles one by one (the block's own code runs eager between
    # them): each holds fewer of the strategies' attachment points than the block, so fewer strategy sets make a new
    # graph; empty: the block itself (its forward does the residuals and norms, which then stay in the graph)
    parts: list[nn.Module] = field(default_factory=list)

    @property
    def regions(self) -> list[nn.Module]:
        """What regional compilation compiles: `parts`, or the block where a family names none."""
        return self.parts or [self.block]

    @property
    def lora_targets(self) -> list[Slot]:
        """The q and v projections of every attention in the layer."""
        return self.projections("q", "v")

    @property
    def ffn_out(self) -> Slot:
        """The feed-forward output projection (the adapter follows it)."""
        return self.ffn[-1]

    @property
    def linears(self) -> list[Slot]:
        """Every projection of the attention(s) and the feed-forward (BitFit adds biases here if none)."""
        return self.projections(*ROLES) + self.ffn

    def projections(self, *roles: str) -> list[Slot]:
        """The projections with these roles ('q', 'k', 'v', 'o') of every attention, attention by attention."""
        return [a[r] for a in self.attentions for r in roles if r in a]


def get(slot: Slot) -> nn.Module:
    """The module in a slot."""
    return getattr(slot[0], slot[1])


def _slots(parent: nn.Module, names: list[str]) -> list[Slot]:
    return [(parent, n) for n in names if isinstance(getattr(parent, n, None), nn.Module)]


def _roles(parent: nn.Module, names: list[str], o: Slot | None = None) -> dict[str, Slot]:
    """Role -> slot for an attention whose q, k, v, o projections are `names` on `parent` (`o` elsewhere)."""
    slots = dict(zip(ROLES, [(parent, n) for n in names]))
    if o is not None:
        slots["o"] = o
    return {r: slot for r, slot in slots.items() if isinstance(getattr(*slot, None), nn.Module)}


def _bert_layers(model: nn.Module) -> list[LayerSpec]:
    cfg = model.config
    heads = cfg.num_attention_heads
    out = []
    for i, layer in enumerate(model.base_model.encoder.layer):
        sa = layer.attention.self
        out.append(LayerSpec(
            index=i, stack="encoder", block=layer, self_attn=sa, num_kv_heads=heads,
            head_dim=cfg.hidden_size // heads,
            attentions=[_roles(sa, ["query", "key", "value"], o=(layer.attention.output, "dense"))],
            ffn=[(layer.intermediate, "dense"), (layer.output, "dense")],
            norms=[layer.attention.output.LayerNorm, layer.output.LayerNorm],
            parts=[layer.attention, layer.intermediate, layer.output],
        ))
    return out


def _bart_layers(model: nn.Module) -> list[LayerSpec]:
    base = model.base_model
    out = []
    stacks = [(s, getattr(base, s)) for s in ("encoder", "decoder") if getattr(base, s, None) is not None]
    for stack, module in stacks:
        for layer in module.layers:
            attns = [layer.self_attn] + ([layer.encoder_attn] if hasattr(layer, "encoder_attn") else [])
            norms = [layer.self_attn_layer_norm, layer.final_layer_norm]
            if hasattr(layer, "encoder_attn_layer_norm"):
                norms.insert(1, layer.encoder_attn_layer_norm)
            out.append(LayerSpec(
                index=len(out), stack=stack, block=layer, self_attn=layer.self_attn,
                num_kv_heads=layer.self_attn.num_heads, head_dim=layer.self_attn.head_dim,
                attentions=[_roles(a, ["q_proj", "k_proj", "v_proj", "out_proj"]) for a in attns],
                ffn=_slots(layer, ["fc1", "fc2"]),
                norms=norms,
            ))
    return out


def _t5_layers(model: nn.Module) -> list[LayerSpec]:
    base = model.base_model
    out = []
    stacks = [(s, getattr(base, s)) for s in ("encoder", "decoder") if getattr(base, s, None) is not None]
    for stack, module in stacks:
        for block in module.block:
            sa = block.layer[0].SelfAttention
            attns = [sa] + ([block.layer[1].EncDecAttention] if stack == "decoder" else [])
            ff = block.layer[-1].DenseReluDense
            out.append(LayerSpec(
                index=len(out), stack=stack, block=block, self_attn=sa,
                num_kv_heads=sa.n_heads, head_dim=sa.key_value_proj_dim,
                attentions=[_roles(a, ["q", "k", "v", "o"]) for a in attns],
                ffn=_slots(ff, ["wi", "wi_0", "wi_1", "wo"]),
                parts=list(block.layer),  # self-attention, cross-attention, feed-forward: each with its norm
            ))
    return out


def _llama_layers(model: nn.Module) -> list[LayerSpec]:
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    out = []
    for i, layer in enumerate(model.base_model.layers):
        sa = layer.self_attn
        out.append(LayerSpec(
            index=i, stack="decoder", block=layer, self_attn=sa,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads, head_dim=head_dim,
            attentions=[_roles(sa, ["q_proj", "k_proj", "v_proj", "o_proj"])],
            ffn=_slots(layer.mlp, ["gate_proj", "up_proj", "down_proj"]),
        ))
    return out


FAMILIES: dict[str, Callable[[nn.Module], list[LayerSpec]]] = {
    "bert": _bert_layers,
    "roberta": _bert_layers,
    "xlm-roberta": _bert_layers,
    "bart": _bart_layers,
    "mbart": _bart_layers,
    "t5": _t5_layers,
    "mt5": _t5_layers,
    "llama": _llama_layers,
    "mistral": _llama_layers,
    "qwen2": _llama_layers,
}


def layer_map(model: nn.Module) -> list[LayerSpec]:
    """The model's layers, encoder then decoder, as `LayerSpec`s."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(
            f"unsupported model family {model_type or type(model).__name__!r}; pdspace supports "
            f"{', '.join(sorted(FAMILIES))} (add a layer map in pdspace/peft/families.py for others)"
        )
    return FAMILIES[model_type](model)
