"""`pdspace-bench data`: how long the data module takes to build and re-open a paper-sized dataset, and the memory
each job process adds.

It writes synthetic files shaped like MNLI (393k premise/hypothesis pairs, about 45 MiniLM tokens a pair) and XSum
(400-word documents with 25-word summaries), reads each as both the train and the validation file of a `files`
task, and times `PDSpaceDataModule(...).setup("fit")` in fresh processes: the first build (an empty cache dir), a
cache hit (the same dir), and `--procs` processes hitting the cache at once, as the jobs of one joblib sweep do. A
process's memory is its proportional set size (PSS: a page shared by k processes counts 1/k in each), measured
after one pass over every token of both splits, minus the same before `setup`: what the data cost it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# common English words, nearly all one MiniLM (BERT uncased) token each
_WORDS = tuple("""the of and to in a is that for it as was with be by on not he this are or his from at which but have an
they you were her she there had been one all we their has would when if so no out up what about into them more can
said only other new some could time these two may then do first any my now such like our over man me even most made
after also did many before must through back years where much your way well down should because each just those people
how too little state good very make world still own see men work long get here between both life being under never day
same another know while last might us great old year off come since against go came right used take three states
himself few house use during without again place american around however home small found thought went say part once
general high upon school every don does got united left number course war until always away something fact though
water less public put think almost hand enough far took head yet government system better set told nothing night end
why called didn eyes find going look asked later knew point next city business give group toward young let room
president side social present given several order national possible rather second face per among form important often
things looked early white case john become large big need four within felt along children saw best church ever least
power development light thing seemed family interest want members mind country area others done turned although open
god service certain kind problem began different door thus help means sense whole matter perhaps itself york times law
human line above name example action company hands local show five history whether gave either act feet across taken
past quite anything having seen death experience body word half really field week car words already themselves
information tell together college shall money period held keep sure free real probably seems behind cannot miss
political air question office making brought whose special major heard problems federal became study ago moment
available known result street economic boy position reason change south board individual job areas society""".split())  # noqa: SIM905 - a word list reads better as text
MNLI_ROWS = 393_000
XSUM_ROWS = 20_000


def write_mnli(path: Path, rows: int = MNLI_ROWS, seed: int = 0) -> Path:
    """A TSV with a header (premise, hypothesis, label 0-2): 27 and 14 words a pair, about 45 tokens with specials."""
    rng = random.Random(seed)
    words = _WORDS
    with path.open("w", encoding="utf-8") as f:
        f.write("premise\thypothesis\tlabel\n")
        for _ in range(rows):
            premise = " ".join(rng.choices(words, k=rng.randint(20, 34)))
            hypothesis = " ".join(rng.choices(words, k=rng.randint(9, 19)))
            f.write(f"{premise}\t{hypothesis}\t{rng.randrange(3)}\n")
    return path


def write_xsum(path: Path, rows: int = XSUM_ROWS, seed: int = 0) -> Path:
    """A TSV with a header (document, summary): 400-word documents, 25-word summaries."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        f.write("document\tsummary\n")
        for _ in range(rows):
            f.write(" ".join(rng.choices(_WORDS, k=400)) + "\t" + " ".join(rng.choices(_WORDS, k=25)) + "\n")
    return path


# -------------------------------------------------------------------------------------------- one job process


