"""``python -m loader`` against a real WebHDFS server (the test server of tests/remote on 127.0.0.1)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import loader
from tests.cli.test_cli import one_error_line, run
from tests.remote.conftest import TOKEN, token_server  # noqa: F401 - session fixture: WebHDFS with a token


@pytest.fixture(scope="module")
def secret_cache(token_server):  # noqa: F811
    """A small cache published over WebHDFS with a delegation token."""
    table = pa.table({"id": np.arange(300, dtype=np.int64), "s": [f"행 {i}" for i in range(300)]})
    ds = loader.write_cache(table, token_server.url("/cli"), "secret", row_group_bytes=1_500, token=TOKEN)
    return table, ds, token_server.url("/cli/secret")


def run_with_token(*args, token=TOKEN):
    """The CLI with the token in the environment (never on the command line)."""
    return run(*args, env={"LARDER_HDFS_TOKEN": token})


def test_inspect_head_verify_over_webhdfs_never_show_the_token(secret_cache):
    table, ds, url = secret_cache
    inspect = run_with_token("inspect", url)
    assert inspect.returncode == 0, inspect.stderr
    assert f"rows: {table.num_rows}" in inspect.stdout and f"files: {len(ds.files)}" in inspect.stdout
    assert "path: webhdfs://" in inspect.stdout
    head = run_with_token("head", url, "-n", "2", "--json")
    assert head.returncode == 0, head.stderr
    assert head.stdout.splitlines() == ['{"id": 0, "s": "행 0"}', '{"id": 1, "s": "행 1"}']
    verify = run_with_token("verify", url)
    assert verify.returncode == 0, verify.stderr
    for proc in (inspect, head, verify):
        assert TOKEN not in proc.stdout + proc.stderr


def test_wrong_token_is_one_line_without_secrets(secret_cache):
    _, _, url = secret_cache
    wrong = TOKEN[:-1] + "X"
    proc = run_with_token("inspect", url, token=wrong)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "permission denied" in line or "403" in line or "401" in line
    assert wrong not in proc.stdout + proc.stderr and TOKEN not in proc.stdout + proc.stderr


def test_verify_during_an_outage_says_unchecked_not_bad(secret_cache, token_server):  # noqa: F811
    _, ds, url = secret_cache
    token_server.fail_always(status=503, op="OPEN", node="datanode", path=".parquet")
    try:
        proc = run_with_token("verify", url, "-o", "retries=2")
    finally:
        token_server.clear_faults()
    assert proc.returncode == 1
    assert "BAD " not in proc.stdout
    assert sum(line.startswith("UNCHECKED ") for line in proc.stdout.splitlines()) == len(ds.files)
    assert f"{len(ds.files)} of {len(ds.files)} files of secret" in one_error_line(proc)
    assert "could not be checked" in one_error_line(proc) and TOKEN not in proc.stdout + proc.stderr
    healthy = run_with_token("verify", url)
    assert healthy.returncode == 0, healthy.stderr
