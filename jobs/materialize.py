"""spark-submit entry point: materialize a table into a versioned Parquet cache.

    ./spark-submit.sh jobs/materialize.py --conf conf/demo.yaml [--set key=value ...] [--force]

Exit codes (:mod:`etl.entry`): 0 published or up to date; 1 the job failed (source, data, publish:
one-line reason on stderr, the previous version stays live); 2 bad usage or conf; 3 unexpected error.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from etl.config import load  # noqa: E402
from etl.entry import OneLineParser, guarded, stderr_to_launcher  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The job's command line."""
    p = OneLineParser(prog="materialize", description="Materialize a table into a larder cache.")
    p.add_argument("--conf", required=True, help="YAML job conf, e.g. conf/demo.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a conf key (dotted)")
    p.add_argument("--force", action="store_true",
                   help="publish even if the source is unchanged; let a vocabulary file move live label ids; "
                        "rebuild vocabularies when the live manifest is unreadable (each with a warning)")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of unexpected errors")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns the process exit code."""
    stderr_to_launcher()  # before argparse, whose usage errors go to stderr too
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> str:
        from etl.job import run
        from etl.session import build_session

        cfg = load(args.conf, args.set)
        spark = build_session(cfg.spark)
        return run(cfg, spark, force=args.force, conf_path=args.conf).summary()

    return guarded(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