def _pss_mb() -> float:
    """This process's proportional set size in MB (Linux; the resident set size where smaps_rollup is absent)."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024
    except (OSError, StopIteration):
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def _touch(dm: Any) -> int:
    """Read every token id of both splits once (what an epoch and an evaluation read); the count of ids."""
    total = 0
    for split in ("train", "validation"):
        if hasattr(dm, "dataset"):
            import pyarrow.compute as pc

            table = dm.dataset(split).data.table
            for name in ("input_ids", "labels"):
                if name in table.column_names and str(table.schema.field(name).type).startswith("list"):
                    flat = pc.list_flatten(table.column(name))
                    pc.sum(flat)  # reads every value, not only the offsets
                    total += len(flat)
        else:  # the data module before `datasets`: lists of ints in memory
            columns = dm._data[split].columns
            for name in ("input_ids", "labels"):
                if name in columns and isinstance(columns[name][0], list):
                    total += sum(len(ids) + 0 * sum(ids) for ids in columns[name])
    return total


def job(spec: dict[str, Any]) -> dict[str, Any]:
    """One job: build the data module of `spec` and report seconds, rows and the PSS it added (MB)."""
    from pdspace.backbones import load_tokenizer
    from pdspace.data import PDSpaceDataModule, files_task

    task = files_task("bench", spec["kind"], tuple(spec["fields"]), spec["label"],
                      3 if spec["kind"] == "classification" else None)
    tok = load_tokenizer(spec["backbone"])
    bare = _pss_mb()
    import datasets  # noqa: F401 - the libraries a job loads anyway, so that what follows is the data's memory
    import pyarrow  # noqa: F401

    before = _pss_mb()
    start = time.perf_counter()
    dm = PDSpaceDataModule(task, tok, text_to_text=spec["kind"] == "seq2seq", files=spec["files"],
                           cache_dir=spec["cache_dir"], max_length=spec["max_length"],
                           max_target_length=spec.get("max_target_length"))
    dm.setup("fit")
    seconds = time.perf_counter() - start
    tokens = _touch(dm)
    barrier = spec.get("barrier")
    if barrier:  # every process holds its data when PSS is read: shared pages are split between them
        Path(barrier, str(os.getpid())).touch()
        while len(os.listdir(barrier)) < spec["procs"]:
            time.sleep(0.05)
    added = _pss_mb() - before
    if barrier:
        time.sleep(1.0)
    return {"seconds": seconds, "rows": dm.num_rows["train"], "tokens": tokens, "pss_added_mb": added,
            "imports_mb": before - bare,
            "cache": dm.cache_info["train"]}


def _spawn(spec: dict[str, Any], procs: int = 1, code: str | None = None) -> list[dict[str, Any]]:
    """Run `job(spec)` in `procs` fresh Python processes at once; their reports. `code`: a pdspace checkout whose
    data module the processes import instead of this one (this file runs as a script, so it need not exist there)."""
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(Path(code).resolve()), env.get("PYTHONPATH"))))
    with tempfile.TemporaryDirectory() as barrier:
        spec = {**spec, "procs": procs, "barrier": barrier if procs > 1 else None}
        running = [subprocess.Popen([sys.executable, __file__, json.dumps(spec)], stdout=subprocess.PIPE, text=True,
                                    env=env) for _ in range(procs)]
        outs = [p.communicate()[0] for p in running]
    if any(p.returncode for p in running):
        raise SystemExit(f"pdspace-bench data: a job process failed (exit {[p.returncode for p in running]}); "
                         "its error is above.")
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


# ------------------------------------------------------------------------------------------------- the table


def measure(name: str, spec: dict[str, Any], procs: int, code: str | None = None) -> list[str]:
    """The table rows of one dataset for one checkout: first build, cache hit, `procs` processes hitting the cache
    at once."""
    spec = {**spec, "cache_dir": tempfile.mkdtemp(prefix="cache-", dir=spec["cache_dir"])}
    first = _spawn(spec, code=code)[0]
    hit = _spawn(spec, code=code)[0]
    many = _spawn(spec, procs, code=code)
    together = sum(r["pss_added_mb"] for r in many)
    ratio = f"{together / hit['pss_added_mb']:.2f}" if hit["pss_added_mb"] > 1 else "–"
    who = f"{name} | {'before: ' + code if code else 'this checkout'} | {first['rows']:,} | {first['tokens']:,}"
    return [(f"| {who} | first build ({first['cache']}) | {first['seconds']:.1f} | {first['pss_added_mb']:.0f} | | "
             f"{first['imports_mb']:.0f} |"),
            (f"| {who} | cache hit ({hit['cache']}) | {hit['seconds']:.2f} | {hit['pss_added_mb']:.0f} | | "
             f"{hit['imports_mb']:.0f} |"),
            (f"| {who} | {procs} processes hit it at once | {max(r['seconds'] for r in many):.2f} (slowest) | "
             f"{together:.0f} (sum) | {ratio} | {sum(r['imports_mb'] for r in many):.0f} (sum) |")]


SHAPES = {"mnli": (write_mnli, ("premise", "hypothesis"), "label", "classification", 128, None),
          "xsum": (write_xsum, ("document",), "summary", "seq2seq", 512, 64)}


def run(args: argparse.Namespace) -> None:
    """Write the files, measure each dataset (with `--compare`, for an older checkout too), print the table."""
    work = Path(args.dir or tempfile.mkdtemp(prefix="pdspace-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    print("| data | code | rows | token ids | what | seconds | PSS added MB | sum / one | imports MB |\n"
          "|---|---|---:|---:|---|---:|---:|---:|---:|", flush=True)
    for name in args.data:
        write, fields, label, kind, max_length, max_target = SHAPES[name]
        rows = args.mnli_rows if name == "mnli" else args.xsum_rows
        path = work / f"{name}_{rows}.tsv"
        if not path.is_file():
            write(path, rows)
        spec = {"backbone": args.backbone, "kind": kind, "fields": fields, "label": label, "max_length": max_length,
                "max_target_length": max_target, "files": {"train": str(path), "validation": str(path)},
                "cache_dir": str(work)}
        for code in (*args.compare, None):
            for line in measure(f"{name}-shaped", spec, args.procs, code):
                print(line, flush=True)
    print(f"\nFiles and caches under {work}. Every job is a fresh Python process, as a sweep's jobs are; the file is "
          "both the train and the validation file. PSS added: after setup and one read of every token id, minus "
          "before setup (with datasets and pyarrow imported: their own PSS is the imports column); sum / one: the "
          "processes together over one process alone.")


def add_parser(sub: Any) -> None:
    """The `data` subcommand."""
    p = sub.add_parser("data", help="data module build / cache-hit time and memory per job process",
                       description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", choices=tuple(SHAPES), default=list(SHAPES))
    p.add_argument("--mnli-rows", type=int, default=MNLI_ROWS)
    p.add_argument("--xsum-rows", type=int, default=XSUM_ROWS)
    p.add_argument("--procs", type=int, default=4, help="processes hitting the cache at once (a joblib sweep's jobs)")
    p.add_argument("--backbone", default="minilm", help="whose tokenizer (a pdspace backbone name)")
    p.add_argument("--compare", nargs="*", default=[], metavar="CHECKOUT",
                   help="older pdspace checkouts (e.g. a `git worktree`) measured first, in the same table")
    p.add_argument("--dir", help="where the files and caches go (default: a new temp dir)")
    p.set_defaults(run=run)


if __name__ == "__main__":  # one job process of `_spawn`
    print(json.dumps(job(json.loads(sys.argv[1]))))
