"""Audit C: rows larger than the block, rows that compress below a byte, and vocabulary files.

* One row larger than the block among small rows: with either writer it is a row group of its own (first
  in its file), no group of several rows is over the block, and every other full file fills ~0.95 of the
  block, in one write (the arrow writer used to cut that file into one-row groups; the Spark writer
  rewrote three times, shrinking every file, and still left a multi-row group over the block).
* Rows of ~0.4 compressed bytes: the bytes-per-row estimate is no longer clamped at 1, so files fill
  ~0.95 of the block instead of ~0.4.
* A one-value-per-line vocabulary file splits on ``\\n`` (and ``\\r\\n``) only; the file's name tells a
  JSON list (``*.json``) from lines (``*.txt``).

Every fill is read from the Parquet footers of the published files, not from what the job reports.
"""

from __future__ import annotations

import os
import statistics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loader
from etl import arrow_write
from etl.config import from_dict
from etl.job import run
from etl.transforms import read_vocabulary_file
from loader.encoding import Encoding
from loader.errors import ConfigError

pytestmark = pytest.mark.slow
SMALL_BLOCK = 64 << 10
HUGE_AT = 1234


def _conf(source: str, root, name: str, block: str, transforms=(), **output):
    return from_dict({
        "name": name,
        "source": {"path": source, "format": "parquet"},
        "transforms": list(transforms),
        "output": {"root": str(root), "block_size": block, **output},
        "spark": {"master": None, "warehouse_dir": None, "metastore_dir": None},
    })  # fmt: skip


def _footer_groups(ds) -> list[list[tuple[int, int]]]:
    """Per published file, ``(rows, compressed bytes)`` of each row group, read from its Parquet footer."""
    out = []
    for info in ds.files:
        md = pq.ParquetFile(ds.file_path(info)).metadata
        out.append([(md.row_group(g).num_rows,
                     sum(md.row_group(g).column(c).total_compressed_size for c in range(md.num_columns)))
                    for g in range(md.num_row_groups)])  # fmt: skip
    return out


def _attempts(ds) -> int:
    return sum(1 for a in ds.manifest.extra["sizing"]["attempts"] if "attempt" in a)


@pytest.fixture(scope="module")
def one_huge_row(tmp_path_factory) -> tuple[str, list[bytes]]:
    """3,000 rows of 50 random bytes, one of them (id 1234) 100 KB: larger than a 64 KiB block."""
    rng = np.random.default_rng(1)
    blobs = [rng.bytes(50) for _ in range(3000)]
    blobs[HUGE_AT] = rng.bytes(100_000)
    path = tmp_path_factory.mktemp("huge-src")
    pq.write_table(pa.table({"id": pa.array(range(3000), pa.int64()), "blob": pa.array(blobs, pa.binary())}),
                   path / "part-0.parquet")
    return str(path), blobs


def _encoded_with_one_big_row(n: int, at: int, size: int) -> tuple[list[bytes], bytes, bool, list]:
    """``n`` rows of 50 random bytes but row ``at``, of ``size``, through ``encode_within_block`` at
    :data:`SMALL_BLOCK`: ``(blobs, file bytes, cut, (rows, bytes) per row group)``."""
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(50) for _ in range(n)]
    blobs[at] = rng.bytes(size)
    table = pa.table({"id": pa.array(range(n), pa.int64()), "blob": pa.array(blobs, pa.binary())})
    options = arrow_write.EncodeOptions(Encoding("zstd"), 8 << 10, SMALL_BLOCK)
    data, cut = arrow_write.encode_within_block(table, options)
    return blobs, data, cut, arrow_write.group_bytes(data)


def test_arrow_encode_isolates_a_huge_row_and_keeps_the_rest_in_block_sized_groups():
    """encode_within_block alone: the huge row goes first as its own group, the other 522 rows stay in
    their order in one group (they fit), instead of 523 one-row groups."""
    blobs, data, cut, groups = _encoded_with_one_big_row(523, 200, 100_000)
    assert cut and [r for r, _ in groups] == [1, 522], groups
    assert groups[0][1] > SMALL_BLOCK >= groups[1][1]
    back = pq.read_table(pa.BufferReader(data))
    assert back.column("id").to_pylist() == [200] + [i for i in range(523) if i != 200]
    assert back.column("blob").to_pylist() == [blobs[200]] + blobs[:200] + blobs[201:]


