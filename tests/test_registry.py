"""Strategies as plug-ins: the registry moves A/P/B/L without changing a single size or count."""

import pytest

from pdspace import Design, apply_design, named_design
from pdspace.archs import build_model
from pdspace.peft import layer_map

ARCHS = [("t5-base", "seq2seq"), ("roberta-base", "base"), ("bart-base", "seq2seq")]

# Pinned before the registry existed (commit 8fcde87): per backbone, (backbone, target, trainable) params of the
# S4 design at 0.5 %, its per-layer sizes, the same for S4-3b with increasing allocation and group 3 untuned,
# and the trainable count of S4 at fixed sizes.
PINNED = {
    "t5-base": (
        (222_903_552, 1_114_518, 1_113_867),
        "A14L8 A15L7 A15L7 A15L7 A15P15 A15P15 A15P15 A15P15 A15P15 A15P15 A15P15 A15P15 A11P12B1 A11P12B1 "
        "A11P12B1 A11P12B1 A11P12B1 A11P12B1 A11P12B1 A11P12B1 P12B1L3 P12B1L3 P12B1L3 P12B1L3",
        (222_903_552, 1_114_518, 1_113_917),
        "P3L1 P5L3 P8L4 P11L5 A13L7 A16L8 A18L9 A21L11 A23L12 A26L13 A29L15 A31L16 - - - - - - - - "
        "A31P31B1 A34P34B1 A36P37B1 A39P39B1",
        682_144,
    ),
    "roberta-base": (
        (124_645_632, 623_228, 623_768),
        "A16L9 A16L9 A16P17 A16P17 A16P17 A16P17 A14P14B1 A14P14B1 A14P14B1 A14P14B1 P14B1L7 P14B1L7",
        (124_645_632, 623_228, 623_794),
        "P6L3 P11L6 A17L8 A22L11 A28L14 A33L17 - - - - A36P37B1 A42P42B1",
        307_280,
    ),
    "bart-base": (
        (139_420_416, 697_102, 697_509),
        "A18L10 A18L9 A18P19 A18P19 A18P19 A18P19 A15P15B1 A14P15B1 A14P15B1 A14P15B1 P15B1L4 P15B1L4",
        (139_420_416, 697_102, 697_541),
        "P6L3 P13L6 A18L9 A25L13 A31L16 A37L19 - - - - A40P40B1 A46P47B1",
        354_896,
    ),
}
FIXED = {"lora_rank": 4, "adapter_dim": 8, "prefix_len": 5}


def _solved(arch, head, design=None, **kwargs):
    model = build_model(arch, head, device="meta")
    design = design or named_design("s4-model", len(layer_map(model)))
    report = apply_design(model, design, **kwargs)
    sizes = " ".join("".join(f"{k}{v}" for k, v in row.sizes.items()) or "-" for row in report.layers)
    return (report.backbone_params, report.target_params, report.trainable_params), sizes, report


@pytest.mark.parametrize("arch, head", ARCHS)
def test_s4_sizes_and_counts_are_pinned_across_the_registry_move(arch, head):
    counts, sizes, report = _solved(arch, head)
    s4_counts, s4_sizes, s4b_counts, s4b_sizes, fixed = PINNED[arch]
    assert (counts, sizes) == (s4_counts, s4_sizes)
    n = len(report.layers)
    s4b = named_design("s4-3b-model", n)
    assert _solved(arch, head, Design(s4b.groups, "increasing", "1101", s4b.strategies))[:2] == (s4b_counts, s4b_sizes)
    assert _solved(arch, head, sizes=FIXED)[0][2] == fixed

# Pinned with the S4-like four-strategy design at commit 8fcde87: the trainable tensors' names and shapes (a
# checkpoint's keys) and, after `torch.manual_seed(0)`, the sum of their absolute initial values (the order in
# which modules draw from the generator).
PINNED_INIT = {"bert": ("2ef1b0aaaef10129", 252.462356), "t5": ("a3f86d0b26ae2455", 260.96219),
               "llama": ("bf2abb6ce83ad7a8", 352.273386)}


