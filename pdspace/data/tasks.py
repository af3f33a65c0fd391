"""Task registry, metrics and text-to-text label codecs.

Metric names used everywhere (keys of `make_metrics`, all computed by torchmetrics):

- ``accuracy``: fraction of exact class matches.
- ``matthews``: Matthews correlation coefficient (binary: class 1 positive).
- ``f1``: F1 of class 1 (MRPC "equivalent", QQP "duplicate"); macro F1 for more than 2 classes.
- ``pearson`` / ``spearman``: correlations of predicted and gold scores (STS-B).
- ``exact_match``: fraction of predicted sequences equal to the gold sequence.
- ``score``: the task's GLUE score, the unweighted mean of the task's metrics
  (MRPC/QQP: mean(accuracy, f1); STS-B: mean(pearson, spearman); single-metric
  tasks: that metric), added by `add_score`.

All values are fractions (accuracy in [0, 1], correlations in [-1, 1]), not percent.
`TaskSpec.objective` is the key a run should maximise: the single metric where a
task has one, otherwise ``score``.

Text-to-text (T5-style) conventions: the input is ``"<prefix> <field>: <text> ..."``
(``"sst2 sentence: it 's a charming ..."``), the target is the class word
(``"positive"``) or, for STS-B, the score rounded to the nearest 0.2 (``"3.8"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics import classification as tmc
from torchmetrics import regression as tmr

KINDS = ("classification", "regression", "seq2seq")
METRIC_NAMES = ("accuracy", "matthews", "f1", "pearson", "spearman", "exact_match")
UNKNOWN_LABEL = -1


class DataError(ValueError):
    """Bad task name, data location or data file; the message names the problem and the fix."""


@dataclass(frozen=True)
class TaskSpec:
    """Static description of a task: its columns, label space, metrics and text-to-text format."""

    name: str
    kind: str
    num_labels: int
    text_fields: tuple[str, ...]
    label_field: str = "label"
    metrics: tuple[str, ...] = ("accuracy",)
    objective: str = "accuracy"
    label_words: tuple[str, ...] = ()
    prefix: str = ""
    # where `PDSpaceDataModule` gets rows: "glue", "synthetic", "hub" (seq2seq) or "files"
    source: str = "files"
    max_length: int = 128
    max_target_length: int = 8

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"TaskSpec {self.name!r}: kind {self.kind!r} is not one of {KINDS}.")
        if not 1 <= len(self.text_fields) <= 2:
            raise ValueError(
                f"TaskSpec {self.name!r}: text_fields must name 1 or 2 columns, got {self.text_fields!r}."
            )
        expected = {"classification": None, "regression": 1, "seq2seq": 0}[self.kind]
        if expected is not None and self.num_labels != expected:
            raise ValueError(
                f"TaskSpec {self.name!r}: a {self.kind} task has num_labels={expected}, got {self.num_labels}."
            )
        if self.kind == "classification" and self.num_labels < 2:
            raise ValueError(f"TaskSpec {self.name!r}: classification needs num_labels >= 2.")
        if self.label_words and len(self.label_words) != self.num_labels:
            raise ValueError(
                f"TaskSpec {self.name!r}: {len(self.label_words)} label_words for {self.num_labels} labels."
            )
        unknown = [m for m in self.metrics if m not in METRIC_NAMES]
        if unknown or not self.metrics:
            raise ValueError(f"TaskSpec {self.name!r}: metrics {self.metrics!r} must be from {METRIC_NAMES}.")
        if self.objective not in (*self.metrics, "score"):
            raise ValueError(
                f"TaskSpec {self.name!r}: objective {self.objective!r} must be one of its metrics or 'score'."
            )

    @property
    def is_pair(self) -> bool:
        """Whether inputs are sentence pairs."""
        return len(self.text_fields) == 2


def _glue(name: str, kind: str, num_labels: int, fields: tuple[str, ...], metrics: tuple[str, ...],
          words: tuple[str, ...] = ()) -> TaskSpec:
    objective = metrics[0] if len(metrics) == 1 else "score"
    return TaskSpec(name=name, kind=kind, num_labels=num_labels, text_fields=fields, metrics=metrics,
                    objective=objective, label_words=words, prefix=name, source="glue")


TASKS: dict[str, TaskSpec] = {
    "cola": _glue("cola", "classification", 2, ("sentence",), ("matthews",), ("unacceptable", "acceptable")),
    "sst2": _glue("sst2", "classification", 2, ("sentence",), ("accuracy",), ("negative", "positive")),
    "mrpc": _glue("mrpc", "classification", 2, ("sentence1", "sentence2"), ("accuracy", "f1"),
                  ("not_equivalent", "equivalent")),
    "qqp": _glue("qqp", "classification", 2, ("question1", "question2"), ("accuracy", "f1"),
                 ("not_duplicate", "duplicate")),
    "stsb": _glue("stsb", "regression", 1, ("sentence1", "sentence2"), ("pearson", "spearman")),
    "mnli": _glue("mnli", "classification", 3, ("premise", "hypothesis"), ("accuracy",),
                  ("entailment", "neutral", "contradiction")),
    "qnli": _glue("qnli", "classification", 2, ("question", "sentence"), ("accuracy",),
                  ("entailment", "not_entailment")),
    "rte": _glue("rte", "classification", 2, ("sentence1", "sentence2"), ("accuracy",),
                 ("entailment", "not_entailment")),
    "xsum": TaskSpec(name="xsum", kind="seq2seq", num_labels=0, text_fields=("document",), label_field="summary",
                     metrics=("exact_match",), objective="exact_match", prefix="summarize:", source="hub",
                     max_length=512, max_target_length=64),
    "wmt16_en_ro": TaskSpec(name="wmt16_en_ro", kind="seq2seq", num_labels=0, text_fields=("en",), label_field="ro",
                            metrics=("exact_match",), objective="exact_match",
                            prefix="translate English to Romanian:", source="hub", max_target_length=128),
    "synthetic_cls": TaskSpec(name="synthetic_cls", kind="classification", num_labels=2, text_fields=("sentence",),
                              metrics=("accuracy",), objective="accuracy", label_words=("negative", "positive"),
                              prefix="synthetic_cls", source="synthetic", max_length=32),
    "synthetic_reg": TaskSpec(name="synthetic_reg", kind="regression", num_labels=1, text_fields=("sentence",),
                              metrics=("pearson", "spearman"), objective="score", prefix="synthetic_reg",
                              source="synthetic", max_length=32),
    "synthetic_seq2seq": TaskSpec(name="synthetic_seq2seq", kind="seq2seq", num_labels=0, text_fields=("source",),
                                  label_field="target", metrics=("exact_match",), objective="exact_match",
                                  prefix="reverse:", source="synthetic", max_length=32, max_target_length=16),
}

GLUE_TASKS = tuple(n for n, s in TASKS.items() if s.source == "glue")


def get_task(task: str | TaskSpec) -> TaskSpec:
    """Look a task up by name (a TaskSpec passes through)."""
    if isinstance(task, TaskSpec):
        return task
    key = str(task).lower().replace("-", "").replace("_", "")
    for name, spec in TASKS.items():
        if name.replace("_", "") == key:
            return spec
    raise DataError(f"Unknown task {task!r}. Known tasks: {', '.join(TASKS)}; "
                    "for your own data pass files_task(...) instead.")


def files_task(name: str, kind: str, text_fields: str | Sequence[str], label_field: str = "label",
               num_labels: int | None = None, label_words: Sequence[str] = (),
               metrics: Sequence[str] | None = None) -> TaskSpec:
    """A TaskSpec for your own CSV/JSONL files (`load_rows(..., files=...)`), with default metrics per kind."""
    fields = (text_fields,) if isinstance(text_fields, str) else tuple(text_fields)
    if num_labels is None:
        num_labels = {"classification": len(label_words) or 2, "regression": 1}.get(kind, 0)
    metrics = tuple(metrics or {"classification": ("accuracy",), "regression": ("pearson", "spearman")}.get(
        kind, ("exact_match",)))
    return TaskSpec(name=name, kind=kind, num_labels=num_labels, text_fields=fields, label_field=label_field,
                    metrics=metrics, objective=metrics[0] if len(metrics) == 1 else "score",
                    label_words=tuple(label_words), prefix=name, source="files")


# ----------------------------------------------------------------------------------- text-to-text


def format_input(spec: TaskSpec, row: Mapping[str, Any]) -> str:
    """T5-style source text of a row: "<prefix> <field>: <text> ..." (seq2seq: "<prefix> <text>")."""
    if spec.kind == "seq2seq":
        parts = [str(row[spec.text_fields[0]]).strip()]
    else:
        parts = [f"{f}: {str(row[f]).strip()}" for f in spec.text_fields]
    return " ".join([spec.prefix, *parts]) if spec.prefix else " ".join(parts)


def encode_target(spec: TaskSpec, label: Any) -> str:
    """Target text of a label: class word, STS-B score rounded to 0.2 ("3.8"), or the text itself."""
    if spec.kind == "classification":
        if not spec.label_words:
            return str(int(label))
        return spec.label_words[int(label)]
    if spec.kind == "regression":
        # T5's STS-B recipe: a 0.2 grid keeps the target vocabulary small (26 strings)
        return f"{round(float(label) * 5) / 5:.1f}"
    return str(label)


def _squash(text: str) -> str:
    # subword decoders re-insert spaces ("not _ entailment", "3. 8"); label words contain none
    return "".join(str(text).split()).lower()


def decode_prediction(spec: TaskSpec, text: str) -> Any:
    """Label of a generated text: class index (-1 if not a label word), float score (0.0 if unparsable), or text."""
    if spec.kind == "classification":
        words = spec.label_words or tuple(str(i) for i in range(spec.num_labels))
        lookup = {_squash(w): i for i, w in enumerate(words)}
        return lookup.get(_squash(text), UNKNOWN_LABEL)
    if spec.kind == "regression":
        try:
            value = float(_squash(text))
        except ValueError:
            return 0.0
        return value if math.isfinite(value) else 0.0
    return str(text).strip()


# ----------------------------------------------------------------------------------------- metrics


def add_score(spec: TaskSpec, values: Mapping[str, Any]) -> dict[str, float]:
    """Copy of `values` as floats plus "score", the mean of the task's metrics (its GLUE score)."""
    out = {k: float(v) for k, v in values.items()}
    missing = [m for m in spec.metrics if m not in out]
    if missing:
        raise KeyError(f"add_score({spec.name}): metrics {missing} missing from {sorted(out)}.")
    out["score"] = sum(out[m] for m in spec.metrics) / len(spec.metrics)
    return out


