"""Shipping a found design: save_pretrained / from_pretrained, export to HF peft, pdspace-export for a run."""

import json

import pytest
import torch
from conftest import output_of, tiny, tiny_inputs
from peft import PeftModel

import pdspace
from pdspace import Design, apply_design, export_peft, from_pretrained, save_pretrained
from pdspace.archs import build_model
from pdspace.export import CONFIG_FILE, WEIGHTS_FILE, ExportError

# every strategy, non-default options (they must travel with the design)
FIVE = Design([1, 1, 1, 1], "increasing", None, ["AP", "PBI", "LI", "APBL"])
OPTIONS = {"lora_alpha": 16.0, "adapter_activation": "gelu", "prefix_init_std": 0.1}


def _perturb(model, scale=0.1):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("family", ["bert", "roberta", "t5", "bart", "llama"])
def test_save_load_round_trip_is_bit_identical(family, tmp_path):
    model = tiny(family)
    report = apply_design(model, FIVE, budget_fraction=0.05, **OPTIONS)
    _perturb(model)
    save_pretrained(model, tmp_path / "design", base_model=f"tiny-{family}")
    saved = json.loads((tmp_path / "design" / CONFIG_FILE).read_text())
    assert saved["options"]["lora_alpha"] == 16.0 and saved["options"]["adapter_activation"] == "gelu"
    assert (tmp_path / "design" / WEIGHTS_FILE).exists()
    card = (tmp_path / "design" / "README.md").read_text()
    assert str(FIVE) in card and "pdspace.from_pretrained" in card and f"base_model: tiny-{family}" in card

    fresh = from_pretrained(tiny(family), tmp_path / "design")
    loaded = fresh.pdspace_report
    assert [r.sizes for r in loaded.layers] == [r.sizes for r in report.layers]
    assert (loaded.design, loaded.trainable_params, loaded.target_params, loaded.budget_fraction) == \
        (FIVE, report.trainable_params, report.target_params, 0.05)
    batch = tiny_inputs(model)
    assert torch.equal(output_of(fresh, batch), output_of(model, batch))


def test_from_pretrained_refuses_another_layer_map_or_other_widths(tmp_path):
    model = tiny("bert")
    apply_design(model, FIVE, budget_fraction=0.05)
    save_pretrained(model, tmp_path)
    with pytest.raises(ExportError, match=r"saved from a bert backbone with \{'encoder': 4, 'decoder': 0\} layers; "
                                          r"this one is t5 with \{'encoder': 2, 'decoder': 2\}"):
        from_pretrained(tiny("t5"), tmp_path)
    wider = build_model("tiny-bert", "classification", num_labels=3, hidden_size=96, num_attention_heads=4)
    with pytest.raises(ExportError, match=r"layer 0 \(encoder\): the saved modules .* params, on this backbone .*: "
                                          "its widths differ"):
        from_pretrained(wider, tmp_path)
    assert not hasattr(wider, "pdspace_report")  # refused before anything was patched
    saved = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**saved, "options": {**saved["options"], "lora_gate": 1}}))
    with pytest.raises(ExportError, match=r"saved by pdspace 0.1.0: unknown strategy option\(s\) lora_gate"):
        from_pretrained(tiny("bert"), tmp_path)
    with pytest.raises(ExportError, match="holds no pdspace_config.json"):
        from_pretrained(tiny("bert"), tmp_path / "nowhere")


def _peft_loads_the_same(model, family, tmp_path):
    export_peft(model, tmp_path / "peft")
    ref = PeftModel.from_pretrained(tiny(family), str(tmp_path / "peft")).eval()
    batch = tiny_inputs(model)
    expected = output_of(model, batch)
    got = output_of(ref, batch)
    assert not torch.allclose(output_of(tiny(family), batch), expected, atol=1e-4)  # the trained tensors matter
    return (got - expected).abs().max().item()


@pytest.mark.parametrize("family", ["bert", "t5", "llama"])
def test_lora_design_exports_to_peft_with_per_layer_ranks(family, tmp_path):
    model = tiny(family)
    # increasing allocation: every layer its own rank (peft's rank_pattern), group 2 untuned
    report = apply_design(model, Design([1, 1, 1, 1], "increasing", "1011", ["L", "", "L", "L"]), budget_fraction=0.05,
                          lora_alpha=16.0, lora_rslora=True)
    assert len({r.sizes["L"] for r in report.layers if r.sizes}) == 3
    _perturb(model, 0.3)
    assert _peft_loads_the_same(model, family, tmp_path) <= 1e-5
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["use_rslora"] and len(cfg["rank_pattern"]) >= 1


@pytest.mark.parametrize("family", ["roberta", "bart"])
def test_ia3_design_exports_to_peft(family, tmp_path):
    model = tiny(family)
    apply_design(model, Design([1, 1, 1, 1], "uniform", "1101", ["I", "I", "", "I"]), budget_fraction=None)
    _perturb(model, 0.5)
    assert _peft_loads_the_same(model, family, tmp_path) <= 1e-5
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["peft_type"] == "IA3"


