"""Reader API audit: the transform's ``rng`` wherever it is named, mix counts and state checks, the serial pool's
consumer wait, typed errors for make_reader / mix arguments, and no pandas import on the streamed path."""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import loader
from loader.errors import ConfigError, StateError
from tests.reader.conftest import POOLS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- the transform's rng ------------------------------------------------------------------------------------


def noise_rng_second(batch: dict, rng) -> dict:
    batch["noise"] = rng.random(len(batch["id"]))
    return batch


def noise_rng_after_option(batch: dict, eps=0.0, rng=None) -> dict:  # `rng` named, third, with a default
    batch["noise"] = rng.random(len(batch["id"])) + eps
    return batch


def noise_rng_after_two_options(batch: dict, eps=0.0, scale=1.0, rng=None) -> dict:
    batch["noise"] = rng.random(len(batch["id"])) * scale + eps
    return batch


def noise_rng_positional_only_after_option(batch: dict, scale=2.0, rng=None, /) -> dict:
    batch["noise"] = rng.random(len(batch["id"])) * scale
    return batch


def option_before_args(batch: dict, eps=0.5, *args) -> dict:  # no rng: `eps` keeps its default
    batch["noise"] = np.full(len(batch["id"]), eps)
    return batch


def read_noise(cache, transform, pool: str) -> list:
    with loader.make_reader(cache, batch_size=64, seed=3, num_epochs=2, pool=pool, workers=2, columns=["id"],
                            transform=transform) as r:
        return [(b["id"].tolist(), b["noise"].tolist()) for b in r]


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("transform", [noise_rng_after_option, noise_rng_after_two_options])
def test_a_parameter_named_rng_gets_the_rng_wherever_it_is(mixed_cache, pool, transform):
    """README: the RNG goes to a parameter named ``rng``, also after optional ones (given by keyword, so their
    defaults stay): the same draws as a transform taking it second, in every pool."""
    expected = read_noise(mixed_cache, noise_rng_second, "serial")
    assert len({tuple(n) for _, n in expected}) == len(expected)  # a different draw per batch
    assert read_noise(mixed_cache, transform, pool) == expected


def test_a_positional_only_rng_after_an_option_is_refused_naming_the_transform(mixed_cache):
    """``f(batch, scale=2.0, rng=None, /)``: the RNG cannot reach ``rng`` without overriding ``scale``, so the
    reader refuses the transform when it is made, rather than calling it without the RNG."""
    with pytest.raises(ConfigError, match=r"noise_rng_positional_only_after_option.*'rng'.*positional-only.*'scale'"):
        loader.make_reader(mixed_cache, transform=noise_rng_positional_only_after_option)


@pytest.mark.parametrize("pool", POOLS)
def test_an_option_before_star_args_keeps_its_default(mixed_cache, pool):
    """``f(batch, eps=0.5, *args)`` has no ``rng`` and its second parameter has a default: called with the batch
    alone."""
    assert all(n == [0.5] * len(n) for _, n in read_noise(mixed_cache, option_before_args, pool))


# --- mix: counts and state ----------------------------------------------------------------------------------


def mixed(mixed_cache, uneven_cache, **kw):
    readers = [loader.make_reader(mixed_cache, batch_size=40, seed=1, num_epochs=None),
               loader.make_reader(uneven_cache, batch_size=40, seed=2, num_epochs=None)]
    return loader.mix(readers, **{"weights": [2, 1], "seed": 0, "with_source": True, **kw})


def test_mix_counts_carry_over_a_resume(mixed_cache, uneven_cache):
    with mixed(mixed_cache, uneven_cache) as m:
        list(itertools.islice(m, 30))
        full = list(m.counts)
    with mixed(mixed_cache, uneven_cache) as m:
        list(itertools.islice(m, 20))
        state = json.loads(json.dumps(m.state_dict()))
    with mixed(mixed_cache, uneven_cache) as m:
        m.load_state_dict(state)
        assert m.counts == state["counts"] and sum(m.counts) == 20
        list(itertools.islice(m, 10))
        assert m.counts == full and sum(full) == 30 and min(full) > 0


def test_mix_loads_a_state_without_counts(mixed_cache, uneven_cache):
    """A state saved before the counts were kept still resumes the same draws (counts restart at zero)."""
    with mixed(mixed_cache, uneven_cache) as m:
        list(itertools.islice(m, 20))
        state = json.loads(json.dumps(m.state_dict()))
        expected = [(b["_source"][0], b["id"].tolist()) for b in itertools.islice(m, 10)]
    del state["counts"]
    with mixed(mixed_cache, uneven_cache) as m:
        m.load_state_dict(state)
        assert [(b["_source"][0], b["id"].tolist()) for b in itertools.islice(m, 10)] == expected
        assert sum(m.counts) == 10


