"""The confirmation stage that ends every search, and the one ordering rule it shares with every report."""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest

from pdspace import results
from pdspace.design.space import Design, DesignSpace
from pdspace.search.cli import main
from pdspace.search.confirm import baseline_design
from pdspace.search.engine import best_design
from pdspace.search.ordering import Standing, rank_key, ranked, standings

TINY = ["backbone=tiny-bert", "trainer.max_epochs=1", "task.max_train_samples=16", "task.max_eval_samples=16",
        "data.batch_size=16", "logger=none", "callbacks=none"]


def test_the_rule_orders_coverage_then_mean_then_runs_then_name():
    table = standings([("b", "rte", 0.9), ("a", "rte", 0.5), ("a", "sst2", 0.5),  # a: two tasks beat one
                       ("c", "rte", 0.7), ("c", "sst2", 0.3), ("c", "sst2", 0.3),  # c: mean 0.5, three runs
                       ("d", "rte", 0.5), ("d", "sst2", 0.5)])  # d: a's twin, loses on its name
    assert [s.name for s in ranked(table.values())] == ["c", "a", "d", "b"]
    assert table["c"].mean == pytest.approx(0.5) and table["c"].runs == 3 and table["c"].coverage == 2
    # nothing measured comes last; a single run has no spread
    assert rank_key(1, math.nan, 0, "a") > rank_key(1, 0.0, 1, "z")
    assert math.isnan(Standing("x", {"t": [0.5]}).std)


def test_baselines_are_uniform_single_letter_designs():
    design = baseline_design("L", 6, 4)
    assert design == Design([2, 2, 1, 1], "uniform", "1111", ["L"] * 4)


def test_the_presets_pin_each_design_over_the_search_overrides(tmp_path):
    """Every candidate and baseline preset composes; the search's overrides reach it, its design wins over them."""
    from pdspace.search.confirm import entries, write_preset
    from pdspace.search.engine import SearchSpec, Setting, compose

    overrides = ["backbone=tiny-bert", "grouping=spindle", "strategy=lora", "budget_fraction=0.01",
                 "trainer.max_epochs=1"]
    spec = SearchSpec(name="s", tasks=["synthetic_cls"], seeds=[0], confirm_seeds="0,1", confirm_k=1,
                      confirm_full_ft=True, overrides=overrides)
    found = Design([1, 2, 2, 1], "increasing", "1011", ["AL", "", "P", "B"])
    rows, skipped = entries([(found, Standing(str(found)))], spec, Setting(6, 4, None))
    assert [e.label for e in rows] == ["top1", "adapter", "prefix", "lora", "bitfit", "full_finetune"] and not skipped
    conf = tmp_path / "conf"
    for entry in rows:
        write_preset(entry, conf, spec, Setting(6, 4, None), found)
    cfgs = {e.label: compose([f"experiment={e.preset}"], conf) for e in rows}
    assert all(c.method == label and c.trainer.max_epochs == 1 and c.backbone.name == "tiny-bert"
               for label, c in cfgs.items())
    top = cfgs["top1"]
    assert (list(top.grouping.choice), top.allocation.choice, top.tunable.choice) == \
        ([1, 2, 2, 1], "increasing", "1011")
    assert list(top.strategy.choice) == ["AL", "any", "P", "B"] and top.budget_fraction == 0.01
    assert list(cfgs["lora"].grouping.choice) == [2, 2, 1, 1] and list(cfgs["prefix"].strategy.choice) == ["P"] * 4
    assert cfgs["adapter"].budget_fraction == 0.01 and cfgs["bitfit"].budget_fraction is None
    assert cfgs["full_finetune"].peft.full_finetune and cfgs["full_finetune"].budget_fraction is None


def _results(path):
    return {p: results.read(p) for p in sorted(path.glob("*/result.json"))}


def _stamps(root):
    return {p: p.stat().st_mtime_ns for p in root.glob("*/*/result.json")}


