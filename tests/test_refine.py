"""Refinement: hand-made sweeps with known winners, narrowed spaces, reports, CLI and the Hydra callback."""

import json
import logging
import math

import pytest
from omegaconf import OmegaConf

from pdspace.design.space import Design
from pdspace.search.analysis import analyse, load_results, option_of
from pdspace.search.narrowing import narrowed_space, write_space
from pdspace.search.refine import RefineCallback, main, refine
from pdspace.search.refine_report import format_table, report

S4 = ["AL", "AP", "APB", "PBL"]
SPACE = {"name": "S0", "grouping": "any", "allocation": "any", "tunable": "any", "strategy": "any",
         "num_samples": 100, "seed": 0, "controlled": "allocation", "tasks": ["sst2"], "seeds": [0],
         "max_failure_rate": 0.25}


class Sweep:
    """A sweep dir filled one result.json at a time."""

    def __init__(self, path):
        self.path, self.n = path, 0
        path.mkdir(parents=True, exist_ok=True)

    def add(self, value=0.5, *, task="sst2", status="completed", alloc="uniform", groups=(1, 2, 2, 1),
            strategies=S4, tunable=None, labels=None):
        design = Design(groups, alloc, tunable, strategies)
        result = {"status": status, "error": None if status == "completed" else "boom", "task": task, "seed": 0,
                  "design_id": str(design), "design": design.to_dict(), "output_dir": str(self.path / str(self.n))}
        if labels is not None:
            result["labels"] = labels
        if status == "completed":
            result["objective"] = {"name": "accuracy", "value": value}
        (self.path / str(self.n)).mkdir()
        (self.path / str(self.n) / "result.json").write_text(json.dumps(result))
        self.n += 1
        return self


@pytest.fixture
def sweep(tmp_path):
    return Sweep(tmp_path / "sweep")


def test_winner_is_the_mean_over_tasks(sweep):
    # uniform is best on sst2 and by the pooled mean (0.82); increasing has the higher mean over tasks (0.75 > 0.70)
    for _ in range(4):
        sweep.add(0.9, alloc="uniform")
    sweep.add(0.5, alloc="uniform", task="rte")
    sweep.add(0.8, alloc="increasing")
    sweep.add(0.7, alloc="increasing", task="rte")
    a = analyse(load_results(sweep.path)[0], "allocation")
    assert a.winner == "increasing"
    assert a.tasks == ["rte", "sst2"] and a.metrics == ["accuracy"] and a.n_completed == 7
    assert a.option("uniform").mean == pytest.approx(0.7)
    assert a.option("uniform").per_task == pytest.approx({"rte": 0.5, "sst2": 0.9})
    assert [o.option for o in a.options] == ["increasing", "uniform"]
    assert "averaged over tasks" in a.rule


def test_options_are_ordered_by_the_one_rule_coverage_mean_count_then_name(tmp_path):
    # pdspace.search.ordering: more tasks first, then the mean, then more runs, then the name (no median)
    s = Sweep(tmp_path / "coverage").add(0.9, alloc="uniform").add(0.5, alloc="decreasing")
    s.add(0.4, alloc="decreasing", task="rte")
    assert analyse(load_results(s.path)[0], "allocation").winner == "decreasing"
    s = Sweep(tmp_path / "median")
    for v in (0.25, 0.625, 0.625):
        s.add(v, alloc="uniform")
    for v in (0.375, 0.5, 0.625):
        s.add(v, alloc="decreasing")
    a = analyse(load_results(s.path)[0], "allocation")
    assert a.winner == "decreasing" and a.option("uniform").median > a.option("decreasing").median
    s = Sweep(tmp_path / "count").add(0.5, alloc="decreasing").add(0.5, alloc="uniform").add(0.5, alloc="uniform")
    assert analyse(load_results(s.path)[0], "allocation").winner == "uniform"
    s = Sweep(tmp_path / "name").add(0.5, alloc="uniform").add(0.5, alloc="decreasing")
    a = analyse(load_results(s.path)[0], "allocation")
    assert a.winner == "decreasing" and [o.option for o in a.options] == ["decreasing", "uniform"]
    assert "more results, then to the alphabetically first" in a.rule


