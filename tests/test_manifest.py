"""The manifest contract: round trip, validation, and the bad inputs a reader must refuse."""

from __future__ import annotations

import json
import os
import re
import shutil
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

import loader
from loader import manifest as mf
from loader.errors import ManifestError
from loader.manifest import check_relative_path, file_from_doc


def _manifest_path(ds: loader.Dataset) -> str:
    return os.path.join(ds.version_path, mf.MANIFEST_NAME)


def _edit_manifest(ds: loader.Dataset, edit) -> None:
    path = _manifest_path(ds)
    with open(path) as f:
        doc = json.load(f)
    edit(doc)
    with open(path, "w") as f:
        json.dump(doc, f)


def test_manifest_describes_the_files(cache, table):
    ds = loader.open_dataset(cache.version_path)
    assert ds.num_rows == table.num_rows
    assert ds.schema.equals(table.schema)
    assert [f["name"] for f in ds.manifest.schema_fields] == table.column_names
    assert {f["name"]: f["type"] for f in ds.manifest.schema_fields}["ids"] == "list<item: int32>"
    for info in ds.files:
        path = os.path.join(ds.version_path, info.path)
        meta = pq.read_metadata(path)
        assert os.path.getsize(path) == info.size
        assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [g.num_rows for g in info.row_groups]
        with open(path, "rb") as f:
            assert mf.checksum_stream(f)[0] == info.checksum
    assert sum(ds.row_group_sizes()) == table.num_rows


def test_manifest_round_trips(cache):
    text = cache.manifest.to_json()
    again = mf.Manifest.from_json(text)
    assert again.to_json() == text
    assert json.loads(text)["num_rows"] == cache.num_rows  # plain JSON, readable without larder


def test_dataset_dir_follows_current(cache, table, tmp_path):
    newer = loader.write_cache(table.slice(0, 10), tmp_path / "cache", "demo")
    ds = loader.open_dataset(tmp_path / "cache" / "demo")
    assert ds.version == newer.version and ds.num_rows == 10
    old = loader.open_dataset(cache.version_path)  # the previous version stays readable
    assert old.num_rows == table.num_rows


def test_open_reads_no_data_file_even_with_10000_files(tmp_path, table):
    """Opening uses the manifest alone: with every data file gone, open still works."""
    ds = loader.write_cache(table.slice(0, 50), tmp_path / "c", "wide", row_group_bytes=1 << 20)
    one = ds.files[0]
    doc = json.loads(ds.manifest.to_json())
    doc["files"] = [dict(doc["files"][0], path=f"part-{i:05d}.parquet") for i in range(10_000)]
    with open(_manifest_path(ds), "w") as f:
        json.dump(doc, f)
    for name in os.listdir(ds.version_path):
        if name.endswith(".parquet"):
            os.remove(os.path.join(ds.version_path, name))
    opened = loader.open_dataset(tmp_path / "c" / "wide")
    assert len(opened.files) == 10_000
    assert opened.num_rows == 10_000 * one.num_rows
    with pytest.raises(loader.CorruptFileError, match="part-00000.parquet"):
        opened.open_file(opened.files[0])  # the data files really are gone


def test_missing_dataset(tmp_path):
    with pytest.raises(loader.DatasetNotFoundError, match="does not exist"):
        loader.open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(loader.DatasetNotFoundError, match="no CURRENT"):
        loader.open_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):  # the builtin a caller would catch
        loader.open_dataset(tmp_path / "empty")


def test_current_names_missing_version(cache):
    dataset_dir = os.path.dirname(cache.version_path)
    shutil.rmtree(cache.version_path)
    with pytest.raises(loader.DatasetNotFoundError, match="_manifest.json is missing"):
        loader.open_dataset(dataset_dir)


def test_unknown_manifest_version(cache):
    _edit_manifest(cache, lambda d: d.update(format_version=99))
    with pytest.raises(loader.UnsupportedFormatError, match="format_version 99"):
        loader.open_dataset(cache.version_path)


@pytest.mark.parametrize("bad", ["../other/part.parquet", "/etc/passwd", "a/../../x.parquet", "s3://b/x.parquet"])
def test_manifest_file_outside_version_dir(cache, bad):
    _edit_manifest(cache, lambda d: d["files"][0].update(path=bad))
    with pytest.raises(loader.ManifestError, match="leaves the version directory"):
        loader.open_dataset(cache.version_path)


def test_manifest_missing_key_is_named(cache):
    _edit_manifest(cache, lambda d: d.pop("block_size"))
    with pytest.raises(loader.ManifestError, match="block_size"):
        loader.open_dataset(cache.version_path)


