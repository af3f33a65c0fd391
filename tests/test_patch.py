import copy

import pytest
import torch
from conftest import FAMILY_MODELS, output_of, tiny, tiny_inputs

import pdspace
from pdspace import Design, apply_design, load_trainable_state_dict, merge_lora, trainable_state_dict
from pdspace.archs import build_model
from pdspace.peft import AdapterLinear, IA3Linear, LoraLinear, PrefixKV, layer_map, unmerge_lora

NO_PREFIX = Design([1, 1, 1, 1], "uniform", None, ["AL", "B", "LB", "A"])
ALL_FOUR = Design([1, 1, 1, 1], "increasing", None, ["AP", "PB", "L", "APBL"])


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_every_family_has_four_tiny_layers(family):
    assert len(layer_map(tiny(family))) == 4


def test_fresh_patch_without_prefix_is_exactly_the_backbone(family):
    base = tiny(family)
    batch = tiny_inputs(base)
    patched = copy.deepcopy(base)
    report = apply_design(patched, NO_PREFIX, budget_fraction=0.05)
    with torch.no_grad():
        torch.testing.assert_close(output_of(patched, batch), output_of(base, batch), atol=1e-6, rtol=0)
    assert any(isinstance(m, LoraLinear) for m in patched.modules())
    assert any(isinstance(m, AdapterLinear) for m in patched.modules())
    assert report.trainable_params == sum(p.numel() for n, p in patched.named_parameters()
                                          if p.requires_grad and not n.startswith(("classifier", "score")))


def test_trainable_count_matches_report(family):
    model = tiny(family)
    report = apply_design(model, ALL_FOUR, budget_fraction=0.05)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == report.trainable_params + report.head_params
    assert sum(r.params for r in report.layers) == report.trainable_params
    assert report.fraction == pytest.approx(0.05, rel=0.02)
    assert [r.group for r in report.layers] == [0, 1, 2, 3]
    assert report.layers[3].sizes.keys() == {"A", "P", "B", "L"}


def test_one_step_changes_exactly_the_trainable_tensors_and_grads_reach_all(family):
    model = tiny(family)
    apply_design(model, ALL_FOUR, budget_fraction=0.05)
    trainable = trainable_names(model)
    # zero-initialised halves (LoRA B, adapter up) would block the other halves' gradient: perturb first
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    output_of(model, tiny_inputs(model)).float().pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in trainable), \
        [n for n in trainable if grads[n] is None or grads[n].abs().sum() == 0]
    assert all(grads[n] is None for n in grads if n not in trainable)
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable


def test_trainable_state_dict_round_trip(family):
    model = tiny(family)
    apply_design(model, ALL_FOUR, budget_fraction=0.05)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    state = trainable_state_dict(model)
    assert set(state) == trainable_names(model)
    fresh = tiny(family)
    apply_design(fresh, ALL_FOUR, budget_fraction=0.05)
    load_trainable_state_dict(fresh, state)
    batch = tiny_inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(output_of(fresh, batch), output_of(model, batch))
    with pytest.raises(ValueError, match="checkpoint does not match the patched model"):
        load_trainable_state_dict(fresh, {"nope": torch.zeros(1)})


def test_lora_merge_keeps_outputs(family):
    model = tiny(family)
    apply_design(model, Design([1, 1, 1, 1], "uniform", None, ["L", "AL", "L", "LB"]), budget_fraction=0.05)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoraLinear):
                m.lora_B.normal_(0, 0.1)
    batch = tiny_inputs(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer.weight" in n}
    with torch.no_grad():
        expected = output_of(model, batch)
        assert merge_lora(model) == sum(isinstance(m, LoraLinear) for m in model.modules())
        torch.testing.assert_close(output_of(model, batch), expected, atol=1e-5, rtol=1e-4)
        assert unmerge_lora(model) > 0
    for n, p in model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p, weights[n], atol=1e-6, rtol=0)


def test_prefix_runs_on_some_t5_layers_in_both_stacks_and_generates():
    model = tiny("t5")
    design = Design([1, 1, 1, 1], "uniform", "0110", ["", "P", "P", ""])  # encoder layer 1, decoder layer 0
    apply_design(model, design, sizes={"prefix_len": 3})
    prefixed = [n for n, m in model.named_modules() if isinstance(m, PrefixKV)]
    assert prefixed == ["encoder.block.1.layer.0.SelfAttention.pdspace_prefix",
                        "decoder.block.0.layer.0.SelfAttention.pdspace_prefix"]
    batch = tiny_inputs(model)
    with torch.no_grad():
        logits = output_of(model, batch)
        assert logits.shape == (2, 5, model.config.vocab_size) and torch.isfinite(logits).all()
        # incremental decoding (cache, one query at a time) must agree with the full forward pass
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=out.sequences[:, :-1]).logits
        torch.testing.assert_close(torch.stack(out.scores, 1), full[:, -len(out.scores):], atol=1e-5, rtol=1e-4)


