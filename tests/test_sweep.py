"""The sampling sweeper: plans (count, de-duplication, seeds, controlled expansion, legality), resume, failures."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from pdspace.design.space import Design, grouping_matches
from pdspace.search.refine import refine
from pdspace.search.plans import PLAN_FILE, PlanError, dimension_options, load_or_write_plan, make_plan, space_of
from pdspace.train import CONF_DIR

FAST = ["backbone=tiny-bert", "trainer.max_epochs=1", "task.max_train_samples=32", "task.max_eval_samples=16",
        "data.batch_size=16"]


def space(name: str, **changes) -> dict:
    block = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "space" / f"{name}.yaml").space)
    return {**block, **changes}


def test_plan_counts_distinct_legal_reproducible():
    block = space("S0", num_samples=50, tasks=["sst2", "cola"], seeds=[0, 1])
    jobs = make_plan(block, 24).jobs
    assert len(jobs) == 50 * 2 * 2 and [j.idx for j in jobs] == list(range(200))
    designs = {j.design for j in jobs}
    assert len(designs) == 50
    assert all(space_of(block, 24).contains(d) for d in designs)
    assert [j.to_dict() for j in make_plan(block, 24).jobs] == [j.to_dict() for j in jobs]
    assert {j.design for j in make_plan({**block, "seed": 1}, 24).jobs} != designs


def test_plan_takes_the_whole_space_when_it_is_small():
    block = space("S4", num_samples=1000)
    designs = [j.design for j in make_plan(block, 24).jobs]
    assert len(designs) == len(set(designs)) == space_of(block, 24).size  # every spindle grouping once


def test_controlled_plan_expands_every_option_on_equal_footing():
    block = space("S0", num_samples=4, controlled="grouping")
    jobs = make_plan(block, 24).jobs
    options = dimension_options("grouping", 24)
    assert options == ["increasing", "uniform", "decreasing", "spindle", "bottleneck"]
    assert len(jobs) == 4 * len(options)
    for base in range(4):
        group = jobs[base * 5:(base + 1) * 5]
        assert [j.labels["grouping"] for j in group] == options
        assert all(grouping_matches(j.labels["grouping"], j.design.groups) for j in group)
        # only the studied dimension differs inside one expansion
        assert len({(j.design.allocation, j.design.tunable, j.design.strategies) for j in group}) == 1


def test_controlled_strategy_group_is_tuned_with_each_set():
    jobs = make_plan(space("S0", num_samples=2, controlled="strategy_g2"), 12).jobs
    assert len(jobs) == 2 * 15
    assert all(j.design.tunable[1] and j.design.strategies[1] == j.labels["strategy_g2"] for j in jobs)


def test_job_overrides_rebuild_the_design(launch):
    job = make_plan(space("S0", num_samples=3, seed=5), 6).jobs[2]
    overrides = [o for o in job.overrides() if not o.startswith(("hydra.", "+labels"))]
    (r,) = launch(*FAST, "dry_run=true", *overrides)
    assert Design.parse(r["design_id"]) == job.design


def test_plan_file_mismatch_is_refused(tmp_path):
    block = space("S0", num_samples=3)
    load_or_write_plan(tmp_path, block, 6, make_plan(block, 6))
    load_or_write_plan(tmp_path, block, 6, make_plan(block, 6))  # same plan: a resume
    other = {**block, "seed": 9}
    with pytest.raises(PlanError, match="holds a different plan"):
        load_or_write_plan(tmp_path, other, 6, make_plan(other, 6))


def test_unknown_dimension_and_empty_tasks_are_clear_errors():
    with pytest.raises(PlanError, match="unknown dimension 'colour'"):
        dimension_options("colour", 24)
    with pytest.raises(PlanError, match="lists no tasks"):
        make_plan(space("S0", tasks=[]), 24)


def test_sweep_writes_plan_runs_jobs_and_resumes_without_retraining(launch, tmp_path):
    args = ["space=S0", "space.num_samples=3", "space.tasks=[synthetic_cls]", *FAST]
    results = launch(*args, multirun=True)
    plan = OmegaConf.load(tmp_path / "sweep" / PLAN_FILE)
    assert len(plan.jobs) == 3 and [r["status"] for r in results] == ["completed"] * 3
    assert [r["design_id"] for r in results] == [j.design_id for j in plan.jobs]
    assert all(r["labels"]["space"] == "S0" for r in results)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep").glob("*/result.json")}
    again = launch(*args, multirun=True)
    assert again == results
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing re-ran


def _fail_increasing(monkeypatch):
    """Inject a failure into every job whose design uses increasing allocation."""
    from pdspace.peft import patch

    real = patch.apply_design

    def apply_design(model, design, *args, **kwargs):
        if design.allocation == "increasing":
            raise RuntimeError("injected failure")
        return real(model, design, *args, **kwargs)

    monkeypatch.setattr(patch, "apply_design", apply_design)


def test_failed_jobs_are_tolerated_up_to_the_rate_and_kept(launch, tmp_path, capsys, monkeypatch):
    _fail_increasing(monkeypatch)
    args = ["space=S0", "space.num_samples=6", "space.tasks=[synthetic_cls]", "space.controlled=allocation", *FAST]
    results = launch(*args, "space.max_failure_rate=1.0", multirun=True)
    statuses = [r["status"] for r in results]
    assert statuses.count("failed") == 6 and statuses.count("completed") == 12, statuses
    failed = [r for r in results if r["status"] == "failed"]
    assert all("injected failure" in r["error"] for r in failed)
    # the refinement report counts them as failed and still compares the completed ones
    analysis = refine(tmp_path / "sweep", "allocation")
    assert (analysis.n_failed, analysis.n_completed) == (6, 12)
    assert analysis.option("increasing").failed == 6 and analysis.option("increasing").n == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        launch(*args, "space.max_failure_rate=0.2", multirun=True)
    out = capsys.readouterr()
    # the summary first (every job; the 12 completed ones not retrained), then one line
    assert "12/18 jobs without failure" in out.out + out.err and "launching 6" in out.out + out.err
    assert str(exit_.value.code).startswith("pdspace-train: error: 6 of 18 jobs did not complete")
    # the refused sweep still left every job's result on disk
    assert len(list((tmp_path / "sweep").glob("*/result.json"))) == 18


def test_infeasible_draws_are_redrawn_when_planning_never_trained(launch, tmp_path):
    # 0.05 % of tiny-bert is ~1,090 params: designs with BitFit in many layers cannot be built
    args = ["space=S0", "space.num_samples=6", "space.tasks=[synthetic_cls]", "budget_fraction=0.0005", *FAST]
    results = launch(*args, "dry_run=true", multirun=True)
    assert [r["status"] for r in results] == ["dry_run"] * 6
    plan = OmegaConf.load(tmp_path / "sweep" / PLAN_FILE)
    assert plan.rejected.count > 0 and len(plan.rejected.designs) == plan.rejected.count
    assert all("BudgetError" not in str(r.get("error")) for r in results)
    # the same draws, with nothing rejected, give the plan of a sweep without the check
    block = space("S0", num_samples=6, tasks=["synthetic_cls"])
    unchecked = [j.design for j in make_plan(block, 6).jobs]
    checked = [Design.parse(j.design_id) for j in plan.jobs]
    assert checked != unchecked and all(str(d) not in plan.rejected.designs for d in checked)


def test_plan_is_unchanged_by_a_check_that_accepts_everything():
    for block in (space("S0", num_samples=20), space("S0", num_samples=4, controlled="grouping"),
                  space("S4", num_samples=1000)):
        assert [j.to_dict() for j in make_plan(block, 24).jobs] == \
            [j.to_dict() for j in make_plan(block, 24, check=lambda d: None).jobs]


def test_sweep_syntax_in_arguments_is_refused(launch):
    with pytest.raises(SystemExit) as exit_:
        launch("space=S0", "space.tasks=[synthetic_cls]", "seed=0,1", *FAST, multirun=True)
    assert "space sampler makes its own jobs" in str(exit_.value.code)


def test_a_task_override_of_a_space_sweep_is_what_its_plan_says_and_its_jobs_train(launch, tmp_path):
    # audit A51: with task=synthetic_cls, samples.yaml and the summary said sst2 (the space's task) while every job
    # trained synthetic_cls; now space.tasks follows task= when space.tasks is not given
    found = launch("space=S0", "space.num_samples=2", "task=synthetic_cls", *FAST, "dry_run=true", multirun=True)
    plan = OmegaConf.load(tmp_path / "sweep" / PLAN_FILE)
    assert [j.task for j in plan.jobs] == ["synthetic_cls"] * 2 and list(plan.space.tasks) == ["synthetic_cls"]
    assert [r["task"] for r in found] == ["synthetic_cls"] * 2
    assert list(OmegaConf.load(tmp_path / "sweep" / "multirun.yaml").space.tasks) == ["synthetic_cls"]
    # given both, they must agree: one line, nothing planned
    with pytest.raises(SystemExit) as exit_:
        launch("space=S0", "space.num_samples=2", "task=synthetic_cls", "space.tasks=[synthetic_reg]", *FAST,
               "dry_run=true", "hydra.sweep.dir=" + str(tmp_path / "other"), multirun=True)
    assert "task=synthetic_cls conflicts with space.tasks=[synthetic_reg]" in str(exit_.value.code)
    assert not (tmp_path / "other" / PLAN_FILE).exists()


def test_every_job_of_a_multi_task_space_sweep_trains_its_own_task(launch):
    # pdspace-search composes with task=<first task> beside space.tasks: that task= overrode every job's own
    found = launch("space=S0", "space.num_samples=1", "space.tasks=[synthetic_cls,synthetic_reg]",
                   "task=synthetic_cls", *FAST, "dry_run=true", multirun=True)
    assert [(r["task"], r["config"]["task"]["name"]) for r in found] == [("synthetic_cls", "synthetic_cls"),
                                                                        ("synthetic_reg", "synthetic_reg")]
