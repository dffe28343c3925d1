"""Bad input to the reader: a clear, typed error naming the culprit, and never a wrong row."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

import loader
import loader.convert
from loader.errors import (
    ColumnNotFoundError,
    ConfigError,
    CorruptFileError,
    EmptyDatasetError,
    StateError,
    TransformError,
)
from tests.conftest import make_table
from tests.reader.conftest import POOLS

SOURCE_X = make_table(1000)["x"].to_numpy()


def explode(batch, rng):
    """Fails on the batch holding row 500."""
    if 500 in batch["id"]:
        raise KeyError("boom at row 500")
    return batch


def unequal(batch):
    batch["label"] = batch["label"][:-1]
    return batch


def not_a_dict(batch):
    return [batch]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"columns": ["id", "price"]}, ColumnNotFoundError, r"'price' is not in dataset 'demo'.*available: id, x, title"),
    ({"batch_size": 0}, ConfigError, "batch_size must be an integer >= 1, got 0"),
    ({"batch_size": -5}, ConfigError, "batch_size"),
    ({"batch_size": 2.5}, ConfigError, "batch_size"),
    ({"rank": 2, "world_size": 2}, ConfigError, r"rank 2 is outside \[0, 2\)"),
    ({"rank": -1, "world_size": 2}, ConfigError, "rank must be"),
    ({"world_size": 0}, ConfigError, "world_size"),
    ({"sample": 0.0}, ConfigError, r"sample must be a fraction in \(0, 1\]"),
    ({"sample": 1.5}, ConfigError, "sample"),
    ({"sample": np.float32(2.0)}, ConfigError, "sample"),
    ({"shuffle": "no"}, ConfigError, "shuffle must be True or False, got 'no'"),
    ({"drop_last": "yes"}, ConfigError, "drop_last must be True or False"),
    ({"masks": 1}, ConfigError, "masks must be True or False"),
    ({"pool": "gpu"}, ConfigError, "pool must be one of"),
    ({"seed": -1}, ConfigError, "seed"),
    ({"num_epochs": 0}, ConfigError, "num_epochs"),
    ({"ragged": "jagged"}, ConfigError, "ragged"),
    ({"transform": 42}, ConfigError, "transform must be callable"),
    ({"columns": []}, ConfigError, "at least one column"),
    ({"batchsize": 10}, ConfigError, r"unexpected keyword arguments \['batchsize'\]"),
    ({"world_size": 1001}, EmptyDatasetError, "rank 0 of 1001 would get no rows"),
    ({"sample": 1e-6}, EmptyDatasetError, "no rows"),
    ({"batch_size": 600, "world_size": 2, "drop_last": True}, EmptyDatasetError, "batch_size 600"),
])
def test_bad_arguments_are_refused_up_front(mixed_cache, kwargs, error, match):
    with pytest.raises(error, match=match):
        loader.make_reader(mixed_cache, **kwargs)
    # nothing lost: the cache still reads in full
    with loader.make_reader(mixed_cache, batch_size=1000, pool="serial") as r:
        assert len(next(r)["id"]) == 1000


def test_process_pool_refuses_a_transform_it_cannot_ship(mixed_cache):
    with pytest.raises(ConfigError, match="pool='process' needs a transform that pickles by reference.*lambda"):
        loader.make_reader(mixed_cache, pool="process", transform=lambda b: b)
    loader.make_reader(mixed_cache, pool="thread", transform=lambda b: b).close()  # fine in threads


def test_errors_are_also_builtin_errors(mixed_cache):
    with pytest.raises(ValueError):
        loader.make_reader(mixed_cache, columns=["nope"])
    with pytest.raises(FileNotFoundError):
        loader.make_reader(os.path.join(os.path.dirname(mixed_cache.version_path), "no-such-version"))


def test_empty_dataset(tmp_path):
    ds = loader.write_cache(make_table(10), tmp_path, "e")
    path = os.path.join(ds.version_path, "_manifest.json")
    with open(path) as f:
        doc = json.load(f)
    doc["files"] = []
    with open(path, "w") as f:
        json.dump(doc, f)
    with pytest.raises(EmptyDatasetError, match="dataset 'e'.*holds no rows"):
        loader.make_reader(str(tmp_path / "e"))


@pytest.fixture
def fresh_cache(tmp_path, mixed_cache):
    """A private copy of the mixed cache's version directory (to damage)."""
    dst = tmp_path / "copy"
    shutil.copytree(mixed_cache.version_path, dst)
    return loader.open_dataset(str(dst))