def test_manifest_not_json(cache):
    with open(_manifest_path(cache), "w") as f:
        f.write("{not json")
    with pytest.raises(loader.ManifestError, match="not valid JSON"):
        loader.open_dataset(cache.version_path)


def test_truncated_file_is_detected_on_open(cache):
    info = cache.files[3]
    path = os.path.join(cache.version_path, info.path)
    with open(path, "r+b") as f:
        f.truncate(info.size - 100)
    with pytest.raises(loader.CorruptFileError, match=info.path) as err:
        cache.open_file(info)
    assert "truncated" in str(err.value) and err.value.path.endswith(info.path)


def test_corrupt_data_page_is_detected_on_read(cache):
    info = cache.files[2]
    path = os.path.join(cache.version_path, info.path)
    with open(path, "r+b") as f:  # flip bytes inside the first column chunk's data
        f.seek(20)
        chunk = bytearray(f.read(16))
        f.seek(20)
        f.write(bytes(b ^ 0xFF for b in chunk))
    with pytest.raises(loader.CorruptFileError, match=info.path):
        cache.read_row_group(info, 0)
    with open(path, "rb") as f:
        assert mf.checksum_stream(f)[0] != info.checksum  # the full checksum sees it too


def test_corrupt_footer_is_detected(cache):
    info = cache.files[1]
    path = os.path.join(cache.version_path, info.path)
    with open(path, "r+b") as f:
        f.seek(info.size - info.footer_size + 10)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x01]))
    with pytest.raises(loader.CorruptFileError, match="footer"):
        cache.open_file(info)


def _chunk(ds: loader.Dataset, info, column: int):
    meta = pq.read_metadata(os.path.join(ds.version_path, info.path))
    return meta.row_group(0).column(column)


def _flip(path: str, offset: int, n: int = 4) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        chunk = bytearray(f.read(n))
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in chunk))


def test_manifest_holds_a_checksum_per_column_chunk(cache):
    for info in cache.files:
        path = os.path.join(cache.version_path, info.path)
        meta = pq.read_metadata(path)
        with open(path, "rb") as f:
            data = f.read()
        for i, group in enumerate(info.row_groups):
            rg = meta.row_group(i)
            assert len(group.column_checksums) == rg.num_columns == 6  # one per Parquet leaf column
            for c in range(rg.num_columns):
                start, length = mf.chunk_range(rg.column(c))
                assert group.column_checksums[c] == f"{zlib.crc32(data[start:start + length]):08x}"


def test_checked_chunks_decode_like_pyarrow(cache, table):
    for columns in (None, ["ids", "title"], ["label"]):
        got = pa.concat_tables(
            [cache.read_row_group(info, 0, columns) for info in cache.files]
        )
        want = table if columns is None else table.select(columns)
        assert got.equals(want)


@pytest.mark.parametrize(("page", "column"), [
    ("data", 2), ("data", 3), ("data", 5),  # title (string), image (binary), label (int32, dictionary-encoded)
    ("dictionary", 5),  # only repetitive columns get a dictionary (loader.encoding)
])  # fmt: skip
def test_corrupt_page_fails_its_chunk_checksum(cache, page, column):
    info = cache.files[2]
    path = os.path.join(cache.version_path, info.path)
    chunk = _chunk(cache, info, column)
    assert chunk.has_dictionary_page == (page == "dictionary" or column == 5)
    start, length = mf.chunk_range(chunk)
    if page == "dictionary":  # the middle of the dictionary page, past its header
        offset = chunk.dictionary_page_offset + (chunk.data_page_offset - chunk.dictionary_page_offset) // 2
    else:  # the middle of the data pages
        offset = chunk.data_page_offset + (start + length - chunk.data_page_offset) // 2
    _flip(path, offset)
    with pytest.raises(loader.CorruptFileError, match=info.path) as err:
        cache.read_row_group(info, 0)
    assert f"column {chunk.path_in_schema} fails its checksum" in str(err.value)
    assert err.value.path.endswith(info.path)
    cache.read_row_group(info, 0, ["id" if column == 5 else "label"])  # other columns' chunks still read
    with pytest.raises(loader.CorruptFileError, match=info.path):
        list(loader.make_reader(cache, batch_size=16, pool="serial"))


