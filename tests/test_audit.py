"""The bad-input audit of 2026-12-01 (/work/shared/audit-2026-12-01.md) as a table: every case the issue "Nothing
silent, nothing stuck" fixed, and a handful that were already clear, through the real entry points in this process.

A row: the audit's case id, the console script, its arguments, the exit code and a substring of the line it ends
with (for exit 0: of what it printed). `{tmp}` in an argument is the test's scratch dir; `{table}` the shipped design
table. A single run refused before training (`check_config`) writes no result.json: rows marked `NOTHING`.
New options add their rows here.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path

import pytest

from pdspace import results

TABLE = Path(__file__).resolve().parents[1] / "benchmarks" / "minilm_sst2_table.parquet"
B = ["backbone=tiny-bert", "task=synthetic_cls", "trainer.max_epochs=1", "task.max_train_samples=32",
     "task.max_eval_samples=16", "data.batch_size=16"]
SPACE = ["-m", "space=S0", "space.tasks=[synthetic_cls]", *B]
NOTHING = "writes nothing"
POSTGRES = ("cannot open the study storage postgresql+psycopg2://127.0.0.1:1/db"
            if importlib.util.find_spec("psycopg2") and not importlib.util.find_spec("psycopg")
            else "cannot open the study storage postgresql")

ROWS = [
    # ------------------------------------------------------------------ already clear (regressions show here)
    ("A01", "pdspace-train", ["experiment=nosuch", *B], 1, "unknown config 'experiment/nosuch'; known: adapter"),
    ("A02", "pdspace-train", ["space=nosuch", *B], 1, "unknown config 'space/nosuch'; known: S0"),
    ("A03", "pdspace-train", ["backbone=nosuch", "task=synthetic_cls"], 1, "unknown config 'backbone/nosuch'"),
    ("A04", "pdspace-train", ["backbone=tiny-bert", "task=nosuch"], 1, "unknown config 'task/nosuch'"),
    ("A05", "pdspace-train", ["grouping=nosuch", *B], 1, "unknown config 'grouping/nosuch'"),
    ("A06", "pdspace-train", ["budget_fraction=abc", *B], 1, "budget_fraction=abc: Value 'abc' of type 'str'"),
    ("A07", "pdspace-train", ["budget_fraction=0", *B], 1, "budget_fraction=0.0 must lie in (0, 1)", NOTHING),
    ("A08", "pdspace-train", ["budget_fraction=2", *B], 1, "budget_fraction=2.0 must lie in (0, 1)", NOTHING),
    ("A09", "pdspace-train", ["optimizer.lr=-1", *B], 1, "optimizer.lr=-1 is not a number > 0", NOTHING),
    ("A10", "pdspace-train", ["seed=abc", *B], 1, "seed=abc: Value 'abc' of type 'str' could not be converted"),
    ("A11", "pdspace-train", [*B, "trainer.max_epochs=0"], 1, "trainer.max_epochs=0 is not an integer >= 1", NOTHING),
    ("A12", "pdspace-train", [*B, "task.max_train_samples=0"], 1, "task.max_train_samples=0 is not an integer >= 1",
     NOTHING),
    ("A13", "pdspace-train", [*B, "task.max_length=0"], 1, "task.max_length=0 is not an integer >= 1", NOTHING),
    ("A14", "pdspace-train", [*SPACE, "space.num_samples=0"], 1, "space.num_samples=0 is not an integer >= 1"),
    ("A22", "pdspace-train", ["nosuchkey=1", *B], 1, "nosuchkey: Key 'nosuchkey' not in 'TrainConf'"),
    ("A24", "pdspace-train", ["task=files", "backbone=tiny-bert"], 1, "task=files needs your data files", NOTHING),
    ("A53", "pdspace-train", ["+peft.nosuch=1", *B], 1, "peft.nosuch: Key 'nosuch' not in 'PeftConf'", NOTHING),
    # ------------------------------------------------------------------ exit 0 doing the wrong thing, now refused
    ("A15", "pdspace-train", [*SPACE, "space.search=tpe", "space.trials=0"], 1,
     "space.trials=0 is not an integer >= 1; give e.g. space.trials=20, or null for space.num_samples"),
    ("A15c", "pdspace-train", [*SPACE, "space.pruner=nosuch"], 1,
     "space.pruner='nosuch' is not one of none, successive_halving, hyperband, median"),
    ("A15d", "pdspace-train", [*SPACE, "space.search=nosuch"], 1,
     "space.search='nosuch' is not one of random, tpe, gp, de"),
    ("A15b", "pdspace-train", [*SPACE, "space.search=tpe", "space.trials=0", "space.num_samples=2"], 1,
     "space.trials=0 is not an integer >= 1"),
    ("A51", "pdspace-train", ["-m", "space=S0", "space.tasks=[sst2]", *B], 1,
     "task=synthetic_cls conflicts with space.tasks=[sst2]: a space sweep trains the tasks in space.tasks; set "
     "space.tasks=[synthetic_cls]"),
    ("A48", "pdspace-train", [*B, "task.synthetic_size=0"], 1, "task.synthetic_size=0 is not an integer >= 1",
     NOTHING),
    ("A23", "pdspace-train", ["+nosuchkey=1", *B], 1, "nosuchkey: Key 'nosuchkey' not in 'TrainConf'", NOTHING),
    # ------------------------------------------------------------------ tracebacks or misleading lines, now one line
    ("A54", "pdspace-train", ["peft.sizes={lora_rank:0}", "strategy=lora", *B], 1,
     "peft.sizes.lora_rank=0 is not an integer >= 1; give e.g. peft.sizes.lora_rank=8", NOTHING),
    ("A54b", "pdspace-train", ["peft.sizes={lora_rank: 8}", "strategy=lora", *B, "dry_run=true"], 0, "lora_rank=8"),
    ("A54c", "pdspace-train", ["peft.sizes.lora_rank=8", "strategy=lora", *B, "dry_run=true"], 0, "lora_rank=8"),
    ("A54d", "pdspace-train", ["+peft.sizes.lora_rank=8", "strategy=lora", *B, "dry_run=true"], 0, "lora_rank=8"),
    ("A54e", "pdspace-train", ["+peft.sizes.lora_rnak=8", "strategy=lora", *B], 1,
     "peft.sizes.lora_rnak: not a module size; use adapter_dim, prefix_len, lora_rank", NOTHING),
    # ------------------------------------------------------------------ options added since the audit
    ("L01", "pdspace-train", ["optimizer.lr_scale.X=2", *B], 1,
     "optimizer.lr_scale.X: Key 'X' is not in struct; known keys: A, B, I, L, P, backbone, head", NOTHING),
    ("L02", "pdspace-train", ["optimizer.lr_scale.P=-1", *B], 1, "optimizer.lr_scale.P=-1 is not a number > 0",
     NOTHING),
    # a strategy option is a peft key because its options dataclass has it (IA3's feedforward: k and v only)
    ("I01", "pdspace-train", ["peft.ia3_feedforward=false", "strategy.choice=[I,I,I,I]", *B, "dry_run=true"], 0,
     "trainable        768 ("),
    ("I02", "pdspace-train", ["peft.ia3_x=1", *B], 1, "peft.ia3_x: Key 'ia3_x' not in 'PeftConf'; known keys", NOTHING),
    ("I03", "pdspace-train", ["+peft.ia3_x=1", *B], 1, "peft.ia3_x: Key 'ia3_x' not in 'PeftConf'; known keys of peft",
     NOTHING),
    ("A32", "pdspace-train", [*SPACE, "space.search=tpe", "space.trials=2",
                              "space.storage=postgresql://127.0.0.1:1/db"], 1, POSTGRES),
    ("A32b", "pdspace-train", [*SPACE, "space.search=tpe", "space.trials=2",
                               "space.storage=sqlite:///{tmp}/nosuchdir/study.db"], 1,
     "cannot open the study storage sqlite:///{tmp}/nosuchdir/study.db (unable to open database file); check"),
    ("A25", "pdspace-train", ["task=files", "task.train={tmp}/nosuch.csv", "task.validation={tmp}/nosuch.csv",
                              *B[2:], "backbone=tiny-bert"], 1,
     "train file {tmp}/nosuch.csv does not exist; fix the path in task.train=PATH"),
    ("A26", "pdspace-train", ["task=files", "task.train={tmp}/nolabel.csv", "task.validation={tmp}/nolabel.csv",
                              *B[2:], "backbone=tiny-bert"], 1,
     "missing column(s) ['label']; found ['sentence', 'target']. Rename the columns or set task.text_fields=[...] "
     "and task.label_field=..."),
    ("A27", "pdspace-train", ["task=files", "task.train={tmp}/empty.csv", "task.validation={tmp}/empty.csv",
                              *B[2:], "backbone=tiny-bert"], 1,
     "{tmp}/empty.csv holds no rows; fill it or point task.train=PATH elsewhere"),
    ("A30", "pdspace-train", ["task=sst2", "task.glue_dir={tmp}/emptyglue", *B[2:], "backbone=tiny-bert"], 1,
     "(SST-2/train.tsv, SST-2/dev.tsv, ...)"),
    ("B01", "pdspace-bench", ["replay", "{tmp}/nosuch.parquet", "--repeats", "1", "--jobs", "1"], 1,
     "design table {tmp}/nosuch.parquet does not exist; write one with `pdspace-bench table"),
    ("B02", "pdspace-bench", ["replay", "{tmp}/garbled.parquet", "--repeats", "1", "--jobs", "1"], 1,
     "{tmp}/garbled.parquet is not a readable design table (ArrowInvalid"),
    ("B03", "pdspace-bench", ["replay", "{tmp}/garbled.csv", "--repeats", "1", "--jobs", "1"], 1,
     "{tmp}/garbled.csv is not a readable design table (KeyError"),
    ("B04", "pdspace-bench", ["replay", "{table}", "--budgets", "0", "--strategies", "random", "--repeats", "2",
                              "--jobs", "1"], 1,
     "--budgets 0: give comma-separated positive numbers of training epochs"),
    ("B04b", "pdspace-bench", ["replay", "{table}", "--budgets", "1", "--strategies", "random", "--repeats", "2",
                               "--jobs", "1"], 1, "--budgets 1: a budget below"),
    ("B05", "pdspace-bench", ["replay", "{table}", "--strategies", "nosuch", "--repeats", "2", "--jobs", "1"], 1,
     "unknown strategy 'nosuch'; use greedy, random, or a sampler"),
    ("B06", "pdspace-bench", ["replay", "{table}", "--strategies", "random", "--repeats", "0", "--jobs", "1"], 1,
     "--repeats 0 replays nothing; give a positive number, e.g. --repeats 100"),
    ("B07", "pdspace-bench", ["table", "{tmp}/emptydir", "--out", "{tmp}/t.parquet"], 1,
     "no completed run with a design and a curve under"),
    ("B08", "pdspace-bench", ["replay", "{table}", "--budgets", "abc", "--strategies", "random", "--repeats", "2",
                              "--jobs", "1"], 1, "--budgets abc: give comma-separated positive numbers"),
    ("B10", "pdspace-bench", ["replay", "{table}", "--strategies", "random", "--confirm-k", "0", "--repeats", "2",
                              "--jobs", "1"], 1, "--confirm-k 0 --confirm-seeds 3: give positive numbers"),
    ("B11", "pdspace-bench", ["replay", "{table}", "--strategies", "random+confirm+confirm", "--repeats", "2",
                              "--jobs", "1"], 1, "unknown strategy 'random+confirm+confirm'; use greedy, random"),
    ("B12", "pdspace-bench", ["replay", "{table}", "--strategies", "greedy+median", "--repeats", "2",
                              "--jobs", "1"], 1, "unknown strategy 'greedy+median'; use greedy, random"),
    ("B09", "pdspace-bench", ["replay", "{table}", "--task", "nosuch", "--strategies", "random", "--repeats", "2",
                              "--jobs", "1"], 1, "choose a task with --task (the table has sst2)"),
    ("E01", "pdspace-export", ["{tmp}/dry0", "{tmp}/export/E01"], 1,
     "{tmp}/dry0 is dry_run; export needs a completed PEFT run with its best_trainable.pt"),
    ("E02", "pdspace-export", ["{tmp}/nockpt", "{tmp}/export/E02"], 1,
     "{tmp}/nockpt/best_trainable.pt is missing (it was trained with save_checkpoint=false); export needs it: train "
     "the run again with save_checkpoint=true"),
    ("E05", "pdspace-export", ["{tmp}/nosuchrun", "{tmp}/export/E05"], 1, "{tmp}/nosuchrun/result.json"),
    ("S02", "pdspace-search", ["--dir", "{tmp}/s", "--tasks", "synthetic_cls", "--search", "random", "--trials", "0",
                               "--samples", "2", *B[:1]], 1, "--trials 0 trains nothing; give a positive number"),
    ("S09", "pdspace-search", ["--dir", "{tmp}/s", "--tasks", "synthetic_cls", "--search", "tpe", "--trials", "-1",
                               *B[:1]], 1, "--trials -1 trains nothing; give a positive number, e.g. --trials 20"),
    ("S14", "pdspace-search", ["--dir", "{tmp}/s", "--tasks", "synthetic_cls", "--confirm-k", "-1", *B[:1]], 1,
     "--confirm-k -1 is negative; give the number of designs to confirm"),
    # --strategy: the old name of --search, still refused the same (after one deprecation line)
    ("S02b", "pdspace-search", ["--dir", "{tmp}/s", "--tasks", "synthetic_cls", "--strategy", "random", "--trials",
                                "0", "--samples", "2", *B[:1]], 1, "--trials 0 trains nothing; give a positive number"),
    ("R01", "pdspace-refine", ["{tmp}/nosuchdir", "--dimension", "allocation"], 1,
     "sweep dir {tmp}/nosuchdir does not exist"),
    ("R02", "pdspace-refine", ["{tmp}/emptydir", "--dimension", "width"], 1,
     "unknown dimension 'width'; use grouping, allocation, tunable or strategy_g1"),
    ("P01", "pdspace-report", ["{tmp}/emptydir"], 1, "no result.json found under {tmp}/emptydir"),
    ("P02", "pdspace-report", ["{tmp}/nosuchdir"], 1, "{tmp}/nosuchdir does not exist"),
    # an --out that cannot be written: Python's traceback before
    ("P03", "pdspace-report", ["{tmp}/done", "--out", "{tmp}/done/result.json"], 1,
     "cannot write {tmp}/done/result.json: File exists; give --out a place you can write"),
    ("B13", "pdspace-bench", ["table", "{tmp}/done", "--out", "{tmp}/done/result.json/t.parquet"], 1,
     "cannot write {tmp}/done/result.json/t.parquet: File exists; give --out a place you can write"),
    # ------------------------------------------------------------------ Hydra's own flags (were tracebacks or
    # Hydra's three lines; H01 is what a user types to see a sweep's job config)
    ("H01", "pdspace-train", ["-m", "--cfg", "job", *B], 1,
     "-m/--multirun, -c/--cfg, -i/--info and -sc/--shell-completion exclude each other; give one"),
    ("H02", "pdspace-train", ["--info", "config", "--cfg", "job", *B], 1, "exclude each other"),
    ("H03", "pdspace-train", ["--resolve", *B], 1, "The --resolve flag can only be used in conjunction with --cfg"),
    ("H04", "pdspace-train", ["--config-dir", "{tmp}/nosuch", *B], 1,
     "config directory '{tmp}/nosuch' not found; give --config-dir an existing directory"),
    ("H05", "pdspace-train", ["--config-name", "nosuch", *B], 1,
     "unknown config 'nosuch' (--config-name): no such file in the config search path"),
    ("H06", "pdspace-train", ["--config-path", "{tmp}/nosuch", *B], 1,
     "config directory '{tmp}/nosuch' (--config-path) not found"),
    # an output dir whose path runs through a file: Hydra's traceback (train), Python's (search) before
    ("T01", "pdspace-train", [*B, "hydra.run.dir={tmp}/done/result.json/run"], 1,
     "cannot create the directory {tmp}/done/result.json/run: Not a directory; choose another hydra.run.dir"),
    ("S15", "pdspace-search", ["--dir", "{tmp}/done/result.json/s", "--tasks", "synthetic_cls", "--samples", "1",
                               *B[:1]], 1, "Not a directory; choose another --dir"),
    ("H07", "pdspace-train", ["--shell-completion", *B], 1,
     "--shell-completion: Expecting one subcommand from ['install', 'uninstall', 'query'] to be set; e.g. "
     "pdspace-train --shell-completion install=bash"),
]


def _files(tmp: Path) -> None:
    """The audit's scratch files: data files, a garbled table, runs to export."""
    (tmp / "nolabel.csv").write_text("sentence,target\nhi,1\n")
    (tmp / "empty.csv").write_text("")
    (tmp / "emptyglue").mkdir()
    (tmp / "emptydir").mkdir()
    (tmp / "garbled.parquet").write_bytes(b"PAR1 not really parquet at all")
    (tmp / "garbled.csv").write_text("a,b\n1,2\n")
    design = {"groups": [1, 1, 1, 1], "allocation": "uniform", "tunable": [True] * 4, "strategies": ["L"] * 4}
    for name, status in (("dry0", "dry_run"), ("nockpt", "completed")):
        (tmp / name).mkdir()
        results.write(tmp / name / "result.json", {"status": status, "design": design, "design_id": "x",
                                                   "config": {"save_checkpoint": False}})
    (tmp / "done").mkdir()  # a finished run with its curve, for the report and the design table
    results.write(tmp / "done" / "result.json", {"status": "completed", "design": design, "design_id": "x",
                                                 "task": "synthetic_cls", "seed": 0,
                                                 "objective": {"name": "accuracy", "value": 0.5},
                                                 "metrics": {"per_epoch": [{"accuracy": 0.5}]}})