@pytest.mark.parametrize("family", sorted(PINNED_INIT))
def test_checkpoint_keys_and_seeded_initialisation_are_pinned(family):
    import hashlib

    import torch
    from conftest import tiny

    model = tiny(family)
    torch.manual_seed(0)
    apply_design(model, Design([1, 1, 1, 1], "increasing", None, ["AP", "PB", "L", "APBL"]), budget_fraction=0.05)
    items = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    total = sum(float(p.detach().double().abs().sum()) for n, p in model.named_parameters() if p.requires_grad)
    assert (hashlib.sha256(repr(items).encode()).hexdigest()[:16], round(total, 6)) == PINNED_INIT[family]


# ---------------------------------------------------------------------------------------------
# the registry


def test_registry_holds_the_five_strategies_in_canonical_order():
    from pdspace.design.space import ALL_STRATEGY_SETS, strategy_sets
    from pdspace.peft import option_defaults, strategies

    registry = strategies()
    assert list(registry) == ["A", "P", "B", "L", "I"]
    assert {k: (s.name, s.size_name) for k, s in registry.items()} == {
        "A": ("adapter", "adapter_dim"), "P": ("prefix", "prefix_len"), "B": ("bitfit", None),
        "L": ("lora", "lora_rank"), "I": ("ia3", None)}
    # the shipped options and their defaults
    assert option_defaults() == {"adapter_activation": "relu", "adapter_placement": "ffn", "prefix_init_std": 0.02,
                                 "prefix_reparam_dim": 0, "lora_alpha": 8.0, "lora_rslora": False, "lora_dropout": 0.0,
                                 "ia3_feedforward": True}
    assert strategy_sets() == ALL_STRATEGY_SETS and len(ALL_STRATEGY_SETS) == 15
    assert len(strategy_sets("APBLI")) == 31 and strategy_sets("IL") == ("L", "I", "LI")


def test_options_are_checked_by_the_strategy_that_owns_them():
    model = build_model("t5-base", "seq2seq", device="meta")
    design = named_design("s4-model", 24)
    with pytest.raises(TypeError, match=r"unknown strategy option.s. lora_rank \(lora_rank: a size, given as "
                                        r"sizes=\{'lora_rank': ...\}\); the registered strategies take "
                                        "adapter_activation, adapter_placement, ia3_feedforward, lora_alpha"):
        apply_design(model, design, lora_rank=8)
    with pytest.raises(ValueError, match="adapter_activation='tanh'; use one of relu, gelu, silu"):
        apply_design(model, design, adapter_activation="tanh")


def test_a_strategy_letter_must_be_free():
    from dataclasses import dataclass

    from pdspace.peft.strategies import Strategy, register
    from pdspace.peft.strategies.bitfit import apply_bitfit, bitfit_cost

    with pytest.raises(ValueError, match="strategy letter 'L' is taken by lora; choose another letter"):
        register(Strategy("L", "lowrank2", "LoRA 2", None, bitfit_cost, apply_bitfit))
    with pytest.raises(ValueError, match="names and size names must be unique"):
        register(Strategy("Q", "lora", "LoRA 2", None, bitfit_cost, apply_bitfit))
    with pytest.raises(ValueError, match="one upper-case letter"):
        register(Strategy("qq", "qq", "QQ", None, bitfit_cost, apply_bitfit))

    @dataclass(frozen=True)
    class HeadOptions:
        head: bool = False

    with pytest.raises(ValueError, match="option key.s. train_head are taken by apply_design and the peft: config"):
        Strategy("T", "train", "T", None, bitfit_cost, apply_bitfit, HeadOptions)


@pytest.fixture
def unregister_after():
    """Letters a test registers, unregistered again after it (the peft: schema follows)."""
    from pdspace.design.registry import strategies, unregister

    letters: list[str] = []
    yield letters
    for letter in letters:
        if letter in strategies():
            unregister(letter)