def test_manifest_without_chunk_checksums_falls_back_to_page_crcs(cache, table):
    def strip(doc):
        for f in doc["files"]:
            f["row_groups"] = [g[:3] for g in f["row_groups"]]

    _edit_manifest(cache, strip)
    ds = loader.open_dataset(cache.version_path)
    assert all(not g.column_checksums for f in ds.files for g in f.row_groups)
    assert pa.concat_tables([ds.read_row_group(info, 0) for info in ds.files]).equals(table)
    assert sum(len(b["id"]) for b in loader.make_reader(ds, batch_size=64, pool="serial")) == table.num_rows
    info = ds.files[2]
    chunk = _chunk(ds, info, 3)  # image: no dictionary, a page's bytes past its header
    _flip(os.path.join(ds.version_path, info.path), chunk.data_page_offset + 40)
    with pytest.raises(loader.CorruptFileError, match=info.path):
        ds.read_row_group(info, 0)
    with pytest.raises(loader.CorruptFileError, match=info.path):
        list(loader.make_reader(ds, batch_size=16, pool="serial"))


@pytest.mark.parametrize("bad", [["xyz"], ["0000000g"], [], [123], "abc"])
def test_malformed_chunk_checksums_are_named(cache, bad):
    def edit(doc):
        doc["files"][0]["row_groups"][0] = doc["files"][0]["row_groups"][0][:3] + [bad]

    _edit_manifest(cache, edit)
    with pytest.raises(loader.ManifestError, match=r"files\[0\]"):
        loader.open_dataset(cache.version_path)


@given(st.text(alphabet="ab.-_/\\:", max_size=12))
def test_path_fast_check_agrees_with_the_rule(path):
    """The regex fast path of check_relative_path accepts exactly what the full rule accepts."""
    import posixpath

    ok = bool(path) and not path.startswith(("/", "\\")) and "\\" not in path and ":" not in path \
        and posixpath.normpath(path) == path and path.split("/")[0] != ".."
    try:
        check_relative_path(path)
        accepted = True
    except ManifestError:
        accepted = False
    assert accepted == ok, path


def test_malformed_file_entries_name_the_key(tmp_path):
    """A manifest entry the fast path rejects still gets the checking path's error naming the key."""
    good = {"path": "part-00000.parquet", "size": 10, "checksum": "crc32:00000000", "footer_checksum": "crc32:0",
            "footer_size": 4, "num_rows": 3, "row_groups": [[3, 5, 6, ["0000000a"]]]}
    assert file_from_doc(good).num_rows == 3
    for key, value, needle in [("size", "10", "'size'"), ("num_rows", 4, "inconsistent"),
                               ("row_groups", [[3, 5, 6, ["xyz"]]], "checksums"), ("path", "../x", "leaves")]:
        with pytest.raises(ManifestError, match=needle):
            file_from_doc({**good, key: value})
    with pytest.raises(ManifestError, match="missing key 'checksum'"):
        file_from_doc({k: v for k, v in good.items() if k != "checksum"})


@pytest.mark.parametrize("damage, needle", [
    (lambda f: f["row_groups"][0][3].__setitem__(0, "nothex!!"), "checksums should be 8-hex-digit"),
    (lambda f: f["row_groups"][0].__setitem__(0, "12"), r"files\[3\]"),
    (lambda f: f.pop("footer_size"), "missing key 'footer_size'"),
    (lambda f: f.__setitem__("num_rows", f["num_rows"] + 1), "inconsistent"),
])
def test_one_bad_entry_among_many_is_named(cache, damage, needle):
    """Entries are parsed in bulk; one malformed entry sends the manifest through the checking path, whose
    error names it."""
    _edit_manifest(cache, lambda doc: damage(doc["files"][3]))
    with pytest.raises(ManifestError, match=needle):
        loader.open_dataset(cache.version_path)


@pytest.mark.parametrize("key", ["dataset", "version"])
@pytest.mark.parametrize("bad", ["../outside", ".", "..", "a/b", "a\\b", "nul\x00", ""])
def test_dataset_and_version_must_be_single_path_components(cache, key, bad):
    _edit_manifest(cache, lambda d: d.update({key: bad}))  # both name directories of local caches
    message = f"key '{key}' is {bad!r}, which is not a single path component"
    with pytest.raises(loader.ManifestError, match=re.escape(message)) as err:
        loader.open_dataset(cache.version_path)
    assert _manifest_path(cache) in str(err.value)


@pytest.mark.parametrize("name", ["a\\b", "nul\x00", "team#1", "what?"])
def test_write_cache_refuses_names_a_manifest_or_a_url_cannot_hold(tmp_path, table, name):
    with pytest.raises(loader.PublishError, match="plain directory name"):
        loader.write_cache(table, tmp_path, name)
    assert os.listdir(tmp_path) == []
