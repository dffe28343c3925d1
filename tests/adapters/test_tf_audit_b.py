"""The TensorFlow adapter, audit B: a transform's list columns, the type of ``output_signature``, and the reader's
arguments checked when the dataset is made even with an ``output_signature``."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from loader.errors import ColumnNotFoundError, ConfigError, EmptyDatasetError, TransformError  # noqa: E402
from loader.tf import make_dataset  # noqa: E402

KW = dict(batch_size=40, columns=["id", "title"], seed=3)


def with_lists(batch):
    """Python lists, as ``make_reader`` lets a transform return: ints, floats, strings (None among them), and
    rows of two ints."""
    ids = batch["id"].tolist()
    return {"id": batch["id"], "py": [i * 2 for i in ids], "f": tuple(i / 2 for i in ids),
            "s": [None if i % 3 == 0 else f"r{i}" for i in ids], "pair": [[i, -i] for i in ids]}


def ragged_rows(batch):
    return {"id": batch["id"], "rows": [list(range(i % 3)) for i in batch["id"].tolist()]}


def mixed_objects(batch):
    return {"id": batch["id"], "mixed": [None if i % 2 else i for i in batch["id"].tolist()]}


def dict_column(batch):
    return {"id": batch["id"], "d": {i: i for i in range(len(batch["id"]))}}


def check_lists(data) -> int:
    rows = 0
    for b in data:
        ids = b["id"].numpy().tolist()
        assert b["py"].numpy().tolist() == [i * 2 for i in ids]
        assert b["f"].numpy().tolist() == [i / 2 for i in ids]
        assert b["s"].numpy().tolist() == [b"" if i % 3 == 0 else f"r{i}".encode() for i in ids]
        assert b["pair"].numpy().tolist() == [[i, -i] for i in ids]
        rows += len(ids)
    return rows


@pytest.mark.parametrize("ragged", ["ragged", "padded"])
def test_list_columns_of_a_transform_become_tensors(adapter_data, ragged):
    """The signature taken from the first batch, and every batch, convert the lists with numpy."""
    table, ds = adapter_data
    data = make_dataset(ds.version_path, transform=with_lists, ragged=ragged, **KW)
    spec = data.element_spec
    assert {k: (spec[k].dtype, spec[k].shape.as_list()) for k in ("py", "f", "s", "pair")} == {
        "py": (tf.int64, [None]), "f": (tf.float64, [None]), "s": (tf.string, [None]), "pair": (tf.int64, [None, 2])}
    assert check_lists(data) == table.num_rows


def test_list_columns_with_a_given_signature(adapter_data):
    table, ds = adapter_data
    spec = make_dataset(ds.version_path, transform=with_lists, **KW).element_spec
    assert check_lists(make_dataset(ds.version_path, transform=with_lists, output_signature=spec, **KW)) \
        == table.num_rows


@pytest.mark.parametrize("transform, column", [(ragged_rows, "rows"), (mixed_objects, "mixed"), (dict_column, "d")])
def test_columns_numpy_makes_no_tensor_of_are_named(adapter_data, transform, column):
    """Rows of different lengths, ints mixed with None, a dict: a TransformError naming the column and the forms the
    adapter takes, when the signature is derived from the first batch."""
    _, ds = adapter_data
    with pytest.raises(TransformError, match=f"column '{column}'.*the tf adapter takes numpy arrays, or lists"):
        make_dataset(ds.version_path, transform=transform, **KW)


def test_a_column_numpy_makes_no_tensor_of_reaches_the_consumer_named(adapter_data):
    """With a given signature the batch is converted in the generator: tf.data's UnknownError carries the larder
    error."""
    _, ds = adapter_data
    spec = {"id": tf.TensorSpec([None], tf.int64), "rows": tf.RaggedTensorSpec([None, None], tf.int64)}
    data = make_dataset(ds.version_path, transform=ragged_rows, output_signature=spec, **KW)
    with pytest.raises(tf.errors.UnknownError, match="TransformError: column 'rows'"):
        for _ in data:
            pass


@pytest.mark.parametrize("bad, match", [
    (5, "output_signature must be a dict .* got int 5"),
    ([1], "output_signature must be a dict .* got list"),
    ("id", "output_signature must be a dict .* got str"),
    ({"id": 5}, r"output_signature\['id'\] must be a tf.TensorSpec or tf.RaggedTensorSpec, got int"),
    ({"id": tf.int64}, r"output_signature\['id'\] must be"),
    ({1: tf.TensorSpec([None], tf.int64)}, "output_signature keys must be column names"),
], ids=repr)
def test_output_signature_of_another_type_is_refused(adapter_data, bad, match):
    _, ds = adapter_data
    with pytest.raises(ConfigError, match=match):
        make_dataset(ds.version_path, columns=["id"], output_signature=bad)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"columns": ["nope"]}, ColumnNotFoundError, "nope"),
    ({"sample": 5}, ConfigError, "sample"),
    ({"pool": "x"}, ConfigError, "pool"),
    ({"drop_last": True, "batch_size": 1000}, EmptyDatasetError, "batch_size"),
], ids=repr)
def test_reader_arguments_are_checked_when_made_with_a_signature(adapter_data, kwargs, error, match):
    """A given output_signature opens no probe for the signature, but the reader's checks still run when the dataset
    is made, not in its first iteration (where tf.data would turn them into an UnknownError)."""
    _, ds = adapter_data
    spec = {"id": tf.TensorSpec([None], tf.int64)}
    with pytest.raises(error, match=match):
        make_dataset(ds.version_path, output_signature=spec, **{"columns": ["id"], **kwargs})


def test_a_given_signature_still_reads(adapter_data):
    table, ds = adapter_data
    data = make_dataset(ds.version_path, columns=["id"], output_signature={"id": tf.TensorSpec([None], tf.int64)})
    assert sorted(np.concatenate([b["id"].numpy() for b in data]).tolist()) == list(range(table.num_rows))
