"""Where task rows come from: original GLUE TSVs, the Hugging Face hub, generated data or your own files.

Errors about your own files name the keys a command-line user sets (`task.train`, `task.validation`,
`task.text_fields`, `task.label_field`); from Python they are `files=` and `files_task(...)`'s arguments.

Every row is a dict holding the task's text fields and its label under ``spec.label_field``: an
int class id (classification), a float score (regression) or the target text (seq2seq).
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pdspace.data.tasks import DataError, TaskSpec, get_task

SPLITS = ("train", "validation")
SYNTHETIC_SIZE = 512  # train rows; validation gets a quarter

# task -> (folder, column names of a header-less file, {our field: TSV column}, label column)
_GLUE_TSV: dict[str, tuple[str, tuple[str, ...] | None, dict[str, str], str]] = {
    "cola": ("CoLA", ("source", "label", "mark", "sentence"), {}, "label"),
    "sst2": ("SST-2", None, {}, "label"),
    "mrpc": ("MRPC", None, {"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality"),
    "qqp": ("QQP", None, {}, "is_duplicate"),
    "stsb": ("STS-B", None, {}, "score"),
    "mnli": ("MNLI", None, {"premise": "sentence1", "hypothesis": "sentence2"}, "gold_label"),
    "qnli": ("QNLI", None, {}, "label"),
    "rte": ("RTE", None, {}, "label"),
}
# task -> (hub dataset, config); GLUE tasks use ("nyu-mll/glue", name)
_HUB = {"xsum": ("EdinburghNLP/xsum", None), "wmt16_en_ro": ("wmt/wmt16", "ro-en")}


def load_rows(spec: TaskSpec | str, split: str, *, glue_dir: str | os.PathLike | None = None,
              files: Mapping[str, str | os.PathLike] | None = None,
              synthetic_size: int | None = None) -> list[dict[str, Any]]:
    """All rows of a task's split ("train" or "validation"), from the source its spec names."""
    spec = get_task(spec)
    if split not in SPLITS:
        raise DataError(f"Split {split!r} of task {spec.name!r} is not one of {SPLITS}.")
    if spec.source == "glue":
        glue_dir = glue_dir or os.environ.get("GLUE_DIR")
        return _glue_tsv(spec, split, Path(glue_dir)) if glue_dir else _hub(spec, split)
    if spec.source == "hub":
        return _hub(spec, split)
    if spec.source == "synthetic":
        size = SYNTHETIC_SIZE if synthetic_size is None else synthetic_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise DataError(f"task.synthetic_size={synthetic_size!r} is not an integer >= 1; give e.g. "
                            f"task.synthetic_size={SYNTHETIC_SIZE}, or null for the default ({SYNTHETIC_SIZE} rows)")
        return _synthetic(spec, split, size)
    if spec.source == "files":
        return _files(spec, split, files)
    raise DataError(f"Task {spec.name!r} has unknown source {spec.source!r}; "
                    "use 'glue', 'hub', 'synthetic' or 'files'.")


def _label(spec: TaskSpec, value: Any, where: str) -> int | float | str:
    """A raw label as the spec's type: class words and digit strings -> class id, scores -> float."""
    if spec.kind == "seq2seq":
        return str(value)
    try:
        if spec.kind == "regression":
            return float(value)
        if value in spec.label_words:
            return spec.label_words.index(value)
        label = int(value)
    except (TypeError, ValueError):
        label = -1
    if spec.kind == "regression" or not 0 <= label < spec.num_labels:
        words = f" or one of {list(spec.label_words)}" if spec.label_words else ""
        kind = "a number" if spec.kind == "regression" else f"a class id 0..{spec.num_labels - 1}{words}"
        fix = ("fix the data, or set task.num_labels / task.label_words (task.kind=regression for scores)"
               if spec.source == "files" else "fix the data or the TaskSpec")
        raise DataError(f"{where}: label {value!r} of task {spec.name!r} is not {kind}; {fix}.")
    return label


# how to fix a file's columns, by source
_COLUMN_FIX = {"files": "Rename the columns or set task.text_fields=[...] and task.label_field=... to match "
                        "(files_task(text_fields=, label_field=) in Python).",
               "glue": "Replace the file with the original GLUE TSV."}


def _rows(spec: TaskSpec, records: Iterable[Mapping[str, Any]], where: str,
          columns: Mapping[str, str] | None = None, label_column: str | None = None) -> list[dict[str, Any]]:
    """Rows with the spec's fields taken from `records` (renamed by `columns`), checking the columns exist."""
    columns = {f: (columns or {}).get(f, f) for f in spec.text_fields}
    label_column = label_column or spec.label_field
    rows = []
    for i, rec in enumerate(records):
        # None: a short CSV line or a JSON null, as unusable as an absent column
        missing = [c for c in (*columns.values(), label_column) if rec.get(c) is None]
        if missing:
            fix = _COLUMN_FIX.get(spec.source, "The dataset lacks the task's columns; check the task's name.")
            raise DataError(f"{where} row {i + 1}: missing column(s) {missing}; found {list(rec)}. {fix}")
        rows.append({**{f: str(rec[c]) for f, c in columns.items()},
                     spec.label_field: _label(spec, rec[label_column], f"{where} row {i + 1}")})
    return rows


def glue_path(spec: TaskSpec, split: str, glue_dir: str | os.PathLike) -> Path:
    """The original GLUE TSV a task's split is read from."""
    folder = _GLUE_TSV[spec.name][0]
    stem = "train" if split == "train" else ("dev_matched" if spec.name == "mnli" else "dev")
    return Path(glue_dir) / folder / f"{stem}.tsv"


