"""Yes/no options read one way everywhere: ``verify=`` of ``sync`` and ``kerberos=`` of WebHDFS URLs."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import loader
from loader.errors import ConfigError
from loader.fs import parse_bool
from loader.sync import sync
from tests.conftest import make_table

pytest.importorskip("hdfs")
from loader.webhdfs import make_filesystem  # noqa: E402

TRUE = ["1", "true", "TRUE", "True", "yes", "Yes", "on", " ON ", True, 1, np.bool_(True)]
FALSE = ["0", "false", "FALSE", "False", "no", "NO", "off", "Off", False, 0, np.bool_(False)]
BAD = ["", "maybe", "y", "n", "t", "f", "2", "-1", "enable", "nein", None, 2, -1, 1.0, 0.0]


@pytest.fixture(scope="module")
def local_version(tmp_path_factory) -> loader.Dataset:
    """A small published version on local disk, in three files."""
    root = tmp_path_factory.mktemp("options") / "root"
    return loader.write_cache(make_table(300), str(root), "opts", row_group_bytes=4096)


def _rot(path: str) -> None:
    """Flip a byte in the middle of ``path`` keeping its size and mtime (its ``.ok`` marker still vouches)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)[0]
        f.seek(st.st_size // 2)
        f.write(bytes([byte ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _kerberos(value) -> bool:
    fs, _ = make_filesystem("webhdfs://127.0.0.1:9/data", kerberos=value)  # lazy: no connection is made
    return fs.handler.config.kerberos


def _verify(version: loader.Dataset, cache_dir, value) -> bool:
    """Whether ``sync(verify=value)`` rechecked a rotted cached copy (and so fetched it again)."""
    url = os.path.dirname(version.version_path)
    assert sync(url, cache_dir, progress=False).fetched_files == len(version.files)
    _rot(os.path.join(str(cache_dir), version.name, version.version, version.files[0].path))
    return sync(url, cache_dir, progress=False, verify=value).fetched_files == 1


@pytest.mark.parametrize("value", TRUE + FALSE, ids=repr)
def test_verify_and_kerberos_read_the_same_spellings(value, local_version, tmp_path):
    expected = value in TRUE
    assert parse_bool(value, "x") is expected
    assert _kerberos(value) is expected
    assert _verify(local_version, tmp_path, value) is expected


@pytest.mark.parametrize("value", BAD, ids=repr)
def test_verify_and_kerberos_refuse_the_same_values(value, local_version, tmp_path):
    for option, call in (
        ("kerberos", lambda: make_filesystem("webhdfs://127.0.0.1:9/data", kerberos=value)),
        ("verify", lambda: sync(os.path.dirname(local_version.version_path), tmp_path, progress=False, verify=value)),
    ):
        with pytest.raises(ConfigError, match=rf"option {option} must be one of .*got {re.escape(repr(value))}$"):
            call()
    assert not os.listdir(tmp_path)  # refused before anything was copied