def test_unsupported_family_is_a_clear_error():
    from transformers import GPT2Config, GPT2Model
    model = GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="unsupported model family 'gpt2'; pdspace supports"):
        apply_design(model, Design([1, 1], strategies=["L", "L"]))


def test_design_must_fit_the_layer_count():
    model = tiny("bart")
    with pytest.raises(ValueError, match=r"covers 5 layers but BartForConditionalGeneration has 4 "
                                         r"\(2 encoder \+ 2 decoder\); use groups summing to 4"):
        apply_design(model, Design([1, 1, 1, 2], strategies=["L"] * 4))


def test_patching_twice_is_refused():
    model = tiny("bert")
    apply_design(model, NO_PREFIX, budget_fraction=0.05)
    with pytest.raises(ValueError, match="already patched"):
        apply_design(model, NO_PREFIX, budget_fraction=0.05)


def test_unreachable_budget_on_a_real_model_is_a_value_error():
    model = tiny("bert")
    with pytest.raises(ValueError, match=r"group 1 \(layers 0-0\)"):
        apply_design(model, Design([1, 1, 1, 1], strategies=["AL", "A", "L", "A"]), budget_fraction=0.0005)


def test_meta_device_patching_keeps_new_modules_on_meta():
    model = build_model("t5-base", "seq2seq", device="meta")
    apply_design(model, Design([6, 6, 6, 6], strategies=["APBL"] * 4))
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_task_head_counted_apart():
    model = tiny("roberta")
    report = apply_design(model, NO_PREFIX, budget_fraction=0.05)
    head = sum(p.numel() for p in model.classifier.parameters())
    assert report.head_params == head > 0
    assert all(p.requires_grad for p in model.classifier.parameters())
    assert set(FAMILY_MODELS) >= {"bert", "roberta", "t5", "bart", "llama"}


def test_bitfit_only_design_says_it_is_below_the_budget():
    model = build_model("t5-base", "seq2seq", device="meta")
    report = apply_design(model, Design([6, 6, 6, 6], strategies=["B"] * 4), budget_fraction=0.005)
    # T5 has no biases: BitFit adds zero biases to every projection, 202,752 params of the 1,114,518 budget
    assert report.trainable_params == 202_752 and report.target_params == 1_114_518
    lines = report.table().splitlines()
    assert "trainable 0.091% is below the 0.500% budget: BitFit modules have a fixed size" in lines
    d = report.to_dict()
    assert d["below_budget"] is True and d["fixed_size"] is True
    assert d["budget_ratio"] == pytest.approx(202_752 / 1_114_518)
    # natural size (budget_fraction=None): nothing to be below, but the table still says why the count is small
    natural = apply_design(build_model("t5-base", "seq2seq", device="meta"), Design([6, 6, 6, 6], strategies=["B"] * 4),
                           budget_fraction=None)
    assert natural.to_dict()["below_budget"] is False and natural.to_dict()["budget_ratio"] == 1.0
    assert "trainable 0.091% is BitFit's natural size (budget_fraction=null" in natural.table()


def test_sized_design_on_target_has_no_budget_line():
    report = apply_design(build_model("t5-base", "seq2seq", device="meta"), Design([6, 6, 6, 6], strategies=["BL"] * 4))
    d = report.to_dict()
    assert d["below_budget"] is False and d["fixed_size"] is False and d["budget_ratio"] == pytest.approx(1, abs=0.005)
    assert "is below the" not in report.table() and "natural size" not in report.table()


