"""loader.mix (audit B): a dataset's own ``_source`` is never overwritten by ``with_source``, and every argument
of ``mix`` is checked (a ``ConfigError`` naming it) before any source is opened."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pyarrow as pa
import pytest

import loader
from loader.errors import ConfigError, LarderError

SOURCE_IS_SEVEN = {"_source": pa.array([7] * 10, pa.int64()), "v": list(range(10))}


@pytest.fixture(scope="module")
def source_cache(tmp_path_factory) -> loader.Dataset:
    """10 rows whose column ``_source`` is all 7 (the key ``with_source`` adds)."""
    return loader.write_cache(pa.table(SOURCE_IS_SEVEN), tmp_path_factory.mktemp("srccol"), "srccol")


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> loader.Dataset:
    return loader.write_cache(pa.table({"x": list(range(50))}), tmp_path_factory.mktemp("mixsrc"), "mixsrc")


# --- bug 1: with_source and a real ``_source`` column -------------------------------------------------------


def test_a_source_column_named_source_is_refused_at_construction(source_cache, small_cache):
    with pytest.raises(ConfigError, match=r"mix source 1: columns \['_source'\] clash with the mix's source column"):
        loader.mix([small_cache, source_cache], with_source=True, batch_size=10, shuffle=False)
    with loader.make_reader(source_cache, batch_size=10, shuffle=False) as given:
        with pytest.raises(ConfigError, match=r"mix source 0: columns \['_source'\] clash"):
            loader.mix([given], with_source=True)
        assert next(given)["_source"].tolist() == [7] * 10  # the reader passed in is left as it was


def test_the_source_column_comes_through_without_with_source(source_cache):
    with loader.mix([source_cache], batch_size=10, shuffle=False) as m:
        assert next(m)["_source"].tolist() == [7] * 10
    with loader.mix([source_cache], with_source=True, columns=["v"], batch_size=10, shuffle=False) as m:
        b = next(m)
    assert b["_source"].tolist() == [0] * 10 and b["v"].tolist() == list(range(10))


def test_a_column_read_as_the_structure_of_source_is_refused(tmp_path):
    ds = loader.write_cache(pa.table({"_source.offsets": [1, 2, 3], "v": [1, 2, 3]}), tmp_path, "offs")
    with pytest.raises(ConfigError, match=r"columns \['_source.offsets'\] clash"):
        loader.mix([ds], with_source=True, batch_size=3)


def _add_source(batch):
    batch["_source"] = np.full(len(batch["x"]), 9)
    return batch


def _drop_source(batch):
    batch.pop("_source")
    return batch


def test_a_transform_giving_source_is_refused_at_its_first_batch(small_cache):
    with loader.mix([small_cache], with_source=True, batch_size=10, transform=_add_source) as m:
        with pytest.raises(ConfigError, match="mix source 0 gave a batch with the keys \\['_source'\\]"):
            next(m)


def test_a_transform_that_drops_the_column_may_select_it(source_cache):
    # Its transform decides the batch keys: selecting '_source' is no clash when the transform removes it.
    with loader.mix([source_cache], with_source=True, batch_size=10, shuffle=False, transform=_drop_source) as m:
        b = next(m)
    assert b["_source"].tolist() == [0] * 10 and b["v"].tolist() == list(range(10))


def test_a_mix_with_source_inside_a_mix_with_source_is_refused(small_cache):
    with loader.mix([small_cache], with_source=True) as inner:
        with pytest.raises(ConfigError, match="mix source 0 is a mix with with_source=True"):
            loader.mix([inner, small_cache], with_source=True)
        with loader.mix([inner]) as outer:  # no clash without the outer with_source: the inner's comes through
            assert next(outer)["_source"].tolist() == [0] * 50
    with loader.mix([small_cache, small_cache], weights=[0, 1]) as inner, \
            loader.mix([inner], with_source=True) as outer:
        assert next(outer)["_source"].tolist() == [0] * 50  # the outer's index, inner's with_source off


# --- bug 2: argument checks ---------------------------------------------------------------------------------


def _one_source(small_cache):
    return [small_cache.version_path, str(small_cache.version_path), pathlib.Path(small_cache.version_path),
            small_cache]


def test_a_single_source_is_refused(small_cache):
    for single in _one_source(small_cache):
        with pytest.raises(ConfigError, match="sources must be a list of readers or URLs"):
            loader.mix(single)
    with loader.make_reader(small_cache, batch_size=10, shuffle=False) as r:
        with pytest.raises(ConfigError, match="sources must be a list of readers or URLs, got a single Reader"):
            loader.mix(r)
        assert next(r)["x"].tolist() == list(range(10))  # not drained by the refused mix
    for bad in (42, {small_cache.version_path: 1}):
        with pytest.raises(ConfigError, match="sources must be a list of readers or URLs"):
            loader.mix(bad)


@pytest.mark.parametrize("weights", [["a", 1], [None, 1], 2, "11", [True, 1], {0: 2, 1: 1}, [np.bool_(True), 1]])
def test_weights_must_be_real_numbers(small_cache, weights):
    with pytest.raises(ConfigError, match="weights must be a sequence of real numbers, one per source") as e:
        loader.mix([small_cache, small_cache], weights=weights)
    assert isinstance(e.value, LarderError)


def test_a_weight_too_large_for_a_float_is_refused(small_cache):
    with pytest.raises(ConfigError, match="weights must be finite"):
        loader.mix([small_cache, small_cache], weights=[10**400, 1])


def test_weights_of_numpy_and_other_real_types_are_accepted(small_cache):
    from fractions import Fraction

    with loader.mix([small_cache, small_cache], weights=np.array([3, 1]), batch_size=10) as m:
        assert m.weights == [0.75, 0.25]
    with loader.mix([small_cache, small_cache], weights=(Fraction(1, 3), np.float32(1)), batch_size=10) as m:
        assert m.weights == pytest.approx([0.25, 0.75])


@pytest.mark.parametrize("flag", ["no", 1, None, np.array([True])])
def test_with_source_must_be_a_bool(small_cache, flag):
    with pytest.raises(ConfigError, match="with_source must be True or False"):
        loader.mix([small_cache], with_source=flag)


def test_with_source_takes_a_numpy_bool(small_cache):
    with loader.mix([small_cache], with_source=np.bool_(True), batch_size=10) as m:
        assert next(m)["_source"].tolist() == [0] * 10
        assert m.with_source is True
    with loader.mix([small_cache], with_source=np.bool_(False), batch_size=10) as m:
        assert "_source" not in next(m)


@pytest.mark.parametrize("stop", [np.array(["first"]), ["all"], None, b"first"])
def test_stop_must_be_a_rule_name(small_cache, stop):
    with pytest.raises(ConfigError, match="stop must be one of"):
        loader.mix([small_cache], stop=stop)


def test_a_numpy_stop_name_gives_a_json_state(small_cache):
    with loader.mix([small_cache], stop=np.str_("all"), batch_size=10) as m:
        next(m)
        assert type(m.stop) is str and json.loads(json.dumps(m.state_dict()))["stop"] == "all"


def test_reader_options_without_a_url_source_are_refused(small_cache):
    with loader.make_reader(small_cache, batch_size=10) as r:
        with pytest.raises(ConfigError, match=r"reader options \['batch_size', 'memory_budget'\].*no source is a URL"):
            loader.mix([r], batch_size=5, memory_budget="x")
        with loader.mix([r, small_cache], batch_size=5) as m:  # a URL source: they are its options
            assert m.readers[1].batch_size == 5 and m.readers[0].batch_size == 10
