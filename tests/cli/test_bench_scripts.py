"""The benchmark scripts stay runnable: ``bench/gen_data.py`` and one child of ``bench/bench_reader.py`` on tiny data.

Figures are not checked (benchmarks are never pass/fail); what the scripts produce is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import loader

REPO = Path(__file__).resolve().parents[2]


def script(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / name), *map(str, args)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory) -> loader.Dataset:
    out = tmp_path_factory.mktemp("bench")
    proc = script("gen_data.py", "--out", out, "--name", "b", "--rows", 3000, "--row-group-mb", 0.5,
                  "--image-bytes", "100:300")
    assert proc.returncode == 0, proc.stderr
    return loader.open_dataset(out / "b")


def test_gen_data_writes_the_article_columns(bench_cache):
    ds = bench_cache
    assert ds.num_rows == 3000 and ds.num_row_groups > 1
    assert ds.schema.names == ["product_id", "title", "tokens", "wordpiece_ids", "image", "label"]
    assert ds.schema.field("tokens").type == pa.list_(pa.string())
    assert ds.schema.field("wordpiece_ids").type == pa.list_(pa.int32())
    t = pa.concat_tables(ds.read_row_group(f, i) for f in ds.files for i in range(len(f.row_groups)))
    assert t["product_id"].to_pylist() == list(range(3000))
    images = t["image"].to_pylist()
    assert all(100 <= len(b) <= 300 and b[:2] == b"\xff\xd8" and b[-2:] == b"\xff\xd9" for b in images)
    titles, tokens = t["title"].to_pylist(), t["tokens"].to_pylist()
    assert all(title == " ".join(tok) for title, tok in zip(titles, tokens, strict=True))
    assert all("\uac00" <= ch <= "\ud7a3" for tok in tokens[:50] for word in tok for ch in word)


def test_gen_data_one_row_files(tmp_path):
    proc = script("gen_data.py", "--out", tmp_path, "--name", "tiny", "--rows", 40, "--files", 40,
                  "--image-bytes", "24:64")
    assert proc.returncode == 0, proc.stderr
    ds = loader.open_dataset(tmp_path / "tiny")
    assert len(ds.files) == 40 and ds.row_group_sizes() == [1] * 40


def test_gen_data_rejects_bad_sizes(tmp_path):
    proc = script("gen_data.py", "--out", tmp_path, "--image-bytes", "9:3")
    assert proc.returncode == 2 and "--image-bytes" in proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("mode", ["raw", "thread"])
def test_bench_reader_child_reports_its_figures(bench_cache, mode):
    proc = script("bench_reader.py", "--child", mode, "--url", bench_cache.version_path, "--iterations", 5,
                  "--batch-size", 50)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["batches"] == 5 and r["rows"] == 250
    assert r["columns"] == bench_cache.columns
    assert r["vmhwm_mb"] > 0 and r["first_batch_s"] > 0 and r["cpu_s"] > 0
    assert r["rg_per_batch_mean"] >= 1


@pytest.mark.parametrize("mode", ["raw", "process"])
def test_bench_reader_child_runs_the_python_transform(bench_cache, mode):
    proc = script("bench_reader.py", "--child", mode, "--url", bench_cache.version_path, "--iterations", 4,
                  "--batch-size", 50, "--transform", "python:2")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["batches"] == 4 and r["rows"] == 200 and r["transform"] == "python:2"


def test_python_transform_hashes_each_title_word():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from pytransform import BUCKETS, hash_title_words
    finally:
        sys.path.remove(str(REPO / "bench"))
    import zlib

    import numpy as np

    titles = ["Ab cd", "", "EF"]
    data = np.frombuffer("".join(titles).encode(), dtype=np.uint8)
    offsets = np.cumsum([0] + [len(t.encode()) for t in titles])
    out = hash_title_words({"title": data, "title.offsets": offsets}, rounds=3)
    words = [w.encode() for t in titles for w in t.lower().split()]
    assert out["title_ids"].tolist() == [zlib.crc32(w, 2) % BUCKETS for w in words]
    assert out["title_ids.offsets"].tolist() == [0, 2, 2, 3]


@pytest.mark.parametrize("threads", [1, 2])
def test_bench_ceiling_work_child_goes_through_whole_windows(bench_cache, threads):
    proc = script("bench_ceiling.py", "--child", "work", "--url", bench_cache.version_path, "--threads", threads,
                  "--window", 2, "--iterations", 3, "--batch-size", 50)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    sizes = bench_cache.row_group_sizes()  # whole windows of 2 row groups until 150 rows are covered
    windows = [sum(sizes[i : i + 2]) for i in range(0, len(sizes), 2)]
    want = next(sum(windows[: k + 1]) for k in range(len(windows)) if sum(windows[: k + 1]) >= 150)
    assert r["rows"] == want and r["samples_per_s"] > 0 and r["cpu_us_per_row"] > 0


def test_bench_ceiling_copy_child_reports_bandwidth():
    proc = script("bench_ceiling.py", "--child", "copy", "--threads", 2)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["gb_per_s"] > 0