def test_failed_and_nan_results_are_counted_not_used(sweep):
    sweep.add(0.6, alloc="uniform").add(status="failed", alloc="uniform")
    sweep.add(float("nan"), alloc="decreasing").add(None, alloc="decreasing").add(status="failed", alloc="decreasing")
    sweep.add(0.99, status="dry_run", alloc="increasing")
    a = analyse(load_results(sweep.path)[0], "allocation")
    assert a.winner == "uniform"
    # the dry run is neither a result nor a failure
    assert (a.n_results, a.n_completed, a.n_failed) == (5, 1, 4)
    assert (a.option("uniform").n, a.option("uniform").failed) == (1, 1)
    dec = a.option("decreasing")
    assert (dec.n, dec.failed) == (0, 3) and math.isnan(dec.mean)
    assert "only one option (uniform)" in a.note
    assert a.to_dict()["options"][-1]["mean"] is None  # NaN is written as null
    assert "decreasing" in format_table(a)


def test_no_completed_results_and_unknown_dimension(sweep):
    sweep.add(status="failed")
    with pytest.raises(ValueError, match="no completed results"):
        analyse(load_results(sweep.path)[0], "grouping")
    with pytest.raises(ValueError, match="grouping, allocation, tunable or strategy_g1"):
        option_of({}, "width")


def test_single_option_wins(sweep):
    sweep.add(0.4).add(0.5, task="rte")
    a = analyse(load_results(sweep.path)[0], "tunable")
    assert a.winner == "1111" and len(a.options) == 1 and "only one option" in a.note


def test_unreadable_result_is_skipped(sweep):
    sweep.add(0.4)
    (sweep.path / "9").mkdir()
    (sweep.path / "9" / "result.json").write_text("{half")
    results, unreadable = load_results(sweep.path)
    assert len(results) == 1 and results[0]["_path"].endswith("0/result.json")
    assert [p for p, _ in unreadable] == [str(sweep.path / "9" / "result.json")]
    # the report counts it instead of dropping it silently
    with pytest.warns(UserWarning, match="unreadable result file"):
        a = refine(sweep.path, "tunable")
    assert list(a.unreadable) == [str(sweep.path / "9" / "result.json")]
    assert "1 unreadable result files" in (sweep.path / "refine_report.md").read_text()


def test_the_console_script_says_each_unreadable_result_in_one_warning_line(sweep, capsys):
    sweep.add(0.4).add(0.5, groups=(2, 2, 1, 1))
    for name in ("8", "9"):
        (sweep.path / name).mkdir()
        (sweep.path / name / "result.json").write_text("{half")
    main([str(sweep.path), "--dimension", "grouping"])
    err = capsys.readouterr().err.splitlines()
    why = "JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    assert sorted(err) == [f"pdspace-refine: warning: unreadable result file {sweep.path / n / 'result.json'}: {why}"
                           for n in ("8", "9")]


