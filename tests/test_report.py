"""The paper's experiment presets, full fine-tuning, effective batch by accumulation, and pdspace-report."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats as sps
from sklearn import metrics as skm

from pdspace import module, report, stats
from pdspace import results as results_io
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
    assert module.set_accumulation(trainer, 24, 128) == {"per_device": 24, "devices": 2, "accumulate_grad_batches": 3,
                                                         "effective": 144, "requested_effective": 128}
    assert module.set_accumulation(SimpleNamespace(world_size=1, accumulate_grad_batches=2), 8, None)["effective"] == 16
    with pytest.raises(ValueError, match="drop trainer.accumulate_grad_batches=2"):
        module.set_accumulation(SimpleNamespace(world_size=1, accumulate_grad_batches=2), 8, 64)


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

| column | method | backbone | design | n | Δ vs best | 95 % CI | p (t) | p (bootstrap) |
| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |
| sst2 | full_finetune | t5-base | full |  | best |  |  |  |
| sst2 | adapter | t5-base | {D} | 1 | -5.00 | n < 2 | n < 2 | n < 2 |
| sst2 | {D} | t5-base |  | 1 | -45.00 | n < 2 | n < 2 | n < 2 |
| sst2 | s4_model | t5-base | {D} | 1 | -2.00 | n < 2 | n < 2 | n < 2 |
| rte | s4_model | t5-base | {D} |  | best |  |  |  |
| rte | adapter | t5-base | {D} | 1 | -5.00 | n < 2 | n < 2 | n < 2 |
| rte | {D} | t5-base |  | 1 | -15.00 | n < 2 | n < 2 | n < 2 |
| average | s4_model | t5-base | {D} |  | best |  |  |  |
| average | adapter | t5-base | {D} | 1 | -4.00 | n < 2 | n < 2 |  |
| average | {D} | t5-base |  | 1 | -29.00 | n < 2 | n < 2 |  |

{tests}
""".format(note=report.NOTE, D=D.replace("|", "\\|"), tests=report.TESTS_NOTE.format(n_boot=2000))  # escaped in markdown

EXPECTED_CSV = f"""\
method,backbone,design,trainable_pct,\
sst2,sst2_std,sst2_n,sst2_n_paired,sst2_diff,sst2_ci_low,sst2_ci_high,sst2_p_t,sst2_p_boot,\
rte,rte_std,rte_n,rte_n_paired,rte_diff,rte_ci_low,rte_ci_high,rte_p_t,rte_p_boot,\
average,average_n_paired,average_diff,average_ci_low,average_ci_high,average_p_t,average_p_boot
adapter,t5-base,{D},0.5000,92.0000,2.0000,3,1,-5.0000,,,,,71.0000,1.4142,2,1,-5.0000,,,,,81.5000,1,-4.0000,,,,
full_finetune,t5-base,full,100.0000,95.0000,,1,,,,,,,,,0,,,,,,,,,,,,,
{D},t5-base,{D},0.5000,50.0000,,1,1,-45.0000,,,,,60.0000,,1,1,-15.0000,,,,,55.0000,1,-29.0000,,,,
s4_model,t5-base,{D},0.4900,93.0000,,1,1,-2.0000,,,,,75.0000,,1,,,,,,,84.0000,,,,,,
"""