def test_ia3_on_keys_and_values_only_exports_to_peft(tmp_path):
    # ia3_feedforward=False: no feed-forward vector, and peft is told so (none of its default feed-forward modules)
    model = tiny("bart")
    apply_design(model, Design([1, 1, 1, 1], "uniform", "1101", ["I", "I", "", "I"]), budget_fraction=None,
                 ia3_feedforward=False)
    _perturb(model, 0.5)
    assert _peft_loads_the_same(model, "bart", tmp_path) <= 1e-5
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "IA3" and not cfg["feedforward_modules"]
    assert not any(name.endswith("fc2") for name in cfg["target_modules"])


def test_peft_export_names_the_groups_peft_cannot_express(tmp_path):
    model = tiny("bert")
    apply_design(model, Design([1, 1, 1, 1], "uniform", None, ["L", "AL", "LB", "P"]), budget_fraction=0.05)
    with pytest.raises(ExportError, match=r"peft cannot express Adapter in group\(s\) 2; BitFit in group\(s\) 3; "
                                          r"Prefix in group\(s\) 4; use pdspace.save_pretrained"):
        export_peft(model, tmp_path)
    mixed = tiny("bert")
    apply_design(mixed, Design([2, 2], "uniform", None, ["L", "I"]), budget_fraction=0.05)
    with pytest.raises(ExportError, match="a peft adapter holds one method, this design mixes LoRA and IA3"):
        export_peft(mixed, tmp_path)
    with pytest.raises(ExportError, match="carries no pdspace design"):
        export_peft(tiny("bert"), tmp_path)


# a large learning rate: the trained tensors must move far enough to tell a wrong export apart
FAST = ["task=synthetic_cls", "trainer.max_epochs=1", "task.max_train_samples=32", "task.max_eval_samples=16",
        "data.batch_size=16", "optimizer.lr=1e-2"]


@pytest.mark.parametrize("strategy, to_peft", [("strategy.choice=[AL,PI,APB,PBL]", False), ("strategy=lora", True)],
                         ids=["pdspace", "peft"])
def test_pdspace_export_ships_a_finished_runs_best_epoch(launch, tmp_path, capsys, strategy, to_peft):
    from pdspace.backbones import load_backbone
    from pdspace.export import main

    (result,) = launch("backbone=tiny-bert", strategy, "peft.lora_alpha=4", *FAST)
    assert result["status"] == "completed"
    run = tmp_path / "run"
    main([str(run), str(tmp_path / "out"), *(["--peft"] if to_peft else [])])
    assert f"saved {tmp_path / 'out'}" in capsys.readouterr().out

    # by hand: the run's backbone, its design and the best epoch's tensors
    def backbone():
        bb = result["config"]["backbone"]
        return load_backbone(bb["name"], arch=bb["arch"], tokenizer=bb["tokenizer"], num_labels=2, seed=0,
                             overrides=bb["overrides"], cache=False).model.eval()

    expected = backbone()
    apply_design(expected, Design.from_dict(result["design"]), result["budget_fraction"], lora_alpha=4)
    best = torch.load(run / "best_trainable.pt", weights_only=True)
    pdspace.load_trainable_state_dict(expected, best["state_dict"])
    if to_peft:
        shipped = PeftModel.from_pretrained(backbone(), str(tmp_path / "out")).eval()
    else:
        shipped = from_pretrained(backbone(), tmp_path / "out").eval()
        saved = json.loads((tmp_path / "out" / CONFIG_FILE).read_text())
        assert saved["training"]["epoch"] == best["epoch"] and saved["training"]["metrics"] == best["metrics"]
        assert f"epoch: {best['epoch']}" in (tmp_path / "out" / "README.md").read_text()
    batch = tiny_inputs(expected)
    torch.testing.assert_close(output_of(shipped, batch), output_of(expected, batch), atol=1e-5, rtol=0)


def test_pdspace_export_refuses_a_run_that_did_not_finish(launch, tmp_path):
    from pdspace.export import main

    launch("backbone=tiny-bert", "dry_run=true", *FAST)
    with pytest.raises(SystemExit, match=r"pdspace-export: error: .* is dry_run; export needs a completed PEFT run"):
        main([str(tmp_path / "run"), str(tmp_path / "out")])



def test_the_console_script_says_one_line_for_a_pretrained_backbone(launch, tmp_path, capfd):
    """Re-loading a pretrained backbone prints transformers' load report (the head "MISSING ... consider training")
    and a progress bar unless the console script quiets them, as pdspace-train does."""
    import transformers

    from pdspace.backbones import clear_cache
    from pdspace.export import main

    (result,) = launch("backbone=minilm", "strategy=lora", "task=synthetic_cls", "trainer.max_epochs=1",
                       "task.max_train_samples=8", "task.max_eval_samples=8", "data.batch_size=8")
    assert result["status"] == "completed"
    verbosity, bars = transformers.logging.get_verbosity(), transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_warning()  # as in a fresh process
    transformers.utils.logging.enable_progress_bar()
    clear_cache()  # export loads the backbone anew, as in its own process
    capfd.readouterr()
    try:
        main([str(tmp_path / "run"), str(tmp_path / "out"), "--peft"])
    finally:
        transformers.logging.set_verbosity(verbosity)
        (transformers.utils.logging.enable_progress_bar if bars else transformers.utils.logging.disable_progress_bar)()
    captured = capfd.readouterr()
    assert (captured.out + captured.err).strip() == f"saved {tmp_path / 'out'}"