def test_arrow_encode_cuts_around_a_row_near_the_block_without_shrinking_every_group():
    """A row of ~0.9 block (under it) among small rows: the file is cut into a few groups around it, each
    under the block, not into groups small enough for that row's group to fit (11 groups before)."""
    _, data, cut, groups = _encoded_with_one_big_row(1300, 700, 58_000)
    assert cut and len(groups) <= 3 and all(c <= SMALL_BLOCK for _, c in groups), groups
    assert pq.read_table(pa.BufferReader(data)).column("id").to_pylist() == list(range(1300))  # order kept


@pytest.mark.parametrize("writer", ["arrow", "spark"])
def test_one_row_larger_than_the_block_is_its_own_group_and_the_rest_fill_the_block(
        spark, one_huge_row, tmp_path, writer):
    source, blobs = one_huge_row
    said: list[str] = []
    result = run(_conf(source, tmp_path, "huge", "64KiB", writer=writer), spark, log=said.append)
    ds = loader.open_dataset(tmp_path / "huge")
    per_file = _footer_groups(ds)
    assert [[(g.num_rows, g.compressed_bytes) for g in f.row_groups] for f in ds.files] == per_file
    over = [(k, i, g) for k, f in enumerate(per_file) for i, g in enumerate(f) if g[1] > SMALL_BLOCK]
    assert len(over) == 1, (per_file, said)
    k, i, (rows, _) = over[0]
    assert rows == 1 and i == 0, (per_file, said)  # alone, first in its file
    first = pq.ParquetFile(ds.file_path(ds.files[k])).read_row_group(0).to_pylist()
    assert first == [{"id": HUGE_AT, "blob": blobs[HUGE_AT]}]
    # every other group of a full file (the smallest file is the remainder) fills ~0.95 of the block
    full = sorted(range(len(per_file)), key=lambda j: sum(r for r, _ in per_file[j]))[1:]
    fills = [c / SMALL_BLOCK for j in full for n, (_, c) in enumerate(per_file[j]) if (j, n) != (k, 0)]
    assert fills and min(fills) >= 0.9 and statistics.median(fills) >= 0.93, (per_file, said)
    assert _attempts(ds) == 1, said  # the huge row drove no rewrite
    assert result.rows == ds.num_rows == 3000 and ds.manifest.extra["oversized_rows"] == 1
    assert any("larger than the block" in m for m in said), said
    table = pa.concat_tables([pq.read_table(ds.file_path(f)) for f in ds.files]).sort_by("id")
    assert table.column("id").to_pylist() == list(range(3000)) and table.column("blob").to_pylist() == blobs


@pytest.mark.parametrize("writer", ["arrow", "spark"])
def test_rows_compressing_below_a_byte_fill_the_block(spark, tmp_path, writer):
    """6M rows of a random bool and an int8 in 0..3 (~0.4 B/row compressed), 1 MiB block: every full file
    fills ~0.95 of the block (0.37-0.41 when the estimate was clamped at 1 B/row)."""
    block, source = 1 << 20, str(tmp_path / "tiny-src")
    spark.range(0, 6_000_000, 1, 4).selectExpr(
        "rand(3) < 0.5 AS flag", "cast(floor(rand(4) * 4) AS tinyint) AS k").write.parquet(source)
    said: list[str] = []
    run(_conf(source, tmp_path, "tiny", "1MiB", writer=writer), spark, log=said.append)
    ds = loader.open_dataset(tmp_path / "tiny")
    per_file = sorted(_footer_groups(ds), key=lambda f: sum(r for r, _ in f))
    assert ds.num_rows == 6_000_000 and len(per_file) >= 3, (per_file, said)
    fills = [c / block for f in per_file[1:] for _, c in f]  # every file but the remainder
    assert all(len(f) == 1 for f in per_file[1:]) and 0.93 <= min(fills) and max(fills) <= 1.0, (per_file, said)
    assert all(c <= block for f in per_file for _, c in f)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x1c", "\x1d", "\x1e", "\x0b", "\x0c", "\x85"])
def test_a_vocabulary_line_keeps_unicode_line_separators(tmp_path, separator):
    path = tmp_path / "vocab.txt"
    path.write_bytes(f"cat\nx{separator}y\ndog\n".encode())
    assert read_vocabulary_file(str(path), "transforms.0") == ["cat", f"x{separator}y", "dog"]


