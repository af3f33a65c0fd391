"""Metrics against independent references: scikit-learn for invalid text-to-text answers, hand-computed
ROUGE and BLEU; the validation loop's generation settings and invalid-answer rate."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pdspace.backbones import load_backbone
from pdspace.data import TASKS, PDSpaceDataModule, add_score, decode_prediction, files_task, make_metrics
from pdspace.module import PEFTModule

CONF = Path(__file__).resolve().parents[1] / "conf"
pytestmark = pytest.mark.filterwarnings("ignore:.*zero_division.*", "ignore:.*ill-defined.*",
                                        "ignore:.*does not have many workers.*", "ignore:Metric `SpearmanCorrcoef`")


def _sklearn_reference(gold: np.ndarray, pred: np.ndarray, n: int) -> dict[str, float]:
    skm = pytest.importorskip("sklearn.metrics")
    return {"accuracy": skm.accuracy_score(gold, pred), "matthews": skm.matthews_corrcoef(gold, pred),
            "f1": skm.f1_score(gold, pred, labels=[1] if n == 2 else list(range(n)), average="macro")}


# ------------------------------------------------------------------------- invalid text-to-text answers


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("invalid", [0.0, 0.1, 0.3, 0.7, 1.0])
def test_text_to_text_invalid_answers_score_like_sklearn(n, invalid):
    """An answer that decodes to no label (-1) is a label of its own, as sklearn scores pred == -1."""
    rng = np.random.default_rng(int(invalid * 10) + 100 * n)
    spec = files_task("t", "classification", "x", num_labels=n, metrics=("accuracy", "matthews", "f1"))
    for size in (5, 37, 200):
        gold = rng.integers(0, n, size)
        # a better-than-chance answerer, so Matthews/F1 are far from 0 and a bias shows
        pred = np.where(rng.random(size) < 0.7, gold, rng.integers(0, n, size))
        pred[rng.random(size) < invalid] = -1
        got = make_metrics(spec, text_to_text=True)(torch.tensor(pred), torch.tensor(gold))
        want = _sklearn_reference(gold, pred, n)
        assert {k: v.item() for k, v in got.items()} == pytest.approx(want, abs=1e-5), (gold, pred)


def test_all_invalid_answers_score_zero_not_minus_one():
    """Eight "???" answers: no skill (Matthews 0.0, F1 0.0, accuracy 0.0), not a perfectly wrong classifier."""
    cola, mrpc = TASKS["cola"], TASKS["mrpc"]
    gold = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0])
    pred = torch.tensor([decode_prediction(cola, "???")] * 8)
    assert make_metrics(cola, text_to_text=True)(pred, gold)["matthews"].item() == 0.0
    assert {k: v.item() for k, v in make_metrics(mrpc, text_to_text=True)(pred, gold).items()} == {
        "accuracy": 0.0, "f1": 0.0}
    want = _sklearn_reference(gold.numpy(), pred.numpy(), 2)
    assert want["matthews"] == 0.0 and want["f1"] == 0.0


def test_invalid_answer_is_not_the_opposite_class():
    """Hand count: gold 1,1,0,0 and answers 1,?,0,? -> labels {0,1,-1}.

    Confusion rows gold 0/1, cols pred 0/1/-1: [[1,0,1],[0,1,1]]; t=(2,2,0), p=(1,1,2), c=2, s=4.
    MCC = (c*s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)) = (8 - 4) / sqrt((16 - 6)(16 - 8)) = 4 / sqrt(80).
    F1 of class 1: tp=1 fp=0 fn=1 -> 2/3. (Swapping in the opposite class gave MCC 0 and F1 1/2.)
    """
    got = make_metrics(files_task("t", "classification", "x", metrics=("accuracy", "matthews", "f1")),
                       text_to_text=True)(torch.tensor([1, -1, 0, -1]), torch.tensor([1, 1, 0, 0]))
    assert got["accuracy"].item() == pytest.approx(0.5)
    assert got["matthews"].item() == pytest.approx(4 / math.sqrt(80))
    assert got["f1"].item() == pytest.approx(2 / 3)


@pytest.mark.parametrize("n", [2, 3])
def test_head_path_matches_sklearn_on_valid_predictions(n):
    """The classification-head path (argmax: always a label) keeps its numbers: sklearn's on ordinary data."""
    rng = np.random.default_rng(n)
    gold = rng.integers(0, n, 300)
    pred = np.where(rng.random(300) < 0.6, gold, rng.integers(0, n, 300))
    spec = files_task("t", "classification", "x", num_labels=n, metrics=("accuracy", "matthews", "f1"))
    logits = torch.nn.functional.one_hot(torch.tensor(pred), n).float()
    head = {k: v.item() for k, v in make_metrics(spec)(logits, torch.tensor(gold)).items()}
    assert head == pytest.approx(_sklearn_reference(gold, pred, n), abs=1e-5)
    assert make_metrics(spec, text_to_text=True)(torch.tensor(pred), torch.tensor(gold))["accuracy"].item() == \
        pytest.approx(head["accuracy"])


