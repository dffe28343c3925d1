"""Per-column encodings chosen from a sample (loader.encoding), as both writers use them."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loader
from loader import encoding


def _mixed_table(n: int = 2000, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({
        "id": pa.array(np.arange(n, dtype=np.int64)),  # unique, compressible (a run)
        "title": pa.array([f"product title number {i}" for i in range(n)]),  # unique, compressible text
        "image": pa.array([rng.bytes(int(k)) for k in rng.integers(200, 400, n)], pa.binary()),  # random bytes
        "tokens": pa.array([["red", "shoe", "size"][: 1 + i % 3] for i in range(n)]),  # repetitive list values
        "label": pa.array((np.arange(n) % 5).astype(np.int32)),  # repetitive
    })  # fmt: skip


def _chunks(ds: loader.Dataset) -> dict[str, list]:
    out: dict[str, list] = {}
    for info in ds.files:
        meta = pq.read_metadata(os.path.join(ds.version_path, info.path))
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                chunk = meta.row_group(g).column(c)
                out.setdefault(chunk.path_in_schema, []).append(chunk)
    return out


def test_choose_on_a_sample():
    chosen = encoding.choose(_mixed_table(), "zstd")
    assert chosen.codec == "zstd"
    assert set(chosen.dictionary) == {"tokens.list.element", "label"}
    assert chosen.uncompressed == ("image",)


def test_write_cache_stores_random_bytes_plain_and_dictionaries_only_where_repetitive(tmp_path):
    table = _mixed_table()
    ds = loader.write_cache(table, tmp_path, "mixed", row_group_bytes=200_000)
    chunks = _chunks(ds)
    assert {c.compression for c in chunks["image"]} == {"UNCOMPRESSED"}
    for path in ("id", "title", "tokens.list.element", "label"):
        assert {c.compression for c in chunks[path]} == {"ZSTD"}, path
    for path in ("id", "title", "image"):
        assert not any(c.has_dictionary_page for c in chunks[path]), path
    for path in ("tokens.list.element", "label"):
        assert all(c.has_dictionary_page for c in chunks[path]), path
    assert ds.manifest.extra["encoding"] == {
        "codec": "zstd", "dictionary": ["tokens.list.element", "label"], "uncompressed": ["image"]}
    got = pa.concat_tables([ds.read_row_group(info, g) for info in ds.files for g in range(len(info.row_groups))])
    assert got.equals(table)


@pytest.mark.parametrize("codec", ["none", "uncompressed"])
def test_no_codec_lists_no_uncompressed_column(tmp_path, codec):
    ds = loader.write_cache(_mixed_table(500), tmp_path, "plain", compression=codec, row_group_bytes=100_000)
    assert ds.manifest.extra["encoding"]["uncompressed"] == []
    assert {c.compression for cs in _chunks(ds).values() for c in cs} == {"UNCOMPRESSED"}


def test_empty_sample_keeps_the_defaults():
    chosen = encoding.choose(_mixed_table().slice(0, 0), "snappy")
    assert chosen == encoding.Encoding("snappy")
    opts = chosen.parquet_options(_mixed_table().schema)
    assert opts == {"compression": "snappy", "use_dictionary": True}


def test_parquet_options_name_every_leaf_column():
    schema = _mixed_table().schema
    opts = encoding.Encoding("zstd", (), ("image",)).parquet_options(schema)
    assert opts["use_dictionary"] is False
    assert opts["compression"] == {"id": "zstd", "title": "zstd", "image": "none", "tokens.list.element": "zstd",
                                   "label": "zstd"}
