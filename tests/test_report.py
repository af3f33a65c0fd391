"""The paper's experiment presets, full fine-tuning, effective batch by accumulation, and pdspace-report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pdspace import report, train
from pdspace.archs import build_config

S4 = "A+L|A+P|A+P+B|P+B+L"
S4_3B = "P+L|A+L|P+B+L|A+P+B"
ONE_STEP = ("task=synthetic_cls", "trainer.fast_dev_run=true")


def _completed(r: dict) -> dict:
    assert r["status"] == "completed", r.get("error")
    return r


# preset -> (tiny backbone of its family, method, the design id's strategies)
PAPER_MODELS = {
    "s4_t5_base": ("tiny-t5", "s4_model", S4),
    "s4_3b_t5_3b": ("tiny-t5", "s4_3b_model", S4_3B),
    "s4_roberta_base": ("tiny-roberta", "s4_model", S4),
    "s4_roberta_large": ("tiny-roberta", "s4_model", S4),
    "s4_bart_base": ("tiny-bart", "s4_model", S4),
    "s4_bart_large": ("tiny-bart", "s4_model", S4),
}


@pytest.mark.parametrize("preset", sorted(PAPER_MODELS))
def test_paper_model_preset_runs_on_its_tiny_family_model(launch, preset):
    tiny, method, strategies = PAPER_MODELS[preset]
    # the preset pins the big backbone's group sizes: a 6-layer model needs its own 1:2:2:1 split
    (r,) = launch(f"experiment={preset}", f"backbone={tiny}", "grouping.choice=[1,2,2,1]", *ONE_STEP)
    _completed(r)
    assert r["method"] == method and r["backbone"] == tiny
    assert r["design_id"] == f"g1-2-2-1.alloc-uniform.tune-1111.{strategies}"
    assert r["config"]["optimizer"]["lr"] == 5e-5 and r["config"]["trainer"]["max_epochs"] == 3
    assert r["config"]["task"]["max_length"] == 128
    large = preset.endswith(("large", "3b"))
    assert r["batch"]["requested_effective"] == (64 if large else 128)
    assert abs(r["params"]["fraction"] - 0.005) < 0.0005


# preset -> (real backbone, its group sizes); dry runs on the meta device from the config alone
REAL = {"s4_t5_base": ("t5-base", "4-8-8-4"), "s4_3b_t5_3b": ("t5-3b", "8-16-16-8"),
        "s4_roberta_base": ("roberta-base", "2-4-4-2"), "s4_roberta_large": ("roberta-large", "4-8-8-4"),
        "s4_bart_base": ("bart-base", "2-4-4-2"), "s4_bart_large": ("bart-large", "4-8-8-4")}


@pytest.mark.parametrize("preset", sorted(REAL))
def test_paper_model_preset_fits_its_real_backbone(launch, tmp_path, preset):
    name, groups = REAL[preset]
    build_config(name).save_pretrained(tmp_path / name)  # config.json only, no weights
    (r,) = launch(f"experiment={preset}", f"backbone.path={tmp_path / name}", "dry_run=true")
    assert r["status"] == "dry_run" and r["backbone"] == name
    assert r["design_id"].startswith(f"g{groups}.alloc-uniform.tune-1111.")
    assert abs(r["params"]["fraction"] / 0.005 - 1) < 0.01


@pytest.mark.parametrize(("preset", "tiny", "letter"), [
    ("adapter", "tiny-bert", "A"), ("prefix", "tiny-bart", "P"), ("lora", "tiny-llama", "L")])
def test_uniform_baseline_presets_run_at_half_a_percent(launch, preset, tiny, letter):
    (r,) = launch(f"experiment={preset}", f"backbone={tiny}", *ONE_STEP)
    _completed(r)
    assert r["method"] == preset and r["backbone"] == tiny  # no backbone pinned
    assert r["design_id"].endswith(f".alloc-uniform.tune-1111.{letter}|{letter}|{letter}|{letter}")
    assert abs(r["params"]["fraction"] - 0.005) < 0.0005


def test_bitfit_preset_trains_biases_at_their_natural_size(launch):
    (r,) = launch("experiment=bitfit", "backbone=tiny-roberta", *ONE_STEP)
    _completed(r)
    assert r["method"] == "bitfit" and r["design_id"].endswith(".B|B|B|B")
    assert r["budget_fraction"] is None and r["params"]["budget_fraction"] is None
    assert 0 < r["params"]["fraction"] < 0.005


def test_full_finetune_trains_every_parameter(launch):
    # T5 ties its input and output embeddings: they must be counted (and trained) once
    (r,) = launch("experiment=full_finetune", "backbone=tiny-t5", *ONE_STEP)
    _completed(r)
    p = r["params"]
    assert r["method"] == "full_finetune" and r["design_id"] == "full" and r["design"] is None
    assert p["fraction"] == 1.0 and p["trainable_params"] == p["backbone_params"] > 0
    state = torch.load(r["checkpoint"])["state_dict"]
    assert sum(t.numel() for t in state.values()) == p["backbone_params"] + p["head_params"]


def test_final_preset_adds_ten_epochs_to_a_method_preset(launch):
    (r,) = launch("experiment=[s4_roberta_base,final]", "backbone=tiny-roberta", "grouping.choice=[1,2,2,1]",
                  *ONE_STEP)
    _completed(r)
    assert r["method"] == "s4_model" and r["config"]["trainer"]["max_epochs"] == 10


def test_effective_batch_is_reached_by_accumulation(launch):
    (r,) = launch("backbone=tiny-bert", "task=synthetic_cls", "data.effective_batch_size=64", "data.batch_size=16",
                  "task.max_train_samples=64", "task.max_eval_samples=32", "trainer.max_epochs=1")
    _completed(r)
    assert r["batch"] == {"per_device": 16, "devices": 1, "accumulate_grad_batches": 4, "effective": 64,
                          "requested_effective": 64}
    assert r["global_step"] == 1  # 4 batches of 16, one optimiser step


def test_accumulation_rounds_up_over_devices():
    trainer = SimpleNamespace(world_size=2, accumulate_grad_batches=1)
    assert train.set_accumulation(trainer, 24, 128) == {"per_device": 24, "devices": 2, "accumulate_grad_batches": 3,
                                                         "effective": 144, "requested_effective": 128}
    assert train.set_accumulation(SimpleNamespace(world_size=1, accumulate_grad_batches=2), 8, None)["effective"] == 16
    with pytest.raises(ValueError, match="drop trainer.accumulate_grad_batches=2"):
        train.set_accumulation(SimpleNamespace(world_size=1, accumulate_grad_batches=2), 8, 64)


# ---------------------------------------------------------------------------------------------
# pdspace-report on hand-made result.json files


def _result(path: Path, method: str | None, task: str, seed: int, value: float | None, fraction: float,
            status: str = "completed", **extra) -> None:
    path.mkdir(parents=True)
    r = {"status": status, "method": method, "task": task, "seed": seed, "backbone": "t5-base",
         "design_id": "g4-8-8-4.alloc-uniform.tune-1111.A|A|A|A", "labels": {},
         "params": {"fraction": fraction}, "objective": {"name": "accuracy", "value": value}, **extra}
    (path / "result.json").write_text(json.dumps(r))


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    for seed, v in enumerate((0.90, 0.92, 0.94)):
        _result(root / "adapter" / "sst2" / str(seed), "adapter", "sst2", seed, v, 0.005)
    for seed, v in enumerate((0.70, 0.72)):
        _result(root / "adapter" / "rte" / str(seed), "adapter", "rte", seed, v, 0.005)
    _result(root / "full" / "sst2", "full_finetune", "sst2", 0, 0.95, 1.0, design_id="full")  # no rte: missing cell
    # a sweeper's label beats the preset's method; no method at all falls back to the design id
    _result(root / "s4" / "sst2", "other", "sst2", 0, 0.93, 0.0049, labels={"method": "s4_model"})
    _result(root / "s4" / "rte", None, "rte", 0, 0.75, 0.0049, labels={"method": "s4_model"})
    _result(root / "plain" / "sst2", None, "sst2", 0, 0.50, 0.005)
    _result(root / "plain" / "rte", None, "rte", 0, 0.60, 0.005)
    # excluded: a failed run and a completed one whose objective was NaN (stored as null)
    _result(root / "adapter" / "sst2" / "3", "adapter", "sst2", 3, None, 0.005, status="failed")
    _result(root / "adapter" / "rte" / "2", "adapter", "rte", 2, None, 0.005)
    return root


D = "g4-8-8-4.alloc-uniform.tune-1111.A|A|A|A"
EXPECTED_MD = """\
| method | backbone | design | trainable % | sst2 | rte | average |
| --- | --- | --- | ---: | ---: | ---: | ---: |
| adapter | t5-base | {D} | 0.500 | 92.0 ± 2.0 (n=3) | 71.0 ± 1.4 (n=2) | 81.5 |
| full_finetune | t5-base | full | 100.000 | 95.0 (n=1) | – | – |
| {D} | t5-base |  | 0.500 | 50.0 (n=1) | 60.0 (n=1) | 55.0 |
| s4_model | t5-base | {D} | 0.490 | 93.0 (n=1) | 75.0 (n=1) | 84.0 |

