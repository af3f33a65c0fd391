"""Backbones: random ones built from their seed, hub configs shipped for offline dry runs, clear path errors."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from omegaconf import OmegaConf

from pdspace import archs, backbones
from pdspace.backbones import BackboneError, count_layers, load_backbone
from pdspace.peft.patch import count_params

CONF = Path(backbones.__file__).resolve().parent / "conf"
# (layers, backbone params without the task head) of the hub backbones the presets name; RoBERTa with a
# classification head has no pooler
HUB = {"google-t5/t5-base": (24, 222_903_552), "google-t5/t5-3b": (48, 2_851_598_336),
       "FacebookAI/roberta-base": (12, 124_055_040), "FacebookAI/roberta-large": (24, 354_310_144),
       "facebook/bart-base": (12, 139_420_416), "facebook/bart-large": (24, 406_291_456)}
TINY = dict(arch="tiny-bert", tokenizer="minilm", overrides={"num_hidden_layers": 2})


@pytest.fixture
def offline_hub(monkeypatch, tmp_path) -> Path:
    """Offline, with an empty Hugging Face cache (both read by huggingface_hub at call time); returns the cache."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_random_backbone_is_its_seeds_whatever_ran_before_in_the_process():
    backbones.clear_cache()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    one = _weights(load_backbone("tiny-bert", seed=1, **TINY).model)
    zero_after_one = load_backbone("tiny-bert", seed=0, **TINY)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's draws are left alone
    assert not zero_after_one.cached and backbones.LOADS["tiny-bert"] == 2
    again = load_backbone("tiny-bert", seed=0, **TINY)
    assert again.cached and _same(_weights(again.model), _weights(zero_after_one.model))

    backbones.clear_cache()
    torch.manual_seed(999)  # another caller state: no influence either
    zero = _weights(load_backbone("tiny-bert", seed=0, **TINY).model)
    assert _same(zero, _weights(zero_after_one.model))
    emb = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(zero[emb], one[emb])
    backbones.clear_cache()


def test_pretrained_backbone_is_cached_across_seeds_with_a_fresh_head_each():
    backbones.clear_cache()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = load_backbone("minilm", "minilm", seed=0)
    b = load_backbone("minilm", "minilm", seed=1)
    c = load_backbone("minilm", "minilm", seed=0)
    assert [a.cached, b.cached, c.cached] == [False, True, True] and backbones.LOADS["minilm"] == 1
    assert torch.equal(torch.get_rng_state(), state)
    wa, wb, wc = _weights(a.model), _weights(b.model), _weights(c.model)
    assert _same(wa, wc) and not torch.equal(wa["classifier.weight"], wb["classifier.weight"])
    assert torch.equal(wa["bert.embeddings.word_embeddings.weight"], wb["bert.embeddings.word_embeddings.weight"])
    backbones.clear_cache()


def test_hub_backbone_dry_run_model_builds_offline_from_the_shipped_config(offline_hub):
    bb = load_backbone("t5-base", "google-t5/t5-base", meta=True)
    assert bb.text_to_text and bb.tokenizer is None
    assert {p.device.type for p in bb.model.parameters()} == {"meta"}
    assert count_params(bb.model)[0] == 222_903_552
    cls = load_backbone("roberta-base", "FacebookAI/roberta-base", num_labels=3, meta=True)
    assert cls.model.config.num_labels == 3 and count_params(cls.model)[0] == 124_055_040


@pytest.mark.parametrize("repo", sorted(HUB))
def test_hub_backbone_layers_and_params_are_counted_offline(offline_hub, repo):
    layers, params = HUB[repo]
    assert count_layers(repo) == layers
    head = "seq2seq" if "roberta" not in repo else "classification"
    bb = load_backbone(repo, repo, meta=True)
    assert count_params(bb.model)[0] == params and bb.text_to_text == (head == "seq2seq")


@pytest.mark.parametrize("legacy", ["t5-base", "roberta-large"])
def test_legacy_hub_ids_count_like_their_canonical_repo(offline_hub, legacy):
    assert count_layers(legacy) == HUB[archs.HUB_ALIASES[legacy]][0]


def test_every_hub_backbone_config_counts_its_layers_offline(offline_hub):
    hub = [OmegaConf.load(f) for f in sorted((CONF / "backbone").glob("*.yaml"))]
    hub = [b for b in hub if b.arch is None and b.path != backbones.MINILM]
    assert sorted(b.path for b in hub) == sorted(HUB)
    for b in hub:
        assert backbones.backbone_layers(b) == HUB[b.path][0]


@pytest.mark.parametrize("repo", sorted(HUB))
def test_shipped_config_is_the_architecture_of_pdspace_archs(repo):
    shipped = json.loads(archs.hub_config_file(repo).read_text())
    assert "generated from pdspace.archs" in shipped["_pdspace_note"]
    expected = archs.build_config(archs.HUB_IDS[repo]).to_dict() | {"_name_or_path": repo}
    assert archs.hub_config(repo).to_dict() == expected, "stale: regenerate with `python -m pdspace.archs`"


def test_weights_are_never_loaded_on_a_shipped_config(offline_hub):
    with pytest.raises(BackboneError, match="cannot load 'google-t5/t5-base'"):
        load_backbone("t5-base", "google-t5/t5-base", tokenizer="minilm")


def test_hub_config_in_the_cache_wins_over_the_shipped_one(offline_hub):
    # a cached hub config (as a download leaves it) is what the hub has: it must be the one used
    commit = "0" * 40
    repo = offline_hub / "models--google-t5--t5-base"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    archs.build_config("t5-base", num_layers=2, num_decoder_layers=3).save_pretrained(repo / "snapshots" / commit)
    assert count_layers("google-t5/t5-base") == 5
    assert count_params(load_backbone("t5-base", "google-t5/t5-base", meta=True).model)[0] < 222_903_552


def test_local_folder_is_used_and_never_replaced_by_a_shipped_config(offline_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    archs.build_config("bart-base", encoder_layers=1, decoder_layers=2).save_pretrained(tmp_path / "mine")
    assert count_layers("./mine") == count_layers(str(tmp_path / "mine")) == 3
    # a folder named like a hub repo is the user's: a broken one is an error, not the shipped config
    (tmp_path / "facebook" / "bart-base").mkdir(parents=True)
    with pytest.raises(BackboneError, match="cannot load 'facebook/bart-base'"):
        count_layers("facebook/bart-base")


def _missing(path: str) -> str:
    return (f"backbone path {path} does not exist; give a folder with config.json (and weights), "
            "or a hub id such as google-t5/t5-base")


@pytest.mark.parametrize("path", ["/nonexistent", "./nonexistent", "../nonexistent", "~/nonexistent-pdspace",
                                  "sub/nonexistent"])
def test_missing_local_path_is_one_clear_error(offline_hub, tmp_path, monkeypatch, path):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work)
    for load in (lambda: count_layers(path), lambda: load_backbone("x", path, meta=True),
                 lambda: load_backbone("x", path), lambda: load_backbone("x", arch="tiny-bert", tokenizer=path)):
        with pytest.raises(BackboneError) as e:
            load()
        assert str(e.value) == _missing(path)


def test_missing_local_path_ends_pdspace_train_with_that_line(launch, monkeypatch, capfd):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_:  # through the console script's error handling, in this process
        launch("backbone=t5-base", "backbone.path=/nonexistent", "dry_run=true")
    assert str(exit_.value.code) == "pdspace-train: error: " + _missing("/nonexistent")
    assert "Traceback" not in capfd.readouterr().err
