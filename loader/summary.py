"""A one-screen summary of a published cache: what it holds, how full its row groups are, and how fast
``make_reader`` streams it here. ``python -m loader.summary URL`` (the demo's last step)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from .dataset import open_dataset
from .errors import LarderError
from .reader import make_reader


def summarize(url: str, *, batches: int = 50, batch_size: int = 100, pool: str = "thread") -> str:
    """Open ``url``, read up to ``batches`` shuffled batches, and describe both.

    Args:
        url: A dataset or version directory, or a remote URL.
        batches: Batches to read for the speed figure.
        batch_size: Rows per batch.
        pool: Reader pool kind.
    """
    ds = open_dataset(url)
    groups = [g.compressed_bytes for f in ds.files for g in f.row_groups]
    fills = [g / ds.manifest.block_size for g in groups]
    lines = [
        f"dataset      {ds.name}  version {ds.version}",
        f"rows         {ds.num_rows:,} in {len(ds.files)} files, {ds.num_row_groups} row groups, "
        f"{ds.total_bytes / 2**20:.1f} MiB",
        f"block size   {ds.manifest.block_size / 2**20:g} MiB; row-group fill min {min(fills):.3f} "
        f"median {statistics.median(fills):.3f} max {max(fills):.3f} "
        f"(target {ds.manifest.row_group_target / ds.manifest.block_size:.2f})",
        "columns      " + ", ".join(f"{f['name']}: {f['type']}" for f in ds.manifest.schema_fields),
    ]
    for column, vocab in ds.vocabularies.items():
        shown = ", ".join(map(str, vocab[:3])) + (", ..." if len(vocab) > 3 else "")
        lines.append(f"vocabulary   {column}: {len(vocab)} values ({shown})")
    t0 = time.perf_counter()
    got = 0
    first = None
    with make_reader(ds, batch_size=batch_size, shuffle=True, seed=0, num_epochs=None, pool=pool) as reader:
        for batch in reader:
            if first is None:
                first = time.perf_counter() - t0
                keys = ", ".join(f"{k}{list(v.shape)}" for k, v in batch.items())
            got += 1
            if got >= batches:
                break
        elapsed = time.perf_counter() - t0
        rows, mixed = reader.stats.rows, reader.stats.mixed_row_groups_per_batch  # the reader counts rows
    lines.append(f"first batch  {first:.3f} s: {keys}")
    # A process pool runs only transforms; the summary has none, so its reader reads on threads.
    shown = "thread pool: pool='process' runs only transforms" if pool == "process" else f"{pool} pool"
    lines.append(
        f"read         {got} batches of {batch_size} ({rows:,} rows) in {elapsed:.2f} s = "
        f"{rows / elapsed:,.0f} samples/s ({shown}), {mixed:.1f} row groups mixed per batch"
    )
    return "\n".join(lines)



def main(argv: list[str] | None = None) -> int:
    """Command-line entry: print the summary, one-line error on failure."""
    p = argparse.ArgumentParser(prog="python -m loader.summary", description=__doc__)
    p.add_argument("url")
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--pool", default="thread", choices=["serial", "thread", "process"])
    args = p.parse_args(argv)
    if args.batches < 1 or args.batch_size < 1:
        p.error("--batches and --batch-size must be at least 1")
    try:
        print(summarize(args.url, batches=args.batches, batch_size=args.batch_size, pool=args.pool))
    except LarderError as e:
        print(f"larder: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
