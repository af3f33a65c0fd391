"""Joint, multi-fidelity search: the design space as Optuna parameters, job-side trials that prune, studies in
SQLite and PostgreSQL shared by parallel workers, resume after a kill, the study report."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pdspace import results
from pdspace.design.space import Design, DesignSpace
from pdspace.search.study import design_params, open_study, study_spec

TINY = ["backbone=tiny-bert", "task=synthetic_cls", "space.tasks=[synthetic_cls]", "task.synthetic_size=128",
        "data.batch_size=16", "optimizer.lr=1e-2", "trainer.max_epochs=3", "logger=none", "callbacks=none"]
ENV = {**os.environ, "WANDB_MODE": "disabled"}


# --------------------------------------------------------------------------- the space as search parameters


class Fixed:
    """A stand-in trial that answers every suggestion from a dict (and records what was asked)."""

    def __init__(self, values: dict) -> None:
        self.values, self.asked = values, []

    def suggest_int(self, name, low, high):
        self.asked.append(name)
        return self.values[name]

    def suggest_categorical(self, name, choices):
        self.asked.append(name)
        return self.values[name]


def test_cut_points_map_to_the_split_and_patterns_to_their_nearest_member():
    space = DesignSpace(6, 4, grouping="any", allocation="uniform", tunable="all", strategies="L")
    trial = Fixed({"cut_1": 1, "cut_2": 3, "cut_3": 5})
    assert design_params(trial, space).groups == (1, 2, 2, 1)
    assert trial.asked == ["cut_1", "cut_2", "cut_3"]  # fixed dimensions are no parameters
    # repeated cuts are no split: the nearest composition stands in
    assert design_params(Fixed({"cut_1": 2, "cut_2": 2, "cut_3": 5}), space).groups in {(1, 1, 3, 1), (2, 1, 2, 1)}
    spindle = DesignSpace(24, 4, grouping="spindle", allocation="uniform", tunable="all", strategies="L")
    design = design_params(Fixed({"cut_1": 6, "cut_2": 12, "cut_3": 18}), spindle)  # uniform cuts
    assert design.groups == (5, 7, 7, 5)  # cuts 5, 12, 19: the one spindle split at L1 distance 2


def test_every_design_of_a_small_space_is_reachable():
    space = DesignSpace(5, 3, grouping="any", allocation=["uniform", "increasing"], tunable="any",
                        strategies=[["A", "AL"], "any", ["P"]])
    reached = set()
    import itertools

    for cuts in itertools.product(range(1, 5), repeat=2):
        for alloc in ("uniform", "increasing"):
            for flags in itertools.product([True, False], repeat=3):
                for letters in itertools.product([True, False], repeat=6):
                    values = {"cut_1": cuts[0], "cut_2": cuts[1], "allocation": alloc,
                              **{f"tune_g{k + 1}": f for k, f in enumerate(flags)},
                              **{f"g1_{ch}": v for ch, v in zip("AL", letters[:2])},
                              **{f"g2_{ch}": v for ch, v in zip("APBL", letters[2:])}}
                    reached.add(design_params(Fixed(values), space))
    assert reached == set(space)


def test_strategy_flags_are_asked_only_for_tuned_groups():
    space = DesignSpace(4, 4, grouping="any", allocation="uniform", tunable="any", strategies="any")
    trial = Fixed({"tune_g1": True, "tune_g2": False, "tune_g3": False, "tune_g4": True,
                   **{f"g{k}_{ch}": ch in "AL" for k in (1, 4) for ch in "APBL"}})
    design = design_params(trial, space)
    assert design == Design([1, 1, 1, 1], "uniform", "1001", ["AL", "", "", "AL"])
    assert not any(name.startswith(("g2_", "g3_")) for name in trial.asked)


def test_a_study_refuses_other_settings_on_relaunch(tmp_path):
    block = {"name": "S0", "search": "tpe", "pruner": "hyperband", "trials": 4}
    open_study(study_spec(block, tmp_path, "sst2", 3), create=True)
    with pytest.raises(ValueError, match="was made with"):
        open_study(study_spec({**block, "search": "gp"}, tmp_path, "sst2", 3), create=True)
    with pytest.raises(ValueError, match="cannot prune"):
        study_spec({**block, "objectives": ["score", "trainable_params"]}, tmp_path, "sst2", 3)


def test_zero_trials_are_refused_and_null_means_num_samples(tmp_path):
    # audit A15: `trials or num_samples` read space.trials=0 as unset and ran 100 (or num_samples) trials
    from pdspace.config import ConfigError, check_space

    block = {"name": "S0", "search": "tpe", "num_samples": 7}
    assert study_spec({**block, "trials": None}, tmp_path, "sst2", 3).trials == 7
    assert study_spec({**block, "trials": 2}, tmp_path, "sst2", 3).trials == 2
    with pytest.raises(ConfigError, match="space.trials=0 runs nothing"):
        study_spec({**block, "trials": 0}, tmp_path, "sst2", 3)
    for key, value in (("trials", 0), ("trials", -1), ("max_resource", 0), ("startup_trials", -1)):
        with pytest.raises(ConfigError, match=rf"space.{key}={value} is not an integer"):
            check_space({**block, "tasks": ["sst2"], "seeds": [0], key: value})


def test_a_plain_postgresql_url_uses_the_installed_psycopg2(monkeypatch):
    # audit A32: SQLAlchemy 2.1 maps postgresql:// to psycopg 3, while pdspace[postgres] installs psycopg2
    import importlib.util

    from pdspace.search.study import storage_url

    real = importlib.util.find_spec
    installed = {"psycopg2"}

    def find_spec(name, *args, **kwargs):
        if name in ("psycopg", "psycopg2"):
            return object() if name in installed else None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert storage_url("postgresql://u:pw@host/db") == "postgresql+psycopg2://u:pw@host/db"
    for url in ("postgresql+psycopg2://host/db", "postgresql+psycopg://host/db", "sqlite:///x.db",
                "mysql://host/db"):
        assert storage_url(url) == url
    installed.add("psycopg")  # psycopg 3 there: SQLAlchemy's own choice works
    assert storage_url("postgresql://host/db") == "postgresql://host/db"
    installed.clear()
    assert storage_url("postgresql://host/db") == "postgresql://host/db"


def test_an_unreachable_storage_is_one_line_naming_the_redacted_url(tmp_path):
    # audit A32b: a raw sqlalchemy OperationalError traceback
    from pdspace.config import ConfigError

    block = {"name": "S0", "search": "tpe", "trials": 2}
    url = f"sqlite:///{tmp_path}/nosuchdir/study.db"
    with pytest.raises(ConfigError) as err:
        open_study(study_spec({**block, "storage": url}, tmp_path, "sst2", 3), create=True)
    assert str(err.value).startswith(f"cannot open the study storage {url} (unable to open database file); check")
    if importlib.util.find_spec("psycopg2") is None:
        return
    url = "postgresql+psycopg2://me:secret@127.0.0.1:1/db"  # nothing listens on port 1: refused at once
    with pytest.raises(ConfigError) as err:
        open_study(study_spec({**block, "storage": url}, tmp_path, "sst2", 3), create=True)
    text = str(err.value)
    assert "postgresql+psycopg2://me:***@127.0.0.1:1/db" in text and "secret" not in text and "\n" not in text
    assert "check the host, database and credentials of space.storage" in text


def test_the_study_report_and_the_search_name_the_same_best_design_among_ties(tmp_path):
    """Seen with TPE + Hyperband: every trial scored 0.4688; the report named trial 0, the search another design.

    One rule (pdspace.search.ordering) now decides both: higher mean, more runs, then the design id."""
    import json

    from pdspace.search.engine import best_design
    from pdspace.search.study_report import study_report

    ids = ["g3-1-1-1.alloc-decreasing.tune-0110.-|L|L|-", "g1-1-1-3.alloc-decreasing.tune-0110.-|P+L|L|-",
           "g2-2-1-1.alloc-uniform.tune-1111.A|A|A|A"]
    values = [0.4688, 0.4688, 0.25]
    sweep = tmp_path / "sweep"
    spec = study_spec({"name": "S0", "search": "tpe", "pruner": "hyperband", "trials": 3}, sweep, "synthetic_cls", 1)
    sweep.mkdir()
    study = open_study(spec, create=True)
    for number, (design_id, value) in enumerate(zip(ids, values)):
        study.add_trial(optuna.trial.create_trial(value=value, intermediate_values={1: value},
                                                  user_attrs={"design_id": design_id}))
        design = Design.parse(design_id)
        (sweep / str(number)).mkdir()
        (sweep / str(number) / "result.json").write_text(json.dumps({
            "status": "completed", "task": "synthetic_cls", "seed": 0, "design_id": design_id,
            "design": design.to_dict(), "trial": {"number": number}, "objective": {"name": "accuracy", "value": value},
            "metrics": {"per_epoch": [{"accuracy": value}]}}))
    summary = study_report(spec, sweep)
    found = results.read_all(results.sweep_paths(sweep))[0]
    design, _ = best_design(found, DesignSpace(6, 4))
    assert summary["best"]["design_id"] == str(design) == ids[1]  # the tie goes to the design id, not trial order
    report = (sweep / "study_synthetic_cls.md").read_text()
    assert f"**Best design: `{ids[1]}`**" in report
    # the top-k table follows the same order: the tied pair by design id, then the weaker design
    rows = [line for line in report.splitlines() if line.startswith("| ") and "`g" in line][:3]
    assert [r.split("`")[1] for r in rows] == [ids[1], ids[0], ids[2]]


# --------------------------------------------------------------------------- a TPE + Hyperband study, end to end


def _statuses_agree(sweep: Path) -> dict[int, str]:
    study = optuna.load_study(study_name="S0.synthetic_cls", storage=f"sqlite:///{sweep / 'study.db'}")
    found = {r["trial"]["number"]: r for r in results.read_all(results.sweep_paths(sweep))[0]}
    states = {t.number: t.state for t in study.trials}
    for number, r in found.items():
        expected = {"completed": TrialState.COMPLETE, "pruned": TrialState.PRUNED}[r["status"]]
        assert states[number] == expected, (number, r["status"], states[number])
        assert study.trials[number].user_attrs["design_id"] == r["design_id"]
        if r["status"] == "pruned":
            # a pruned run keeps its curve, and stopped before the end
            assert 1 <= r["pruned_at"] == len(r["metrics"]["per_epoch"]) < 8
        else:
            assert study.trials[number].value == r["objective"]["value"]
    return {n: r["status"] for n, r in found.items()}


def test_tpe_hyperband_study_prunes_and_records_every_trial(launch, tmp_path):
    # 4 evaluations an epoch, 2 epochs: Hyperband's rungs at evaluations 1 and 3 of 8
    found = launch("space=S0", "space.search=tpe", "space.pruner=hyperband", "space.trials=12", *TINY,
                   "trainer.max_epochs=2", "trainer.val_check_interval=0.25", "task.synthetic_size=256",
                   multirun=True)
    statuses = [r["status"] for r in found]
    assert len(found) == 12 and "pruned" in statuses and statuses.count("completed") >= 4, statuses
    assert set(_statuses_agree(tmp_path / "sweep").values()) == {"completed", "pruned"}
    report = (tmp_path / "sweep" / "study_synthetic_cls.md").read_text()
    assert "**Best design:" in report and "Pruned runs" in report and "fANOVA" in report
    assert (tmp_path / "sweep" / "study_synthetic_cls_history.png").exists()
    # the refinement of such a sweep treats pruned runs as neither failures nor finished designs
    from pdspace.search.refine import refine

    analysis = refine(tmp_path / "sweep", "allocation")
    assert analysis.n_pruned == statuses.count("pruned") and analysis.n_completed == statuses.count("completed")


def test_multi_objective_study_writes_its_pareto_front(launch, tmp_path):
    launch("space=S0", "space.search=tpe", "space.trials=6", "space.objectives=[score,trainable_params]", *TINY,
           "trainer.max_epochs=1", multirun=True)
    report = (tmp_path / "sweep" / "study_synthetic_cls.md").read_text()
    assert "Pareto front:" in report and (tmp_path / "sweep" / "study_synthetic_cls_pareto.png").exists()
    study = optuna.load_study(study_name="S0.synthetic_cls", storage=f"sqlite:///{tmp_path / 'sweep' / 'study.db'}")
    assert len(study.directions) == 2 and study.best_trials


def test_a_killed_study_resumes_without_retraining_finished_trials(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "pdspace.train", "-m", "space=S0", "space.search=tpe", "space.trials=5", *TINY,
           "trainer.max_epochs=2", "task.synthetic_size=256", "task.max_eval_samples=32", f"hydra.sweep.dir={sweep}",
           f"data.cache_dir={tmp_path}/cache"]
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        found = results.read_all(results.sweep_paths(sweep))[0]
        done = [r for r in found if r["status"] == "completed"]
        running = [r for r in found if r["status"] == "running" and (r.get("trial") or {}).get("number") is not None]
        if len(done) >= 2 and running:
            break
        assert first.poll() is None
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed = running[0]["trial"]["number"]
    stamps = {p: p.stat().st_mtime_ns for p in results.sweep_paths(sweep)
              if results.read(p)["status"] == "completed"}
    second = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished trials were not trained again
    study = optuna.load_study(study_name="S0.synthetic_cls", storage=f"sqlite:///{sweep / 'study.db'}")
    assert study.trials[killed].state == TrialState.FAIL
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == killed]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == study.trials[killed].params
    assert [r["status"] for r in results.read_all(results.sweep_paths(sweep))[0]] == ["completed"] * 5


_WORKER = """
import sys
from pdspace.design.space import DesignSpace
from pdspace.search.study import Pruned, TrialJob, study_spec