def _pop(key):
    return lambda s: s.pop(key)


def _set(key, value):
    return lambda s: s.__setitem__(key, value)


@pytest.mark.parametrize(("edit", "key"), [
    (_pop("step"), "step"),
    (_set("step", "x"), "step"),
    (_set("step", -1), "step"),
    (_set("step", True), "step"),
    (_pop("exhausted"), "exhausted"),
    (_set("exhausted", [False]), "exhausted"),
    (_set("exhausted", [False, "no"]), "exhausted"),
    (_set("done", "yes"), "done"),
    (_set("counts", [1]), "counts"),
    (_set("counts", [-1, 21]), "counts"),
    (lambda s: s["sources"][1].__setitem__("batch", -4), "sources[1]"),
])
def test_mix_refuses_a_bad_state_before_moving_any_source(mixed_cache, uneven_cache, edit, key):
    """Every key is checked (a StateError naming it) before any source's state is loaded: a refused state
    leaves the mix and its sources where they were."""
    with mixed(mixed_cache, uneven_cache) as m:
        list(itertools.islice(m, 20))
        state = json.loads(json.dumps(m.state_dict()))
    bad = copy.deepcopy(state)
    edit(bad)
    with mixed(mixed_cache, uneven_cache) as m:
        list(itertools.islice(m, 5))
        before = m.state_dict()
        with pytest.raises(StateError, match=re.escape(f"state key '{key}'")):
            m.load_state_dict(bad)
        assert m.state_dict() == before
        assert [r.state_dict() for r in m.readers] == before["sources"]


# --- the serial pool's consumer wait ------------------------------------------------------------------------


def nap(batch: dict) -> dict:
    time.sleep(0.01)
    return batch


def test_serial_pool_counts_the_consumers_wait(mixed_cache):
    """With the serial pool the consumer produces every batch itself: that time is its wait."""
    with loader.make_reader(mixed_cache, batch_size=50, pool="serial", transform=nap) as r:
        batches = sum(1 for _ in r)
    assert batches == 20
    assert r.stats.consumer_wait_seconds >= 0.01 * batches
    assert r.stats.consumer_wait_seconds >= r.stats.transform_seconds


# --- typed errors for make_reader / mix arguments -----------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"columns": 5}, r"columns must be a column name or a list of column names, got int"),
    ({"columns": ["id", 5]}, r"columns must .* got int .*5"),
    ({"decoded_cache_dir": 1}, r"decoded_cache_dir must be a path .* got int"),
])
def test_make_reader_names_an_argument_of_the_wrong_type(mixed_cache, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        loader.make_reader(mixed_cache, **kwargs)


def test_mix_takes_numpy_integer_seeds_like_make_reader(mixed_cache, uneven_cache):
    def draws(seed):
        with loader.mix([mixed_cache, uneven_cache], seed=seed, batch_size=40, with_source=True) as m:
            return [int(b["_source"][0]) for b in m]
    assert draws(np.int64(3)) == draws(3)
    with loader.mix([mixed_cache], seed=np.int64(3)) as m:
        assert type(m.seed) is int and json.loads(json.dumps(m.state_dict()))["seed"] == 3
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
            loader.mix([mixed_cache], seed=bad)


# --- no pandas on the streamed path ------------------------------------------------------------------------

_NO_PANDAS = """
import sys
import loader
reader = loader.make_reader(sys.argv[1], batch_size=50, memory_budget=6_000, pool=sys.argv[2], seed=1)
assert reader.max_piece_rows is not None  # row groups streamed in slices
rows = sum(len(b["id"]) for b in reader)
print(rows, "pandas" in sys.modules)
"""


@pytest.mark.parametrize("pool", ["serial", "thread"])
def test_streamed_reads_do_not_import_pandas(mixed_cache, pool):
    """Reading streamed row groups never imports pandas (+33 MiB and a quarter second in the trainer)."""
    out = subprocess.run([sys.executable, "-c", _NO_PANDAS, mixed_cache.version_path, pool], capture_output=True,
                         text=True, cwd=ROOT, timeout=120, check=True).stdout.split()
    assert out == ["1000", "False"]
