"""Audit B: ``write_cache`` refuses, before anything is published, arguments the manifest or the reader cannot
take (vocabularies, duplicate columns, NaN in ``source``, arguments of the wrong type), and the manifest parser
refuses a malformed vocabulary in an existing manifest with a :class:`ManifestError`."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import loader
from loader import fs as lfs
from loader import manifest as mf
from loader.encoding import Encoding
from loader.errors import ConfigError, ManifestError
from loader.publish import begin_staging


def _table() -> pa.Table:
    return pa.table({"id": np.arange(20, dtype=np.int64), "label": (np.arange(20) % 3).astype(np.int32)})


def _nothing_published(root, name: str = "d") -> bool:
    path = os.path.join(root, name)
    return not os.path.exists(path) or not any(not n.startswith("_") for n in os.listdir(path))


def _live_rows(root, name: str = "d") -> list[int]:
    with loader.make_reader(os.path.join(root, name), shuffle=False, batch_size=1000) as r:
        return np.concatenate([b["id"] for b in r]).tolist()


# --- bug 1: vocabularies -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("vocabularies", "match"), [
    ({"label": 5}, r"vocabularies\['label'\] is a int, not a list"),
    ({"label": "abc"}, r"vocabularies\['label'\] is a str, not a list"),
    ({"label": ["a", ["b"]]}, r"vocabularies\['label'\] holds \['b'\] \(list\) at position 1"),
    ({"label": ["a", {"b": 1}]}, r"vocabularies\['label'\] holds \{'b': 1\} \(dict\) at position 1"),
    ({"label": ["a", float("nan")]}, r"vocabularies\['label'\] holds nan \(float\) at position 1"),
    ({"label": ["a", np.int64(3)]}, r"vocabularies\['label'\] holds .*3.* \(int64\) at position 1"),
    ({"label": np.array(["a", "b"])}, r"vocabularies\['label'\] is a ndarray, not a list"),
    ({"zz": ["q"]}, r"vocabularies names column 'zz', which is not in the data \(columns: id, label\)"),
    ({5: ["q"]}, r"vocabularies names column 5"),
    (["label"], r"vocabularies must be a dict of column -> list of values, got list"),
])
def test_a_malformed_vocabulary_is_refused_naming_the_column(tmp_path, vocabularies, match):
    loader.write_cache(_table(), tmp_path, "d")
    before = _live_rows(tmp_path)
    with pytest.raises(ConfigError, match=match):
        loader.write_cache(_table().slice(0, 5), tmp_path, "d", vocabularies=vocabularies)
    assert _live_rows(tmp_path) == before  # the previous version stays live
    assert len([n for n in os.listdir(tmp_path / "d") if n.startswith("v")]) == 1


def test_vocabularies_of_json_scalars_are_published_as_given(tmp_path):
    vocabularies = {"label": ("shoes", "bags", "hats"), "id": [10, 2.5, True, None, "x"]}
    ds = loader.write_cache(_table(), tmp_path, "d", vocabularies=vocabularies)
    want = {"label": ["shoes", "bags", "hats"], "id": [10, 2.5, True, None, "x"]}
    assert ds.vocabularies == want
    assert loader.open_dataset(tmp_path / "d").vocabularies == want


def _published_manifest(tmp_path, edit) -> str:
    ds = loader.write_cache(_table(), tmp_path, "d", vocabularies={"label": ["a", "b", "c"]})
    path = os.path.join(ds.version_path, mf.MANIFEST_NAME)
    with open(path) as f:
        doc = json.load(f)
    edit(doc)
    with open(path, "w") as f:
        f.write(json.dumps(doc))
    return path


@pytest.mark.parametrize(("vocabulary", "match"), [
    (5, r"key 'vocabularies': the vocabulary of column 'label' is a int, not a list"),
    ({"a": 0}, r"key 'vocabularies': the vocabulary of column 'label' is a dict, not a list"),
    (["a", ["b"]], r"the vocabulary of column 'label' holds \['b'\] \(list\) at position 1"),
    (["a", float("nan")], r"the vocabulary of column 'label' holds nan \(float\) at position 1"),
])
def test_a_manifest_with_a_malformed_vocabulary_is_refused(tmp_path, vocabulary, match):
    def edit(doc):
        doc["vocabularies"]["label"] = vocabulary

    path = _published_manifest(tmp_path, edit)
    with pytest.raises(ManifestError, match=match) as info:
        loader.open_dataset(tmp_path / "d")
    assert path in str(info.value)


def test_a_manifest_that_lists_a_column_twice_is_refused(cache):
    schema = pa.schema([("id", pa.int64()), ("id", pa.int32())])
    twice = dataclasses.replace(cache.manifest, arrow_schema=schema, schema_fields=mf.schema_fields(schema)).to_json()
    with pytest.raises(ManifestError, match=r"here: the schema lists column 'id' twice"):
        mf.Manifest.from_json(twice, where="here")


# --- bug 2: duplicate column names -------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", [None, Encoding("zstd")])
def test_duplicate_column_names_are_refused(tmp_path, encoding):
    t = pa.table([[1, 2], [3, 4], [5, 6]], names=["a", "b", "a"])
    with pytest.raises(ConfigError, match=r"write_cache: column 'a' appears twice in the data"):
        loader.write_cache(t, tmp_path, "d", encoding=encoding)
    assert _nothing_published(tmp_path)


# --- bug 3: NaN in source ----------------------------------------------------------------------------------


def _strict_doc(ds: loader.Dataset) -> dict:
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    with open(os.path.join(ds.version_path, mf.MANIFEST_NAME)) as f:
        return json.loads(f.read(), parse_constant=refuse)


def test_a_nan_or_infinity_in_source_is_stored_as_strict_json(tmp_path):
    source = {"threshold": float("nan"), "deep": {"list": [1, float("inf"), (float("-inf"), 0.5)]}}
    ds = loader.write_cache(_table(), tmp_path, "d", source=source)
    want = {"threshold": "NaN", "deep": {"list": [1, "Infinity", ["-Infinity", 0.5]]}}
    assert {k: _strict_doc(ds)["source"][k] for k in source} == want
    assert {k: loader.open_dataset(tmp_path / "d").source[k] for k in source} == want
    assert {k: ds.source[k] for k in source} == want


@pytest.mark.parametrize(("source", "match"), [
    ({"a": {1: "x"}}, r"source\['a'\] has the key 1 \(int\): JSON keys are strings"),
    ({"a": {"x", "y"}}, r"source\['a'\] is a set .*which JSON cannot hold"),
    ({"n": [0, np.int64(3)]}, r"source\['n'\]\[1\] is a int64 .*which JSON cannot hold"),
])
def test_a_source_the_manifest_json_cannot_hold_is_refused(tmp_path, source, match):
    loader.write_cache(_table(), tmp_path, "d")
    before = _live_rows(tmp_path)
    with pytest.raises(ConfigError, match=match):
        loader.write_cache(_table().slice(0, 5), tmp_path, "d", source=source)
    assert _live_rows(tmp_path) == before


def test_a_source_that_contains_itself_is_refused(tmp_path):
    source: dict = {"a": 1}
    source["self"] = source
    with pytest.raises(ConfigError, match=r"source is nested too deeply \(or contains itself\)"):
        loader.write_cache(_table(), tmp_path, "d", source=source)
    assert _nothing_published(tmp_path)


def test_the_manifest_json_never_holds_nan(cache):
    bad = dataclasses.replace(cache.manifest, source={"threshold": float("nan")})
    with pytest.raises(ManifestError, match=r"the manifest of dataset 'demo' holds a NaN or infinity"):
        bad.to_json()


def test_a_run_whose_manifest_would_hold_nan_publishes_nothing(tmp_path):
    """The Spark job's path (``Staging.commit``, no ``write_cache`` check): the guard in ``to_json`` refuses."""
    loader.write_cache(_table(), tmp_path, "d")
    before = _live_rows(tmp_path)
    fs, root = lfs.resolve(str(tmp_path))
    with pytest.raises(loader.PublishError, match=r"previous version stays live: .*holds a NaN or infinity"):
        with begin_staging(fs, root, "d") as staging:
            fs.create_dir(staging.path, recursive=True)
            pq.write_table(_table().slice(0, 5), lfs.join(staging.path, "part-00000.parquet"), filesystem=fs)
            staging.commit(source={"threshold": float("nan")}, created_by={"job": "tests"})
    assert _live_rows(tmp_path) == before
    assert len([n for n in os.listdir(tmp_path / "d") if n.startswith("v")]) == 1


