"""Remote-cache benchmark: epoch 1 over a throttled WebHDFS link, epoch 2 from the local disk cache, ``sync``.

The benchmark data (``bench/gen_data.py``) is published into the backing directory of the test WebHDFS
server (``tests/remote/webhdfs_server.py``, run in its own process), whose data node is throttled to
``--bandwidth`` (default 100 MB/s, one link shared by all connections). All figures come from one run:

* ``local``   — ``make_reader`` on the same cache read in place from local disk (the baseline; best of
  ``--repeat`` runs interleaved with the epoch-2 runs, after one warm-up);
* ``epoch 1`` — ``make_reader(webhdfs://..., cache_dir=fresh)``: files stream from the server into the cache,
  prefetched in plan order by the cache's I/O threads; target: time <= 1.2 x (bytes fetched / bandwidth);
* ``epoch 2`` — a new reader on the same ``cache_dir``: no data bytes cross the link; target: the local speed;
* ``sync``    — ``loader.sync.sync`` of the whole version into a fresh directory; throughput vs. the link.

Run::

    .venv/bin/python bench/bench_remote.py                     # 50,000 rows (~230 MB), 100 MB/s
    .venv/bin/python bench/bench_remote.py --rows 200000 --bandwidth 100e6 --io-threads 4
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_reader import _columns  # noqa: E402  (the columns with a numpy form, as the reader bench uses)

import loader  # noqa: E402
from loader.sync import sync  # noqa: E402
from tests.remote.webhdfs_server import WebHdfs  # noqa: E402


def _epoch(url, columns, args, **options) -> dict:
    rows = 0
    t0 = time.perf_counter()
    with loader.make_reader(url, columns=columns, batch_size=args.batch_size, shuffle=True, seed=0, num_epochs=1,
                            pool="thread", **options) as reader:
        for batch in reader:
            rows += len(batch[columns[0]])
    elapsed = time.perf_counter() - t0
    return {"rows": rows, "seconds": elapsed, "samples_per_s": rows / elapsed}


def _serve(root: str, conn) -> None:
    """The server process (a separate process, like a real cluster: its threads do not share our GIL)."""
    with WebHdfs(root) as server:
        conn.send(server.port)
        while True:
            cmd, arg = conn.recv()
            if cmd == "stop":
                return
            if cmd == "bandwidth":
                server.bandwidth = arg
            elif cmd == "clear":
                server.clear_log()
            if cmd == "stats":
                opens = [r for r in server.log if r.node == "datanode" and r.op == "OPEN"]
                conn.send((sum(r.body_bytes for r in opens), sum(r.path.endswith(".parquet") for r in opens)))
            else:
                conn.send(None)


class ServerProcess:
    """A :class:`WebHdfs` in a child process, driven through a pipe."""

    def __init__(self, root: str):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(root, child), daemon=True)
        self.proc.start()
        self.port = self.conn.recv()

    def __call__(self, cmd: str, arg=None):
        self.conn.send((cmd, arg))
        return self.conn.recv()

    def url(self, path: str) -> str:
        return f"webhdfs://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def stop(self) -> None:
        self.conn.send(("stop", None))
        self.proc.join(10)


def _best(runs: list[dict]) -> dict:
    return max(runs, key=lambda r: r["samples_per_s"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=50_000, help="rows of benchmark data (default 50000)")
    p.add_argument("--bandwidth", type=float, default=100e6, help="link bytes/s (default 100e6)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--io-threads", type=int, default=8, help="sync workers (the reader cache uses its default, 8)")
    p.add_argument("--repeat", type=int, default=3, help="runs of local and epoch 2, interleaved; best shown")
    p.add_argument("--work", default=None, help="working directory (default: a temporary one, removed)")
    args = p.parse_args(argv)

    work = Path(args.work or tempfile.mkdtemp(prefix="larder-bench-remote-"))
    try:
        from gen_data import build

        hdfs_root = work / "hdfs"
        t0 = time.perf_counter()
        local = build(str(hdfs_root / "caches"), "bench", args.rows)
        print(f"data: {local.num_rows} rows, {len(local.files)} files, {local.total_bytes / 1e6:.1f} MB "
              f"(generated in {time.perf_counter() - t0:.1f}s)", flush=True)
        columns = _columns(local)
        server = ServerProcess(str(hdfs_root))
        try:
            url = server.url("/caches/bench")
            _epoch(local.version_path, columns, args)  # warm the page cache and the imports
            server("bandwidth", args.bandwidth)
            server("clear")
            cache_dir = work / "cache"
            first = _epoch(url, columns, args, cache_dir=str(cache_dir))
            first["bytes"], _ = server("stats")
            bases, seconds = [], []
            for _ in range(args.repeat):  # interleaved, best of each
                bases.append(_epoch(local.version_path, columns, args))
                server("clear")
                seconds.append(_epoch(url, columns, args, cache_dir=str(cache_dir)))
                seconds[-1]["bytes"], data_reads = server("stats")
            base, second = _best(bases), _best(seconds)
            server("clear")
            summary = sync(url, work / "synced", workers=args.io_threads, progress=False)
            sync_bytes, _ = server("stats")
        finally:
            server.stop()
        link_s = first["bytes"] / args.bandwidth
        rows = [
            ("local disk (baseline)", base, "", "1.00x local"),
            ("epoch 1 (remote -> cache)", first, f"{first['seconds'] / link_s:.2f}x bytes/bandwidth (target <= 1.2)",
             f"{first['samples_per_s'] / base['samples_per_s']:.2f}x local"),
            ("epoch 2 (local cache)", second, f"{data_reads} data-file reads over the link",
             f"{second['samples_per_s'] / base['samples_per_s']:.2f}x local (target ~1)"),
        ]
        print(f"\nbandwidth {args.bandwidth / 1e6:.0f} MB/s, batch {args.batch_size}, columns {','.join(columns)}, "
              f"sync workers {args.io_threads}")
        print(f"{'run':28} {'rows':>8} {'seconds':>8} {'samples/s':>11} {'MB fetched':>11}  vs link / vs local")
        for name, r, vs_link, vs_local in rows:
            fetched = f"{r.get('bytes', 0) / 1e6:.1f}" if "bytes" in r else "-"
            print(f"{name:28} {r['rows']:>8} {r['seconds']:>8.2f} {r['samples_per_s']:>11.0f} {fetched:>11}  "
                  f"{vs_link} {vs_local}".rstrip())
        rate = sync_bytes / summary.seconds
        print(f"{'sync (' + str(args.io_threads) + ' workers)':28} {'':>8} {summary.seconds:>8.2f} {'':>11} "
              f"{sync_bytes / 1e6:>11.1f}  {rate / 1e6:.1f} MB/s = {rate / args.bandwidth:.2f}x bandwidth")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    raise SystemExit(main())