{note}
Excluded: 2 failed of 12 runs (not completed).
""".format(note=report.NOTE, D=D)

EXPECTED_CSV = f"""\
method,backbone,design,trainable_pct,sst2,sst2_std,sst2_n,rte,rte_std,rte_n,average
adapter,t5-base,{D},0.5000,92.0000,2.0000,3,71.0000,1.4142,2,81.5000
full_finetune,t5-base,full,100.0000,95.0000,,1,,,0,
{D},t5-base,{D},0.5000,50.0000,,1,60.0000,,1,55.0000
s4_model,t5-base,{D},0.4900,93.0000,,1,75.0000,,1,84.0000
"""


def test_report_table_markdown_and_csv(runs, tmp_path, capsys):
    assert report.main([str(runs), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out == EXPECTED_MD
    assert (tmp_path / "out" / "report.md").read_text() == EXPECTED_MD
    assert (tmp_path / "out" / "report.csv").read_text() == EXPECTED_CSV


def test_report_method_key_and_a_single_result_file(runs, capsys):
    report.main([str(runs / "adapter" / "rte"), str(runs / "full" / "sst2" / "result.json"), "--method-key", "seed"])
    lines = capsys.readouterr().out.splitlines()
    # rows by seed and design: seed 0 has an rte run of adapter and (another design) the sst2 run of full FT
    assert lines[2].startswith("| 0 | t5-base | full | 100.000 | 95.0 (n=1) | – | – |")
    assert lines[3].startswith(f"| 0 | t5-base | {D} | 0.500 | – | 70.0 (n=1) | – |")
    assert lines[4].startswith(f"| 1 | t5-base | {D} | 0.500 | – | 72.0 (n=1) | – |")


def test_one_preset_swept_over_designs_gives_one_row_per_design(tmp_path, capsys):
    # a preset (method label quick_sst2) run with five strategies and three seeds: five rows of n=3, never one
    for k, letter in enumerate("ABLP"):
        design = f"g1-2-2-1.alloc-uniform.tune-1111.{letter}|{letter}|{letter}|{letter}"
        for seed in range(3):
            _result(tmp_path / letter / str(seed), "quick_sst2", "sst2", seed, 0.5 + 0.1 * k + 0.01 * seed, 0.005,
                    design_id=design)
    report.main([str(tmp_path)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| quick_sst2 ")]
    assert len(rows) == 4 and all("(n=3)" in r for r in rows)
    assert "| 51.0 ± 1.0 (n=3) |" in rows[0] and "| 81.0 ± 1.0 (n=3) |" in rows[3]


def test_report_to_wandb_never_fails_the_report(runs, monkeypatch, capsys):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert report.main([str(runs), "--wandb"]) == 0
    monkeypatch.setattr(wandb, "init", lambda **kw: (_ for _ in ()).throw(RuntimeError("no network")))
    assert report.main([str(runs), "--wandb"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("| adapter |") == 2
    assert "warning: W&B logging of the report failed (RuntimeError: no network)" in captured.err


@pytest.mark.parametrize("make", ["empty", "missing"])
def test_report_without_results_exits_2_with_one_line(tmp_path, capsys, make):
    target = tmp_path / "nothing"
    if make == "empty":
        target.mkdir()
    with pytest.raises(SystemExit) as e:
        report.main([str(target)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pdspace-report: error: ") and str(target) in err[0]


def test_run_writes_method_for_report(launch):
    # without a preset the row falls back to the design id; a preset's method lands in result.json
    (r,) = launch("backbone=tiny-bert", "dry_run=true", "grouping.choice=[1,2,2,1]")
    assert r["method"] is None and report.method_of(r) == r["design_id"]
    assert math.isclose(r["params"]["fraction"], 0.005, rel_tol=0.1)