def _read_until_error(ds, pool):
    good = []
    reader = loader.make_reader(ds, batch_size=50, pool=pool, workers=2, shuffle=False)
    with pytest.raises(CorruptFileError) as info:
        for batch in reader:
            good.append(batch)
    for b in good:  # whatever came before the error is right
        assert np.array_equal(b["x"], SOURCE_X[b["id"]])
    return info.value


@pytest.mark.parametrize("pool", POOLS)
def test_flipped_byte_is_detected_and_names_the_file(fresh_cache, pool):
    victim = fresh_cache.files[3]
    path = fresh_cache.file_path(victim)
    with open(path, "r+b") as f:
        f.seek(victim.size // 3)
        byte = f.read(1)
        f.seek(victim.size // 3)
        f.write(bytes([byte[0] ^ 0xFF]))
    err = _read_until_error(fresh_cache, pool)
    assert victim.path in str(err) and err.path.endswith(victim.path)


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_truncated_file_is_detected_and_names_the_file(fresh_cache, pool):
    victim = fresh_cache.files[7]
    path = fresh_cache.file_path(victim)
    with open(path, "r+b") as f:
        f.truncate(victim.size - 10)
    err = _read_until_error(fresh_cache, pool)
    assert victim.path in str(err) and "truncated" in str(err)


@pytest.mark.parametrize("pool", POOLS)
def test_transform_that_raises_shows_its_traceback(mixed_cache, pool):
    reader = loader.make_reader(mixed_cache, batch_size=100, pool=pool, workers=2, transform=explode, seed=2)
    with pytest.raises(TransformError) as info:
        list(reader)
    text = str(info.value)
    assert "transform explode raised KeyError" in text and "boom at row 500" in text
    assert 'raise KeyError("boom at row 500")' in text  # the original traceback, from the worker
    with pytest.raises(TransformError):  # the reader stays failed rather than skipping the batch
        next(reader)


@pytest.mark.parametrize("pool", POOLS)
def test_transform_with_unequal_columns(mixed_cache, pool):
    reader = loader.make_reader(mixed_cache, columns=["id", "label", "title"], batch_size=100, pool=pool,
                                transform=unequal)
    with pytest.raises(TransformError, match=r"unequal lengths.*'id': 100, 'label': 99"):
        next(reader)
    reader.close()


def test_transform_must_return_a_dict(mixed_cache):
    with pytest.raises(TransformError, match="must return a dict"):
        next(loader.make_reader(mixed_cache, transform=not_a_dict, pool="serial"))


def test_state_from_another_version_or_setting_is_refused(tmp_path, mixed_cache):
    with loader.make_reader(mixed_cache, batch_size=100, seed=1) as r:
        next(r)
        state = r.state_dict()
    newer = loader.write_cache(make_table(1000, seed=1), tmp_path, "demo", row_group_bytes=2_500)
    with pytest.raises(StateError, match="'version' is 'v.*but this reader reads"):
        loader.make_reader(newer, batch_size=100, seed=1).load_state_dict(state)
    with pytest.raises(StateError, match=r"'config.seed' is 1, but this reader has 2"):
        loader.make_reader(mixed_cache, batch_size=100, seed=2).load_state_dict(state)
    with pytest.raises(StateError, match=r"'config.batch_size'"):
        loader.make_reader(mixed_cache, batch_size=50, seed=1).load_state_dict(state)
    with pytest.raises(StateError, match="'kind'"):
        loader.make_reader(mixed_cache).load_state_dict({"epoch": 0})
    bad = dict(state, batch=99)
    with pytest.raises(StateError, match="'batch' is 99"):
        loader.make_reader(mixed_cache, batch_size=100, seed=1).load_state_dict(bad)
    # other pools and worker counts may resume the same state
    r = loader.make_reader(mixed_cache, batch_size=100, seed=1, pool="serial", workers=1)
    r.load_state_dict(state)
    assert r.epoch == 0


def fail_at_batch_6(batch, rng):
    if int(batch["id"][0]) == fail_at_batch_6.first_of_6:
        raise RuntimeError("batch 6 is bad")
    return batch


@pytest.mark.parametrize("pool", ["serial", "thread"])
def test_the_batches_before_a_failing_one_are_delivered_first(mixed_cache, pool):
    """Thread workers finish several batches per task: a failure in the middle of a task still reaches the
    consumer exactly at the failing batch, after every batch before it."""
    reference = [b["id"].copy() for b in loader.make_reader(mixed_cache, batch_size=30, pool="serial", seed=4)]
    fail_at_batch_6.first_of_6 = int(reference[6][0])
    got = []
    reader = loader.make_reader(mixed_cache, batch_size=30, pool=pool, seed=4, transform=fail_at_batch_6)
    with pytest.raises(TransformError, match=r"batch 6 is bad.*\(epoch 0, batch 6\)"):
        for b in reader:
            got.append(b["id"].copy())
    assert len(got) == 6 and all(np.array_equal(a, b) for a, b in zip(got, reference, strict=False))
    reader.close()


def _retype_manifest(ds, column: str, new_type: pa.DataType) -> None:
    """Make the manifest say ``column`` has ``new_type`` (its files keep the old one)."""
    path = os.path.join(ds.version_path, "_manifest.json")
    with open(path) as f:
        doc = json.load(f)
    schema = ds.schema.set(ds.schema.get_field_index(column), pa.field(column, new_type))
    doc["schema"]["arrow_ipc_base64"] = base64.b64encode(schema.serialize().to_pybytes()).decode()
    with open(path, "w") as f:
        json.dump(doc, f)


@pytest.mark.parametrize("memory_budget", [None, 20_000])  # whole row groups; streamed slices
def test_a_manifest_that_misdescribes_a_column_type_is_refused_on_read(fresh_cache, memory_budget):
    _retype_manifest(fresh_cache, "x", pa.float32())
    reader = loader.make_reader(fresh_cache.version_path, columns=["id", "x"], batch_size=50, pool="serial",
                                memory_budget=memory_budget)
    assert (reader.max_piece_rows is not None) == (memory_budget is not None)
    with pytest.raises(CorruptFileError, match=r"part-\d+\.parquet: row group \d+ column 'x' decodes to "
                                               r"double, the manifest says float"):
        next(reader)
    reader.close()


@pytest.mark.parametrize("table, match", [
    (pa.table({"a": ["x", "yy"], "a.offsets": [0, 1]}), r"columns 'a' and 'a\.offsets' both give the batch key"),
    (pa.table({"s": [{"x": 1}, {"x": 2}], "s.x": [5, 6]}), r"columns 's' and 's\.x' both give the batch key 's\.x"),
    (pa.table({"b": [1, None], "b.valid": [7, 7]}), r"columns 'b' and 'b\.valid' both give the batch key"),
])
def test_columns_whose_batch_keys_collide_are_refused(tmp_path, table, match):
    loader.write_cache(table, tmp_path, "c")
    with pytest.raises(ConfigError, match=match):
        loader.make_reader(str(tmp_path / "c"), masks=True)
    other = [c for c in table.column_names if "." not in c]  # either column alone is fine
    with loader.make_reader(str(tmp_path / "c"), columns=other, masks=True, with_row_ids=True) as r:
        assert sorted(next(r)["_row"].tolist()) == [0, 1]


def test_transform_with_keys_that_are_not_names(mixed_cache):
    with pytest.raises(TransformError, match=r"returned a column keyed 0 \(int\)"):
        with loader.make_reader(mixed_cache, batch_size=50, pool="serial", transform=keyed_by_int) as r:
            next(r)


def keyed_by_int(batch):
    return {0: batch["id"]}


def with_eps(batch, eps=1e-6):
    batch["eps"] = np.full(len(batch["id"]), eps)
    return batch


def with_optional_rng(batch, rng=None):
    batch["r"] = rng.random(len(batch["id"]))
    return batch


def test_the_rng_goes_only_to_a_parameter_that_wants_it(mixed_cache):
    with loader.make_reader(mixed_cache, batch_size=50, pool="serial", transform=with_eps) as r:
        assert set(next(r)["eps"].tolist()) == {1e-6}
    with loader.make_reader(mixed_cache, batch_size=50, pool="serial", transform=with_optional_rng) as r:
        assert next(r)["r"].std() > 0


def test_pad_value_that_does_not_fit_names_the_column():
    with pytest.raises(ConfigError, match=r"pad_value -1 does not fit column 'title' \(uint8 values\)"):
        loader.convert.to_numpy(pa.table({"title": ["ab", "c"]}), ragged="padded", pad_value=-1)
    out = loader.convert.to_numpy(pa.table({"l": [[1, 2], [3]]}), ragged="padded", pad_value=-1)
    assert out["l"].tolist() == [[1, 2], [3, -1]]


def test_a_null_typed_column_is_refused_not_dropped():
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("n", pa.null())])
    with pytest.raises(ConfigError, match=r"column 'n' has type null"):
        loader.convert.check_schema(schema, ["id", "n"])


