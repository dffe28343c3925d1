"""spark-submit entry point: create the demo Hive table (synthetic shopping-catalog rows, partitioned by dt).

    ./spark-submit.sh jobs/make_demo_table.py --conf conf/demo.yaml --if-missing [--rows 20000] [--days 3]

The table name and the session (warehouse, metastore) come from the conf's ``source.table`` and
``spark`` sections, so the demo table lands where ``jobs/materialize.py`` looks for it.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from etl.config import load  # noqa: E402
from etl.entry import OneLineParser, guarded  # noqa: E402
from loader.errors import ConfigError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Create the table; returns the exit code (0 created or already there, 2 bad conf)."""
    p = OneLineParser(prog="make_demo_table", description="Create the larder demo Hive table.")
    p.add_argument("--conf", default="conf/demo.yaml", help="job conf naming source.table and the session")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a conf key")
    p.add_argument("--rows", type=int, default=20_000, help="rows over all days")
    p.add_argument("--days", type=int, default=3, help="number of dt partitions")
    p.add_argument("--start", default="2026-11-21", help="first dt (YYYY-MM-DD)")
    p.add_argument("--image-bytes", type=int, default=600, help="mean random payload inside each JPEG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--if-missing", action="store_true", help="do nothing if the table exists")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> str:
        from etl.demo import make_demo_table
        from etl.session import build_session

        cfg = load(args.conf, args.set)
        if not cfg.source.table:
            raise ConfigError("source.table: the demo table needs a table name, e.g. demo.shopping_products")
        spark = build_session(cfg.spark)
        started = time.time()
        created = make_demo_table(
            spark, cfg.source.table, rows=args.rows, days=args.days, start=args.start,
            image_bytes=args.image_bytes, seed=args.seed, if_missing=args.if_missing,
        )  # fmt: skip
        if not created:
            return f"larder: {cfg.source.table} exists; left as is (--if-missing)"
        took = time.time() - started
        return f"larder: created {cfg.source.table}: {args.rows} rows over {args.days} days in {took:.1f}s"

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