def test_a_fresh_process_refines_a_sweep_knowing_the_shipped_strategies(sweep):
    """`pdspace-refine` imports no strategy module: the registry's first read registers the shipped ones."""
    import subprocess
    import sys

    sweep.add(0.4).add(0.5, groups=(2, 2, 1, 1))
    code = ("import sys; from pdspace.design.registry import strategies; print(''.join(strategies())); "
            f"from pdspace.search.refine import main; sys.exit(main([{str(sweep.path)!r}, '--dimension', 'grouping']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "APBLI" and "\nwinner: " in run.stdout


def test_warning_lines_prints_every_warning_once_a_line_also_when_the_body_raises(capsys):
    import warnings

    from pdspace.errors import warning_lines

    with pytest.raises(OSError, match="disk"), warning_lines("pdspace-x"):
        for _ in range(2):
            warnings.warn("same words", stacklevel=1)
        raise OSError("disk")
    assert capsys.readouterr().err == "pdspace-x: warning: same words\n" * 2


VARIANTS = [S4, ["L", "L", "L", "L"], ["A", "A", "A", "A"]]  # three base samples of a controlled sweep


def test_the_winner_is_tested_against_the_runner_up_over_pairs_of_one_sample(sweep, capsys):
    from scipy import stats as sps

    uniform, decreasing = [0.80, 0.70, 0.75], [0.78, 0.69, 0.70]
    for strategies, u, d in zip(VARIANTS, uniform, decreasing):  # each sample expanded over two groupings
        sweep.add(u, groups=(1, 2, 2, 1), strategies=strategies, labels={"grouping": "uniform"})
        sweep.add(d, groups=(2, 2, 1, 1), strategies=strategies, labels={"grouping": "decreasing"})
    sweep.add(0.5, groups=(1, 1, 2, 2), labels={"grouping": "increasing"})  # a third option, last
    a = analyse(load_results(sweep.path)[0], "grouping")
    assert (a.winner, a.test.against, a.test.test, a.test.n) == ("uniform", "decreasing", "paired t", 3)
    ref = sps.ttest_rel(uniform, decreasing)
    assert a.test.diff == pytest.approx(0.08 / 3) and a.test.p == pytest.approx(ref.pvalue)
    main([str(sweep.path), "--dimension", "grouping"])
    out = capsys.readouterr().out
    assert (f"test: against decreasing (runner-up): +0.0267 over 3 pairs of runs that differ only in grouping, "
            f"paired t-test p = {ref.pvalue:.3f}, not significant at 0.05 (the data do not separate them)") in out
    assert "Test: against decreasing (runner-up): +0.0267" in (sweep.path / "refine_report.md").read_text()
    assert json.loads((sweep.path / "refine_report.json").read_text())["test"]["p"] == pytest.approx(ref.pvalue)


def test_unpaired_runs_get_welchs_test_and_too_few_get_none(sweep):
    from scipy import stats as sps

    uniform, decreasing = [0.80, 0.70, 0.75], [0.60, 0.65]
    for strategies, v in zip(VARIANTS, uniform):
        sweep.add(v, groups=(1, 2, 2, 1), strategies=strategies, labels={"grouping": "uniform"})
    for v in decreasing:  # samples of their own: nothing pairs with the uniform runs
        sweep.add(v, groups=(2, 2, 1, 1), strategies=["B", "B", "B", "B"], labels={"grouping": "decreasing"})
    a = analyse(load_results(sweep.path)[0], "grouping")
    assert (a.test.test, a.test.n) == ("Welch t", 5)
    assert a.test.p == pytest.approx(sps.ttest_ind(uniform, decreasing, equal_var=False).pvalue)
    assert "significant at 0.05" in a.test.line("grouping") and "not" not in a.test.line("grouping")
    one = Sweep(sweep.path.parent / "one")
    one.add(0.8, labels={"grouping": "uniform"}).add(0.7, strategies=["B", "B", "B", "B"],
                                                     labels={"grouping": "decreasing"})
    t = analyse(load_results(one.path)[0], "grouping").test
    assert (t.test, t.p) == ("none", None) and "no test (0 pairs of runs" in t.line("grouping")
    alone = Sweep(sweep.path.parent / "alone")
    assert analyse(load_results(alone.add(0.8).path)[0], "grouping").test.why == "no other option has completed results"


def test_welch_t_is_scipys_and_decides_zero_spread_as_paired_t_does():
    from scipy import stats as sps

    from pdspace.stats import welch_t

    a, b = [0.1, 0.4, 0.35, 0.2], [0.3, 0.5, 0.45]
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert welch_t(a, b) == pytest.approx((ref.statistic, ref.pvalue))
    assert welch_t([0.5, 0.5], [0.5, 0.5]) == (0.0, 1.0)
    assert welch_t([0.6, 0.6], [0.5, 0.5]) == (math.inf, 0.0)
    with pytest.raises(ValueError, match="at least two values each"):
        welch_t([0.5], [0.5, 0.6])


def test_grouping_from_labels_or_design():
    spindle = Design([1, 2, 2, 1], "uniform", None, S4).to_dict()
    assert option_of({"design": spindle, "labels": {"grouping": "spindle"}}, "grouping") == "spindle"
    assert option_of({"design": spindle, "labels": {}}, "grouping") == "uniform"  # 1-2-2-1 is also uniform
    derived = {(1, 3, 3, 1): "spindle", (1, 1, 2, 4): "increasing", (4, 2, 1, 1): "decreasing",
               (3, 1, 1, 3): "bottleneck", (1, 3, 1, 3): "other"}
    for groups, option in derived.items():
        assert option_of({"design": Design(groups, "uniform", None, S4).to_dict()}, "grouping") == option
    assert option_of({"labels": {"grouping": [1, 2, 2, 1]}}, "grouping") == "1-2-2-1"
    partial = {"design": Design([1, 2, 2, 1], "decreasing", "1011", ["AL", "", "B", "PL"]).to_dict()}
    assert [option_of(partial, d) for d in ("allocation", "tunable", "strategy_g1", "strategy_g2")] == \
        ["decreasing", "1011", "A+L", "-"]
    assert option_of({"labels": {"strategy_g2": "LA"}}, "strategy_g2") == "A+L"


def test_grouping_labels_decide_the_winner(sweep):
    sweep.add(0.7, groups=(1, 2, 2, 1), labels={"grouping": "spindle"})
    sweep.add(0.6, groups=(2, 1, 1, 2), labels={"grouping": "uniform"})
    a = analyse(load_results(sweep.path)[0], "grouping")
    assert a.winner == "spindle"
    assert narrowed_space(SPACE, "grouping", a.winner)["grouping"] == "spindle"
    assert narrowed_space(SPACE, "grouping", "1-2-2-1")["grouping"] == [1, 2, 2, 1]


def test_narrowing_strategy_gives_a_per_group_list():
    out = narrowed_space(SPACE, "strategy_g2", "A+L")
    assert out["strategy"] == ["any", "AL", "any", "any"] and out["controlled"] is None
    assert SPACE["strategy"] == "any" and SPACE["controlled"] == "allocation"  # the source is left alone
    assert narrowed_space({**SPACE, "tunable": "101"}, "strategy_g3", "P")["strategy"] == ["any", "any", "P"]
    assert narrowed_space({**SPACE, "strategy": S4}, "strategy_g1", "B+L")["strategy"] == ["BL", *S4[1:]]
    assert narrowed_space(SPACE, "tunable", "0111")["tunable"] == "0111"
    assert narrowed_space(SPACE, "allocation", "decreasing")["allocation"] == "decreasing"
    with pytest.raises(ValueError, match="cannot pin"):
        narrowed_space(SPACE, "strategy_g2", "-")
    with pytest.raises(ValueError):
        narrowed_space(SPACE, "allocation", "sideways")


def test_space_file_round_trips_with_provenance(sweep, tmp_path):
    sweep.add(0.6, alloc="uniform").add(0.7, alloc="decreasing").add(status="failed", alloc="uniform")
    source = write_space(SPACE, tmp_path / "conf" / "space" / "S0.yaml", provenance={"S0": "test space"})
    a = refine(sweep.path, "allocation", space_file=source)
    path = sweep.path / "conf" / "space" / "S0_allocation.yaml"
    assert a.files["space"] == str(path)
    text = path.read_text()
    assert text.startswith("# @package _global_\n")
    for line in (f"# source sweep: {sweep.path.resolve()}", "# dimension: allocation", "# metric: accuracy",
                 "# winner: decreasing", "# results: 3 (2 completed, 1 failed)", "# rule: mean: highest mean",
                 "# test: against uniform: no test (1 pair of runs that differ only in the dimension, 2 needed, and "
                 "not two runs each on one task)", "# date: "):
        assert line in text
    loaded = OmegaConf.to_container(OmegaConf.load(path))
    assert loaded["space"] == {**SPACE, "name": "S0_allocation", "allocation": "decreasing", "controlled": None}
    assert loaded["defaults"] == [{"override /hydra/sweeper": "pdspace"}]
    b = refine(sweep.path, "allocation", space=SPACE, config_dir=tmp_path / "cfg", name="S1b")
    assert OmegaConf.load(tmp_path / "cfg" / "space" / "S1b.yaml").space.name == "S1b" and b.winner == a.winner


def test_report_files(sweep):
    sweep.add(0.6, alloc="uniform").add(0.7, alloc="decreasing").add(0.65, alloc="decreasing", task="rte")
    a = analyse(load_results(sweep.path)[0], "allocation")
    paths = report(a, sweep.path)
    assert {p.name for p in paths.values()} == {"refine_report.md", "refine_report.json", "edf_allocation.png",
                                                "box_allocation.png"}
    assert all(p.stat().st_size > 0 for p in paths.values())
    md = paths["md"].read_text()
    assert "| option | n | failed | mean |" in md and "**Winner: decreasing**" in md and "(edf_allocation.png)" in md
    data = json.loads(paths["json"].read_text())
    assert data["winner"] == "decreasing" and data["options"][0]["edf"]["y"] == [0.5, 1.0]


def test_bootstrap_best_of(sweep):
    for task in ("sst2", "rte"):
        for i, alloc in enumerate(("uniform", "decreasing", "increasing", "uniform", "decreasing")):
            sweep.add(0.5 + 0.1 * i if task == "sst2" else 0.9 - 0.1 * i, task=task, alloc=alloc)
    results = load_results(sweep.path)[0]
    a = analyse(results, "allocation", bootstrap=500, seed=3)
    shares = {o.option: o.best_of for o in a.options}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares == {o.option: o.best_of for o in analyse(results, "allocation", bootstrap=500, seed=3).options}
    assert shares != {o.option: o.best_of for o in analyse(results, "allocation", bootstrap=500, seed=4).options}
    # one task: the option holding the top value wins most resamples
    one = analyse([r for r in results if r["task"] == "sst2"], "allocation", bootstrap=500)
    assert sum(o.best_of for o in one.options) == pytest.approx(1.0)
    assert max(one.options, key=lambda o: o.best_of).option == "decreasing"


def test_cli(sweep, tmp_path, capsys):
    sweep.add(0.6, alloc="uniform").add(0.7, alloc="decreasing")
    assert main([str(sweep.path), "--dimension", "allocation"]) == 0
    out = capsys.readouterr().out
    assert "winner: decreasing" in out and "refine_report.md" in out
    for argv in ([str(tmp_path / "nowhere"), "--dimension", "grouping"], [str(sweep.path), "--dimension", "width"]):
        # bad input: exit 1 with one line (the one convention, pdspace.errors); a usage error stays argparse's 2
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        line = str(exit_info.value.code)
        assert line.startswith("pdspace-refine: error:") and len(line.strip().splitlines()) == 1
        assert not capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep.path)])
    assert exit_info.value.code == 2 and "--dimension" in capsys.readouterr().err


