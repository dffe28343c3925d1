"""The CRC-32 behind every checksum: the accelerated and the stdlib implementation agree."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loader import crc


@given(st.binary(max_size=5000), st.integers(0, 2**32 - 1))
def test_crc32_equals_zlib(data, start):
    assert crc.crc32(data) == zlib.crc32(data)
    assert crc.crc32(data, start) == zlib.crc32(data, start)


def test_crc32_of_numpy_views_and_chunks():
    data = np.random.default_rng(0).integers(0, 256, 3_000_001, dtype=np.uint8)
    whole = crc.crc32(data)
    assert whole == zlib.crc32(data.tobytes())
    value = 0
    for a in range(0, len(data), 65_536):
        value = crc.crc32(data[a : a + 65_536], value)
    assert value == whole


def test_accelerator_is_used_when_installed():
    pytest.importorskip("zlib_ng")
    assert crc.IMPLEMENTATION == "zlib-ng"
