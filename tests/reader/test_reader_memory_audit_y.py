"""Reader memory audit Y: a padded batch with an outlier row warns (once per column) and pads without a second
``n x longest`` mask; ``strings="object"`` imports no pandas; ``mix`` splits one budget between the readers it
opens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
import warnings

import numpy as np
import pyarrow as pa
import pytest

import loader
from loader.convert import pad, to_numpy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def list_column(lengths: np.ndarray, dtype=np.int32) -> pa.Array:
    """A ``list<dtype>`` array with rows of ``lengths`` values (0, 1, 2, ... in order)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = (np.arange(offsets[-1]) % 100).astype(dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def padding_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if 'ragged="padded"' in str(w.message)]


# --- ragged="padded": an outlier row ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outlier_cache(tmp_path_factory) -> loader.Dataset:
    """3,000 rows of 4 ids, but row 1234 holds 100,000: a padded batch of 64 rows holding it is 24 MiB."""
    lengths = np.full(3000, 4)
    lengths[1234] = 100_000
    table = pa.table({"id": np.arange(3000), "outlier_ids": list_column(lengths)})
    return loader.write_cache(table, tmp_path_factory.mktemp("outlier"), "outlier", row_group_bytes=64 << 10)


def test_padded_outlier_row_warns_once_naming_the_column(outlier_cache):
    """The batch holding the long row is padded to 64 x 100,000 (24 MiB for ~0.4 MiB of values): the reader says
    which column, how long its row is, how big the padding gets and what to do, once however many batches (the
    padding is made in the pool's threads)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with loader.make_reader(outlier_cache, batch_size=64, ragged="padded", num_epochs=2) as reader:
            widths = [b["outlier_ids"].shape[1] for b in reader]
    assert widths.count(100_000) == 2  # the outlier's batch, once per epoch
    said = padding_warnings(caught)
    assert len(said) == 1, said
    assert "'outlier_ids'" in said[0] and "a row of 100000 values" in said[0]
    assert "a batch of 64 rows pads to 24.4 MiB" in said[0]
    assert 'ragged="offsets"' in said[0] and "transform" in said[0]


def test_ordinary_ragged_data_does_not_warn():
    """Neither large batches padded to a few times their values (4,000 images of 2-6 KB: 23 MiB for 16 MiB) nor
    small ones padded to many times (256 token lists with a long tail: 2 MiB for 100 KiB) warn."""
    rng = np.random.default_rng(3)
    images = list_column(rng.integers(2048, 6144, 4000), np.uint8)
    tail = rng.integers(1, 60, 256)
    tail[7] = 2000
    tokens = list_column(tail)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        padded = {**to_numpy(pa.RecordBatch.from_arrays([images], ["ordinary_images"]), ragged="padded"),
                  **to_numpy(pa.RecordBatch.from_arrays([tokens], ["ordinary_tokens"]), ragged="padded")}
    assert padded["ordinary_images"].nbytes > 16 << 20 and padded["ordinary_tokens"].shape == (256, 2000)
    assert padding_warnings(caught) == []


def test_padded_outlier_in_a_list_of_strings_warns():
    """Two levels (rows of strings): one row of 200,000 tokens pads every row's items to it, and the items'
    lengths (``value_lengths``, int64) with them."""
    rows = [["ab", "c"]] * 99 + [["t"] * 200_000]
    batch = pa.RecordBatch.from_arrays([pa.array(rows, pa.list_(pa.string()))], ["outlier_tokens"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = to_numpy(batch, ragged="padded")
    assert out["outlier_tokens"].shape == (100, 200_000, 2)
    said = padding_warnings(caught)
    assert len(said) == 1 and "'outlier_tokens'" in said[0] and "a row of 200000 items" in said[0]


def test_pad_of_an_outlier_row_needs_no_mask_as_large_as_its_result():
    """``pad`` used to build a boolean mask of ``n x longest`` cells next to the result: as large as it for bytes."""
    lengths = np.full(400, 4)
    lengths[3] = 100_000
    values = (np.arange(lengths.sum()) % 251).astype(np.uint8)
    tracemalloc.start()
    try:
        out = pad(values, lengths, 255)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (400, 100_000)
    assert peak < out.nbytes + (6 << 20)  # the result, and a mask of 4 MiB at most
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for i in (0, 3, 399):
        assert out[i, : lengths[i]].tolist() == values[starts[i] : starts[i + 1]].tolist()
        assert (out[i, lengths[i] :] == 255).all()


def test_pad_in_row_blocks_matches_one_mask():
    """Past the mask's size, rows are filled block by block: the same result, fixed-size values too."""
    rng = np.random.default_rng(5)
    lengths = rng.integers(0, 3000, 5000)
    lengths[[0, 4999]] = [0, 9000]
    values = rng.integers(-99, 99, (int(lengths.sum()), 2)).astype(np.int16)
    out = pad(values, lengths, -1)
    assert out.shape == (5000, 9000, 2)
    expected = np.full(out.shape, -1, np.int16)
    expected[np.arange(9000) < lengths[:, None]] = values
    assert np.array_equal(out, expected)


# --- strings="object" without pandas ---------------------------------------------------------------------------