def _glue_tsv(spec: TaskSpec, split: str, glue_dir: Path) -> list[dict[str, Any]]:
    folder, names, columns, label_column = _GLUE_TSV[spec.name]
    path = glue_path(spec, split, glue_dir)
    if not path.is_file():
        dev = glue_path(spec, "validation", glue_dir).name
        raise DataError(f"GLUE task {spec.name!r}: {path} does not exist. Set GLUE_DIR (or task.glue_dir) to the "
                        f"folder holding the original GLUE TSVs ({folder}/train.tsv, {folder}/{dev}, ...).")
    # utf-8-sig: MRPC's header is copied from the MSR files, which start with a byte-order mark
    with path.open(encoding="utf-8-sig", newline="") as f:
        lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = list(names) if names else lines.pop(0)
    bad = next((i for i, line in enumerate(lines) if len(line) != len(header)), None)
    if bad is not None:
        raise DataError(f"GLUE task {spec.name!r}: {path} data row {bad + 1} has {len(lines[bad])} fields, expected "
                        f"{len(header)}; replace the file with the original GLUE TSV.")
    return _rows(spec, (dict(zip(header, line)) for line in lines), str(path), columns, label_column)


def _hub(spec: TaskSpec, split: str) -> list[dict[str, Any]]:
    import datasets  # a module attribute lookup, so tests can stub load_dataset

    path, config = _HUB.get(spec.name, ("nyu-mll/glue", spec.name))
    hub_split = "validation_matched" if spec.name == "mnli" and split == "validation" else split
    try:
        data = datasets.load_dataset(path, config, split=hub_split)
    except Exception as e:  # offline, missing auth, renamed dataset: all end in the same advice
        first = str(e).strip().splitlines()
        reason = f"{type(e).__name__}: {first[0][:200]}" if first else type(e).__name__
        if spec.source == "glue":
            raise DataError(f"GLUE task {spec.name!r}: $GLUE_DIR is not set and the Hugging Face dataset {path!r} "
                            f"could not be loaded ({reason}). Set GLUE_DIR to a folder holding the original GLUE "
                            "TSVs (SST-2/train.tsv, SST-2/dev.tsv, ...) or go online.") from e
        raise DataError(f"Task {spec.name!r}: the Hugging Face dataset {path!r} could not be loaded ({reason}). "
                        "Go online once so that `datasets` caches it, then retry.") from e
    # wmt16 nests its texts in a "translation" dict
    return _rows(spec, (r.get("translation", r) for r in data), f"{path}[{hub_split}]")


_FILLER = ("the", "a", "movie", "plot", "cast", "was", "and", "it", "story", "film", "very", "quite")
_WORDS = ("red", "blue", "green", "cat", "dog", "sun", "tree", "car", "book", "fish", "bird", "hat")


def _synthetic(spec: TaskSpec, split: str, size: int) -> list[dict[str, Any]]:
    """Deterministic toy rows a tiny model learns in a few steps (fixed seed per task and split)."""
    rng = random.Random(f"{spec.name}/{split}")
    n = size if split == "train" else max(1, size // 4)
    rows = []
    for _ in range(n):
        if spec.name == "synthetic_cls":
            # label 1 iff "good" outnumbers "bad"; a margin of 2+ and few fillers keep the signal strong enough
            # for PEFT on a frozen random tiny backbone to learn it in 2 epochs
            label = rng.randrange(2)
            major = rng.randint(2, 4)
            words = [rng.choice(_FILLER) for _ in range(rng.randint(0, 3))]
            words += ["good" if label else "bad"] * major + ["bad" if label else "good"] * rng.randint(0, major - 2)
            rng.shuffle(words)
            rows.append({"sentence": " ".join(words), "label": label})
        elif spec.name == "synthetic_reg":
            # 5 words, so the score (fraction of "good") lies on T5's 0.2 grid for STS-B-style targets
            k = rng.randint(0, 5)
            words = ["good"] * k + [rng.choice(_FILLER) for _ in range(5 - k)]
            rng.shuffle(words)
            rows.append({"sentence": " ".join(words), "label": k / 5})
        elif spec.name == "synthetic_seq2seq":
            words = [rng.choice(_WORDS) for _ in range(rng.randint(2, 5))]
            rows.append({"source": " ".join(words), "target": " ".join(reversed(words))})
        else:
            raise DataError(f"No generator for synthetic task {spec.name!r}; use synthetic_cls, synthetic_reg or "
                            "synthetic_seq2seq, or files_task() for your own data.")
    return rows


def _files(spec: TaskSpec, split: str, files: Mapping[str, str | os.PathLike] | None) -> list[dict[str, Any]]:
    key = f"task.{split}"  # what a command-line user sets; files={split: ...} in Python
    if not files or split not in files or files[split] is None:
        raise DataError(f"Task {spec.name!r} reads your files, but no {split!r} file was given; set {key}=PATH "
                        "(a CSV/TSV or JSONL file).")
    path = Path(files[split])
    if not path.is_file():
        raise DataError(f"Task {spec.name!r}: {split} file {path} does not exist; fix the path in {key}=PATH.")
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8-sig", newline="") as f:
        if suffix in (".csv", ".tsv"):
            records = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        elif suffix in (".jsonl", ".json"):
            text = f.read()
            try:
                # .json may hold one array or, like .jsonl, one object per line
                records = json.loads(text) if text.lstrip().startswith("[") else [
                    json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as e:
                raise DataError(f"Task {spec.name!r}: {path} is not valid JSON/JSONL ({e}); fix the file.") from e
        else:
            raise DataError(f"Task {spec.name!r}: {path} has suffix {suffix!r}; use .csv, .tsv, .jsonl or .json "
                            f"in {key}=PATH.")
    if not records:
        raise DataError(f"Task {spec.name!r}: {path} holds no rows; fill it or point {key}=PATH elsewhere.")
    return _rows(spec, records, str(path))