# ------------------------------------------------------------------------------------------ ROUGE, BLEU


def test_rouge_hand_computed():
    """ROUGE-n F = 2PR/(P+R) over clipped n-gram overlaps; ROUGE-L over the longest common subsequence.

    "the cat sat" vs "the cat sat on the mat": 1-grams 3/3 and 3/6 -> 2/3; 2-grams 2/2 and 2/5 -> 4/7;
    LCS 3 -> 2/3. "the mat" vs the same: 1-grams 2/2 and 2/6 -> 1/2; 2-gram "the mat" 1/1 and 1/5 -> 1/3;
    LCS 2 -> 1/2. The corpus value is the mean over pairs.
    """
    rouge = make_metrics("xsum")
    assert rouge(["the cat sat"], ["the cat sat on the mat"]) == pytest.approx(
        {"rouge1": 2 / 3, "rouge2": 4 / 7, "rougeL": 2 / 3})
    rouge.reset()
    rouge.update(["the cat sat"], ["the cat sat on the mat"])
    rouge.update(["The mat."], ["the cat sat on the mat"])  # case and punctuation do not count
    got = {k: v.item() for k, v in rouge.compute().items()}
    assert got == pytest.approx({"rouge1": (2 / 3 + 1 / 2) / 2, "rouge2": (4 / 7 + 1 / 3) / 2,
                                 "rougeL": (2 / 3 + 1 / 2) / 2})
    assert add_score(TASKS["xsum"], got)["score"] == pytest.approx(sum(got.values()) / 3)