def test_a_search_ends_confirmed_against_the_baselines_and_resumes(tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO, logger="pdspace.search")
    root = tmp_path / "search"
    argv = ["--dir", str(root), "--search", "random", "--trials", "2", "--tasks", "synthetic_cls", "--name", "tiny",
            "--confirm-k", "2", "--confirm-seeds", "0,1", *TINY, f"data.cache_dir={tmp_path}/cache"]
    main(argv)
    out = capfd.readouterr().out
    state = json.loads((root / "search.json").read_text())
    confirm = state["confirm"]
    sweep = root / "confirm-k2-seeds0-1"
    assert confirm["sweep"] == str(sweep) and confirm["seeds"] == [0, 1]
    runs = _results(sweep)
    # both candidates and the four baselines, each over both seeds, all completed
    labels = {"top1", "top2", "adapter", "prefix", "lora", "bitfit"}
    assert sorted((r["method"], r["seed"]) for r in runs.values()) == sorted((m, s) for m in labels for s in (0, 1))
    assert all(r["status"] == "completed" for r in runs.values())
    lora = {r["design_id"] for r in runs.values() if r["method"] == "lora"}
    assert lora == {"g2-2-1-1.alloc-uniform.tune-1111.L|L|L|L"}
    assert {r["params"]["budget_fraction"] for r in runs.values() if r["method"] == "bitfit"} == {None}
    # the candidates are the search's two designs; the found one is the best of them by mean over the seeds
    searched = results.read_all(results.sweep_paths(root / "random"))[0]
    assert {c["design_id"] for c in confirm["candidates"].values()} == {r["design_id"] for r in searched}
    mine = standings((r["design_id"], r["task"], results.objective(r)) for r in runs.values()
                     if r["method"].startswith("top"))
    best = ranked(mine.values())[0]
    final = state["final"]
    assert final["design_id"] == best.name == confirm["found_design"] and final["confirmed"]
    assert final["score"] == pytest.approx(best.mean) and final["runs"] == 2
    assert "experiment=tiny" in final["command"] and final["design_id"] in out
    assert f"# found by pdspace-search (tiny): {best.name}" in (root / "conf" / "experiment" / "tiny.yaml").read_text()
    report = (root / "confirm_report.md").read_text()
    assert f"**Found design: `{best.name}`**" in report and report in out
    for label in ("adapter", "prefix", "lora", "bitfit", "top1", "top2"):
        assert f"| {label} |" in report
    # the found design against the best baseline (the rule over the baselines' runs): scipy's paired t-test
    versus = confirm["vs_baseline"]
    base = ranked(standings((r["method"], r["task"], results.objective(r)) for r in runs.values()
                            if not r["method"].startswith("top")).values())[0]
    assert versus["against"] == base.name and versus["n"] == 2
    by = {(r["method"], r["seed"]): 100 * results.objective(r) for r in runs.values()}
    label = next(lb for lb, c in confirm["candidates"].items() if c["design_id"] == best.name)
    a, b = [by[(label, s)] for s in (0, 1)], [by[(base.name, s)] for s in (0, 1)]
    from scipy.stats import ttest_rel

    p_t = ttest_rel(a, b).pvalue
    assert versus["p_t"] == (pytest.approx(p_t) if math.isfinite(p_t) else (1.0 if a == b else 0.0))
    assert versus["line"] in out and versus["line"][1:] in report
    assert f"# {versus['line']}\n" in (root / "conf" / "experiment" / "tiny.yaml").read_text()
    # compute: every evaluation trained, the search's and the confirmation's
    evaluations = sum(len(r["metrics"]["per_epoch"]) for r in [*runs.values(), *searched])
    assert state["compute"]["epochs"] == evaluations and state["compute"]["confirm_epochs"] == 12
    assert f"compute: {evaluations} evaluations trained" in out

    # the same command again: both stages were finished, nothing is launched
    stamps = _stamps(root)
    caplog.clear()
    main(argv)
    out = capfd.readouterr()
    assert "completed: run dir" not in out.out + out.err and "confirmation (" not in caplog.text
    assert "confirmation done before" in caplog.text and "random search done before" in caplog.text
    assert _stamps(root) == stamps
    assert json.loads((root / "search.json").read_text())["final"] == final
    # a confirmation job lost (as if killed): the rerun relaunches the stage, which trains that job only
    shutil.rmtree(sweep / "3")
    del stamps[sweep / "3" / "result.json"]
    main(argv)
    out = capfd.readouterr()
    assert (out.out + out.err).count("completed: run dir") == 1 and (sweep / "3" / "result.json").exists()
    assert {p: t for p, t in _stamps(root).items() if p in stamps} == stamps
    assert json.loads((root / "search.json").read_text())["final"] == final
    stamps = _stamps(root)

    # --confirm-k 0: today's behaviour, the best single run of the search, nothing more trained
    main([*argv[:argv.index("--confirm-k")], "--confirm-k", "0", *argv[argv.index("--confirm-k") + 2:]])
    out = capfd.readouterr().out
    state = json.loads((root / "search.json").read_text())
    design, stats = best_design(searched, DesignSpace(6, 4))
    assert "confirm" not in state and not state["final"]["confirmed"]
    assert state["final"]["design_id"] == str(design) and state["final"]["score"] == stats["score"]
    assert f"found design: {design} (mean objective {stats['score']:.4f} over 1 runs)" in out
    assert state["compute"] == {"epochs": sum(len(r["metrics"]["per_epoch"]) for r in searched),
                                "confirm_epochs": 0, "search_epochs": 2}
    assert _stamps(root) == stamps


