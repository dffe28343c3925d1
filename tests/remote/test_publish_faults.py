"""Publishing through name-node faults: CURRENT is never missing, renames are retried safely, the error tells
the truth, and failovers (StandbyException, safe mode) are ridden out."""

from __future__ import annotations

import os

import pytest

import loader
from loader.remote import RetryPolicy
from tests.conftest import make_table, read_all
from tests.remote.conftest import FAST_RETRY, TOKEN


def _names(server, dataset: str) -> list[str]:
    return sorted(os.listdir(server.local(f"/pub/{dataset}")))


def _publish_two(server, name: str):
    old_table, new_table = make_table(300, seed=1), make_table(300, seed=2)
    old = loader.write_cache(old_table, server.url("/pub"), name, row_group_bytes=4_000)
    server.clear_log()
    return old, old_table, new_table


def test_current_swap_failing_for_longer_than_the_retries_keeps_current_and_says_so(server):
    old, old_table, new_table = _publish_two(server, "swap503")
    server.fail_next(8, status=503, op="RENAME", path="/pub/swap503/.CURRENT.")  # more than the 4 attempts
    with pytest.raises(loader.PublishError, match=f"previous version stays live .CURRENT names {old.version}"):
        loader.write_cache(new_table, server.url("/pub"), "swap503", row_group_bytes=4_000, retry=FAST_RETRY)
    server.clear_faults()
    assert "CURRENT" in _names(server, "swap503")  # never deleted
    live = loader.open_dataset(server.url("/pub/swap503"))
    assert live.version == old.version and read_all(live).equals(old_table)
    assert server.count(op="DELETE", path="/pub/swap503/CURRENT") == 0


@pytest.mark.parametrize("lost", ["504", "timeout", "dropped"])
def test_current_swap_whose_answer_is_lost_is_not_undone(server, lost):
    name = f"lost{lost}"
    old, _, new_table = _publish_two(server, name)
    status, seconds = {"504": (504, 0.0), "timeout": (504, 1.5), "dropped": (0, 0.0)}[lost]
    # The name node applies the RENAME of the new CURRENT over the old one; the client never hears so.
    server.lose_reply_next(1, op="RENAME", path=f"/pub/{name}/.CURRENT.", status=status, seconds=seconds)
    new = loader.write_cache(new_table, server.url("/pub"), name, row_group_bytes=4_000, retry=FAST_RETRY,
                             timeout=0.5)
    assert server.count(op="RENAME", path=f"/pub/{name}/.CURRENT.") == 1  # landed: not sent again
    assert new.version != old.version
    live = loader.open_dataset(server.url(f"/pub/{name}"))
    assert live.version == new.version and read_all(live).equals(new_table)


def test_version_rename_whose_answer_is_lost_still_publishes(server):
    old, _, new_table = _publish_two(server, "lostversion")
    # Lost: the answers to the manifest's rename into the staging directory, then to the staging directory's
    # rename to its version name (the step that publishes the version's files).
    server.lose_reply_next(2, op="RENAME", path="/pub/lostversion/_staging-", status=504)
    new = loader.write_cache(new_table, server.url("/pub"), "lostversion", row_group_bytes=4_000,
                             retry=FAST_RETRY)
    renames = [r for r in server.log if r.op == "RENAME" and "/_staging-" in r.path]
    assert [r.status for r in renames] == [504, 504]  # each applied once, its answer lost, not sent again
    assert renames[1].params["destination"].endswith(new.version)
    assert new.version != old.version
    live = loader.open_dataset(server.url("/pub/lostversion"))
    assert live.version == new.version and read_all(live).equals(new_table)
    assert not [n for n in _names(server, "lostversion") if n.startswith("_staging")]


def test_unknown_outcome_of_the_current_swap_is_not_called_a_kept_version(server, monkeypatch):
    import loader.publish as publish

    old, _, new_table = _publish_two(server, "unknown")
    server.fail_always(status=503, op="RENAME", path="/pub/unknown/.CURRENT.")
    real = publish.current_version

    def unreadable(fs, dataset_dir, retries=5):
        if dataset_dir.endswith("/unknown") and retries == 2:  # the read-back after the failed swap
            raise loader.RemoteError("OPEN .../CURRENT: failed after 4 attempts")
        return real(fs, dataset_dir, retries)

    monkeypatch.setattr(publish, "current_version", unreadable)
    with pytest.raises(loader.PublishError) as err:
        loader.write_cache(new_table, server.url("/pub"), "unknown", row_group_bytes=4_000, retry=FAST_RETRY)
    assert "could not be checked" in str(err.value) and "stays live" not in str(err.value)


@pytest.mark.parametrize("exception", ["StandbyException", "RetriableException"])
def test_failover_and_safe_mode_answers_are_retried(server, remote_cache, remote_table, exception):
    server.fail_next(3, status=403, exception=exception, node="namenode")  # ~0.03 s of failover
    ds = loader.open_dataset(server.url("/caches/demo"), retry=FAST_RETRY)
    assert ds.version == remote_cache.version
    assert sum(1 for r in server.log if r.status == 403) == 3
    server.fail_always(status=403, exception=exception, node="namenode", op="GETFILESTATUS")
    with pytest.raises(loader.RemoteError, match=f"4 attempts.*{exception}"):
        ds.read_row_group(ds.files[0], 0)  # bounded: a name node that never recovers fails the read


def test_default_retry_budget_is_5_to_30_seconds():
    policy = RetryPolicy()
    assert 5.0 <= policy.budget <= 30.0


def test_remote_error_chain_never_reaches_the_token(token_server):
    import socket

    with socket.socket() as s:  # a port nobody listens on: connection refused, an error naming the URL
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fs, path = loader.fs.resolve(f"webhdfs://127.0.0.1:{port}/caches", token=TOKEN,
                                 retry=RetryPolicy(attempts=2, base_delay=0.0))
    with pytest.raises(loader.RemoteError) as err:
        fs.get_file_info(path)
    seen, todo = [], [err.value]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    assert len(seen) >= 2
    for e in seen:
        assert TOKEN not in repr(e) and TOKEN not in str(e) and all(TOKEN not in repr(a) for a in e.args)