_OBJECTS = """
import json, sys
import loader
with loader.make_reader(sys.argv[1], batch_size=64, shuffle=False, strings="object") as reader:
    rows = {k: [] for k in ("title", "image", "tokens")}
    for b in reader:
        rows["title"] += b["title"].tolist()
        rows["image"] += [None if v is None else v.hex() for v in b["image"]]
        rows["tokens"] += [None if v is None else v.tolist() for v in b["tokens"]]
print(json.dumps({"pandas": "pandas" in sys.modules, "rows": rows}))
"""


def test_object_strings_do_not_import_pandas(tmp_path):
    """``strings="object"`` gives str / bytes / arrays of str with None where null, and imports no pandas (Arrow's
    converter did: +36 MB and 0.3 s)."""
    n = 300
    titles = [None if i % 7 == 3 else f"상품 {i}" + "é" * (i % 3) for i in range(n)]
    images = [None if i % 11 == 5 else bytes([i % 256]) * (i % 5) for i in range(n)]
    tokens = [None if i % 13 == 2 else [None if (i + j) % 5 == 0 else f"t{j}" for j in range(i % 4)] for i in range(n)]
    table = pa.table({"title": pa.array(titles), "image": pa.array(images, pa.binary()),
                      "tokens": pa.array(tokens, pa.list_(pa.string()))})
    ds = loader.write_cache(table, tmp_path, "objects", row_group_bytes=2_000)
    out = subprocess.run([sys.executable, "-c", _OBJECTS, ds.version_path], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    assert got["rows"] == {"title": titles, "image": [None if v is None else v.hex() for v in images],
                           "tokens": tokens}
    assert got["pandas"] is False


def test_object_strings_that_are_not_utf8_are_a_config_error():
    """Bytes that are no UTF-8 cannot be a ``str``: the error names the column and the forms that give bytes."""
    bad = pa.StringArray.from_buffers(2, pa.py_buffer(np.array([0, 1, 3], np.int32)), pa.py_buffer(b"a\xff\xfe"))
    rows = pa.ListArray.from_arrays(pa.array([0, 2], pa.int32()), bad)
    for column in (bad, rows):
        with pytest.raises(loader.ConfigError, match="column 'raw' holds a string that is not valid UTF-8.*offsets"):
            to_numpy(pa.RecordBatch.from_arrays([column], ["raw"]), strings="object")


# --- mix: one budget for the readers it opens -------------------------------------------------------------------

MIX_BUDGET = 16 << 20


@pytest.fixture(scope="module")
def mix_cache(tmp_path_factory) -> loader.Dataset:
    """120,000 rows of ~216 bytes (a 200-byte title) in 64 KiB row groups: ~25 MiB, many windows' worth."""
    n = 120_000
    rng = np.random.default_rng(0)
    titles = pa.StringArray.from_buffers(n, pa.py_buffer(np.arange(0, n * 200 + 1, 200, dtype=np.int32)),
                                         pa.py_buffer(rng.integers(97, 123, n * 200, dtype=np.uint8)))
    table = pa.table({"id": np.arange(n), "x": rng.random(n), "title": titles})
    return loader.write_cache(table, tmp_path_factory.mktemp("mixbudget"), "m", row_group_bytes=64 << 10)


def settings(reader) -> tuple:
    """What a reader sized from its budget: its window, streamed slices and ready queue."""
    return reader.window, reader.max_piece_rows, reader.prefetch


def test_mix_splits_its_budget_between_the_readers_it_opens(mix_cache):
    url = mix_cache.version_path
    with loader.make_reader(url, batch_size=64, memory_budget=MIX_BUDGET // 4) as quarter, \
            loader.make_reader(url, batch_size=64, memory_budget=MIX_BUDGET) as whole:
        expected, unsplit = settings(quarter), settings(whole)
    assert expected != unsplit  # the budget shows in what the reader sized
    with loader.mix([url] * 4, memory_budget=MIX_BUDGET, batch_size=64) as m:
        assert [settings(r) for r in m.readers] == [expected] * 4


def test_mix_keeps_the_budget_of_readers_passed_in(mix_cache):
    url = mix_cache.version_path
    with loader.make_reader(url, batch_size=64, memory_budget=MIX_BUDGET) as given, \
            loader.make_reader(url, batch_size=64, memory_budget=MIX_BUDGET // 2) as half:
        with loader.mix([given, url, url], memory_budget=MIX_BUDGET, batch_size=64) as m:
            assert settings(m.readers[0]) != settings(half)
            assert [settings(r) for r in m.readers[1:]] == [settings(half)] * 2


_MIX_PEAK = """
import json, sys
import loader, pyarrow as pa
with loader.mix([sys.argv[1]] * 4, memory_budget=int(sys.argv[2]), batch_size=64, stop="all") as m:
    rows = sum(len(b["id"]) for b in m)
print(json.dumps({"rows": rows, "peak": pa.default_memory_pool().max_memory()}))
"""


def test_mix_of_four_urls_holds_about_one_budget(mix_cache):
    """Arrow's peak over a whole mix of 4 sources stays within the mix's budget (it was 27 MiB at 16 MiB, every
    source taking the whole budget)."""
    out = subprocess.run([sys.executable, "-c", _MIX_PEAK, mix_cache.version_path, str(MIX_BUDGET)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    assert got["rows"] == 4 * mix_cache.num_rows
    assert got["peak"] <= MIX_BUDGET, got["peak"] / 2**20