def _runs(method, values, task="sst2"):
    return [{"status": "completed", "method": method, "seed": seed, "task": task, "backbone": "minilm",
             "design_id": f"{method}-design", "objective": {"name": "accuracy", "value": v}}
            for seed, v in enumerate(values)]


def _baselines(found):
    table = standings((r["method"], r["task"], r["objective"]["value"]) for r in found)
    return {m: {"label": m, "design_id": f"{m}-design", "mean": s.mean, "runs": s.runs, "per_task": s.per_task}
            for m, s in table.items() if m != "top1"}


@pytest.mark.parametrize("case", ["better", "noise", "one seed", "two tasks"])
def test_the_found_design_is_tested_against_the_best_baseline(case):
    """The line under the found design: against the best baseline (here adapter; lora is worse), the paired
    t-test over seeds scipy computes (`ttest_rel`), on the one task or on the per-seed task average."""
    from scipy.stats import ttest_rel

    from pdspace import report as report_mod
    from pdspace.search.confirm import versus_baseline

    top = {"better": [0.80, 0.82, 0.85, 0.81], "noise": [0.74, 0.70, 0.77, 0.71], "one seed": [0.80],
           "two tasks": [0.80, 0.82, 0.85, 0.81]}[case]
    adapter = [0.70, 0.74, 0.73, 0.72][:len(top)]
    found = [*_runs("top1", top), *_runs("adapter", adapter), *_runs("lora", [0.5] * len(top))]
    second = [0.6, 0.5, 0.7, 0.6]
    if case == "two tasks":
        found += [*_runs("top1", second, "cola"), *_runs("adapter", [0.5, 0.6, 0.5, 0.7], "cola"),
                  *_runs("lora", [0.1] * 4, "cola")]
    versus = versus_baseline(report_mod.build(found, method_key="method"), "top1", _baselines(found))
    assert versus["against"] == "adapter"
    if case == "one seed":
        assert versus["p"] is None and "no test (it needs two seeds or more" in versus["line"]
        return
    a, b = [100 * v for v in top], [100 * v for v in adapter]
    if case == "two tasks":
        a = [(x + 100 * y) / 2 for x, y in zip(a, second)]
        b = [(x + 100 * y) / 2 for x, y in zip(b, [0.5, 0.6, 0.5, 0.7])]
        assert versus["column"] == "average" and "on the task average" in versus["line"]
    else:
        assert versus["column"] == "sst2" and "on sst2" in versus["line"]
    assert versus["p_t"] == pytest.approx(ttest_rel(a, b).pvalue, rel=1e-9)
    assert versus["diff"] == pytest.approx(sum(a) / 4 - sum(b) / 4) and versus["n"] == 4
    better = case == "better"  # "two tasks": cola's noise hides sst2's gain in the average (p = 0.24)
    expected = "the found design is significantly better at 0.05" if better else "not significant at 0.05"
    assert expected in versus["line"] and (versus["p_t"] < 0.05) == better
