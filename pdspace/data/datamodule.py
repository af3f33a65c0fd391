"""Lightning data module: rows of a task, tokenised once into Arrow tables (memory and disk cache), padded per batch.

A split is tokenised with `datasets.Dataset.map(batched=True)` and, with a `cache_dir`, written there as one Arrow
file keyed by everything its content depends on (the source files by content hash, the tokenizer, the subset, the
lengths). Later jobs memory-map that file: opening it costs milliseconds, and the jobs of one machine share its
pages instead of each holding a copy. Within a process, a split opened once is reused (`cache_info`: "built",
"disk" or "memory").

Batches by mode:

- head (``text_to_text=False``, classification/regression): ``input_ids``, ``attention_mask``,
  ``token_type_ids`` (if the tokenizer makes them), ``labels`` (B,) long class ids or float scores.
- text-to-text (GLUE on T5/BART) and seq2seq tasks: ``input_ids``, ``attention_mask``, ``labels``
  (B, T) target token ids padded with -100, and ``gold``: the gold labels (a (B,) tensor of class
  ids or float scores) or, for seq2seq tasks, the list of target texts.

Validation batches come longest input first (`eval_sorted`; else in file order) and carry ``index`` (B,): each
example's row in its split, so that what is kept per example (predictions.npz) is put back in the split's order.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from pdspace.data.sources import glue_path, load_rows
from pdspace.data.tasks import (
    DataError,
    TaskSpec,
    encode_target,
    format_input,
    get_task,
)

if TYPE_CHECKING:
    import datasets

IGNORE_INDEX = -100
# the layout of a cached split; a change of what `_build` writes bumps it, so no job reads an older file
CACHE_FORMAT = "arrow-1"
# rows tokenised per `map` batch (a fast tokenizer parallelises within a batch: 1,000 took twice as long as 50,000
# on 2 cores), and the size from which a build shows a progress bar
MAP_BATCH = 10_000
PROGRESS_ROWS = 50_000
# tokenised splits of this process, shared by all data modules: a sweep re-tokenises nothing
_MEMO: dict[tuple, datasets.Dataset] = {}


def file_signature(path: str | os.PathLike) -> tuple:
    """(path, size, content hash) of a data file: an edited, truncated or relabelled file gets a new one.

    Hashed on every call (a few ms for SST-2, ~0.1 s for MNLI's 80 MB): a size and mtime kept by an
    edit, or a copy that preserves them, must not hit a stale cache either.
    """
    path = Path(path).resolve()
    if not path.is_file():
        return (str(path), "missing")
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return (str(path), path.stat().st_size, digest.hexdigest())


class EpochSampler(torch.utils.data.Sampler[int]):
    """A shuffle that depends only on (seed, epoch), and can start an epoch part-way through (a resumed run).

    Each epoch's order is a function of the seed and the epoch number, not of how many epochs
    this process has run, so a run resumed from a checkpoint sees the same batches as one that
    never stopped.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed = size, int(seed)
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration shuffles for (Lightning calls it before every epoch)."""
        self.epoch = int(epoch)

    def resume(self, epoch: int, skip: int) -> None:
        """Start the next iteration in `epoch`, after its first `skip` examples."""
        self.epoch, self._skip = int(epoch), int(skip)

    def __iter__(self) -> Any:
        g = torch.Generator().manual_seed(random.Random(f"{self.seed}/{self.epoch}").getrandbits(63))
        order = torch.randperm(self.size, generator=g).tolist()
        skip, self._skip = self._skip, 0
        return iter(order[skip:])

    def __len__(self) -> int:
        return self.size


class _Indexed(torch.utils.data.Dataset):
    """The rows of a split, each with its position in the split (`index`), for a loader that visits them sorted."""

    def __init__(self, data: datasets.Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        return [{**row, "index": i} for i, row in zip(indices, self.data.__getitems__(indices))]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]


def longest_first(data: datasets.Dataset) -> list[int]:
    """The row indices of a tokenised split, longest input first (ties in split order): batches of similar lengths,
    so that little of an evaluation batch is padding, and the longest batch comes first (a memory error, if any,
    comes at once)."""
    import numpy as np
    import pyarrow.compute as pc

    lengths = pc.list_value_length(data.data.table.column("input_ids")).to_numpy(zero_copy_only=False)
    return np.argsort(-lengths.astype(np.int64), kind="stable").tolist()


class _ResumableLoader(DataLoader):
    """Marks the training loader as resumable for Lightning; the position itself comes from the loop counters
    (`PDSpaceDataModule.resume_at`), which, unlike the loader, know nothing of prefetched batches."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _pad(seqs: list[torch.Tensor], value: int) -> torch.Tensor:
    out = torch.full((len(seqs), max(map(len, seqs))), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


@dataclass(frozen=True)
class _Collate:
    """Pads a list of examples to the longest in the batch (a plain object, so worker processes can pickle it)."""

    pad_id: int
    text_to_text: bool
    regression: bool

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [e["input_ids"] for e in examples]
        batch: dict[str, Any] = {"input_ids": _pad(ids, self.pad_id),
                                 "attention_mask": _pad([torch.ones(len(s), dtype=torch.long) for s in ids], 0)}
        if "token_type_ids" in examples[0]:
            batch["token_type_ids"] = _pad([e["token_type_ids"] for e in examples], 0)
        if "index" in examples[0]:  # each example's row in its split (an evaluation visits them sorted)
            batch["index"] = torch.tensor([e["index"] for e in examples], dtype=torch.long)
        score = torch.float if self.regression else torch.long
        if not self.text_to_text:
            batch["labels"] = torch.stack([e["labels"] for e in examples]).to(score)
            return batch
        batch["labels"] = _pad([e["labels"] for e in examples], IGNORE_INDEX)
        gold = [e["gold"] for e in examples]
        batch["gold"] = gold if isinstance(gold[0], str) else torch.stack(gold).to(score)
        return batch


class PDSpaceDataModule(L.LightningDataModule):
    """Train/validation loaders of a task for a tokenizer, with a classification/regression head or text-to-text."""

    @classmethod
    def from_config(cls, task: Any, data: Any, spec: TaskSpec, backbone: Any, *, seed: int) -> PDSpaceDataModule:
        """The data module of a run's `task:` and `data:` blocks for its backbone's tokenizer, set up for fitting."""
        files = {"train": task.train, "validation": task.validation} if task.name == "files" else None
        dm = cls(spec, backbone.tokenizer, text_to_text=backbone.text_to_text, max_length=task.get("max_length"),
                 max_target_length=task.get("max_target_length"), max_train_samples=task.get("max_train_samples"),
                 max_eval_samples=task.get("max_eval_samples"), batch_size=data.batch_size,
                 eval_batch_size=data.eval_batch_size, num_workers=data.num_workers, subset_seed=data.subset_seed,
                 glue_dir=task.get("glue_dir"), files=files, cache_dir=data.cache_dir,
                 synthetic_size=task.get("synthetic_size"), seed=seed, num_proc=data.get("num_proc"),
                 eval_sorted=data.get("eval_sorted", True))
        dm.setup("fit")
        return dm

    def __init__(self, task: str | TaskSpec, tokenizer: Any, *, text_to_text: bool = False,
                 max_length: int | None = None, max_target_length: int | None = None,
                 max_train_samples: int | None = None, max_eval_samples: int | None = None,
                 batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int = 0,
                 subset_seed: int = 0, glue_dir: str | None = None, files: dict | None = None,
                 cache_dir: str | None = None, synthetic_size: int | None = None, seed: int = 0,
                 num_proc: int | None = None, eval_sorted: bool = True) -> None:
        super().__init__()
        self.spec = get_task(task)
        if tokenizer.pad_token_id is None:
            raise DataError(f"Tokenizer {tokenizer.name_or_path!r} has no pad token; "
                            "set tokenizer.pad_token = tokenizer.eos_token first.")
        self.tokenizer = tokenizer
        self.text_to_text = text_to_text or self.spec.kind == "seq2seq"
        self.max_length = max_length or self.spec.max_length
        self.max_target_length = max_target_length or self.spec.max_target_length
        self.max_samples = {"train": max_train_samples, "validation": max_eval_samples}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.subset_seed = subset_seed
        for name, n in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
            if n is not None and int(n) < 1:
                raise DataError(f"{name}={n} leaves no examples; give a positive count or None for the whole split.")
        # the training order: a function of (seed, epoch) only (see EpochSampler)
        self.seed = int(seed)
        self._resume: tuple[int, int] | None = None
        # resolved now, so a later change of $GLUE_DIR cannot hit a cache built from other files
        self.glue_dir = (glue_dir or os.environ.get("GLUE_DIR")) if self.spec.source == "glue" else None
        self.files = dict(files) if files else None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.synthetic_size = synthetic_size
        self.cache_info: dict[str, str] = {}
        self.num_rows: dict[str, int] = {}
        self.num_proc = num_proc
        self.eval_sorted = bool(eval_sorted)
        self._data: dict[str, datasets.Dataset] = {}

    @staticmethod
    def clear_memory_cache() -> None:
        """Forget the tokenised splits held by this process (the disk cache stays)."""
        _MEMO.clear()

    def _key(self, split: str) -> tuple:
        tok = self.tokenizer
        # the source files by content: an edited, truncated or relabelled file never hits a stale cache
        # (a file read as both splits is tokenised once); generated rows depend on the split's name instead
        source: Any = split
        if self.glue_dir:
            source = file_signature(glue_path(self.spec, split, self.glue_dir))
        elif self.files and split in self.files:
            source = file_signature(self.files[split])
        return (CACHE_FORMAT, type(tok).__name__, tok.name_or_path, len(tok), repr(self.spec), self.text_to_text, self.max_length, self.max_target_length, self.max_samples[split], self.subset_seed,
                source, self.synthetic_size)

    def setup(self, stage: str | None = None) -> None:
        """Load, subset and tokenise the splits this stage needs, from cache where possible."""
        import datasets

        for split in ("train", "validation") if stage in (None, "fit") else ("validation",):
            if split in self._data:
                continue
            key = self._key(split)
            digest = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
            path = self.cache_dir / f"{digest}.arrow" if self.cache_dir else None
            if key in _MEMO:
                how = "memory"
            elif path is not None and path.is_file():
                _MEMO[key], how = datasets.Dataset.from_file(str(path)), "disk"  # memory-mapped
            else:
                _MEMO[key], how = self._build(split, path, digest), "built"
            self._data[split] = _MEMO[key].with_format("torch", output_all_columns=True)
            self.cache_info[split], self.num_rows[split] = how, len(self._data[split])

    def dataset(self, split: str) -> datasets.Dataset:
        """The tokenised split ("train" or "validation") as a `datasets.Dataset` (torch format), set up if need be."""
        if split not in self._data:
            self.setup("fit" if split == "train" else "validate")
        return self._data[split]

    def _rows(self, split: str) -> dict[str, list]:
        """The split's rows (its fixed subset) as columns: the text fields and the label."""
        spec = self.spec
        rows = load_rows(spec, split, glue_dir=self.glue_dir, files=self.files, synthetic_size=self.synthetic_size)
        n = self.max_samples[split]
        if n is not None and n < len(rows):
            # its own RNG: the subset stays the same whatever the training seed
            rows = [rows[i] for i in sorted(random.Random(self.subset_seed).sample(range(len(rows)), n))]
        return {f: [r[f] for r in rows] for f in (*spec.text_fields, spec.label_field)}

    def _encode(self, batch: dict[str, list]) -> dict[str, list]:
        """Token ids of a batch of rows (`Dataset.map(batched=True)`): inputs, and the label or target ids."""
        spec, tok = self.spec, self.tokenizer
        labels = batch[spec.label_field]
        if not self.text_to_text:
            texts = [batch[f] for f in spec.text_fields]
            enc = tok(*texts, truncation=True, max_length=self.max_length, return_attention_mask=False)
            return {**enc, "labels": labels}
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        enc = tok([format_input(spec, r) for r in rows], truncation=True, max_length=self.max_length,
                  return_attention_mask=False, return_token_type_ids=False)
        targets = tok(text_target=[encode_target(spec, y) for y in labels], truncation=True,
                      max_length=self.max_target_length, return_attention_mask=False, return_token_type_ids=False)
        return {"input_ids": enc["input_ids"], "labels": targets["input_ids"], "gold": labels}

    def _features(self) -> datasets.Features:
        """The Arrow types of a tokenised split: int32 ids, int8 segment ids, the label as its kind."""
        from datasets import Features, List, Value

        ids = List(Value("int32"))
        label = {"classification": Value("int64"), "regression": Value("float64"), "seq2seq": Value("string")}[
            self.spec.kind]
        if self.text_to_text:
            return Features(input_ids=ids, labels=ids, gold=label)
        columns = {"input_ids": ids, "labels": label}
        if "token_type_ids" in self.tokenizer.model_input_names:
            columns["token_type_ids"] = List(Value("int8"))
        return Features(columns)

    def _procs(self, rows: int) -> int | None:
        """`map`'s processes: `num_proc` as given; by default one for a fast tokenizer (it runs a batch on every core
        itself) and up to 8 for a slow one on a large split."""
        n = self.num_proc
        if n is None and not getattr(self.tokenizer, "is_fast", False) and rows >= PROGRESS_ROWS:
            n = min(os.cpu_count() or 1, 8)
        return n if n and n > 1 else None

    def _build(self, split: str, path: Path | None, digest: str) -> datasets.Dataset:
        """Tokenise a split with `Dataset.map`: into `path` (an Arrow file, written atomically) or into memory."""
        import datasets

        columns = self._rows(split)
        raw = datasets.Dataset.from_dict(columns)
        tmp = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with _progress(len(raw) >= PROGRESS_ROWS):
            out = raw.map(self._encode, batched=True, batch_size=MAP_BATCH, remove_columns=raw.column_names,
                          features=self._features(), num_proc=self._procs(len(raw)),
                          keep_in_memory=path is None, cache_file_name=str(tmp) if tmp else None,
                          new_fingerprint=digest, desc=f"tokenising {split}")
        if tmp is None:
            return out
        del out  # its file is the tmp one; the cache is the renamed file, opened afresh
        tmp.replace(path)  # atomic, so concurrent sweep jobs never read half a file
        return datasets.Dataset.from_file(str(path))

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Make the next training loader start in `epoch` after `batches_done` batches (a resumed run)."""
        self._resume = (int(epoch), int(batches_done))

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        data = self.dataset(split)
        collate = _Collate(self.tokenizer.pad_token_id, self.text_to_text, self.spec.kind == "regression")
        # a loader's own generator: starting an iterator then draws nothing from the global RNG, so dropout
        # follows the same stream whether or not the run was resumed in between
        common = dict(batch_size=batch_size, collate_fn=collate, num_workers=self.num_workers,
                      persistent_workers=self.num_workers > 0, generator=torch.Generator().manual_seed(self.seed))
        if not shuffle:
            return DataLoader(_Indexed(data), sampler=longest_first(data) if self.eval_sorted else None, **common)
        sampler = EpochSampler(len(data), self.seed)
        if self._resume is not None:
            epoch, done = self._resume
            self._resume = None
            batches = -(-len(sampler) // batch_size)
            # a checkpoint taken on an epoch's last batch resumes at the start of the next epoch
            sampler.resume(*((epoch + 1, 0) if done >= batches else (epoch, done * batch_size)))
        return _ResumableLoader(data, sampler=sampler, **common)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, longest inputs first (`eval_sorted`) or in file order; `batch["index"]`: each
        example's row in the split."""
        return self._loader("validation", self.eval_batch_size, shuffle=False)


@contextlib.contextmanager
def _progress(show: bool) -> Iterator[None]:
    """`datasets`' progress bars on (a long build) or off (a small one) inside the block, as they were after it."""
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    (ds_logging.enable_progress_bar if show else ds_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (ds_logging.enable_progress_bar if was else ds_logging.disable_progress_bar)()
