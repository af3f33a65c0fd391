import json
import os
import sys
import warnings

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread a worker (and in the subprocesses its tests start): the workers share the machine's cores
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

from pdspace.archs import build_model  # noqa: E402

# one tiny model per supported family, with the head its tasks use
FAMILY_MODELS = {
    "bert": ("tiny-bert", "classification"),
    "roberta": ("tiny-roberta", "classification"),
    "t5": ("tiny-t5", "seq2seq"),
    "mt5": ("tiny-mt5", "seq2seq"),
    "bart": ("tiny-bart", "seq2seq"),
    "mbart": ("tiny-mbart", "seq2seq"),
    "llama": ("tiny-llama", "causal"),
}


def tiny(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of `family`, eval mode (no dropout), reproducible from `seed`."""
    arch, head = FAMILY_MODELS[family]
    kwargs = {"num_labels": 3} if head == "classification" else {}
    return build_model(arch, head, seed=seed, **kwargs)


def tiny_inputs(model: torch.nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """A padded batch of 2 for `model` (decoder inputs for encoder-decoders)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if model.config.is_encoder_decoder:
        batch["decoder_input_ids"] = torch.randint(3, model.config.vocab_size, (2, 5), generator=g)
    return batch


def output_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's main output tensor."""
    out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.fixture(params=sorted(FAMILY_MODELS))
def family(request):
    return request.param


@pytest.fixture
def launch(tmp_path, monkeypatch):
    """Run `pdspace-train` in this process (as a sequential multirun does); returns the result.json dicts."""

    def _launch(*overrides: str, multirun: bool = False, logger: str = "none") -> list[dict]:
        argv = ["pdspace-train", *(["-m"] if multirun else []), f"hydra.run.dir={tmp_path}/run",
                f"hydra.sweep.dir={tmp_path}/sweep", f"logger={logger}", "callbacks=none",
                f"data.cache_dir={tmp_path}/cache", *overrides]
        monkeypatch.setattr(sys, "argv", argv)
        from hydra.core.global_hydra import GlobalHydra

        from pdspace import train
        from pdspace.config import one_line_errors

        GlobalHydra.instance().clear()
        try:
            with one_line_errors("pdspace-train"):  # errors as the console script reports them
                train.main()
        finally:
            GlobalHydra.instance().clear()
        root = tmp_path / ("sweep" if multirun else "run")
        files = sorted(root.glob("*/result.json"), key=lambda p: int(p.parent.name)) if multirun \
            else [root / "result.json"]
        return [json.loads(p.read_text()) for p in files]

    return _launch
