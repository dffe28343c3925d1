"""Encoding benchmark: the same rows written with larder's per-column encodings and with pyarrow's defaults.

``bench/gen_data.py`` publishes the benchmark data (200k rows: JPEG-like image bytes, titles, tokens,
wordpiece ids, labels) twice, identical rows, into ``--data``:

* ``enc-auto``     — what larder writes (``loader.encoding``): a dictionary only on repetitive columns, no
  compression on columns zstd cannot shrink (the image bytes);
* ``enc-defaults`` — pyarrow's defaults: a dictionary and zstd on every column (what ``write_cache`` wrote
  before ``loader.encoding``).

Then, in this one process, interleaved trial by trial, on each cache:

* ``decode``  — every row group read whole from its memory-mapped file (the reader's decode), one thread;
* ``raw``     — ``ParquetFile.iter_batches(100)`` + per-column numpy conversion, 1000 batches (the issue's
  plain scan);
* ``thread``  — ``make_reader(batch_size=100, shuffle=True, pool="thread")``, 1000 batches.

Printed: median CPU µs per row (this process, all threads) and samples/s per mode and cache, and the
ratios auto / defaults. Trials after the first (which pays imports and first-touch costs) are used.

Example::

    python bench/bench_encoding.py --data /tmp/larder-bench --repeat 7
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import loader  # noqa: E402
from loader.convert import to_numpy  # noqa: E402

ENCODINGS = ("auto", "defaults")


def ensure(data: Path, rows: int) -> dict[str, loader.Dataset]:
    """Generate both caches if missing; returns encoding -> opened dataset."""
    out = {}
    for enc in ENCODINGS:
        name = f"enc-{enc}"
        if not (data / name / "CURRENT").exists():
            cmd = [sys.executable, str(REPO / "bench" / "gen_data.py"), "--out", str(data), "--name", name,
                   "--rows", str(rows), "--encoding", enc]
            print("generating:", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        out[enc] = loader.open_dataset(data / name)
    return out


def decode(ds: loader.Dataset, columns: list[str]) -> int:
    rows = 0
    for info in ds.files:
        source = pa.memory_map(ds.file_path(info))
        pf = pq.ParquetFile(source, pre_buffer=False)
        for g in range(len(info.row_groups)):
            rows += pf.read_row_group(g, columns=columns, use_threads=False).num_rows
        source.close()
    return rows


def raw(ds: loader.Dataset, columns: list[str], batches: int) -> int:
    rows = seen = 0
    for info in ds.files:
        with pq.ParquetFile(ds.file_path(info)) as pf:
            for rb in pf.iter_batches(100, columns=columns, use_threads=False):
                rows += len(to_numpy(rb)[columns[0]])
                seen += 1
                if seen == batches:
                    return rows
    return rows


def thread(ds: loader.Dataset, columns: list[str], batches: int, seed: int) -> int:
    rows = 0
    with loader.make_reader(ds, columns=columns, batch_size=100, shuffle=True, seed=seed, num_epochs=None,
                            pool="thread") as reader:
        for i, b in enumerate(reader):
            rows += len(b[columns[0]])
            if i + 1 == batches:
                break
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/tmp/larder-bench", help="where the caches live / are generated")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--iterations", type=int, default=1000, help="batches per raw / thread run")
    p.add_argument("--repeat", type=int, default=7, help="interleaved trials (the first is dropped)")
    args = p.parse_args(argv)
    caches = ensure(Path(args.data), args.rows)
    columns = caches["auto"].columns
    for enc, ds in caches.items():
        chosen = ds.manifest.extra.get("encoding")
        print(f"{enc:9s} {ds.version_path}: {ds.total_bytes / 2**20:.1f} MiB, encoding {chosen}")
    modes = {
        "decode": lambda ds, t: decode(ds, columns),
        "raw": lambda ds, t: raw(ds, columns, args.iterations),
        "thread": lambda ds, t: thread(ds, columns, args.iterations, t),
    }
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for trial in range(args.repeat):
        for mode, fn in modes.items():
            for enc, ds in caches.items():
                c0, t0 = time.process_time(), time.perf_counter()
                rows = fn(ds, trial)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if trial:  # the first trial pays imports and first-touch costs
                    results.setdefault((mode, enc), []).append((cpu / rows * 1e6, rows / wall))
    print(f"\nmedian of {args.repeat - 1} interleaved trials (CPU of this process, all threads)")
    print(f"{'mode':8s} {'encoding':9s} {'CPU us/row':>10s} {'samples/s':>10s}")
    for mode in modes:
        for enc in ENCODINGS:
            r = results[(mode, enc)]
            print(f"{mode:8s} {enc:9s} {statistics.median(x[0] for x in r):10.2f} "
                  f"{statistics.median(x[1] for x in r):10.0f}")
        a, d = results[(mode, "auto")], results[(mode, "defaults")]
        cpu = statistics.median(x[0] for x in a) / statistics.median(x[0] for x in d)
        speed = statistics.median(x[1] for x in a) / statistics.median(x[1] for x in d)
        print(f"{mode:8s} auto / defaults: CPU per row {cpu:.2f}x, samples/s {speed:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