def test_bleu_hand_computed():
    """Corpus BLEU = BP * (p1 p2 p3 p4)^(1/4), counts summed over sentences, BP = exp(1 - r/c) if c < r.

    "the cat sat on the mat" vs "the cat sat on a mat": p = 5/6, 3/5, 2/4, 1/3; c = r = 6, BP = 1.
    Adding "the cat sat on" vs "the cat sat on the mat" (all 4 + 3 + 2 + 1 n-grams match):
    p = 9/10, 6/8, 4/6, 2/4; c = 10, r = 12, BP = exp(1 - 12/10).
    """
    bleu = make_metrics("wmt16_en_ro")
    assert bleu(["the cat sat on the mat"], ["the cat sat on a mat"])["bleu"].item() == pytest.approx(
        (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-5)
    bleu.reset()
    bleu.update(["the cat sat on the mat"], ["the cat sat on a mat"])
    bleu.update(["the cat sat on"], ["the cat sat on the mat"])
    assert bleu.compute()["bleu"].item() == pytest.approx(
        math.exp(1 - 12 / 10) * (9 / 10 * 6 / 8 * 4 / 6 * 2 / 4) ** 0.25, abs=1e-5)
    bleu.reset()
    # 13a tokenisation splits punctuation off: "mat." and "mat ." are the same tokens
    same = ["Pisica stă pe covor.", "Aceasta este o propoziție în limba română ."]
    assert bleu(same, ["Pisica stă pe covor .", "Aceasta este o propoziție în limba română."])["bleu"].item() \
        == pytest.approx(1.0)


def test_generation_tasks_scored_by_their_metrics():
    assert (TASKS["xsum"].metrics, TASKS["xsum"].objective) == (("rouge1", "rouge2", "rougeL"), "rougeL")
    assert (TASKS["wmt16_en_ro"].metrics, TASKS["wmt16_en_ro"].objective) == (("bleu",), "bleu")
    assert set(make_metrics("xsum")(["a b"], ["a b"])) == {"rouge1", "rouge2", "rougeL"}
    # exact match stays for the synthetic task and user seq2seq files, and can be combined with the others
    assert TASKS["synthetic_seq2seq"].metrics == ("exact_match",)
    assert files_task("summ", "seq2seq", "doc").metrics == ("exact_match",)
    mixed = make_metrics(files_task("summ", "seq2seq", "doc", metrics=("exact_match", "rougeL", "bleu")))
    got = mixed(["the cat sat", "a b c d"], ["the cat sat on the mat", "a b c d"])
    assert set(got) == {"exact_match", "rougeL", "bleu"} and got["exact_match"].item() == 0.5
    assert got["rougeL"].item() == pytest.approx((2 / 3 + 1) / 2)


# ------------------------------------------------------------------------------------ validation loop


def _validate(module: PEFTModule, loader) -> dict[str, float]:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(module, dataloaders=loader, verbose=False)
    assert len(module.history) == 1
    return module.history[0]


def _spy_generate(monkeypatch, model, answers=None) -> list[dict]:
    """Record `generate`'s keyword arguments; with `answers`, return their token ids instead of generating."""
    calls, real = [], model.generate

    def generate(**kwargs):
        calls.append(kwargs)
        if answers is None:
            return real(**kwargs)
        rows = kwargs["attention_mask"].shape[0]  # an encoder-decoder passes its encoder outputs, not input_ids
        texts = [answers[(len(calls) - 1) * rows + i] for i in range(rows)]
        return answers.tokenizer(texts, return_tensors="pt", padding=True)["input_ids"]

    monkeypatch.setattr(model, "generate", generate)
    return calls


@pytest.mark.parametrize("task", ["xsum", "wmt16_en_ro"])
def test_seq2seq_validation_passes_generation_settings(task, tmp_path, monkeypatch):
    """The task config's `generation` block reaches `generate`; the epoch reports the task's real metric."""
    cfg = OmegaConf.load(CONF / "task" / f"{task}.yaml")
    want = {"xsum": dict(num_beams=4, max_new_tokens=64, length_penalty=1.0),
            "wmt16_en_ro": dict(num_beams=4, max_new_tokens=128, length_penalty=1.0)}[task]
    assert dict(cfg.generation) == want
    # the real task, read from a local file instead of the hub
    spec = dataclasses.replace(TASKS[task], source="files", max_length=32, max_target_length=8)
    src, tgt = spec.text_fields[0], spec.label_field
    (tmp_path / "dev.jsonl").write_text("".join(
        json.dumps({src: f"row {i} says the cat sat on the mat", tgt: f"the cat {i}"}) + "\n" for i in range(6)))
    bb = load_backbone("tiny-t5", arch="tiny-t5", cache=False)
    dm = PDSpaceDataModule(spec, bb.tokenizer, files={"train": tmp_path / "dev.jsonl",
                                                      "validation": tmp_path / "dev.jsonl"}, eval_batch_size=4)
    dm.setup()
    module = PEFTModule(bb.model, spec, bb.tokenizer, text_to_text=True, generation=cfg.generation)
    calls = _spy_generate(monkeypatch, bb.model)
    values = _validate(module, dm.val_dataloader())
    assert len(calls) == 2  # 6 rows in batches of 4
    for kw in calls:
        assert {k: kw[k] for k in want} == want and kw["do_sample"] is False
    assert module.objective == {"xsum": "rougeL", "wmt16_en_ro": "bleu"}[task]
    assert 0.0 <= values[module.objective] <= 1.0 and set(spec.metrics) <= set(values)
    assert "invalid_rate" not in values and "exact_match" not in values


def test_generation_defaults_to_greedy(monkeypatch):
    bb = load_backbone("tiny-t5", arch="tiny-t5", cache=False)
    dm = PDSpaceDataModule("synthetic_seq2seq", bb.tokenizer, max_eval_samples=4, eval_batch_size=4)
    module = PEFTModule(bb.model, TASKS["synthetic_seq2seq"], bb.tokenizer, text_to_text=True, max_target_length=5,
                        generation={"num_beams": 2})
    assert module.generation == {"num_beams": 2, "max_new_tokens": 5, "length_penalty": 1.0}
    module = PEFTModule(bb.model, TASKS["synthetic_seq2seq"], bb.tokenizer, text_to_text=True, max_target_length=5)
    calls = _spy_generate(monkeypatch, bb.model)
    values = _validate(module, dm.val_dataloader())
    assert {k: calls[0][k] for k in ("num_beams", "max_new_tokens", "length_penalty")} == {
        "num_beams": 1, "max_new_tokens": 5, "length_penalty": 1.0}
    assert "exact_match" in values and "invalid_rate" not in values
    assert PEFTModule(bb.model, TASKS["synthetic_seq2seq"], bb.tokenizer, text_to_text=True, max_target_length=5,
                      generation={"num_beams": None, "max_new_tokens": None}).generation["max_new_tokens"] == 5
    with pytest.raises(ValueError, match=">= 1"):
        PEFTModule(bb.model, TASKS["synthetic_seq2seq"], bb.tokenizer, text_to_text=True, generation={"num_beams": 0})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['beams'\]"):
        PEFTModule(bb.model, TASKS["synthetic_seq2seq"], bb.tokenizer, text_to_text=True, generation={"beams": 4})


class _Answers(list):
    tokenizer = None


@pytest.mark.parametrize("task,answers,invalid", [
    ("synthetic_cls", ["positive", "???", "negative", "banana", "positive", "negative", "negative", "???"], 3 / 8),
    ("synthetic_reg", ["0.4", "nonsense", "1.0", "0.2", "inf", "0.0", "0.6", "0.8"], 2 / 8),
])
def test_text_to_text_reports_invalid_rate(task, answers, invalid, monkeypatch):
    """The fraction of answers that decode to no label / no number, next to (never inside) the task's score."""
    bb = load_backbone("tiny-t5", arch="tiny-t5", cache=False)
    spec = TASKS[task]
    dm = PDSpaceDataModule(spec, bb.tokenizer, text_to_text=True, max_eval_samples=8, eval_batch_size=4)
    dm.setup()
    loader = dm.val_dataloader()
    gold = torch.cat([b["gold"] for b in loader])
    module = PEFTModule(bb.model, spec, bb.tokenizer, text_to_text=True, max_target_length=4)
    answers = _Answers(answers)
    answers.tokenizer = bb.tokenizer
    _spy_generate(monkeypatch, bb.model, answers)
    values = _validate(module, loader)
    assert values["invalid_rate"] == pytest.approx(invalid)
    metrics = {k: values[k] for k in spec.metrics}
    assert values["score"] == pytest.approx(sum(metrics.values()) / len(metrics))
    assert module.objective != "invalid_rate"
    preds = [decode_prediction(spec, a) for a in answers]
    if spec.kind == "classification":
        assert values["accuracy"] == pytest.approx(float(np.mean(np.array(preds) == gold.numpy())))
    else:  # an unparsable answer scores 0.0
        scipy_stats = pytest.importorskip("scipy.stats")
        assert preds[1] == preds[4] == 0.0
        assert values["pearson"] == pytest.approx(scipy_stats.pearsonr(preds, gold.numpy()).statistic, abs=1e-5)
