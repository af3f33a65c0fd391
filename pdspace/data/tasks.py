"""Task registry, metrics and text-to-text label codecs.

Metric names used everywhere (keys of `make_metrics`, all computed by torchmetrics):

- ``accuracy``: fraction of exact class matches.
- ``matthews``: Matthews correlation coefficient (binary: class 1 positive).
- ``f1``: F1 of class 1 (MRPC "equivalent", QQP "duplicate"); macro F1 for more than 2 classes.
- ``pearson`` / ``spearman``: correlations of predicted and gold scores (STS-B).
- ``exact_match``: fraction of predicted sequences equal to the gold sequence.
- ``rouge1`` / ``rouge2`` / ``rougeL``: ROUGE-1/2/L F-measure of generated text against its
  reference (XSum; objective ``rougeL``, the ROUGE-L F-measure). Lower-cased, only ASCII letters
  and digits kept as tokens, no stemmer (stemming would need nltk): a little below stemmed paper numbers.
- ``bleu``: corpus BLEU (SacreBLEU, 13a tokenisation, 4-grams, no smoothing) as a fraction,
  i.e. sacrebleu's number / 100 (WMT16 en-ro; objective ``bleu``).
- ``score``: the task's GLUE score, the unweighted mean of the task's metrics
  (MRPC/QQP: mean(accuracy, f1); STS-B: mean(pearson, spearman); single-metric
  tasks: that metric), added by `add_score`.

All values are fractions (accuracy, ROUGE, BLEU in [0, 1], correlations in [-1, 1]), not percent.
`TaskSpec.objective` is the key a run should maximise: the single metric where a
task has one, otherwise ``score`` (XSum: ``rougeL``).

Text-to-text (T5-style) conventions: the input is ``"<prefix> <field>: <text> ..."``
(``"sst2 sentence: it 's a charming ..."``), the target is the class word
(``"positive"``) or, for STS-B, the score rounded to the nearest 0.2 (``"3.8"``).
A generated answer that is no label word (``"???"``) is scored as wrong: a label of its own
(`UNKNOWN_LABEL`, -1), never another class; see `make_metrics(..., text_to_text=True)`. An
unparsable STS-B answer scores 0.0. `parse_prediction` tells both apart from real answers,
for the ``invalid_rate`` the training module reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics import classification as tmc
from torchmetrics import regression as tmr
from torchmetrics import text as tmt
from pdspace.errors import PDSpaceError

KINDS = ("classification", "regression", "seq2seq")
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
METRIC_NAMES = ("accuracy", "matthews", "f1", "pearson", "spearman", "exact_match", *ROUGE_KEYS, "bleu")
UNKNOWN_LABEL = -1


class DataError(PDSpaceError, ValueError):
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
                     metrics=ROUGE_KEYS, objective="rougeL", prefix="summarize:", source="hub",
                     max_length=512, max_target_length=64),
    "wmt16_en_ro": TaskSpec(name="wmt16_en_ro", kind="seq2seq", num_labels=0, text_fields=("en",), label_field="ro",
                            metrics=("bleu",), objective="bleu",
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
                    "for your own data use task=files with task.train=PATH and task.validation=PATH "
                    "(files_task(...) in Python).")


def task_spec(task: Mapping[str, Any]) -> TaskSpec:
    """The TaskSpec of a `task:` config block (a named task, or `files` with its columns)."""
    if task["name"] == "files":
        return files_task("files", task["kind"], tuple(task["text_fields"]), task["label_field"],
                          int(task["num_labels"]), tuple(task.get("label_words") or ()))
    return get_task(task["name"])


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


def parse_prediction(spec: TaskSpec, text: str) -> tuple[Any, bool]:
    """`decode_prediction` of a generated text and whether it was a real answer (a label word, a finite number)."""
    if spec.kind == "classification":
        words = spec.label_words or tuple(str(i) for i in range(spec.num_labels))
        lookup = {_squash(w): i for i, w in enumerate(words)}
        label = lookup.get(_squash(text), UNKNOWN_LABEL)
        return label, label != UNKNOWN_LABEL
    if spec.kind == "regression":
        try:
            value = float(_squash(text))
        except ValueError:
            return 0.0, False
        return (value, True) if math.isfinite(value) else (0.0, False)
    return str(text).strip(), True


def decode_prediction(spec: TaskSpec, text: str) -> Any:
    """Label of a generated text: class index (-1 if not a label word), float score (0.0 if unparsable), or text."""
    return parse_prediction(spec, text)[0]


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
    """Mixin: takes class ids or (N, C) logits; ids outside the label set (an undecodable answer, -1) count as wrong.

    Kept for the classification-head path, where argmax never leaves the label set: the
    opposite class it swaps in is wrong for accuracy but biases Matthews and F1, hence
    `_WithInvalid` for text-to-text.
    """

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds, target = torch.as_tensor(preds), torch.as_tensor(target).long().reshape(-1)
        if preds.is_floating_point() and preds.dim() == 2:
            preds = preds.argmax(-1)
        n = getattr(self, "num_classes", None) or 2
        preds = preds.long().reshape(-1)
        # swapping in another class makes it wrong without breaking torchmetrics' range checks
        preds = torch.where((preds < 0) | (preds >= n), (target + 1) % n, preds)
        super().update(preds, target)  # type: ignore[misc]


class _WithInvalid:
    """Mixin over an (n + 1)-class metric: ids outside 0..n-1 (an undecodable answer, -1) become class n.

    An invalid answer is thus a label of its own, as scikit-learn scores a prediction of -1: wrong
    for accuracy, its own row/column in Matthews' confusion matrix, never positive for F1.
    """

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds, target = torch.as_tensor(preds), torch.as_tensor(target).long().reshape(-1)
        if preds.is_floating_point() and preds.dim() == 2:
            preds = preds.argmax(-1)
        n = self.num_classes - 1  # type: ignore[attr-defined]
        preds = preds.long().reshape(-1)
        super().update(torch.where((preds < 0) | (preds >= n), n, preds), target)  # type: ignore[misc]


class _F1WithInvalid(_WithInvalid, tmc.MulticlassF1Score):
    """F1 with an invalid-answer class: of class 1 for 2 labels, else the macro mean over the real labels.

    Matches ``sklearn.metrics.f1_score(gold, pred, labels=[1] or range(n), average="macro")``: a real
    label never predicted nor in gold counts as F1 0 (torchmetrics' own macro would skip it).
    """

    def __init__(self, num_labels: int) -> None:
        super().__init__(num_labels + 1, average="none")

    def compute(self) -> torch.Tensor:
        per_class = super().compute()
        n = self.num_classes - 1
        return per_class[1] if n == 2 else per_class[:n].mean()


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
class _AccuracyWithInvalid(_WithInvalid, tmc.MulticlassAccuracy): ...
class _MatthewsWithInvalid(_WithInvalid, tmc.MulticlassMatthewsCorrCoef): ...


def _pair_lists(preds: Sequence[str], target: Sequence[str], who: str) -> tuple[list[str], list[str]]:
    preds, target = [str(p).strip() for p in preds], [str(t).strip() for t in target]
    if len(preds) != len(target):
        raise ValueError(f"{who}: {len(preds)} predictions for {len(target)} targets.")
    return preds, target


class Rouge(tmt.ROUGEScore):
    """ROUGE F-measures of generated texts against one reference each, keyed "rouge1", "rouge2", "rougeL"."""

    def __init__(self, keys: Sequence[str] = ROUGE_KEYS) -> None:
        # no stemmer and no rougeLsum: both need nltk, which the rest of pdspace does not
        super().__init__(use_stemmer=False, rouge_keys=tuple(keys))

    def update(self, preds: Sequence[str], target: Sequence[str]) -> None:
        """Score a batch of generated texts against their references."""
        super().update(*_pair_lists(preds, target, "Rouge"))

    def compute(self) -> dict[str, torch.Tensor]:
        """Mean F-measure per ROUGE key over all texts so far."""
        values = super().compute()
        return {k: torch.nan_to_num(values[f"{k}_fmeasure"], nan=0.0) for k in self.rouge_keys}


class Bleu(tmt.SacreBLEUScore):
    """Corpus BLEU (SacreBLEU, 13a tokenisation) of generated texts against one reference each, in [0, 1]."""

    def __init__(self) -> None:
        super().__init__(n_gram=4, smooth=False, tokenize="13a", lowercase=False)

    def update(self, preds: Sequence[str], target: Sequence[str]) -> None:  # type: ignore[override]
        """Add a batch of generated texts and their references to the corpus counts."""
        preds, target = _pair_lists(preds, target, "Bleu")
        super().update(preds, [[t] for t in target])


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


def make_metrics(spec: TaskSpec | str, ignore_ids: Sequence[int] = (-100,), *,
                 text_to_text: bool = False) -> MetricCollection:
    """A torchmetrics MetricCollection of the task's metrics, keyed by metric name (`add_score` adds "score").

    Classification metrics take class ids or logits; regression metrics take scores;
    ``exact_match`` takes lists of strings or token-id tensors; ROUGE and ``bleu`` take lists
    of generated and reference strings (one reference each).

    ``text_to_text=True`` scores generated answers: an id outside the label set (an answer
    that decodes to no label, -1) is a class of its own, exactly as scikit-learn scores
    ``pred == -1``: wrong for ``accuracy``, its own label in ``matthews`` (multiclass
    formula; all-invalid gives 0.0), "not positive" for binary ``f1`` (class 1), and left
    out of the macro mean of multiclass ``f1`` (over the real labels only, each counted, as
    sklearn's ``labels=range(n)``). The default (a classification head,
    whose argmax is always a label) keeps torchmetrics' binary/multiclass metrics.
    """
    spec = get_task(spec)
    n = spec.num_labels
    binary = n == 2
    if text_to_text and spec.kind == "classification":
        build: dict[str, Callable[[], Metric]] = {
            "accuracy": lambda: _AccuracyWithInvalid(n + 1, average="micro"),
            "matthews": lambda: _MatthewsWithInvalid(n + 1),
            "f1": lambda: _F1WithInvalid(n),
        }
    else:
        build = {
            "accuracy": lambda: _BinaryAccuracy() if binary else _MulticlassAccuracy(n, average="micro"),
            "matthews": lambda: _BinaryMatthews() if binary else _MulticlassMatthews(n),
            "f1": lambda: _BinaryF1() if binary else _MulticlassF1(n, average="macro"),
        }
    build.update({"pearson": _Pearson, "spearman": _Spearman, "exact_match": lambda: ExactMatch(ignore_ids),
                  "bleu": Bleu})
    metrics = {m: build[m]() for m in spec.metrics if m not in ROUGE_KEYS}
    rouge = [m for m in spec.metrics if m in ROUGE_KEYS]
    if rouge:
        # one metric for all ROUGE keys: a dict result, which the collection flattens to its keys
        metrics["rouge"] = Rouge(rouge)
    return MetricCollection(metrics)