def test_a_published_source_is_strict_json(tmp_path):
    source = {"threshold": 0.5, "where": "dt = '2026'", "deep": {"list": [1, None, True, "x"]}}
    ds = loader.write_cache(_table(), tmp_path, "d", source=source)
    assert {k: _strict_doc(ds)["source"][k] for k in source} == source


# --- bug 4: the other arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": 5}, r"write_cache: name must be a string \(the dataset's directory name\), got int 5"),
    ({"name": None}, r"write_cache: name must be a string .* got NoneType None"),
    ({"root": 5}, r"write_cache: root must be a path or URL string, got int 5"),
    ({"source": "x"}, r"write_cache: source must be a dict \(or None\), got str 'x'"),
    ({"source": [("a", 1)]}, r"write_cache: source must be a dict \(or None\), got list"),
    ({"fingerprint": 5}, r"write_cache: fingerprint must be a string \(or None\), got int 5"),
    ({"fingerprint": b"ab"}, r"write_cache: fingerprint must be a string \(or None\), got bytes"),
    ({"shuffle": "no"}, r"write_cache: shuffle must be True or False, got 'no'"),
    ({"shuffle": 1}, r"write_cache: shuffle must be True or False, got 1"),
    ({"shuffle": None}, r"write_cache: shuffle must be True or False, got None"),
    ({"fill": True}, r"fill must be a number in \(0, 1\], got True"),
    ({"fill": "0.5"}, r"fill must be a number in \(0, 1\], got '0.5'"),
    ({"fill": float("nan")}, r"fill must be a number in \(0, 1\], got nan"),
    ({"fill": 0}, r"fill must be a number in \(0, 1\], got 0"),
    ({"row_group_bytes": "4096"}, r"row_group_bytes must be an integer number of bytes \(or None\), got '4096'"),
    ({"row_group_bytes": 4096.0}, r"row_group_bytes must be an integer number of bytes \(or None\), got 4096.0"),
    ({"row_group_bytes": True}, r"row_group_bytes must be an integer number of bytes \(or None\), got True"),
    ({"row_group_bytes": -1}, r"row_group_bytes must be positive, got -1"),
    ({"row_groups_per_file": 1.5}, r"row_groups_per_file must be an integer >= 1, got 1.5"),
    ({"row_groups_per_file": 0}, r"row_groups_per_file must be an integer >= 1, got 0"),
    ({"row_groups_per_file": True}, r"row_groups_per_file must be an integer >= 1, got True"),
    ({"keep_versions": "3"}, r"keep_versions must be an integer >= 1, got '3'"),
    ({"keep_versions": 1.5}, r"keep_versions must be an integer >= 1, got 1.5"),
    ({"keep_versions": 0}, r"keep_versions must be an integer >= 1, got 0"),
    ({"block_size": 2.0**20}, r"block_size must be an integer >= 1, got 1048576.0"),
    ({"seed": "1"}, r"seed must be an integer >= 0, got '1'"),
    ({"encoding": "zstd"}, r"write_cache: encoding must be a loader.encoding.Encoding \(or None\), got str 'zstd'"),
    ({"encoding": Encoding("nope")}, r"write_cache: encoding.codec must be one of .*zstd.*, got 'nope'"),
    ({"encoding": Encoding(5)}, r"write_cache: encoding.codec must be one of .*, got 5"),
    ({"encoding": Encoding("zstd", dictionary="id")},
     r"write_cache: encoding.dictionary must be None or a tuple of column paths, got 'id'"),
    ({"encoding": Encoding("zstd", uncompressed=(1,))},
     r"write_cache: encoding.uncompressed must be a tuple of column paths, got \(1,\)"),
])
def test_an_argument_of_the_wrong_type_is_named_and_nothing_is_published(tmp_path, kwargs, match):
    loader.write_cache(_table(), tmp_path, "d")
    before = _live_rows(tmp_path)
    args = {"root": tmp_path, "name": "d", **kwargs}
    with pytest.raises(ConfigError, match=match):
        loader.write_cache(_table().slice(0, 5), args.pop("root"), args.pop("name"), **args)
    assert _live_rows(tmp_path) == before
    assert len([n for n in os.listdir(tmp_path / "d") if n.startswith("v")]) == 1


def test_numpy_scalars_and_paths_are_accepted(tmp_path):
    ds = loader.write_cache(_table(), tmp_path, "d", shuffle=np.bool_(True), seed=np.int64(3),
                            row_group_bytes=np.int64(1 << 20), row_groups_per_file=np.int32(2),
                            keep_versions=np.int64(2), fill=np.float64(0.5), fingerprint="0123abcd",
                            encoding=Encoding("ZSTD", dictionary=["label"], uncompressed=["id"]))
    assert sorted(_live_rows(tmp_path)) == list(range(20)) and _live_rows(tmp_path) != list(range(20))
    assert ds.version.endswith("-0123abcd")