def test_report_table_markdown_and_csv(runs, tmp_path, capsys):
    assert report.main([str(runs), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out == EXPECTED_MD
    assert (tmp_path / "out" / "report.md").read_text() == EXPECTED_MD
    assert (tmp_path / "out" / "report.csv").read_text() == EXPECTED_CSV


def test_an_unreadable_result_file_is_named_once_in_the_footnote(runs, capsys):
    bad = runs / "broken" / "result.json"
    bad.parent.mkdir()
    bad.write_text("{half")
    assert report.main([str(runs)]) == 0
    out = capsys.readouterr().out
    assert (f"Unreadable: 1 result files ({bad}: JSONDecodeError: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)).") in out.splitlines()


def test_report_method_key_and_a_single_result_file(runs, capsys):
    report.main([str(runs / "adapter" / "rte"), str(runs / "full" / "sst2" / "result.json"), "--method-key", "seed"])
    lines = capsys.readouterr().out.splitlines()
    # rows by seed and design: seed 0 has an rte run of adapter and (another design) the sst2 run of full FT
    assert lines[2].startswith("| 0 | t5-base | full | 100.000 | 95.0 (n=1) | – | – |")
    md_d = D.replace("|", "\\|")  # a | inside a markdown cell is escaped
    assert lines[3].startswith(f"| 0 | t5-base | {md_d} | 0.500 | – | 70.0 (n=1) | – |")
    assert lines[4].startswith(f"| 1 | t5-base | {md_d} | 0.500 | – | 72.0 (n=1) | – |")


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
    # the same seed-to-seed pattern 30 points below the best design: significant (**), the best unmarked
    assert "| 51.0 ± 1.0 (n=3) ** |" in rows[0] and "| 81.0 ± 1.0 (n=3) |" in rows[3]


def test_report_to_wandb_never_fails_the_report(runs, monkeypatch, capsys):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert report.main([str(runs), "--wandb"]) == 0
    monkeypatch.setattr(wandb, "init", lambda **kw: (_ for _ in ()).throw(RuntimeError("no network")))
    assert report.main([str(runs), "--wandb"]) == 0
    captured = capsys.readouterr()
    assert sum(line.startswith("| adapter |") for line in captured.out.splitlines()) == 2  # one row per report
    assert "warning: W&B logging of the report failed (RuntimeError: no network)" in captured.err


@pytest.mark.parametrize("make", ["empty", "missing"])
def test_report_without_results_exits_1_with_one_line(tmp_path, capsys, make):
    target = tmp_path / "nothing"
    if make == "empty":
        target.mkdir()
    with pytest.raises(SystemExit) as e:
        report.main([str(target)])
    # a string code: Python prints it as the one stderr line and exits 1 (pdspace.errors' convention)
    err = str(e.value.code).splitlines()
    assert len(err) == 1 and err[0].startswith("pdspace-report: error: ") and str(target) in err[0]
    assert not capsys.readouterr().err


def test_run_writes_method_for_report(launch):
    # without a preset the row falls back to the design id; a preset's method lands in result.json
    (r,) = launch("backbone=tiny-bert", "dry_run=true", "grouping.choice=[1,2,2,1]")
    assert r["method"] is None and report.method_of(r) == r["design_id"]
    assert math.isclose(r["params"]["fraction"], 0.005, rel_tol=0.1)


# ---------------------------------------------------------------------------------------------
# significance: rows against each column's best, with predictions.npz beside result.json

N_EXAMPLES = 400
SIG_TASKS = {"sst2": "accuracy", "cola": "matthews"}


def _score(objective: str, pred: np.ndarray, gold: np.ndarray) -> float:
    # sklearn as the oracle: an answer that is no label (-1) is a label of its own
    return float(skm.accuracy_score(gold, pred) if objective == "accuracy" else skm.matthews_corrcoef(gold, pred))


def _flip(gold: np.ndarray, n_wrong: int, rng: np.random.Generator) -> np.ndarray:
    pred = gold.copy()
    wrong = rng.choice(len(gold), n_wrong, replace=False)
    pred[wrong] = 1 - pred[wrong]
    return pred


def _run_with_predictions(path: Path, method: str, task: str, seed: int, gold: np.ndarray, pred: np.ndarray,
                          order: np.ndarray | None = None) -> float:
    """A completed run of two evaluations (the second the best) and its predictions.npz; returns the objective."""
    objective = SIG_TASKS[task]
    first = np.zeros_like(pred)  # a worse first evaluation: picking its row would not reproduce the objective
    per_epoch = [{"epoch": e, "step": 10 * (e + 1), objective: _score(objective, p, gold)}
                 for e, p in enumerate((first, pred))]
    index = np.arange(len(gold)) if order is None else order  # the writer's example order need not be sorted
    path.mkdir(parents=True)
    np.savez(path / "predictions.npz", index=index.astype(np.int64), gold=gold[index].astype(np.int64),
             pred=np.stack([first, pred])[:, index].astype(np.int64), epoch=np.array([0, 1]),
             step=np.array([10, 20]))
    results_io.write(path / "result.json", {
        "status": "completed", "task": task, "seed": seed, "backbone": "t5-base", "method": method,
        "design_id": f"d-{method}", "labels": {}, "params": {"fraction": 0.005},
        "objective": {"name": objective, "value": per_epoch[1][objective]},
        "metrics": {"per_epoch": per_epoch, "best": per_epoch[1]}, "predictions": "predictions.npz"})
    return per_epoch[1][objective]


@pytest.fixture
def sig_runs(tmp_path) -> SimpleNamespace:
    """3 rows x 3 seeds x (sst2, cola): s4_model best, lora within noise of it, adapter far worse."""
    rng = np.random.default_rng(0)
    root, values, preds, golds = tmp_path / "sig", {}, {}, {}
    for task in SIG_TASKS:
        gold = golds[task] = rng.integers(0, 2, N_EXAMPLES)
        for seed in range(3):
            best = _flip(gold, 40 + 4 * seed, rng)
            tied = best.copy()
            # lora differs from s4_model by a few examples, in both directions: no significant difference
            changed = rng.choice(N_EXAMPLES, (2, 3, 1)[seed], replace=False)
            tied[changed] = gold[changed] if seed == 0 else 1 - gold[changed]
            worse = _flip(gold, 120 + 8 * seed, rng)
            worse[rng.choice(N_EXAMPLES, 10, replace=False)] = -1
            for method, pred in (("s4_model", best), ("lora", tied), ("adapter", worse)):
                # lora's runs are read in another seed order and list their examples shuffled: pairing is by
                # seed, alignment by example index, never by position
                order, job = (rng.permutation(N_EXAMPLES), str(2 - seed)) if method == "lora" else (None, str(seed))
                values[method, task, seed] = 100 * _run_with_predictions(root / method / task / job, method, task,
                                                                         seed, gold, pred, order)
                preds[method, task, seed] = pred
    return SimpleNamespace(root=root, values=values, preds=preds, golds=golds)


def _table(out: str, first: str) -> dict[str, list[str]]:
    """The cells of the markdown table whose header starts with `first`, by row label (column label for the
    significance table: 'task/method')."""
    lines = out.split("\n\n")
    block = next(b for b in lines if b.startswith(f"| {first} |"))
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in block.splitlines()[2:]]
    return {(r[0] if first == "method" else f"{r[0]}/{r[1]}"): r for r in rows}


def test_report_marks_a_clearly_worse_row_and_not_a_tied_one(sig_runs, tmp_path, capsys):
    assert report.main([str(sig_runs.root), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    main = _table(out, "method")
    assert list(main) == ["adapter", "lora", "s4_model"]
    # sst2, cola and the average of the clearly worse row carry **; nothing else is marked
    assert [c.endswith(" **") for c in main["adapter"][4:]] == [True, True, True]
    assert "*" not in " ".join(main["lora"] + main["s4_model"])
    sig = _table(out, "column")
    assert sig["sst2/s4_model"][5] == sig["cola/s4_model"][5] == sig["average/s4_model"][5] == "best"
    assert sig["sst2/adapter"][4] == "3" and sig["sst2/adapter"][5].endswith(" **")
    assert sig["sst2/adapter"][8] == sig["cola/adapter"][8] == "< 0.001"
    assert float(sig["sst2/lora"][7]) > 0.05 and float(sig["sst2/lora"][8]) > 0.05
    assert report.TESTS_NOTE.format(n_boot=2000) in out
    assert "Seed test only" not in out and "Unusable" not in out
    assert (tmp_path / "out" / "report.md").read_text() == out

    rows = {r["method"]: r for r in csv.DictReader(io.StringIO((tmp_path / "out" / "report.csv").read_text()))}
    v = sig_runs.values
    for method in ("adapter", "lora"):
        for task in SIG_TASKS:
            a, b = [v[method, task, s] for s in range(3)], [v["s4_model", task, s] for s in range(3)]
            ref, d = sps.ttest_rel(a, b), np.subtract(a, b)
            half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
            got = {k: float(rows[method][f"{task}_{k}"]) for k in ("diff", "ci_low", "ci_high", "p_t", "p_boot")}
            assert rows[method][f"{task}_n_paired"] == "3"
            assert got["diff"] == pytest.approx(d.mean(), abs=1e-4)
            assert (got["ci_low"], got["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-4)
            assert got["p_t"] == pytest.approx(ref.pvalue, rel=1e-3)
            # the bootstrap over the same predictions, seeds paired, examples aligned by index
            boot = stats.paired_bootstrap([sig_runs.preds[method, task, s] for s in range(3)],
                                          [sig_runs.preds["s4_model", task, s] for s in range(3)],
                                          sig_runs.golds[task], stats.score_fn(task), n_boot=2000, seed=0)
            assert got["p_boot"] == pytest.approx(boot.p, rel=1e-3)
            assert (got["p_t"] < 0.01 and got["p_boot"] < 0.01) if method == "adapter" else \
                (got["p_t"] > 0.05 and got["p_boot"] > 0.05)
        avg = [[statistics.fmean(v[m, t, s] for t in SIG_TASKS) for s in range(3)] for m in (method, "s4_model")]
        assert float(rows[method]["average_p_t"]) == pytest.approx(sps.ttest_rel(*avg).pvalue, rel=1e-3)
        assert rows[method]["average_p_boot"] == ""
    assert all(rows["s4_model"][f"{t}_{k}"] == "" for t in (*SIG_TASKS, "average") for k in report.SIG_COLUMNS)


def test_report_falls_back_to_the_seed_test_without_usable_predictions(sig_runs, capsys):
    root = sig_runs.root
    (root / "adapter" / "sst2" / "0" / "predictions.npz").write_bytes(b"PK\x03\x04 garbled")
    (root / "lora" / "cola" / "1" / "predictions.npz").unlink()  # seed 1
    # a file that does not reproduce its run's objective is not used either
    path = root / "s4_model" / "cola" / "2" / "result.json"
    r = results_io.read(path)
    r["objective"]["value"] += 0.001
    results_io.write(path, r)
    assert report.main([str(root)]) == 0
    out = capsys.readouterr().out
    sig = _table(out, "column")
    assert [sig[k][8] for k in ("sst2/adapter", "cola/adapter", "cola/lora")] == ["–", "–", "–"]
    assert float(sig["sst2/lora"][8]) > 0.05  # both rows' sst2 predictions are intact
    assert "Seed test only (– under p (bootstrap)) for 3 comparisons" in out
    assert "Unusable predictions.npz: 3 runs" in out
    # the marks now rest on the t-test alone
    assert [c.endswith(" **") for c in _table(out, "method")["adapter"][4:]] == [True, True, True]


def test_build_finds_predictions_by_the_paths_given(sig_runs):
    paths = sorted(sig_runs.root.rglob("result.json"))
    results = [json.loads(p.read_text()) for p in paths]  # no _path: build needs the paths to find predictions
    with_paths = report.build(results, paths=paths)
    without = report.build(results)
    assert with_paths.seed_test_only == 0 and without.seed_test_only == 4
    assert all(c.p_boot is not None for (i, col), c in with_paths.comparisons.items() if col != report.AVERAGE)
    assert report.significance_table(with_paths) in report.to_markdown(with_paths)
    with pytest.raises(ValueError):
        report.build(results, paths=paths[:1])


def test_best_row_is_the_highest_mean_and_a_tie_goes_to_the_first_row(tmp_path, capsys):
    for seed, (a, b, c) in enumerate(((0.80, 0.82, 0.70), (0.82, 0.84, 0.71), (0.84, 0.80, 0.72))):
        for method, value in (("a", a), ("b", b), ("c", c)):
            _result(tmp_path / method / str(seed), method, "sst2", seed, value, 0.005, design_id=method)
    built = report.build(results_io.read_all(results_io.find([tmp_path]))[0])
    assert [r.method for r in built.rows] == ["a", "b", "c"] and built.best == {"sst2": 0, "average": 0}
    tie = built.comparisons[(1, "sst2")]
    assert tie.n == 3 and tie.diff == pytest.approx(0.0, abs=1e-12) and tie.mark == "" and tie.p_t == pytest.approx(1)
    assert built.comparisons[(2, "sst2")].mark == "**"
    # one more run of b's best seed lifts b above a: now b is the best row
    _result(tmp_path / "b" / "3", "b", "sst2", 3, 0.90, 0.005, design_id="b")
    assert report.build(results_io.read_all(results_io.find([tmp_path]))[0]).best["sst2"] == 1
    # a single row has nothing to compare with
    assert report.significance_table(report.build([results_io.read(tmp_path / "a" / "0" / "result.json")])) == ""


def test_report_unknown_method_key_exits_1_naming_it(runs, capsys):
    with pytest.raises(SystemExit) as e:
        report.main([str(runs), "--method-key", "nosuch.key"])
    err = str(e.value.code).splitlines()
    assert len(err) == 1 and "nosuch.key" in err[0] and "--method-key design_id" in err[0]
    # a key that some results have: the others are labelled '?'
    r = results_io.read(runs / "plain" / "rte" / "result.json")
    r["labels"] = {"variant": "x"}
    results_io.write(runs / "plain" / "rte" / "result.json", r)
    assert report.main([str(runs), "--method-key", "labels.variant"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # rows: '?' on full, '?' on the shared design (adapter, s4 and the rest of plain), and x
    assert [line.split(" | ")[0] for line in lines[2:5]] == ["| ?", "| ?", "| x"] and lines[5] == ""


def test_a_mark_needs_a_worse_row_and_every_test_to_agree():
    assert report.Comparison(3, -1.0, p_t=0.003, p_boot=0.0004).mark == "**"
    assert report.Comparison(3, -1.0, p_t=0.003, p_boot=0.02).mark == "*"
    assert report.Comparison(3, -1.0, p_t=0.001, p_boot=0.2).mark == ""
    assert report.Comparison(3, -1.0, p_t=0.04).mark == "*"
    assert report.Comparison(3, 1.0, p_t=0.001, p_boot=0.001).mark == ""  # better than the best on shared seeds
    assert report.Comparison(1, -5.0).mark == ""


def test_a_design_id_does_not_split_a_markdown_cell():
    r = {"status": "completed", "task": "sst2", "backbone": "t5-base", "design_id": D, "method": "s4",
         "objective": {"name": "accuracy", "value": 0.9}, "params": {"fraction": 0.005}}
    lines = [line for line in report.to_markdown(report.build([r])).splitlines() if line.startswith("| s4 ")]
    header = report.to_markdown(report.build([r])).splitlines()[0]
    # a GFM table splits cells at every | not escaped
    assert lines and all(len(re.split(r"(?<!\\)\|", line)) == len(re.split(r"(?<!\\)\|", header)) for line in lines)