def test_merge_folds_lora_and_ia3_keeps_the_rest_and_says_how_far_outputs_moved(family):
    # LoRA and IA3 on the same v projections (group 2), IA3 with an adapter on the FFN output (group 3)
    model = tiny(family)
    apply_design(model, Design([1, 1, 1, 1], "uniform", None, ["L", "LI", "AIB", "P"]), budget_fraction=0.05)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    batch = tiny_inputs(model)
    expected = output_of(model, batch)
    report = pdspace.merge(model, batch)
    lora = sum(isinstance(m, LoraLinear) for m in model.modules())
    ia3 = sum(isinstance(m, IA3Linear) for m in model.modules())
    assert report.merged == {"L": lora, "I": ia3} and report.kept == {"A": 1, "P": 1}
    # fp32 rounding of reordered sums: < 3e-6 on outputs of order 1-5; tiny mT5's logits reach 40
    scale = max(1.0, expected.abs().max().item())
    assert report.max_abs_diff <= 1e-5 * scale
    assert f"max |merged - unmerged| = {report.max_abs_diff:.3g}" in str(report)
    torch.testing.assert_close(output_of(model, batch), expected, atol=1e-5 * scale, rtol=0)
    assert pdspace.unmerge(model) == lora + ia3
    for n, p in model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p, weights[n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output_of(model, batch), expected, atol=1e-5 * scale, rtol=0)


def test_ia3_stays_unmerged_where_folding_it_would_not_be_exact():
    # an output rescaling around an adapter (not a placement pdspace uses) is no rescaling of a weight
    lin = torch.nn.Linear(4, 4)
    ia3 = IA3Linear(AdapterLinear(lin, 2), feedforward=False)
    assert ia3.merge() is False and not ia3.merged
    # an input rescaling around it is: the adapter reads only the projection's output
    assert IA3Linear(AdapterLinear(torch.nn.Linear(4, 4), 2), feedforward=True).merge() is True


def test_houlsby_placement_adds_the_attention_adapter():
    model = tiny("bert")
    default = apply_design(tiny("bert"), Design([1, 1, 1, 1], strategies=["A"] * 4), sizes={"adapter_dim": 4})
    report = apply_design(model, Design([1, 1, 1, 1], strategies=["A"] * 4), sizes={"adapter_dim": 4},
                          adapter_placement="attn_ffn")
    assert report.trainable_params == 2 * default.trainable_params == 4 * 2 * (4 * (2 * 64 + 1) + 64)
    attn_out = model.bert.encoder.layer[0].attention.output  # dense -> adapter -> dropout -> LayerNorm(h + input)
    assert isinstance(attn_out.dense, AdapterLinear)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        a = attn_out.dense
        for p in (*a.down.parameters(), *a.up.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        h, x = torch.randn(2, 5, 64, generator=g), torch.randn(2, 5, 64, generator=g)
        dense = h @ a.base_layer.weight.T + a.base_layer.bias
        expected = attn_out.LayerNorm(dense + a.up(torch.relu(a.down(dense))) + x)
        torch.testing.assert_close(attn_out(h, x), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="adapter_placement='pfeiffer'; use one of ffn, attn_ffn"):
        apply_design(tiny("bert"), NO_PREFIX, adapter_placement="pfeiffer")


def test_reparameterised_prefix_is_an_mlp_of_embeddings_counted_in_the_budget(family):
    model = tiny(family)
    layers = layer_map(model)
    design = Design([1, 1, 1, 1], "uniform", None, ["P"] * 4)
    report = apply_design(model, design, budget_fraction=0.2, prefix_reparam_dim=8)
    assert report.trainable_params == sum(p.numel() for n, p in model.named_parameters()
                                          if p.requires_grad and "pdspace_prefix" in n)
    assert report.budget_ratio == pytest.approx(1, abs=0.05) and report.layers[0].sizes["P"] >= 1
    # the same keys and values as flat vectors give the same outputs
    flat = tiny(family)
    apply_design(flat, design, sizes=[row.sizes for row in report.layers])
    with torch.no_grad():
        for ours, theirs in zip(layers, layer_map(flat)):
            key, value = ours.self_attn.pdspace_prefix.key_value()
            theirs.self_attn.pdspace_prefix.key.copy_(key)
            theirs.self_attn.pdspace_prefix.value.copy_(value)
    batch = tiny_inputs(model)
    torch.testing.assert_close(output_of(model, batch), output_of(flat, batch), atol=1e-6, rtol=0)
    output_of(model, batch).float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if "pdspace_prefix" in n)


def test_loading_tensors_of_another_width_names_them():
    model = tiny("bert")
    apply_design(model, NO_PREFIX, sizes={"lora_rank": 2, "adapter_dim": 4})
    other = tiny("bert")
    apply_design(other, NO_PREFIX, sizes={"lora_rank": 3, "adapter_dim": 4})
    with pytest.raises(ValueError, match=r"checkpoint tensors do not fit the patched model \(checkpoint vs model\): "
                                         r"\['bert.encoder.layer.0.attention.self.query.lora_A \(3, 64\) vs \(2, 64\)"):
        load_trainable_state_dict(model, trainable_state_dict(other))