class _ClassIds:
    """Mixin: takes class ids or (N, C) logits; ids outside the label set (an undecodable answer, -1) count as wrong."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds, target = torch.as_tensor(preds), torch.as_tensor(target).long().reshape(-1)
        if preds.is_floating_point() and preds.dim() == 2:
            preds = preds.argmax(-1)
        n = getattr(self, "num_classes", None) or 2
        preds = preds.long().reshape(-1)
        # swapping in another class makes it wrong without breaking torchmetrics' range checks
        preds = torch.where((preds < 0) | (preds >= n), (target + 1) % n, preds)
        super().update(preds, target)  # type: ignore[misc]


class _Scores:
    """Mixin: takes (N,) or (N, 1) scores; an undefined correlation (constant predictions) reads 0, not NaN."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(torch.as_tensor(preds).reshape(-1).float(),  # type: ignore[misc]
                       torch.as_tensor(target).reshape(-1).float())

    def compute(self) -> torch.Tensor:
        # a NaN objective would poison a design search; 0 is "no skill", as for Matthews
        return torch.nan_to_num(super().compute(), nan=0.0)  # type: ignore[misc]


class _BinaryAccuracy(_ClassIds, tmc.BinaryAccuracy): ...
class _BinaryMatthews(_ClassIds, tmc.BinaryMatthewsCorrCoef): ...
class _BinaryF1(_ClassIds, tmc.BinaryF1Score): ...
class _MulticlassAccuracy(_ClassIds, tmc.MulticlassAccuracy): ...
class _MulticlassMatthews(_ClassIds, tmc.MulticlassMatthewsCorrCoef): ...
class _MulticlassF1(_ClassIds, tmc.MulticlassF1Score): ...
class _Pearson(_Scores, tmr.PearsonCorrCoef): ...
class _Spearman(_Scores, tmr.SpearmanCorrCoef): ...