spec = study_spec({"name": "S0", "search": "tpe", "pruner": "successive_halving", "trials": 12, "startup_trials": 2},
                  sys.argv[1], "sst2", 3)
for _ in range(6):
    job = TrialJob(spec, int(sys.argv[2]), None)
    design = job.ask(DesignSpace(6, 4), lambda d: None)
    value = (hash(str(design)) % 1000) / 1000
    try:
        for step in (1, 2, 3):
            job.report(step, value)
        job.tell("completed", [value])
    except Pruned:
        job.tell("pruned")
"""


def test_two_processes_ask_and_tell_on_one_sqlite_study_at_once(tmp_path):
    """A joblib sweep's default storage: one SQLite file that two worker processes write at once (asking, reporting
    every evaluation, telling). Every trial number is taken once and ends complete or pruned: SQLite's lock is waited
    for, never a 'database is locked' failure. (The same through Hydra's joblib launcher and real training is the
    PostgreSQL test below, and the slow SQLite one.)"""
    spec = study_spec({"name": "S0", "search": "tpe", "pruner": "successive_halving", "trials": 12}, tmp_path,
                      "sst2", 3)
    open_study(spec, create=True)
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path), str(slot)], env=ENV,
                              stderr=subprocess.PIPE, text=True) for slot in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    study = open_study(spec)
    assert sorted(t.number for t in study.trials) == list(range(12))
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert sorted(t.user_attrs["slot"] for t in study.trials) == [0] * 6 + [1] * 6
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)


@pytest.mark.slow  # ~25 s in CI: the two-process SQLite case is the test above, the launcher's the PostgreSQL one
def test_two_joblib_workers_share_one_sqlite_study(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "pdspace.train", "-m", "hydra/launcher=joblib",
                           "hydra.launcher.n_jobs=2", "space=S0", "space.search=tpe", "space.trials=6", *TINY,
                           "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}", f"data.cache_dir={tmp_path}/cache"],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = results.read_all(results.sweep_paths(sweep))[0]
    assert len({r["host"]["pid"] for r in found}) == 2  # two worker processes
    assert sorted(r["trial"]["number"] for r in found) == list(range(6))
    _statuses_agree(sweep)


# --------------------------------------------------------------------------- PostgreSQL, two workers


def _postgres_bin() -> Path | None:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server in a temp dir (its own socket and port), stopped at the end."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    pytest.importorskip("psycopg2", reason="the psycopg2 driver is not installed")
    root = Path(tempfile.mkdtemp(prefix="pdspace-pg-"))
    data, sock = root / "pgdata", root / "pgsock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: the server runs as the postgres user
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server")
        for path in (root, sock):
            shutil.chown(path, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "pdspace"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "pg.log"), "-o",
                    f"-k {sock} -p {port} -c listen_addresses=''", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://pdspace@/postgres?host={sock}&port={port}"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_a_postgresql_study_with_two_parallel_workers(postgres, tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "pdspace.train", "-m", "hydra/launcher=joblib",
                           "hydra.launcher.n_jobs=2", "space=S0", "space.search=tpe", "space.pruner=successive_halving",
                           "space.trials=6", f"space.storage='{postgres}'", *TINY, "trainer.max_epochs=2",
                           f"hydra.sweep.dir={sweep}", f"data.cache_dir={tmp_path}/cache"],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (sweep / "study.db").exists()
    found = results.read_all(results.sweep_paths(sweep))[0]
    assert len({r["host"]["pid"] for r in found}) == 2 and all(r["status"] in ("completed", "pruned") for r in found)
    study = optuna.load_study(study_name="S0.synthetic_cls", storage=postgres)
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert {t.number: t.user_attrs["design_id"] for t in study.trials} == \
        {r["trial"]["number"]: r["design_id"] for r in found}


def test_the_median_stopping_rule_stops_a_trial_below_the_earlier_trials_median(tmp_path):
    from pdspace.search.study import Pruned, TrialJob

    spec = study_spec({"name": "S0", "search": "random", "pruner": "median", "trials": 9, "startup_trials": 3},
                      tmp_path, "sst2", 3)
    open_study(spec, create=True)
    # three finished trials whose objectives after evaluations 1..3 are 0.60, 0.70, 0.80 (median 0.70 at each)
    for slot, value in enumerate((0.6, 0.7, 0.8)):
        job = TrialJob(spec, slot, None)
        job.ask(None, lambda d: None, fixed=Design([1, 1, 1, 1], "uniform", "1111", ["A"] * 4))
        for step in (1, 2, 3):
            job.report(step, value)
        job.tell("completed", [value])
    above = TrialJob(spec, 3, None)
    above.ask(None, lambda d: None, fixed=Design([1, 1, 1, 1], "uniform", "1111", ["L"] * 4))
    above.report(1, 0.75)  # above the median: goes on
    below = TrialJob(spec, 4, None)
    below.ask(None, lambda d: None, fixed=Design([1, 1, 1, 1], "uniform", "1111", ["B"] * 4))
    with pytest.raises(Pruned, match="pruned after evaluation 1"):
        below.report(1, 0.65)
    assert isinstance(Pruned("x"), optuna.TrialPruned)


def test_differential_evolution_proposes_a_mutant_of_three_finished_trials():
    from itertools import permutations

    from pdspace.search.de import DESampler

    sampler = DESampler(seed=0, startup=4, mutation=0.5, crossover=1.0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    dist = optuna.distributions.FloatDistribution(0.0, 10.0)
    pool = [1.0, 2.0, 4.0, 8.0]
    for x in pool:
        study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions={"x": dist}, value=x))
    # with every parameter crossed over, the proposal is a + 0.5 (b - c) (clipped to the range) of three members
    mutants = {round(min(10.0, max(0.0, a + 0.5 * (b - c))), 9) for a, b, c in permutations(pool, 3)}
    seen = set()
    for _ in range(20):
        trial = study.ask({"x": dist})
        seen.add(round(trial.params["x"], 9))
        study.tell(trial, state=TrialState.FAIL)  # failed: the population stays the four above
    assert seen <= mutants and len(seen) > 3
    # a categorical is crossed as its index: a [True, False] flag stays one of its choices
    flag = optuna.distributions.CategoricalDistribution([True, False])
    study2 = optuna.create_study(direction="maximize", sampler=DESampler(seed=1, startup=4))
    for i, x in enumerate(pool):
        study2.add_trial(optuna.trial.create_trial(params={"f": bool(i % 2)}, distributions={"f": flag}, value=x))
    assert {study2.ask({"f": flag}).params["f"] for _ in range(10)} <= {True, False}


def test_a_de_search_is_one_of_the_searches_and_is_deterministic_for_a_seed(tmp_path):
    from pdspace.search.study import SEARCHES, make_sampler

    assert "de" in SEARCHES
    spec = study_spec({"name": "S0", "search": "de", "pruner": "hyperband", "trials": 12}, tmp_path, "sst2", 3)
    space = DesignSpace(6, 4)

    def run(seed):
        study = optuna.create_study(direction="maximize", sampler=make_sampler(spec, seed))
        designs = []
        for _ in range(12):
            trial = study.ask()
            design = design_params(trial, space)
            designs.append(str(design))
            study.tell(trial, float(len(str(design)) % 7))
        return designs

    assert run(3) == run(3) and len(set(run(3))) > 6


def test_the_tpe_sampler_says_nothing_of_its_experimental_group_option(tmp_path):
    """`group=True` is chosen on purpose; Optuna's ExperimentalWarning for it printed in every job of a tpe sweep."""
    import warnings

    from pdspace.search.study import make_sampler

    spec = study_spec({"name": "S0", "search": "tpe", "pruner": "none", "trials": 4}, tmp_path, "sst2", 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = make_sampler(spec, 0)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
