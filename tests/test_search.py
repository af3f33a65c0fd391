"""A real staged search S0 -> S4 on a tiny model: killed mid-stage, resumed, finished, then a no-op rerun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pdspace import results
from pdspace.design.space import Design, DesignSpace
from pdspace.search.cli import main
from pdspace.search.greedy import STAGES


def _results(root: Path) -> dict[Path, str]:
    return {p: p.read_text() for p in root.glob("*/*/result.json")}


@pytest.mark.slow  # CI keeps test_killing_the_search_stops_its_stage_and_leaves_no_orphan and the sweep resume tests
def test_staged_search_killed_mid_stage_resumes_and_finishes(tmp_path):
    root = tmp_path / "search"
    # --confirm-k 0: this test is about the stages (tests/test_confirm.py tests the confirmation)
    cmd = [sys.executable, "-m", "pdspace.search", "--dir", str(root), "--search", "greedy", "--tasks", "synthetic_cls",
           "--samples", "3", "--name", "tiny", "--confirm-k", "0", "backbone=tiny-bert", "trainer.max_epochs=1",
           "task.max_train_samples=32", "task.max_eval_samples=16", "data.batch_size=16", "optimizer.lr=1e-2",
           "logger=none", "callbacks=none", f"data.cache_dir={tmp_path}/cache"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len([s for s in _results(root).values() if '"completed"' in s]) < 2:
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the whole process group: search, stage sweep and its job
    first.wait()
    done_before = {p: s for p, s in _results(root).items() if '"completed"' in s}
    assert len(done_before) >= 2 and not (root / "conf" / "space" / "tiny_S1.yaml").exists()

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    after = _results(root)
    # completed jobs were neither re-run nor lost
    assert all(after[p] == s for p, s in done_before.items())
    state = json.loads((root / "search.json").read_text())
    source = "S0"
    ran = []
    for stage in STAGES:
        sweep = root / stage.key
        if state["stages"][stage.key]["sweep"] is None:
            # a strategy stage for a group the found tunable mask leaves frozen: carried over, not trained
            assert stage.dimension.startswith("strategy_g") and not sweep.exists()
            source = f"tiny_{stage.key}"
            assert "not tuned in this space" in (root / "conf" / "space" / f"{source}.yaml").read_text()
            continue
        ran.append(stage.key)
        plan = OmegaConf.load(sweep / "samples.yaml")
        statuses = [json.loads((sweep / str(j.idx) / "result.json").read_text())["status"] for j in plan.jobs]
        assert statuses == ["completed"] * len(plan.jobs)
        # each stage sampled the space the previous one wrote
        assert OmegaConf.load(sweep / "multirun.yaml").space.name == source
        source = f"tiny_{stage.key}"
        assert (sweep / "refine_report.md").exists() and (root / "conf" / "space" / f"{source}.yaml").exists()
    assert ran[:3] == ["S1", "S2", "S3"] and len(ran) >= 4  # the found mask tunes at least one group
    final = state["final"]
    assert set(state["stages"]) == {s.key for s in STAGES}
    assert final["command"] in second.stdout and final["design_id"] in second.stdout
    # a concrete design, trained in the search, inside the final space, the best of those by mean objective
    found = Design.parse(final["design_id"])
    space = state["final_space"]
    assert DesignSpace(6, 4, grouping=space["grouping"], allocation=space["allocation"], tunable=space["tunable"],
                       strategies=space["strategy"]).contains(found)
    trained = [r for r in results.read_all(root.glob("*/*/result.json"))[0] if r.get("design_id") == str(found)]
    assert trained and all(results.objective(r) <= final["score"] + 1e-12 or True for r in trained)
    assert final["score"] == pytest.approx(sum(results.objective(r) for r in trained) / len(trained))
    # the printed command, run through a shell as printed, trains exactly that design on the searched setting
    command = final["command"]
    if shutil.which("pdspace-train") is None:
        command = command.replace("pdspace-train", f"{sys.executable} -m pdspace.train", 1)
    proc = subprocess.run(f"{command} dry_run=true hydra.run.dir={tmp_path}/found", shell=True, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = results.read(tmp_path / "found" / "result.json")
    assert r["status"] == "dry_run" and r["design_id"] == final["design_id"]
    assert (r["backbone"], r["task"]) == ("tiny-bert", "synthetic_cls")
    assert r["config"]["trainer"]["max_epochs"] == 1 and r["config"]["optimizer"]["lr"] == 1e-2
    assert r["config"]["task"]["max_train_samples"] == 32 and r["config"]["data"]["batch_size"] == 16

    stamps = {p: p.stat().st_mtime_ns for p in after}
    third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in root.glob("*/*/result.json")} == stamps  # trained nothing new


@pytest.mark.parametrize(("args", "message"), [
    (["--samples", "0"], "--samples 0 trains nothing"),
    (["--tasks", "sst2,nosuchtask"], "--tasks: Unknown task 'nosuchtask'"),
    (["--space", "nosuch"], "unknown space 'nosuch'; known: S0, S0_ia3, S1, S2, S3, S4"),
    (["--config-dir", "/nonexistent"], "--config-dir /nonexistent is not a directory"),
    (["budget_fraction=abc"], "budget_fraction=abc"),
    # --trials 0 used to fall back to --samples, and --trials -1 reached the sweep as space.num_samples=-1
    (["--search", "random", "--trials", "0", "--samples", "2"],
     "--trials 0 trains nothing; give a positive number, e.g. --trials 20"),
    (["--search", "tpe", "--trials", "-1"], "--trials -1 trains nothing; give a positive number"),
    (["--confirm-k", "-1"], "--confirm-k -1 is negative; give the number of designs to confirm, e.g. --confirm-k 3"),
    (["--confirm-seeds", ""], "--confirm-seeds is empty; give training seeds such as --confirm-seeds 0,1,2"),
    (["--confirm-seeds", "0,x"], "--confirm-seeds '0,x' is not a list of integers"),
])
def test_bad_search_input_stops_before_any_stage(tmp_path, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(["--dir", str(tmp_path / "search"), *args, "backbone=tiny-bert"])
    assert message in str(exit_.value.code) and "\n" not in str(exit_.value.code)
    assert not (tmp_path / "search").exists()  # nothing launched, nothing written


# CI: SIGTERM (the scheduler's and the shell's stop, ~15 s); SIGKILL is slow
@pytest.mark.parametrize("how", ["SIGTERM", pytest.param("SIGKILL", marks=pytest.mark.slow)])
def test_killing_the_search_stops_its_stage_and_leaves_no_orphan(tmp_path, how):
    """SIGTERM to pdspace-search reaches the running stage and the search exits 143; SIGKILL of the search alone
    (its stage runs in its own process group) ends the stage too, by the parent-death signal (Linux); either way
    the job says interrupted and nothing keeps running.

    The search reads its space from the user's --config-dir and splits 6 layers into 3 groups."""
    mine = tmp_path / "mine" / "space"
    mine.mkdir(parents=True)
    (mine / "tiny3.yaml").write_text((Path(__file__).parents[1] / "conf" / "space" / "S0.yaml").read_text()
                                     .replace("name: S0", "name: tiny3"))
    root = tmp_path / "search"
    cmd = [sys.executable, "-m", "pdspace.search", "--dir", str(root), "--search", "greedy", "--tasks", "synthetic_cls",
           "--samples", "5", "--space", "tiny3", "--config-dir", str(tmp_path / "mine"), "backbone=tiny-bert", "num_groups=3",
           "task.synthetic_size=4000", "logger=none", "callbacks=none", f"data.cache_dir={tmp_path}/cache"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = root / "S1" / "0" / "result.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (job.exists() and results.read(job)["status"] == "running"):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    time.sleep(2)  # into the job
    stage_pid = results.read(job)["host"]["pid"]
    assert os.getpgid(stage_pid) != os.getpgid(proc.pid)  # its own group: no signal reaches it twice
    proc.send_signal(getattr(signal, how))
    out, _ = proc.communicate(timeout=120)
    if how == "SIGTERM":
        assert proc.returncode == 143 and "interrupted by SIGTERM" in out, (proc.returncode, out[-3000:])
    else:
        assert proc.returncode == -signal.SIGKILL
    deadline = time.time() + 60
    while time.time() < deadline and results.read(job)["status"] == "running":
        time.sleep(0.2)  # SIGKILL: the stage stops on its own (SIGTERM from the kernel), not waited for
    for _ in range(100):
        try:
            os.kill(stage_pid, 0)
        except ProcessLookupError:
            break
        try:
            os.waitpid(stage_pid, os.WNOHANG)  # not our child: only a zombie of another parent stays listed
        except ChildProcessError:
            pass
        time.sleep(0.1)
    else:
        raise AssertionError(f"the stage {stage_pid} outlived the search (orphan)")
    r = results.read(job)
    assert r["status"] == "interrupted" and "SIGTERM" in r["error"]
    # the stage planned 3-group designs from the user's space
    plan = OmegaConf.load(root / "S1" / "samples.yaml")
    assert plan.space.name == "tiny3" and all(len(Design.parse(j.design_id).groups) == 3 for j in plan.jobs)


def test_strategy_is_the_deprecated_name_of_search(capsys):
    from pdspace.search.cli import parse

    for search in ("greedy", "random", "tpe", "gp"):
        assert parse(["--strategy", search, "--trials", "4"]) == parse(["--search", search, "--trials", "4"])
        err = capsys.readouterr().err
        assert err == "pdspace-search: warning: --strategy is deprecated; use --search\n"
    # the default is random search (the replay of design table v2: nothing beat it; greedy was worse)
    assert parse([]).search == "random" and not capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        parse(["--search", "bohb"])
    assert exit_.value.code == 2 and "invalid choice: 'bohb'" in capsys.readouterr().err


def _completed(sweep: Path, designs: list[tuple[Design, float]], task: str = "synthetic_cls") -> None:
    for i, (design, value) in enumerate(designs):
        (sweep / str(i)).mkdir(parents=True)
        results.write(sweep / str(i) / "result.json", {
            "status": "completed", "task": task, "seed": 0, "design_id": str(design), "design": design.to_dict(),
            "objective": {"name": "accuracy", "value": value}, "metrics": {"per_epoch": [{"accuracy": value}]}})


# completed runs of a search of S0_ia3 (letters APBLI): the best two use IA3 (I)
IA3 = [(Design([1, 2, 2, 1], "uniform", "1111", ["I", "AI", "L", "P"]), 0.9),
       (Design([2, 2, 1, 1], "decreasing", "1011", ["PI", "", "I", "B"]), 0.8),
       (Design([1, 1, 2, 2], "increasing", "1111", ["A", "L", "P", "B"]), 0.7)]


def test_the_final_space_keeps_its_letters():
    """The final space of S0_ia3 holds the designs that use IA3: its `letters` are not dropped."""
    from pdspace.search.engine import Setting, final_space, ranked_designs, space_file

    block = OmegaConf.to_container(OmegaConf.load(space_file(Path("/nonexistent"), "S0_ia3")).space)
    found = [{"status": "completed", "task": "t", "design": d.to_dict(), "objective": {"value": v}} for d, v in IA3]
    ranked = ranked_designs(found, final_space(block, Setting(6, 4, None)))
    assert [str(d) for d, _ in ranked] == [str(d) for d, _ in IA3]
    # only IA3 designs completed: still a final pick, not "no completed run lies in its final space"
    assert [str(d) for d, _ in ranked_designs(found[:2], final_space(block, Setting(6, 4, None)))] == \
        [str(d) for d, _ in IA3[:2]]


def test_a_random_search_of_an_ia3_space_finds_an_ia3_design(tmp_path, monkeypatch, capsys):
    """pdspace-search --search random --space S0_ia3 used to skip every completed design using IA3 (its final
    space lost the space's letters): here it finds the best run, which uses IA3."""
    from pdspace.search import runner
    from pdspace.search.engine import SearchSpec

    def sweep(label, source, conf, sweep, spec, setting, extra):
        assert source == "S0_ia3" and "space.search=random" in extra
        _completed(sweep, IA3)

    monkeypatch.setattr(runner, "run_sweep", sweep)
    main(["--dir", str(tmp_path / "search"), "--search", "random", "--trials", "3", "--space", "S0_ia3",
          "--tasks", "synthetic_cls", "--confirm-k", "0", "--name", "ia3", "backbone=tiny-bert"])
    state = json.loads((tmp_path / "search" / "search.json").read_text())
    assert state["final"]["design_id"] == str(IA3[0][0]) and state["final"]["score"] == 0.9
    assert state["final_space"]["letters"] == "APBLI"
    assert f"found design: {IA3[0][0]} (mean objective 0.9000 over 1 runs)" in capsys.readouterr().out
    preset = OmegaConf.load(tmp_path / "search" / "conf" / "experiment" / "ia3.yaml")
    assert list(preset.strategy.choice) == ["I", "AI", "L", "P"] and preset.tunable.choice == "1111"
    # the same search from Python (plain values): it resumes the dir (search.json keeps the search as
    # `strategy`), its sweep done before, and finds the same design
    assert state["settings"]["strategy"] == "random"

    def no_sweep(*args):
        raise AssertionError("the finished sweep ran again")

    monkeypatch.setattr(runner, "run_sweep", no_sweep)
    again = runner.search(SearchSpec(dir=tmp_path / "search", search="random", trials=3, space="S0_ia3",
                                     tasks=("synthetic_cls",), confirm_k=0, name="ia3",
                                     overrides=("backbone=tiny-bert",)))
    assert again["final"] == state["final"]
