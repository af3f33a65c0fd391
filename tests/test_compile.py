"""torch.compile of patched models (`train.compile=true`): equal to eager, one graph per job, no recompiles.

Both scopes: `model` (the whole forward, one graph per layout) and `regional` (each transformer
block; blocks of one layout share a graph across layers, module sizes and designs). The fast
tests compile with dynamo's `eager` / `aot_eager` backends (the graph capture, the guards and
the autograd graph are inductor's; only the kernels differ); the `slow` ones with inductor, as
training does.
"""

from __future__ import annotations

import copy
import functools
import pickle

import lightning as L
import pytest
import torch
from conftest import FAMILY_MODELS

from pdspace.archs import build_model
from pdspace.compile import CompiledModel
from pdspace.design.space import Design, named_design
from pdspace.module import PEFTModule
from pdspace.peft.families import layer_map
from pdspace.peft.patch import apply_design

# 6 layers (so the paper's S4 design, which mixes all four strategies, fits) and no dropout (so eager and compiled
# draw no random numbers and must agree)
SIX_LAYERS_NO_DROPOUT = {
    "bert": {"num_hidden_layers": 6, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "roberta": {"num_hidden_layers": 6, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "t5": {"num_layers": 3, "num_decoder_layers": 3, "dropout_rate": 0.0},
    "mt5": {"num_layers": 3, "num_decoder_layers": 3, "dropout_rate": 0.0},
    "bart": {"encoder_layers": 3, "decoder_layers": 3, "dropout": 0.0, "attention_dropout": 0.0,
             "activation_dropout": 0.0},
    "mbart": {"encoder_layers": 3, "decoder_layers": 3, "dropout": 0.0, "attention_dropout": 0.0,
              "activation_dropout": 0.0},
    "llama": {"num_hidden_layers": 6, "attention_dropout": 0.0},
}


def patched(family: str, design: str = "s4-model", budget: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """A tiny 6-layer model of `family` without dropout, patched with `design`, in training mode."""
    arch, head = FAMILY_MODELS[family]
    kwargs = {"num_labels": 3} if head == "classification" else {}
    model = build_model(arch, head, seed=seed, **kwargs, **SIX_LAYERS_NO_DROPOUT[family])
    apply_design(model, named_design(design, len(layer_map(model))), budget)
    return model.train()


def batch(model: torch.nn.Module, size: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """A training batch padded to `length` (its last row shorter), with labels for the model's head."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (size, length), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, length // 2:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if model.config.is_encoder_decoder:
        out["labels"] = torch.randint(3, model.config.vocab_size, (size, 3 + seed % 3), generator=g)
    elif type(model).__name__.endswith("ForCausalLM"):
        out["labels"] = ids.masked_fill(mask == 0, -100)
    else:
        out["labels"] = torch.randint(0, 3, (size,), generator=g)
    return out


# batch sizes and lengths change from step to step, as batches padded to their longest sequence do
SHAPES = [(3, 7), (3, 11), (2, 9)]


def _train_side_by_side(family: str, backend: str, atol: float, scope: str = "model",
                        design: str = "s4-model") -> CompiledModel:
    eager = patched(family, design)
    twin = copy.deepcopy(eager)
    compiled = CompiledModel(twin, backend=backend, scope=scope)
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2) for m in (eager, twin)]
    for i, (size, length) in enumerate(SHAPES):
        b = batch(eager, size, length, i)
        loss_e = eager(**b).loss
        loss_c = compiled(**{k: v.clone() for k, v in b.items()}).loss
        torch.testing.assert_close(loss_c, loss_e, atol=atol, rtol=1e-4)
        loss_e.backward()
        loss_c.backward()
        grads_c = {n: p.grad for n, p in twin.named_parameters() if p.requires_grad}
        for n, p in eager.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(grads_c[n], p.grad, atol=atol, rtol=1e-3, msg=f"{family} {n} step {i}")
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
    eager.eval(), twin.eval()
    with torch.no_grad():
        for i, (size, length) in enumerate(SHAPES[:2]):
            b = batch(eager, size, length, 10 + i)
            out_e, out_c = eager(**b), compiled(**b)
            torch.testing.assert_close(out_c.logits, out_e.logits, atol=atol, rtol=1e-4)
    return compiled


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_compiled_steps_equal_eager_and_never_recompile(family, backend):
    """Loss, gradients and eval logits equal eager over steps of different shapes, on every family, with the S4 design
    (adapter, prefix, LoRA and BitFit); one graph for training and one for evaluation, never a recompile."""
    stats = _train_side_by_side(family, backend, atol=1e-5 if backend == "aot_eager" else 1e-4).stats()
    assert stats["recompiles"] == 0 and stats["failed"] == 0, stats["reasons"]
    assert stats["by_context"] == {"train": 1, "eval": 1}
    assert stats["calls"] == {"train": 3, "eval": 2}


def _job(base: torch.nn.Module, design: str, budget: float, per_layout: bool = True) -> dict:
    model = copy.deepcopy(base)
    apply_design(model, named_design(design, len(layer_map(model))), budget)
    compiled = CompiledModel(model.train(), backend="eager", per_layout=per_layout, dynamic=per_layout, scope="model")
    for i, (size, length) in enumerate(SHAPES):
        compiled(**batch(model, size, length, i)).loss.backward()
    model.eval()
    with torch.no_grad():
        compiled(**batch(model, 2, 5, 9))
    return compiled.stats()


def test_one_graph_for_every_batch_shape_and_a_repeated_design_compiles_nothing():
    """Steps of different batch sizes and lengths share one training graph (no recompile after the first step,
    HF's problem_type settled before it); a second job of the same design, on a fresh copy, compiles nothing."""
    base = build_model("tiny-bert", "classification", num_labels=3)
    first = _job(base, "lora", 0.05)
    assert first["by_context"] == {"train": 1, "eval": 1} and first["recompiles"] == 0, first["reasons"]
    assert first["calls"] == {"train": 3, "eval": 1}
    again = _job(base, "lora", 0.05)
    assert again["layout"] == first["layout"] and again["compiles"] == 0 and again["recompiles"] == 0


@pytest.mark.slow
def test_sweep_jobs_reuse_a_layout_and_never_hit_the_recompile_limit():
    """Jobs of one process: a repeated design compiles nothing; each new layout compiles once (train + eval).

    Plain `torch.compile(model)` puts every job's graphs on the code object all HF forwards share; past the
    recompile limit (8 entries) a job's forward is no longer compiled and runs eager.
    """
    base = build_model("tiny-bert", "classification", num_labels=3)
    first, again = _job(base, "lora", 0.05), _job(base, "lora", 0.05)
    assert first["by_context"] == {"train": 1, "eval": 1} and first["layout"] == again["layout"]
    assert again["compiles"] == 0 and again["recompiles"] == 0
    jobs = [("adapter", 0.05), ("prefix", 0.05), ("lora", 0.1)]  # other designs; LoRA at another rank
    stats = [_job(base, d, b) for d, b in jobs]
    assert len({s["layout"] for s in stats} | {first["layout"]}) == len(jobs) + 1
    assert all(s["by_context"] == {"train": 1, "eval": 1} and not s["recompiles"] and not s["failed"] for s in stats)

    torch._dynamo.reset()
    plain = [_job(base, d, b, per_layout=False) for d, b in [("lora", 0.05), *jobs]]
    assert sum(s["failed"] for s in plain) >= 1  # the limit was hit: those jobs silently ran eager


# ------------------------------------------------------------------------------------------ regional scope

def _regional_job(base: torch.nn.Module, design: Design, budget: float = 0.05, backend: str = "eager") -> tuple:
    """Patch a copy of `base` with `design`, train SHAPES through the regional scope; (model, stats)."""
    model = copy.deepcopy(base)
    apply_design(model, design, budget)
    compiled = CompiledModel(model.train(), backend=backend, scope="regional")
    for i, (size, length) in enumerate(SHAPES):
        compiled(**batch(model, size, length, i)).loss.backward()
    return model, compiled.stats()


@pytest.fixture
def six_bert():
    torch._dynamo.reset()  # regions compiled by earlier tests would count as reused
    return build_model("tiny-bert", "classification", num_labels=3, **SIX_LAYERS_NO_DROPOUT["bert"])


def test_regional_module_sizes_differing_per_layer_share_one_graph(six_bert):
    """Adapter, prefix and LoRA in every layer, sizes ramping with the layer (increasing allocation): each of a BERT
    layer's three regions (attention, intermediate, output) runs one graph in all six layers, layer 0 (whose input
    needs no gradient) included, over steps of changing batch shapes; never a recompile per size."""
    model, stats = _regional_job(six_bert, Design((1, 2, 2, 1), "increasing", None, ("APL",) * 4), budget=0.2)
    sizes = [row.sizes for row in model.pdspace_report.layers]
    assert all(len({row[s] for row in sizes}) >= 3 and min(row[s] for row in sizes) > 1 for s in "APL"), sizes
    assert stats["blocks"] == 6 and stats["regions"] == 18 and stats["layouts"] == 3 and stats["graphs"] == 3, stats
    assert stats["compiles"] == 3 and stats["recompiles"] == 0 and stats["failed"] == 0, stats["reasons"]
    assert stats["calls"] == {"train": 3}


def test_regional_size_one_and_batch_of_one_get_their_own_graph_not_a_recompile(six_bert):
    """Dynamo specialises sizes 1: a rank-1 LoRA (or width-1 adapter) layer and a batch of one example run graphs of
    their own (one each, whatever the other sizes), never a recompile of the shared one."""
    design = Design((1, 2, 2, 1), "uniform", None, ("AL",) * 4)
    sizes = [{"adapter_dim": n, "lora_rank": n} for n in (3, 1, 2, 5, 1, 4)]
    model = copy.deepcopy(six_bert)
    apply_design(model, design, sizes=sizes)
    compiled = CompiledModel(model.train(), backend="eager", scope="regional")
    for i, (size, length) in enumerate([*SHAPES, (1, 6)]):
        compiled(**batch(model, size, length, i)).loss.backward()
    stats = compiled.stats()
    # layouts: attention with LoRA ranks > 1 and 1, the intermediate, output with adapter widths > 1 and 1; graphs:
    # those five, then the batch of 1 for all five
    assert stats["layouts"] == 5 and stats["graphs"] == 10 and stats["compiles"] == 10, stats
    assert stats["recompiles"] == 0 and stats["failed"] == 0, stats["reasons"]


def test_regional_frozen_layers_share_the_trained_layers_graphs(six_bert):
    """A frozen layer after a trained one runs the graphs of a trained layer's untouched regions (its gradient
    flows through); only the frozen layers before the first trained one run inference graphs of their own."""
    design = Design((1, 2, 2, 1), "uniform", (False, True, False, True), ("", "L", "", "L"))
    _, stats = _regional_job(six_bert, design)
    # layer 0: attention, intermediate, output without gradient; the others: attention with and without LoRA, and
    # the intermediate and output every layer after layer 0 shares
    assert stats["layouts"] == 7 and stats["graphs"] == 7 and stats["compiles"] == 7, stats
    assert stats["recompiles"] == 0


def test_regional_second_design_in_the_process_reuses_the_regions_code(six_bert):
    """A second design (other grouping, allocation and sizes, the same strategy sets) compiles nothing: every
    region graph it runs was compiled for the first. BitFit never makes a graph of its own (every bias it could
    train is a gradient leaf in every region that needs a gradient), and a new strategy set compiles only the
    region it changes: a prefix, the attention."""
    _, first = _regional_job(six_bert, Design((1, 2, 2, 1), "uniform", None, ("L", "A", "A", "L")))
    _, second = _regional_job(six_bert, Design((2, 1, 1, 2), "decreasing", None, ("L", "L", "A", "A")), budget=0.1)
    # attention with and without LoRA, the intermediate, output with and without an adapter
    assert first["compiles"] == first["graphs"] == 5 and first["reused"] == 0, first
    assert second["compiles"] == 0 and second["reused"] == second["graphs"] == 5, second
    _, third = _regional_job(six_bert, Design((1, 2, 2, 1), "uniform", None, ("L", "A", "B", "B")))
    assert third["compiles"] == 0 and third["reused"] == third["graphs"] == 5 and third["recompiles"] == 0, third
    _, fourth = _regional_job(six_bert, Design((1, 2, 2, 1), "uniform", None, ("P", "A", "B", "L")))
    assert fourth["compiles"] == 1 and fourth["reused"] == 5 and fourth["recompiles"] == 0, fourth


def test_regional_thread_count_is_a_graph_of_its_own_not_a_recompile(six_bert):
    """Dynamo guards on the thread count: a job run with other threads than an earlier one compiles its own graphs
    (counted as compiles, not as recompiles), and going back reuses the first graphs."""
    design = Design((1, 2, 2, 1), "uniform", None, ("L", "A", "A", "L"))
    threads = torch.get_num_threads()
    _, first = _regional_job(six_bert, design)
    torch.set_num_threads(threads + 1)
    try:
        _, other = _regional_job(six_bert, design)
    finally:
        torch.set_num_threads(threads)
    _, again = _regional_job(six_bert, design)
    assert other["recompiles"] == 0 and other["compiles"] == other["graphs"] == first["graphs"], other
    assert again["compiles"] == 0 and again["reused"] == first["graphs"], again


def test_regional_recompile_is_recorded_with_its_reason_and_the_limit_is_not_silent(six_bert):
    """A changed guard (a merged LoRA module) recompiles its region: counted with dynamo's reason; past the
    recompile limit the region runs eager, and `failed` says so."""
    model = copy.deepcopy(six_bert)
    apply_design(model, named_design("lora", 6), 0.05)
    compiled = CompiledModel(model.train(), backend="eager", scope="regional")
    compiled(**batch(model, 3, 7, 0)).loss.backward()
    lora = getattr(*layer_map(model)[2].attentions[0]["q"])
    lora.merged = True  # forward now skips the update (the weights are not touched: only the guard matters here)
    compiled(**batch(model, 3, 7, 1))
    stats = compiled.stats()
    assert stats["recompiles"] == 1 and "merged" in stats["reasons"][0], stats
    with torch._dynamo.config.patch(recompile_limit=1):
        lora.merged = False
        getattr(*layer_map(model)[4].attentions[0]["v"]).merged = True
        compiled(**batch(model, 3, 7, 2))
    assert compiled.stats()["failed"] >= 1, compiled.stats()


def test_regional_blocks_run_eager_outside_the_compiled_call_and_copies_are_plain(six_bert):
    """Only calls through the CompiledModel run the compiled blocks: the model's own forward (validation,
    generation) compiles nothing and equals eager; a deep copy or a pickle of the model carries no compiled hook."""
    from torch._dynamo import utils as dynamo_utils

    model = copy.deepcopy(six_bert)
    apply_design(model, named_design("lora", 6), 0.05)
    reference = copy.deepcopy(model).eval()
    CompiledModel(model.train(), backend="eager", scope="regional")
    before = len(dynamo_utils.get_compilation_metrics())
    model.eval()
    b = batch(model, 2, 5, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(**b).logits, reference(**b).logits)
    assert len(dynamo_utils.get_compilation_metrics()) == before
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert all(r._compiled_call_impl is None for spec in layer_map(clone) for r in spec.regions)


def test_regional_equals_eager_on_bert():
    """Regional scope, S4 design (adapter, prefix, LoRA, BitFit): loss, gradients and eval logits equal eager over
    steps of changing shapes; each region graph compiled once."""
    stats = _train_side_by_side("bert", "eager", atol=1e-5, scope="regional").stats()
    assert stats["recompiles"] == 0 and stats["failed"] == 0, stats["reasons"]
    assert stats["compiles"] == stats["graphs"] and stats["calls"] == {"train": 3, "eval": 2}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_regional_steps_equal_eager_on_every_family(family, backend):
    """Every family's tiny model, S4 design, regional scope: loss, gradients and eval logits equal eager (the
    backward through AOTAutograd); every region graph compiled once, never a recompile, nothing run eager."""
    stats = _train_side_by_side(family, backend, atol=1e-5 if backend == "aot_eager" else 1e-4,
                                scope="regional").stats()
    assert stats["recompiles"] == 0 and stats["failed"] == 0, stats["reasons"]
    assert stats["compiles"] <= stats["graphs"] and stats["calls"] == {"train": 3, "eval": 2}


def test_module_compiles_in_configure_model_and_keeps_its_state_dict():
    """compile=True: configure_model builds the compiled forward; checkpoints and pickles see the plain model."""
    from pdspace.data.tasks import get_task

    model = build_model("tiny-bert", "classification", num_labels=2)
    apply_design(model, named_design("lora", len(layer_map(model))), 0.05)
    keys = set(model.state_dict())
    adamw = functools.partial(torch.optim.AdamW, lr=1e-3)  # picklable, as Hydra's partial optimizer is
    module = PEFTModule(model, get_task("synthetic_cls"), None, text_to_text=False, optimizer=adamw, compile=True)
    assert module.compile_stats() == {"enabled": True, "compiles": 0, "recompiles": 0}
    module.configure_model()
    assert isinstance(module._compiled, CompiledModel)
    assert {k.removeprefix("model.") for k in module.state_dict()} == keys
    assert pickle.loads(pickle.dumps(module))._compiled is None  # ddp_spawn pickles the module
    eager = PEFTModule(copy.deepcopy(model), get_task("synthetic_cls"), None, text_to_text=False)
    eager.configure_model()
    assert eager._compiled is None and eager.compile_stats() == {"enabled": False}
    with pytest.raises(ValueError, match="no torch.compile mode"):
        PEFTModule(model, get_task("synthetic_cls"), None, text_to_text=False, compile=True, compile_mode="fastest")


def _fit(arch: str, compile: bool, tmp_path, scope: str = "regional") -> PEFTModule:
    from pdspace.backbones import load_backbone
    from pdspace.data import PDSpaceDataModule
    from pdspace.data.tasks import get_task

    family = arch.removeprefix("tiny-")
    L.seed_everything(0, verbose=False)
    bb = load_backbone(arch, arch=arch, cache=False, overrides={
        k: v for k, v in SIX_LAYERS_NO_DROPOUT[family].items() if "dropout" in k})
    apply_design(bb.model, named_design("lora", len(layer_map(bb.model))), 0.05)
    spec = get_task("synthetic_seq2seq")
    dm = PDSpaceDataModule(spec, bb.tokenizer, max_train_samples=24, max_eval_samples=8, batch_size=8,
                           eval_batch_size=4)
    module = PEFTModule(bb.model, spec, bb.tokenizer, text_to_text=True, max_target_length=6,
                        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2, eps=1e-6), compile=compile,
                        compile_scope=scope)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("arch,scope", [("tiny-t5", "regional"), ("tiny-bart", "regional"), ("tiny-t5", "model")])
def test_compiled_fit_with_generation_equals_eager(arch, scope, tmp_path):
    """Lightning fit with compile=True (inductor) on T5/BART: generation-based validation runs and every epoch's
    metrics equal the eager run's; the training graph(s) never recompile (model: one graph; regional: one per
    region, each compiled once)."""
    # the regions' compiled code is kept across the models of a process: what an earlier test compiled for regions
    # of these layouts (the family tests) would be reused here, and nothing compiled to count
    torch._dynamo.reset()
    eager = _fit(arch, False, tmp_path / "eager")
    compiled = _fit(arch, True, tmp_path / "compiled", scope)
    stats = compiled.compile_stats()
    graphs = 1 if scope == "model" else stats["graphs"]
    assert stats["by_context"] == {"train": graphs} and stats["recompiles"] == 0 and stats["failed"] == 0, stats
    assert stats["calls"]["train"] == 6  # 2 epochs x 3 batches
    assert len(compiled.history) == len(eager.history) == 2
    for c, e in zip(compiled.history, eager.history):
        assert c.keys() == e.keys()
        for k in c:
            assert c[k] == pytest.approx(e[k], abs=1e-4), (k, c, e)
    # the parameters after 6 AdamW steps. Its eps (1e-6) sits above the gradients' rounding: with 1e-8, AdamW's
    # per-element scaling made an update of lr's size out of one near-zero gradient's rounding (inductor's sums are
    # ordered otherwise than eager's): 1 of 6592 elements off by 1.7e-4
    moved = [float(p.abs().max()) for n, p in compiled.model.named_parameters() if n.endswith("lora_B")]
    assert min(moved) > 1e-4, moved  # lora_B starts at zero: each moved by more than the tolerance below
    for (n, p), (_, q) in zip(compiled.model.named_parameters(), eager.model.named_parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-3, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.slow
def test_pdspace_train_compile_true_records_one_graph_and_matches_eager(launch, tmp_path):
    """`pdspace-train train.compile=true`: a multirun of two seeds of one design trains with the compiled blocks
    (regional, the default), records its compilations in result.json (each region graph compiled once, no recompile;
    the second job, same layout in the same process, compiles nothing and reuses every graph) and reaches the eager
    run's metrics."""
    common = ["backbone=tiny-bert", "task=synthetic_cls", "trainer.max_epochs=2", "optimizer.lr=1e-2",
              "task.max_train_samples=96", "task.max_eval_samples=32", "data.batch_size=16", "strategy=lora",
              "+backbone.overrides.hidden_dropout_prob=0.0", "+backbone.overrides.attention_probs_dropout_prob=0.0"]
    compiled = launch(*common, "train.compile=true", f"train.compile_cache_dir={tmp_path}/compile", "seed=0,0",
                      multirun=True)
    assert [r["status"] for r in compiled] == ["completed", "completed"]
    first, second = (r["compile"] for r in compiled)
    assert first["scope"] == "regional" and first["blocks"] > 1 and first["layouts"] == 3, first  # LoRA: all
    assert first["cache_dir"] == str(tmp_path / "compile")  # train.compile_cache_dir reaches inductor
    assert first["by_context"] == {"train": first["graphs"]} and first["recompiles"] == 0 and first["failed"] == 0
    assert second["compiles"] == 0 and second["layout"] == first["layout"], second
    assert second["reused"] == second["graphs"] == first["graphs"], second
    (eager,) = launch(*common, "seed=0")
    assert "compile" not in eager
    for c, e in zip(compiled[0]["metrics"]["per_epoch"], eager["metrics"]["per_epoch"]):
        assert c["accuracy"] == pytest.approx(e["accuracy"], abs=1 / 32 + 1e-6)
        assert c["loss"] == pytest.approx(e["loss"], abs=1e-3)


@pytest.mark.slow  # inductor: its first compile in a process takes 30 s or more in CI
@pytest.mark.parametrize("scope", ["model", "regional"])
def test_compiled_dropout_on_cpu_draws_eager_masks(scope, tmp_path):
    """On CPU inductor takes its random numbers from aten (`fallback_random`): with dropout on, a compiled training
    step under one seed has eager's loss and gradients (inductor's own CPU random numbers are other masks, and
    slower), in both scopes."""
    eager = build_model("tiny-bert", "classification", num_labels=3, seed=0, num_hidden_layers=2,
                        hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    apply_design(eager, named_design("lora", 2), 0.05)
    eager.train()
    twin = copy.deepcopy(eager)
    compiled = CompiledModel(twin, backend="inductor", scope=scope, cache_dir=tmp_path)
    b = batch(eager, 4, 9, 0)
    torch.manual_seed(1)
    loss_e = eager(**b).loss
    torch.manual_seed(1)
    loss_c = compiled(**b).loss
    torch.manual_seed(2)
    loss_other = eager(**b).loss  # another seed: other masks, so the equality above is the masks', not luck
    assert not torch.allclose(loss_other, loss_e, atol=1e-3)
    torch.testing.assert_close(loss_c, loss_e, atol=1e-5, rtol=1e-4)
    loss_e.backward()
    loss_c.backward()
    grads = {n: p.grad for n, p in twin.named_parameters() if p.requires_grad}
    for n, p in eager.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[n], p.grad, atol=1e-5, rtol=1e-3, msg=n)


def test_regional_t5_first_layer_runs_the_later_layers_graphs():
    """T5's first layer computes the position bias its later layers are handed (from the relative-position embedding
    in self-attention, zeros in cross-attention). Computed before its region runs, the bias enters that region as it
    enters the others: the first layer runs the later layers' graphs (three graphs fewer per strategy set), and the
    embedding, trained here, still gets eager's gradient. LoRA's scaling (alpha / r) follows the rank in A's shape, a
    dynamic size: the ranks, which differ per layer, share the graphs (a float read from the module was a guard on
    its value in T5's cross-attention: a recompile per rank, and eager past dynamo's limit). The encoder's and the
    decoder's self-attention run one graph: both are handed a mask tensor (SHAPES' batches have padding in the
    encoder and none in the decoder, where HF's mask would be None and SDPA's `is_causal` do the masking)."""
    torch._dynamo.reset()
    arch, head = FAMILY_MODELS["t5"]
    eager = build_model(arch, head, seed=0, **SIX_LAYERS_NO_DROPOUT["t5"])
    apply_design(eager, Design((1, 1, 2, 2), "decreasing", None, ("L",) * 4), 0.2)
    ranks = {m.rank for m in eager.modules() if hasattr(m, "lora_A")}
    assert len(ranks) >= 4 and min(ranks) > 1, ranks
    embeddings = [m.relative_attention_bias.weight for m in eager.modules()
                  if getattr(m, "has_relative_attention_bias", False)]
    assert len(embeddings) == 2  # the encoder's and the decoder's first self-attention
    for weight in embeddings:
        weight.requires_grad_(True)
    twin = copy.deepcopy(eager.train())
    compiled = CompiledModel(twin, backend="aot_eager", scope="regional")
    params = dict(twin.named_parameters())
    for i, (size, length) in enumerate(SHAPES):
        b = batch(eager, size, length, i)
        loss_e, loss_c = eager(**b).loss, compiled(**b).loss
        torch.testing.assert_close(loss_c, loss_e, atol=1e-5, rtol=1e-4)
        loss_e.backward()
        loss_c.backward()
        for n, p in eager.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and params[n].grad is not None, n
                torch.testing.assert_close(params[n].grad, p.grad, atol=1e-5, rtol=1e-3, msg=f"{n} step {i}")
    stats = compiled.stats()
    # the self-attention (both stacks: each is handed a mask tensor, the decoder's causal, the encoder's with or
    # without padding), the cross-attention, the feed-forward (both stacks)
    assert stats["graphs"] == stats["compiles"] == 3, stats
    assert stats["recompiles"] == 0 and stats["failed"] == 0, stats["reasons"]


def test_regional_t5_self_attention_with_a_prefix_is_one_graph_in_both_stacks():
    """A prefix switches the model to pdspace's attention when it is patched, before compilation: its masks are
    built in full all the same, and the prefixed self-attention of both stacks runs one graph (self-attention,
    cross-attention, feed-forward: 3), with eager's loss."""
    torch._dynamo.reset()
    arch, head = FAMILY_MODELS["t5"]
    eager = build_model(arch, head, seed=0, **SIX_LAYERS_NO_DROPOUT["t5"])
    apply_design(eager, Design((1, 1, 2, 2), "uniform", None, ("P",) * 4), 0.05)
    twin = copy.deepcopy(eager.train())
    compiled = CompiledModel(twin, backend="aot_eager", scope="regional")
    b = batch(eager, 3, 7, 0)  # padding in the encoder, none in the decoder
    torch.testing.assert_close(compiled(**b).loss, eager(**b).loss, atol=1e-5, rtol=1e-4)
    stats = compiled.stats()
    assert stats["graphs"] == stats["compiles"] == 3 and stats["recompiles"] == 0, stats


@pytest.mark.parametrize("autocast", [False, True])
def test_regional_t5_first_layer_bias_is_the_one_t5_computes(autocast):
    """The position bias computed before T5's first self- and cross-attention is the one their forward computes and
    returns when handed none (HF's code the reference): values and dtype, under autocast too (the queries' dtype)."""
    from pdspace.compile import _first_position_bias, _position_bias_source

    arch, head = FAMILY_MODELS["t5"]
    model = build_model(arch, head, seed=0, **SIX_LAYERS_NO_DROPOUT["t5"]).train()
    block = model.decoder.block[0]
    hidden, encoded = torch.randn(2, 5, model.config.d_model), torch.randn(2, 7, model.config.d_model)
    for layer, kwargs in ((block.layer[0], {}), (block.layer[1], {"key_value_states": encoded})):
        attention, _ = _position_bias_source(layer)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            _, expected, _ = layer(hidden, position_bias=None, **kwargs)
            bias = _first_position_bias(attention(), (hidden,), {"position_bias": None, **kwargs})["position_bias"]
        assert bias.dtype == expected.dtype and bias.shape == expected.shape, (bias.dtype, expected.dtype)
        torch.testing.assert_close(bias, expected, atol=0, rtol=0)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_full_masks_leave_the_outputs_unchanged(family):
    """Under `full_masks` (regional compilation of an encoder-decoder) every mask is a contiguous tensor of its own,
    where HF hands SDPA None (no padding; the decoder's causal mask left to `is_causal`): the logits are HF's own,
    with padding and without, and with a prefix in every layer (whose causal mask pdspace builds when none is
    given)."""
    from transformers.masking_utils import AttentionMaskInterface

    from pdspace.peft.strategies.prefix import ATTN_IMPLEMENTATION, full_masks, pdspace_mask, register_attention

    arch, head = FAMILY_MODELS[family]
    model = build_model(arch, head, seed=0, **SIX_LAYERS_NO_DROPOUT[family]).eval()
    apply_design(model, Design((1, 1, 2, 2), "uniform", None, ("P",) * 4), 0.05)
    made = []

    def spy(*args, **kwargs):
        made.append(pdspace_mask(*args, **kwargs))
        return made[-1]

    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, spy)
    try:
        with torch.no_grad():
            for padded in (True, False):
                b = batch(model, 3, 7, 0)
                if not padded:
                    b["attention_mask"] = torch.ones_like(b["attention_mask"])
                made.clear()
                reference = model(**b).logits  # HF's masks, None where it can
                assert any(m is None for m in made), padded
                made.clear()
                with full_masks():
                    full = model(**b).logits
                assert len(made) == 3 and all(m._base is None and m.is_contiguous() for m in made), made
                torch.testing.assert_close(full, reference, atol=1e-6, rtol=1e-5)
    finally:
        register_attention()
