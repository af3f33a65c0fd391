"""Numbers that mean what they say: one design per design seed, values as a shell leaves them, config schemas,
one result contract, and a resume that restores what it claims."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pdspace import results
from pdspace.design.space import Design

TESTS = Path(__file__).resolve().parent
TINY = ["backbone=tiny-bert", "task=synthetic_cls", "trainer.max_epochs=1", "task.max_train_samples=32",
        "task.max_eval_samples=16", "data.batch_size=16"]
ANY = ["grouping=any", "allocation=any", "tunable=any", "strategy=any"]
ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get(
    "PYTHONPATH", "")])}


# --------------------------------------------------------------------------- one seed draws, another trains


def test_a_seed_sweep_repeats_one_design(launch):
    found = launch(*TINY, *ANY, "dry_run=true", "seed=0,1,2", multirun=True)
    assert [r["seed"] for r in found] == [0, 1, 2] and all(r["design_seed"] == 0 for r in found)
    assert len({r["design_id"] for r in found}) == 1


def test_the_design_seed_draws_the_design(launch):
    found = launch(*TINY, *ANY, "dry_run=true", "design_seed=0,1,2,3", multirun=True)
    assert len({r["design_id"] for r in found}) > 1 and [r["design_seed"] for r in found] == [0, 1, 2, 3]
    assert all(r["config"]["design_seed"] == r["design_seed"] for r in found)


# --------------------------------------------------------------------------- values as a shell leaves them


def _shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, shell=True, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def test_mask_forms_through_a_real_shell(tmp_path):
    # what a user types; the shell hands pdspace-train 1001, 1001, 0110, 0110 and all
    sweep = tmp_path / "sweep"
    cmd = (f"{sys.executable} -m pdspace.train -m tunable.choice=1001,'1001',\"0110\",0110,all backbone=tiny-bert "
           f"dry_run=true logger=none callbacks=none hydra.sweep.dir={sweep}")
    proc = _shell(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    masks = [Design.parse(r["design_id"]).tunable for r in results.read_all(results.sweep_paths(sweep))[0]]
    assert masks == [(True, False, False, True)] * 2 + [(False, True, True, False)] * 2 + [(True,) * 4]
    # a list of flags, quoted for the shell as the README says
    proc = _shell(f"{sys.executable} -m pdspace.train 'tunable.choice=[1,0,0,1]' backbone=tiny-bert dry_run=true "
                  f"logger=none hydra.run.dir={tmp_path / 'run'}", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert results.read(tmp_path / "run" / "result.json")["design_id"].split(".")[2] == "tune-1001"


# --------------------------------------------------------------------------- bad input: one line, with the fix


@pytest.mark.parametrize(("overrides", "message"), [
    (["budget_fraction=abc"], "budget_fraction=abc: Value 'abc' of type 'str' could not be converted to Float"),
    (["seed=abc"], "seed=abc: Value 'abc' of type 'str' could not be converted to Integer; give an integer"),
    (["optimizer.lr=abc"], "optimizer.lr='abc' is not a number > 0; give e.g. optimizer.lr=5e-5"),
    (["peft.lora_rank=8"], "Key 'lora_rank' not in 'PeftConf'"),
    (["+peft.nosuch=1"], "Key 'nosuch' not in 'PeftConf'"),
    (["+nosuchkey=1"], "nosuchkey: Key 'nosuchkey' not in 'TrainConf'"),
    (["peft.sizes.lora_rank=0"], "peft.sizes.lora_rank=0 is not an integer >= 1"),
    (["peft.sizes.lora_rank=abc"], "could not be converted to Integer"),
    (["peft.sizes.rank=8"], "Key 'rank' not in 'SizesConf'"),
    (["checkpoint_every_n_steps=0"], "checkpoint_every_n_steps=0 is not an integer >= 1"),
    (["data.batch_size=big"], "could not be converted to Integer"),
    (["data.num_proc=0"], "data.num_proc=0 is not an integer >= 1; give e.g. data.num_proc=4, or null for the default"),
    (["data.eval_sorted=maybe"], "data.eval_sorted=maybe: Value 'maybe' is not a valid bool"),
    (["grouping.colour=red"], "Key 'colour' not in 'DimensionConf'"),
    (["space=S0", "space.samples=3"], "Key 'samples' not in 'SpaceConf'"),
    (["task.max_train_samples=0"], "task.max_train_samples=0 is not an integer >= 1"),
    (["task.max_train_samples=-5"], "task.max_train_samples=-5 is not an integer >= 1"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not an integer >= 1"),
    (["task.max_length=0"], "task.max_length=0 is not an integer >= 1"),
    (["budget_fraction=2"], "budget_fraction=2.0 must lie in (0, 1)"),
    (["experiment=nosuch"], "unknown config 'experiment/nosuch'; known: adapter, bitfit,"),
    (["space=nosuch"], "unknown config 'space/nosuch'; known: S0, S0_ia3, S1, S2, S3, S4"),
    (["task=files"], "task=files needs your data files: set task.train=PATH and task.validation=PATH"),
    (["backbone=minilm", "backbone.path=/nonexistent"], "backbone path /nonexistent does not exist"),
])
def test_bad_input_is_one_line_naming_the_fix(launch, overrides, message):
    with pytest.raises(SystemExit) as exit_:
        launch("backbone=tiny-bert", "dry_run=true", *overrides)
    text = str(exit_.value.code)
    assert text.startswith("pdspace-train: error: ") and message in text and "\n" not in text, text


def test_fixed_sizes_set_from_the_command_line_reach_the_model(launch):
    # audit A54: peft.sizes={lora_rank: 8} (the README's example) and peft.sizes.lora_rank=8 were tracebacks
    for override in ("peft.sizes={lora_rank: 8}", "peft.sizes.lora_rank=8", "+peft.sizes.lora_rank=8"):
        (r,) = launch("backbone=tiny-bert", "strategy=lora", "dry_run=true", override)
        sizes = [layer["sizes"] for layer in r["params"]["layers"] if layer["sizes"]]
        assert sizes and all(s == {"L": 8} for s in sizes), (override, sizes)
        assert r["config"]["peft"]["sizes"]["lora_rank"] == 8


def test_unset_fixed_sizes_keep_the_fingerprint_of_results_written_before(launch):
    from pdspace.config import differing_keys, fingerprint

    (r,) = launch("backbone=tiny-bert", "dry_run=true")
    assert r["config"]["peft"]["sizes"] == {"adapter_dim": None, "prefix_len": None, "lora_rank": None}
    before = json.loads(json.dumps(r["config"]))
    before["peft"]["sizes"] = None  # what a result.json of an older pdspace holds
    assert fingerprint(before) == fingerprint(r["config"]) == r["fingerprint"]
    assert differing_keys(before, r["config"]) == []


@pytest.mark.parametrize(("overrides", "message"), [
    (["space.num_samples=0"], "space.num_samples=0 is not an integer >= 1"),
    (["space.tasks=[]"], "the space lists no tasks; set space.tasks=[sst2]"),
    (["space.tasks=[nosuch]"], "space.tasks: Unknown task 'nosuch'"),
])
def test_bad_space_is_one_line_before_any_plan(launch, tmp_path, overrides, message):
    with pytest.raises(SystemExit) as exit_:
        launch("space=S0", *TINY, *overrides, multirun=True)
    text = str(exit_.value.code)
    assert message in text and "\n" not in text, text
    assert not (tmp_path / "sweep" / "samples.yaml").exists()


def test_a_bad_value_through_the_console_script_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pdspace.train", "budget_fraction=abc", f"hydra.run.dir={tmp_path}"],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "pdspace-train: error: budget_fraction=abc: Value 'abc' of type 'str' could not be converted to Float; "
        "give a number"]


# --------------------------------------------------------------------------- one result contract


def test_result_files_follow_the_schema(launch):
    (r,) = launch(*TINY, "dry_run=true")
    assert r["schema_version"] == results.SCHEMA_VERSION and r["status"] == "dry_run"
    assert r["fingerprint"] and r["config"]["seed"] == 0 and r["design_seed"] == 0


def test_reader_validates_and_sees_dead_runs_as_interrupted(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(proc.stdout)
    import platform

    results.write(tmp_path / "result.json", {"status": "running", "host": {"hostname": platform.node(), "pid": gone}})
    assert results.read(tmp_path / "result.json")["status"] == "interrupted"
    results.write(tmp_path / "result.json", {"status": "running", "host": {"hostname": platform.node(),
                                                                            "pid": os.getpid()}})
    assert results.read(tmp_path / "result.json")["status"] == "running"  # alive: still running
    (tmp_path / "result.json").write_text(json.dumps({"status": "done?"}))
    with pytest.raises(results.ResultError, match="status 'done\\?' is not one of"):
        results.read(tmp_path / "result.json")
    (tmp_path / "result.json").write_text(json.dumps({"status": "completed", "schema_version": 99}))
    with pytest.raises(results.ResultError, match="newer than this pdspace reads"):
        results.read(tmp_path / "result.json")
    with pytest.raises(results.ResultError):
        results.write(tmp_path / "result.json", {"status": "done?"})


def test_every_reader_uses_the_one_contract():
    # no module parses result.json on its own: they all go through pdspace.results
    root = Path(__file__).resolve().parents[1]
    offenders = [p for p in [*(root / "pdspace").rglob("*.py"), *(root / "hydra_plugins").rglob("*.py")]
                 if p.name != "results.py" and ("json.loads(" in p.read_text() and "result" in p.read_text())
                 and "RESULT_FILE" in p.read_text() and "results.read" not in p.read_text()]
    assert offenders == []


# --------------------------------------------------------------------------- resume restores what it claims


def _train(run: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pdspace.train", "backbone=tiny-bert", "task=synthetic_cls", "logger=none",
           "callbacks=default", "~callbacks.progress", "trainer.max_epochs=3", "data.batch_size=8",
           "task.synthetic_size=128", "optimizer.lr=1e-3", f"hydra.run.dir={run}", f"data.cache_dir={cache}", *extra]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("uninterrupted")
    proc = _train(root / "run", root / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results.read(root / "run" / "result.json")


@pytest.mark.parametrize(("every", "kill", "saved", "epoch"), [
    (5, 14, 10, 0),   # mid-epoch: the last checkpoint is step 10 of 16
    # after epoch 0's validation (never on an epoch's last batch, before its validation); in the second epoch
    pytest.param(16, 20, 16, 0, marks=pytest.mark.slow),
    pytest.param(5, 25, 20, 1, marks=pytest.mark.slow),
])
def test_a_killed_run_resumes_exactly(tmp_path, uninterrupted, every, kill, saved, epoch):
    """128 examples / batch 8 = 16 steps an epoch, 3 epochs; SIGKILL at step `kill`."""
    run = tmp_path / "run"
    killed = _train(run, tmp_path / "cache", f"checkpoint_every_n_steps={every}",
                    "+callbacks.kill._target_=killswitch.KillAt", f"+callbacks.kill.step={kill}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert results.read(run / "result.json")["status"] == "interrupted"  # `running`, and its process is gone
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert (ckpt["global_step"], ckpt["epoch"]) == (saved, epoch)

    resumed = _train(run, tmp_path / "cache", f"checkpoint_every_n_steps={every}",
                     "+callbacks.dump._target_=killswitch.DumpAtTrainStart",
                     f"+callbacks.dump.path={tmp_path / 's.pt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = torch.load(tmp_path / "s.pt", weights_only=False)
    # training went on from exactly the checkpoint's tensors, optimizer state and metric history
    assert start["global_step"] == saved and set(start["state_dict"]) == set(ckpt["state_dict"])
    for key, tensor in ckpt["state_dict"].items():
        torch.testing.assert_close(start["state_dict"][key], tensor, rtol=0, atol=0)
    before, after = ckpt["optimizer_states"][0]["state"], start["optimizer"]["state"]
    assert before and before.keys() == after.keys()
    for k in before:
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(after[k][name], before[k][name], rtol=0, atol=0)
    assert start["history"] == ckpt["pdspace"]["history"]

    r = results.read(run / "result.json")
    assert r["status"] == "completed" and r["resumed_from"]["global_step"] == saved
    assert r["global_step"] == uninterrupted["global_step"] == 48
    # the same batches in the same order and the same dropout: the same numbers, exactly (CPU, fp32)
    assert r["metrics"]["per_epoch"] == uninterrupted["metrics"]["per_epoch"]


def test_a_checkpoint_of_another_design_fails_loudly(tmp_path):
    from pdspace.archs import build_model
    from pdspace.data.tasks import get_task
    from pdspace.module import PEFTModule
    from pdspace.peft.patch import apply_design

    model = build_model("tiny-bert", "classification", num_labels=2)
    apply_design(model, Design([1, 1, 1, 1], "uniform", None, ["L"] * 4))
    module = PEFTModule(model, get_task("synthetic_cls"), None, text_to_text=False)
    other = {f"model.{n}": p for n, p in model.named_parameters() if p.requires_grad and "lora_A" not in n}
    with pytest.raises(ValueError, match=r"do not match this patched model \(missing \[.model.bert"):
        module.on_load_checkpoint({"state_dict": other})