@pytest.mark.parametrize(
    "name, text, want",
    [
        ("vocab.txt", "[unknown]\ncat\n", ["[unknown]", "cat"]),  # a first value starting with '['
        ("vocab.txt", "cat\r\ndog\r\n\r\n", ["cat", "dog"]),  # CRLF line ends, empty lines skipped
        ("vocab.txt", "cat \n dog\n", ["cat ", " dog"]),  # spaces are part of the value
        ("vocab.json", '[\n  "cat",\n  "dog"\n]\n', ["cat", "dog"]),
        ("vocab.JSON", '["cat", "x\\u2028y"]', ["cat", "x\u2028y"]),
        ("vocab", '["cat", "dog"]', ["cat", "dog"]),  # other names: a JSON list when the text starts with '['
        ("vocab.lst", "cat\ndog\n", ["cat", "dog"]),
    ],
)
def test_the_file_name_tells_a_json_list_from_lines(tmp_path, name, text, want):
    path = tmp_path / name
    path.write_bytes(text.encode())
    assert read_vocabulary_file(str(path), "transforms.0") == want


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("vocab.json", "cat\ndog\n", r"vocab\.json is not a JSON list"),
        ("vocab.json", '{"cat": 0}', r"vocab\.json must hold a list of strings"),
        ("vocab", "[unknown]\ncat\n", r"vocab is not a JSON list .*name a file of one value per line \*\.txt"),
        ("vocab.txt", '["cat", "dog"]\n', r"vocab\.txt holds a JSON list.*name it \*\.json"),
        ("vocab.txt", "cat\ncat\r\n", r"lists a value twice"),
    ],
)
def test_a_vocabulary_file_in_the_wrong_form_is_refused_naming_it(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_bytes(text.encode())
    with pytest.raises(ConfigError, match=r"^transforms\.0\.vocabulary: .*" + message):
        read_vocabulary_file(str(path), "transforms.0")


def test_a_vocabulary_value_with_a_line_separator_keeps_its_id_in_the_job(spark, tmp_path):
    """The job with a one-value-per-line file whose second value holds U+2028: ids follow the lines."""
    values = ["cat", "x\u2028y", "dog"] * 10
    source = tmp_path / "src"
    source.mkdir()
    pq.write_table(pa.table({"id": pa.array(range(30), pa.int64()), "animal": values}), source / "a.parquet")
    vocab = tmp_path / "vocab.txt"
    vocab.write_bytes("cat\nx\u2028y\ndog\n".encode())
    transforms = [{"kind": "index", "column": "animal", "output": "label", "vocabulary": str(vocab)}]
    run(_conf(str(source), tmp_path, "v", "64KiB", transforms), spark, log=lambda _m: None)
    ds = loader.open_dataset(os.path.join(tmp_path, "v"))
    assert ds.vocabularies["label"] == ["cat", "x\u2028y", "dog"]
    table = pa.concat_tables([pq.read_table(ds.file_path(f)) for f in ds.files]).sort_by("id")
    assert table.column("label").to_pylist() == [0, 1, 2] * 10


def test_the_prior_of_a_version_leaves_out_rows_larger_than_the_block(tmp_path):
    """A rerun reuses the live version's bytes per row (``PriorSizing``): a row larger than the block, in a row
    group of its own, must not count, or every file of the rerun is sized as if its rows were that big (a
    forced rerun of one huge row among 3,000 small ones filled its files to about half the block)."""
    import dataclasses

    from etl.prior import PriorSizing
    from loader.manifest import FileInfo, RowGroupInfo

    ds = loader.write_cache(pa.table({"a": list(range(10))}), str(tmp_path), "p")
    block = 64 << 10

    def file(name: str, groups: list[tuple[int, int]]) -> FileInfo:
        infos = tuple(RowGroupInfo(num_rows=r, compressed_bytes=c, uncompressed_bytes=c) for r, c in groups)
        return FileInfo(path=name, size=1, checksum="0" * 8, footer_checksum="0" * 8, footer_size=1,
                        num_rows=sum(r for r, _ in groups), row_groups=infos)

    files = (file("a", [(1, 100_000), (1100, 62_000)]), file("b", [(1150, 62_000)]), file("c", [(500, 27_000)]))
    manifest = dataclasses.replace(ds.manifest, block_size=block, files=files,
                                   extra={"sizing": {"key": "k", "pilot_bytes_per_row": 55.0}})
    prior = PriorSizing.from_manifest(manifest)
    assert prior is not None
    assert prior.bytes_per_row == pytest.approx((62_000 + 62_000) / (1100 + 1150))  # the huge row left out
    one_huge = dataclasses.replace(manifest, files=(file("a", [(1, 100_000)]), file("c", [(1, 10)])))
    assert PriorSizing.from_manifest(one_huge) is None  # nothing but the huge row among the full files