def test_opening_a_file_or_a_bad_current_says_what_is_wrong(tmp_path, mixed_cache):
    data_file = os.path.join(mixed_cache.version_path, mixed_cache.files[0].path)
    with pytest.raises(loader.DatasetNotFoundError, match=r"part-\d+\.parquet is a file: open the dataset's"):
        loader.open_dataset(data_file)
    ds = loader.write_cache(make_table(10), tmp_path, "cur")
    (tmp_path / "cur" / "CURRENT").write_text("../etc")
    with pytest.raises(loader.DatasetNotFoundError, match=r"CURRENT names '\.\./etc', which is not a version"):
        loader.open_dataset(str(tmp_path / "cur"))
    with pytest.raises(loader.DatasetNotFoundError, match=r"CURRENT is a file"):
        loader.open_dataset(str(tmp_path / "cur" / "CURRENT"))
    assert ds.num_rows == 10


def test_process_pool_in_a_script_read_from_stdin_fails_clearly(mixed_cache):
    """Workers import the main module; a script piped to ``python -`` has none to give: refused up front."""
    script = (
        "import loader\n"
        "from tests.reader.test_reader_errors import unequal\n"
        "try:\n"
        f"    loader.make_reader({mixed_cache.version_path!r}, pool='process', transform=unequal)\n"
        "except loader.ConfigError as e:\n"
        "    print('ConfigError:', e)\n"
    )
    proc = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120,
                          cwd=os.getcwd())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ConfigError: pool='process' cannot start workers from a main script that is "
                                  "not a file ('<stdin>'")


def test_numpy_scalar_arguments_are_accepted_and_the_state_stays_json(mixed_cache):
    kwargs = {"batch_size": np.int32(7), "seed": np.int64(3), "sample": np.float32(0.5), "shuffle": np.bool_(True)}
    with loader.make_reader(mixed_cache, **kwargs) as r, \
            loader.make_reader(mixed_cache, batch_size=7, seed=3, sample=0.5) as plain:
        assert next(r)["id"].tolist() == next(plain)["id"].tolist()
        assert json.loads(json.dumps(r.state_dict())) == plain.state_dict()


def test_row_ids_get_no_mask(mixed_cache):
    with loader.make_reader(mixed_cache, columns=["id"], masks=True, with_row_ids=True, batch_size=10) as r:
        assert sorted(next(r)) == ["_row", "_row_group", "id"] + (["id.valid"] if mixed_cache.schema.field(
            "id").nullable else [])