def test_a_new_strategy_is_one_registration(unregister_after):
    """A plug-in outside pdspace: LoRA on the attention output projection, letter O, option `olora_alpha`."""
    from dataclasses import dataclass

    import pdspace.config  # noqa: F401  (the peft: schema is built and stored before O registers)
    from pdspace.design import DesignSpace, StrategyCost
    from pdspace.peft.families import get
    from pdspace.peft.strategies import LoraLinear, Strategy, register

    @dataclass(frozen=True)
    class OOptions:
        alpha: float = 8.0

    def cost(layer, options):
        return StrategyCost(unit=sum(get(s).in_features + get(s).out_features for s in layer.projections("o")))

    def attach(layer, rank, options):
        params = []
        for parent, name in layer.projections("o"):
            wrapped = LoraLinear(getattr(parent, name), rank, options.alpha)
            setattr(parent, name, wrapped)
            params += [wrapped.lora_A, wrapped.lora_B]
        return params

    unregister_after.append("O")
    register(Strategy("O", "olora", "O-LoRA", "olora_rank", cost, attach, OOptions))
    # designs, ids, spaces, the solver, apply_design, the dry-run table and the options all know it
    design = Design([6, 6, 6, 6], "uniform", None, ["OA", "O", "IO", "L"])
    assert str(design) == "g6-6-6-6.alloc-uniform.tune-1111.A+O|O|I+O|L"
    assert any("O" in d.strategies[0] for d in DesignSpace(24, 4, letters="LO").sample(5))
    model = build_model("t5-base", "seq2seq", device="meta")
    report = apply_design(model, design, olora_alpha=2.0)
    assert report.layers[6].sizes.keys() == {"O"} and report.budget_ratio == pytest.approx(1, abs=0.01)
    assert "olora_rank=" in report.table() and report.options["olora_alpha"] == 2.0
    # encoder layers 0-11 have one attention, decoder layers 12-17 two: every o projection of groups 1-3
    assert sum(isinstance(m, LoraLinear) and m.alpha == 2.0 for m in model.modules()) == 12 + 6 * 2
    # registered after pdspace.config built the peft: schema, it is in the schema all the same
    cfg = _compose("peft.olora_alpha=2.5", "peft.sizes.olora_rank=4")
    assert (cfg.peft.olora_alpha, cfg.peft.sizes.olora_rank, cfg.peft.lora_alpha) == (2.5, 4, 8.0)


def test_an_unregistered_strategy_leaves_the_peft_block(unregister_after):
    from pdspace.design.registry import unregister
    from pdspace.peft.strategies import Strategy, register
    from pdspace.peft.strategies.lora import LoraOptions, attach_lora, lora_cost

    unregister_after.append("Q")
    register(Strategy("Q", "qlora", "Q-LoRA", "qlora_rank", lora_cost, attach_lora, LoraOptions))
    assert "qlora_alpha" in _compose().peft and "qlora_rank" in _compose().peft.sizes
    unregister("Q")
    assert "qlora_alpha" not in _compose().peft and "qlora_rank" not in _compose().peft.sizes
    with pytest.raises(KeyError, match="no strategy is registered as 'Q'"):
        unregister("Q")