class ExactMatch(Metric):
    """Fraction of sequences (strings or token ids) equal to their target; ids in `ignore_ids` are dropped first."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, ignore_ids: Sequence[int] = (-100,)) -> None:
        super().__init__()
        self.ignore_ids = {int(i) for i in ignore_ids}
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def _key(self, x: Any) -> Any:
        if isinstance(x, str):
            return x.strip()
        ids = x.tolist() if isinstance(x, torch.Tensor) else x
        return tuple(int(t) for t in ids if int(t) not in self.ignore_ids)

    def update(self, preds: Sequence[Any], target: Sequence[Any]) -> None:
        """Count hits of a batch of predictions against targets."""
        preds, target = list(preds), list(target)
        if len(preds) != len(target):
            raise ValueError(f"ExactMatch: {len(preds)} predictions for {len(target)} targets.")
        self.correct += sum(self._key(p) == self._key(t) for p, t in zip(preds, target))
        self.total += len(target)

    def compute(self) -> torch.Tensor:
        """Fraction of exact matches (0 before any update)."""
        return self.correct.float() / self.total.clamp(min=1)


def make_metrics(spec: TaskSpec | str, ignore_ids: Sequence[int] = (-100,)) -> MetricCollection:
    """A torchmetrics MetricCollection of the task's metrics, keyed by metric name (`add_score` adds "score").

    Classification metrics take class ids or logits (ids outside the label set, e.g. an
    undecodable text-to-text answer of -1, count as wrong); regression metrics take scores;
    ``exact_match`` takes lists of strings or token-id tensors.
    """
    spec = get_task(spec)
    n = spec.num_labels
    binary = n == 2
    build = {
        "accuracy": lambda: _BinaryAccuracy() if binary else _MulticlassAccuracy(n, average="micro"),
        "matthews": lambda: _BinaryMatthews() if binary else _MulticlassMatthews(n),
        "f1": lambda: _BinaryF1() if binary else _MulticlassF1(n, average="macro"),
        "pearson": _Pearson,
        "spearman": _Spearman,
        "exact_match": lambda: ExactMatch(ignore_ids),
    }
    return MetricCollection({m: build[m]() for m in spec.metrics})