def test_wandb_failure_only_warns(sweep, monkeypatch):
    import wandb

    def broken(**kwargs):
        raise RuntimeError("no W&B today")

    monkeypatch.setattr(wandb, "init", broken)
    sweep.add(0.6)
    with pytest.warns(UserWarning, match="no W&B today"):
        assert refine(sweep.path, "allocation", wandb=True).winner == "uniform"


def _config(sweep_dir, controlled=None):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}, "space": {**SPACE, "controlled": controlled}})


def test_callback(sweep, tmp_path, caplog):
    sweep.add(0.6, alloc="uniform").add(0.7, alloc="decreasing")
    RefineCallback().on_multirun_end(_config(sweep.path))
    assert not (sweep.path / "refine_report.md").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with caplog.at_level(logging.ERROR, logger="pdspace"):
        RefineCallback(dimension="grouping").on_multirun_end(_config(empty))
        RefineCallback().on_multirun_end(_config(tmp_path / "missing", controlled="grouping"))
    assert len([r for r in caplog.records if "refine failed" in r.getMessage()]) == 2
    RefineCallback(config_dir=str(tmp_path / "cfg")).on_multirun_end(_config(sweep.path, controlled="allocation"))
    space = OmegaConf.load(tmp_path / "cfg" / "space" / "S0_allocation.yaml").space
    assert space.allocation == "decreasing" and space.controlled is None


def test_a_config_dir_its_path_cannot_hold_is_one_line_naming_the_option(sweep, tmp_path):
    sweep.add(0.6, alloc="uniform").add(0.7, alloc="decreasing")
    source = write_space(SPACE, tmp_path / "conf" / "space" / "S0.yaml", provenance={"S0": "test space"})
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep.path), "--dimension", "allocation", "--space-file", str(source),
              "--config-dir", str(tmp_path / "file"), "--name", "S1"])
    assert exit_info.value.code == (f"pdspace-refine: error: cannot create the directory {tmp_path / 'file'}/space: "
                                    "Not a directory; choose another --config-dir")