def _compose(*overrides):
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import pdspace.config  # noqa: F401  (stores the schema train.yaml names first)

    conf = Path(__file__).resolve().parents[1] / "conf"
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            return compose("train", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def test_the_peft_block_is_the_registry():
    """The schema's keys, types and defaults are the registered strategies' options and sizes, read off here."""
    import dataclasses

    from pdspace import config
    from pdspace.config import plain
    from pdspace.peft import strategies

    registry = strategies().values()
    options = {f"{s.name}_{f.name}": f.default for s in registry for f in dataclasses.fields(s.options)}
    sizes = {s.size_name: None for s in registry if s.size_name}
    assert list(sizes) == ["adapter_dim", "prefix_len", "lora_rank"] and len(options) == 8
    # what `pdspace-train --cfg job` shows: every option with its default, though train.yaml states none of them
    assert plain(_compose().peft) == {"full_finetune": False, "sizes": sizes, "train_head": True, **options}
    assert list(config.PeftConf.__dataclass_fields__) == ["full_finetune", "sizes", "train_head", *options]
    assert list(config.SizesConf.__dataclass_fields__) == list(sizes)
    assert config.TYPED_BLOCKS["peft"] is config.PeftConf
    hints = {f.name: f.type for f in dataclasses.fields(config.PeftConf)}
    assert {k: hints[k] for k in ("lora_alpha", "lora_rslora", "adapter_activation", "prefix_reparam_dim",
                                  "ia3_feedforward")} == {"lora_alpha": float, "lora_rslora": bool,
                                                          "adapter_activation": str, "prefix_reparam_dim": int,
                                                          "ia3_feedforward": bool}


def test_an_ia3_option_is_a_peft_key_that_reaches_its_modules(launch):
    """IA3's `feedforward` option, stated only in ia3.py: set from the command line, it reaches the modules."""
    from pdspace.peft import IA3Linear

    def tiny(_):  # the backbone tiny-bert: 6 layers
        return build_model("tiny-bert", "classification", num_hidden_layers=6)

    design = Design([1, 2, 2, 1], "uniform", None, ["I"] * 4)
    (r,) = launch("backbone=tiny-bert", "dry_run=true", "strategy.choice=[I,I,I,I]", "grouping.choice=[1,2,2,1]",
                  "peft.ia3_feedforward=false")
    assert r["config"]["peft"]["ia3_feedforward"] is False and r["design_id"] == str(design)
    kv_only, full = tiny("bert"), tiny("bert")
    report = apply_design(kv_only, design, None, ia3_feedforward=False)  # natural size: IA3's own count
    assert r["params"]["trainable_params"] == report.trainable_params
    assert report.trainable_params < apply_design(full, design, None).trainable_params
    modules = [m for m in kv_only.modules() if isinstance(m, IA3Linear)]
    assert len(modules) == 2 * 6 and not any(m.feedforward for m in modules)  # k and v of each of the 6 layers
    assert sum(isinstance(m, IA3Linear) and m.feedforward for m in full.modules()) == 6
    with pytest.raises(ValueError, match="ia3_feedforward='no'; use true or false"):
        apply_design(tiny("bert"), design, None, ia3_feedforward="no")
    for override in ("peft.ia3_x=1", "+peft.ia3_x=1"):  # an unknown key: one line, naming the known ones
        with pytest.raises(SystemExit) as exit_:
            launch("backbone=tiny-bert", "dry_run=true", override)
        text = str(exit_.value.code)
        assert text.startswith("pdspace-train: error: peft.ia3_x: Key 'ia3_x' not in 'PeftConf'; known keys") \
            and "ia3_feedforward" in text and "\n" not in text, text


def test_ia3_is_a_fixed_size_strategy_the_solver_and_table_know():
    from pdspace.peft.patch import layer_costs

    model = build_model("t5-base", "seq2seq", device="meta")
    costs = layer_costs(layer_map(model)[12])  # a decoder layer: self- and cross-attention
    assert (costs["I"].fixed, costs["I"].unit) == (4 * 768 + 3072, 0)
    report = apply_design(model, Design([6, 6, 6, 6], strategies=["I"] * 4))
    assert report.trainable_params == 12 * (2 * 768 + 3072) + 12 * (4 * 768 + 3072)
    assert "trainable 0.058% is below the 0.500% budget: IA3 modules have a fixed size" in report.table()
    mixed = apply_design(build_model("t5-base", "seq2seq", device="meta"), Design([6, 6, 6, 6], strategies=["LI"] * 4))
    assert mixed.budget_ratio == pytest.approx(1, abs=0.005)  # LoRA spends what IA3 leaves
    assert "lora_rank=" in mixed.table() and ", ia3" in mixed.table()


@pytest.mark.parametrize("space, letters", [("S0", "APBL"), ("S4", "APBL"), ("S0_ia3", "APBLI")])
def test_the_shipped_spaces_name_their_letters(space, letters):
    from pdspace.config import plain
    from pdspace.config import register as register_schema
    from pdspace.design import DesignSpace

    register_schema()
    cfg = _compose(f"space={space}")
    assert cfg.space.letters == letters
    # what the sweep's plan builds from the block (pdspace.search.plans passes `letters` on)
    sampled = DesignSpace(24, 4, strategies=plain(cfg.space.strategy),
                          letters=cfg.space.letters).sample(100, seed=0)
    assert any("I" in s for d in sampled for s in d.strategies) == ("I" in letters)


def test_a_result_written_before_an_option_existed_keeps_its_fingerprint():
    import copy

    from pdspace.config import differing_keys, fingerprint, plain

    new = plain(_compose("backbone=tiny-bert"))
    old = copy.deepcopy(new)
    del old["peft"]["ia3_feedforward"]  # what a result.json written before IA3 had options holds
    assert fingerprint(old) == fingerprint(new) and differing_keys(old, new) == []
    changed = copy.deepcopy(new)
    changed["peft"]["ia3_feedforward"] = False
    assert fingerprint(changed) != fingerprint(new)
    assert differing_keys(old, changed) == ["peft.ia3_feedforward (True -> False)"]