def _run(prog: str, args: list[str], tmp: Path, monkeypatch, capsys) -> tuple[int, str]:
    """(exit code, last line) of one console script called in this process, as its entry point runs it."""
    from hydra.core.global_hydra import GlobalHydra

    if prog == "pdspace-train":
        from pdspace import train
        from pdspace.config import one_line_errors

        # Hydra's flags (-m, --cfg job, ...) first: argparse takes no flag after the overrides
        flags = list(itertools.takewhile(lambda a: "=" not in a, args))
        argv = [prog, *flags, f"hydra.run.dir={tmp}/run", f"hydra.sweep.dir={tmp}/sweep", "logger=none",
                "callbacks=none", f"data.cache_dir={tmp}/cache", *args[len(flags):]]
        monkeypatch.setattr(sys, "argv", argv)
        GlobalHydra.instance().clear()

        def call() -> None:
            with one_line_errors("pdspace-train"):
                train.main()
    else:
        module = {"pdspace-bench": "pdspace.bench.__main__", "pdspace-export": "pdspace.export",
                  "pdspace-report": "pdspace.report", "pdspace-search": "pdspace.search.cli",
                  "pdspace-refine": "pdspace.search.refine"}[prog]
        main = __import__(module, fromlist=["main"]).main

        def call() -> None:
            main(args)
    try:
        call()
        code, message = 0, ""
    except SystemExit as e:
        code, message = (1, e.code) if isinstance(e.code, str) else (e.code or 0, "")
    finally:
        GlobalHydra.instance().clear()
    captured = capsys.readouterr()
    if code != 0 and not message:
        message = (captured.err.strip().splitlines() or [""])[-1]
    return code, message if code else captured.out + captured.err


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_audit_row(row, tmp_path, monkeypatch, capsys):
    case, prog, args, code, expected, *flags = row
    _files(tmp_path)

    def fill(text: str) -> str:
        return text.replace("{tmp}", str(tmp_path)).replace("{table}", str(TABLE))

    got, text = _run(prog, [fill(a) for a in args], tmp_path, monkeypatch, capsys)
    assert got == code, f"{case}: exit {got}, expected {code}: {text[-2000:]}"
    assert fill(expected) in text, f"{case}: {text[-2000:]}"
    if code != 0:
        assert "\n" not in text.strip() and "Traceback" not in text, f"{case}: not one line: {text}"
        assert text.startswith(f"{prog}: error: "), text
    if case == "B04":
        assert "num_samples" not in text  # a key the user never set
    if NOTHING in flags:
        assert not (tmp_path / "run" / "result.json").exists(), f"{case} left a result.json behind"
        assert not list(tmp_path.glob("run/.*.tmp"))


def test_the_table_covers_every_fixed_case():
    fixed = {"A15", "A15b", "A23", "A48", "A51", "A54", "A54b", "A54c", "A54d", "A32", "A32b", "A25", "A26", "A27",
             "A30", "B01", "B02", "B03", "B04", "B06", "B08", "E02", "S02", "S09"}
    assert fixed <= {r[0] for r in ROWS}
    assert len({r[0] for r in ROWS}) == len(ROWS)
    json.dumps(ROWS)  # plain data: a later option adds a row, nothing else


def test_a_value_error_of_pdspace_own_code_keeps_its_traceback(monkeypatch):
    """Only Hydra's command-line ValueErrors become one line (H01-H03); one raised by a bug is not hidden."""
    from pdspace.config import one_line_errors

    monkeypatch.setattr(sys, "argv", ["pdspace-train"])
    with pytest.raises(ValueError, match="a bug"):
        with one_line_errors("pdspace-train"):
            raise ValueError("a bug")
