"""``python -m loader``: look at a cache without writing code.

Subcommands:

* ``inspect URL [--json]`` — columns with their Arrow types and nullability, rows, files, row groups,
  bytes, row-group size spread, version, who made it, the source (with its fingerprint) and the
  vocabularies, as ``key: value`` lines (or one JSON object).
* ``head URL [-n 5] [--columns a,b] [--json]`` — the first rows in manifest order, long values truncated:
  strings quoted and escaped as JSON strings (invalid UTF-8 bytes as ``\\xff``), nulls as ``null``, dates,
  times, timestamps and durations in full (:mod:`loader.cli_values`). ``--json`` (like ``inspect --json``) is
  strict JSON: a float NaN or infinity is the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` (a null
  stays ``null``).
* ``verify URL [-v] [--json]`` — check the manifest's totals and every data file as a reader would: size,
  footer checksum and size, the footer's row groups (rows, bytes) against the manifest's, the whole-file
  checksum and each column chunk's checksum (one streaming pass, nothing decoded). Prints ``BAD path:
  reasons`` per bad file and exits 1, or an ``ok:`` summary line.
* ``sync URL CACHE_DIR [--workers 4] [--no-progress]`` — copy a (remote) version into the local disk
  cache that ``open_dataset(url, cache_dir=CACHE_DIR)`` uses (:func:`loader.sync.sync`).

Errors print one line ``larder: error: ...`` on stderr; the exit code is 2 for a usage error and 1 for
a data error (missing dataset, bad manifest, corrupt file...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from . import fs as lfs
from .cli_values import cells, short, strict, text
from .convert_types import empty_table
from .dataset import Dataset, open_dataset
from .errors import ColumnNotFoundError, ConfigError, CorruptFileError, LarderError, RemoteError
from .manifest import MANIFEST_NAME, FileInfo, _checksum_with_ranges, chunk_inside, chunk_range

PROG = "larder"
VOCAB_PREVIEW = 5
MAX_KEY_DEPTH = 3


class UsageError(Exception):
    """A bad command line (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors become :class:`UsageError` (printed by :func:`main`)."""

    def error(self, message: str):  # noqa: D102 - argparse hook
        raise UsageError(message, self.format_usage())


def _fs_options(pairs: Sequence[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects KEY=VALUE, got {pair!r}")
        options[key] = value
    return options


def _open(args) -> Dataset:
    return open_dataset(args.url, **_fs_options(args.option))


# ---------------------------------------------------------------------------------------------- inspect


def _spread(values: list[int]) -> dict[str, int]:
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": int(min(values)), "median": int(np.median(values)), "max": int(max(values))}


def describe(ds: Dataset) -> dict[str, Any]:
    """Everything ``inspect`` shows, as a JSON-ready dict."""
    m = ds.manifest
    groups = [g for f in m.files for g in f.row_groups]
    return {
        "dataset": m.dataset,
        "version": m.version,
        "path": lfs.display(ds.fs, ds.version_path),
        "format_version": m.format_version,
        "created_at": m.created_at,
        "created_by": m.created_by,
        "source": m.source,
        "rows": m.num_rows,
        "files": len(m.files),
        "row_groups": m.num_row_groups,
        "bytes": m.total_bytes,
        "block_size": m.block_size,
        "row_group_target": m.row_group_target,
        "row_group_rows": _spread([g.num_rows for g in groups]),
        "row_group_bytes": _spread([g.compressed_bytes for g in groups]),
        "columns": [
            {"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in m.arrow_schema
        ],
        "vocabularies": {
            col: {"size": len(values), "head": list(values[:VOCAB_PREVIEW])} for col, values in m.vocabularies.items()
        },
        "extra": m.extra,
    }


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _flat(prefix: str, value: Any) -> list[str]:
    """``key: value`` lines for a nested dict, keys joined with dots (at most three deep, then JSON)."""
    if isinstance(value, dict) and value and prefix.count(".") < MAX_KEY_DEPTH - 1:
        lines = []
        for k, v in value.items():
            lines += _flat(f"{prefix}.{k}", v)
        return lines
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return [f"{prefix}: {text}"]


def _inspect_text(d: dict[str, Any]) -> str:
    lines = [f"{k}: {d[k]}" for k in ("dataset", "version", "path", "format_version", "created_at")]
    lines += _flat("created_by", d["created_by"])
    lines += _flat("source", d["source"])
    lines += [
        f"rows: {d['rows']}",
        f"files: {d['files']}",
        f"row_groups: {d['row_groups']}",
        f"bytes: {d['bytes']} ({_human_bytes(d['bytes'])})",
        f"block_size: {d['block_size']} ({_human_bytes(d['block_size'])})",
        f"row_group_target: {d['row_group_target']} ({_human_bytes(d['row_group_target'])})",
        "row_group_rows: min {min} / median {median} / max {max}".format(**d["row_group_rows"]),
        "row_group_bytes: min {min} / median {median} / max {max}".format(**d["row_group_bytes"]),
        "columns:",
    ]
    lines += [f"  {c['name']}: {c['type']}{'' if c['nullable'] else ' not null'}" for c in d["columns"]]
    lines.append("vocabularies:" if d["vocabularies"] else "vocabularies: none")
    for col, v in d["vocabularies"].items():
        more = ", ..." if v["size"] > len(v["head"]) else ""
        lines.append(f"  {col}: {v['size']} values ({', '.join(map(str, v['head']))}{more})")
    lines += _flat("extra", d["extra"]) if d["extra"] else []
    return "\n".join(lines)


def cmd_inspect(args) -> int:
    """Print the dataset's description."""
    d = describe(_open(args))
    print(json.dumps(strict(d), indent=1, ensure_ascii=False, allow_nan=False) if args.json else _inspect_text(d))
    return 0


# ------------------------------------------------------------------------------------------------- head


def first_rows(ds: Dataset, n: int, columns: list[str] | None) -> pa.Table:
    """The first ``n`` rows in manifest order, reading only the row groups needed.

    Raises:
        ColumnNotFoundError: A column is not in the schema.
    """
    if columns is not None:
        missing = [c for c in columns if c not in ds.columns]
        if missing:
            raise ColumnNotFoundError(
                f"column {missing[0]!r} is not in dataset {ds.name!r} (columns: {', '.join(ds.columns)})"
            )
    parts, have = [], 0
    for info in ds.files:
        if have >= n:
            break
        pf = ds.open_file(info)
        try:
            for i in range(len(info.row_groups)):
                if have >= n:
                    break
                t = ds.read_row_group(info, i, columns=columns, pf=pf)
                parts.append(t.slice(0, min(n - have, t.num_rows)))  # n may pass int64 (-n 2**63): all rows
                have += parts[-1].num_rows
        finally:
            pf.close(force=True)
    if not parts:
        schema = ds.schema if columns is None else pa.schema([ds.schema.field(c) for c in columns])
        return empty_table(schema)
    return pa.concat_tables(parts)


def cmd_head(args) -> int:
    """Print the first rows."""
    if args.n < 0:
        raise UsageError(f"-n must be >= 0, got {args.n}")
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns is not None else None
    if columns == []:
        raise UsageError("--columns names no column")
    ds = _open(args)
    for i, row in enumerate(cells(first_rows(ds, args.n, columns))):
        shown = {k: short(v) for k, v in row.items()}
        if args.json:
            print(json.dumps(strict(shown), ensure_ascii=False, allow_nan=False))
            continue
        print(f"[{i}]")
        for k, v in shown.items():
            print(f"  {k}: {text(v)}")
    return 0


# ----------------------------------------------------------------------------------------------- verify


MAX_LISTED = 5  # failing column chunks named per file before "and N more"


def _manifest_problems(ds: Dataset) -> list[str]:
    """The manifest's totals against its file entries.

    The parser already rejects a file entry whose ``num_rows`` is not the sum of its row groups, a bad path
    or a path listed twice; the totals at the top of the JSON are not read by it, so they are checked here.
    """
    doc = json.loads(lfs.read_bytes(ds.fs, lfs.join(ds.version_path, MANIFEST_NAME)))
    problems = []
    for key, actual in (("num_rows", ds.num_rows), ("num_row_groups", ds.num_row_groups),
                        ("total_bytes", ds.total_bytes)):
        if key in doc and doc[key] != actual:
            problems.append(f"{key} is {doc[key]!r}, its files add up to {actual}")
    return problems


def _file_problems(ds: Dataset, info: FileInfo) -> list[str]:
    """Everything wrong with one data file, as a reader would find it (empty when it is good).

    Checks, in one streaming pass over the file (reads of at most 8 MiB, nothing decoded): the size,
    footer checksum and row groups (:meth:`Dataset._open_checked`, as every reader open does), each row
    group's byte counts, the whole-file checksum and each column chunk's checksum from the manifest.
    """
    try:
        f, metadata, where = ds._open_checked(info)
    except CorruptFileError as e:
        message = str(e)
        prefix = f"{e.path}: "
        return [message[len(prefix):] if e.path and message.startswith(prefix) else message]
    except RemoteError:
        raise  # the storage failed, not the file: the caller says it could not be checked
    except (OSError, pa.ArrowException) as e:
        return [f"cannot read ({e})"]
    problems, chunk_problems, ranges = [], [], []
    try:
        try:  # the types the file's columns decode to (from its footer), against the manifest's
            decoded = metadata.schema.to_arrow_schema()
            for col in ds.schema:
                if decoded.get_field_index(col.name) < 0:
                    problems.append(f"column {col.name!r} of the manifest is not in the file")
                elif decoded.field(col.name).type != col.type:
                    problems.append(f"column {col.name!r} decodes to {decoded.field(col.name).type}, the manifest "
                                    f"says {col.type}")
        except (OSError, pa.ArrowException) as e:
            problems.append(f"cannot read the schema of its footer ({e})")
        for i, group in enumerate(info.row_groups):
            rg = metadata.row_group(i)
            chunks = [rg.column(c) for c in range(rg.num_columns)]
            compressed = sum(c.total_compressed_size for c in chunks)
            if (group.compressed_bytes, group.uncompressed_bytes) != (compressed, rg.total_byte_size):
                problems.append(
                    f"row group {i} holds {compressed} compressed / {rg.total_byte_size} uncompressed bytes, "
                    f"the manifest says {group.compressed_bytes} / {group.uncompressed_bytes}")
            if not group.column_checksums:  # a manifest written before chunk checksums existed
                continue
            if len(group.column_checksums) != len(chunks):
                problems.append(f"row group {i} has {len(chunks)} column chunks, the manifest "
                                f"{len(group.column_checksums)} checksums")
                continue
            for c, chunk in enumerate(chunks):
                start, length = chunk_range(chunk)
                if not chunk_inside(start, length, info.size):
                    chunk_problems.append(f"row group {i} column {chunk.path_in_schema} lies outside the file")
                else:
                    ranges.append((start, length, i, c))
        f.seek(0)
        checksum, read, sums = _checksum_with_ranges(f, ranges)
    except RemoteError:
        raise
    except (OSError, pa.ArrowException) as e:
        return [*problems, f"cannot read ({e})"]
    finally:
        f.close()
    if read != info.size:
        problems.insert(0, f"read {read} bytes, the manifest says {info.size}")
    if checksum != info.checksum:
        problems.insert(0, f"checksum {checksum}, the manifest says {info.checksum}")
    for _, _, i, c in ranges:
        if f"{sums[(i, c)] & 0xFFFFFFFF:08x}" != info.row_groups[i].column_checksums[c]:
            column = metadata.row_group(i).column(c).path_in_schema
            chunk_problems.append(f"row group {i} column {column} fails its checksum")
    if len(chunk_problems) > MAX_LISTED:
        more = len(chunk_problems) - MAX_LISTED
        chunk_problems = [*chunk_problems[:MAX_LISTED], f"and {more} more column chunks fail"]
    return problems + chunk_problems


def cmd_verify(args) -> int:
    """Check the manifest and every data file against it as a reader would (sizes, footers, row groups,
    whole-file and column-chunk checksums); exit 1 naming every bad file and why."""
    ds = _open(args)
    bad: list[dict[str, Any]] = []

    def report(where: str, problems: list[str], listed: bool = True) -> None:
        if problems:
            bad.append({"path": where, "problems": problems})
            if not args.json:
                print(f"BAD {where}: {'; '.join(problems)}", flush=True)
        elif listed and args.verbose and not args.json:
            print(f"ok  {where}", flush=True)

    manifest_path = lfs.display(ds.fs, lfs.join(ds.version_path, MANIFEST_NAME))
    report(manifest_path, _manifest_problems(ds), listed=False)
    unchecked: list[dict[str, str]] = []  # files the remote storage would not give (an outage is no verdict)
    for info in ds.files:
        try:
            report(ds.display(info), _file_problems(ds, info))
        except RemoteError as e:
            unchecked.append({"path": ds.display(info), "error": str(e)})
            if not args.json:
                print(f"UNCHECKED {ds.display(info)}: could not be read from the remote storage ({e})", flush=True)
    what = f"{ds.name} {ds.version}"
    summary = (f"{len(ds.files)} files, {ds.num_row_groups} row groups, {ds.num_rows} rows, "
               f"{ds.total_bytes} bytes of {what}")
    if args.json:
        print(json.dumps({
            "dataset": ds.name, "version": ds.version, "path": lfs.display(ds.fs, ds.version_path),
            "files": len(ds.files), "row_groups": ds.num_row_groups, "rows": ds.num_rows,
            "bytes": ds.total_bytes, "ok": not bad and not unchecked, "bad": bad, "unchecked": unchecked,
        }, indent=1, ensure_ascii=False))
    if bad:
        files = [b["path"] for b in bad if b["path"] != manifest_path]
        parts = ["the manifest"] if len(files) < len(bad) else []
        parts += [f"{len(files)} of {len(ds.files)} files"] if files else []
        also = f" ({len(unchecked)} more could not be checked)" if unchecked else ""
        raise CorruptFileError(
            f"{' and '.join(parts)} of {what} fail verification{also}: {', '.join(b['path'] for b in bad)}",
            bad[0]["path"],
        )
    if unchecked:
        raise RemoteError(f"{len(unchecked)} of {len(ds.files)} files of {what} could not be checked (the remote "
                          f"storage failed; none failed a check): {', '.join(u['path'] for u in unchecked)}")
    if not args.json:
        print(f"ok: {summary} match the manifest")
    return 0


# ------------------------------------------------------------------------------------------------- sync


def cmd_sync(args) -> int:
    """Copy a cache into a local directory with :func:`loader.sync.sync`."""
    try:
        from .sync import sync
    except ImportError as e:
        raise ConfigError(f"sync is unavailable: {e}") from e
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    result = sync(args.url, args.cache_dir, workers=args.workers, progress=not args.no_progress,
                  **_fs_options(args.option))
    print(getattr(result, "summary", result))
    return 0


# ------------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = _Parser(prog="python -m loader", description="Look at a larder cache.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, func, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("url", help="dataset directory, version directory or remote URL")
        sp.add_argument(
            "-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="filesystem option (repeatable)"
        )
        sp.set_defaults(func=func)
        return sp

    sp = add("inspect", cmd_inspect, "columns, types, sizes, version and source of a cache")
    sp.add_argument("--json", action="store_true", help='print one JSON object (NaN/infinities as in head --json)')
    sp = add("head", cmd_head, "the first rows of a cache")
    sp.add_argument("-n", type=int, default=5, help="rows to show (default 5)")
    sp.add_argument("--columns", help="comma-separated columns to show")
    sp.add_argument("--json", action="store_true",
                    help='one JSON object per row (strict JSON: float NaN and infinities as the strings "NaN", '
                         '"Infinity", "-Infinity")')
    sp = add("verify", cmd_verify, "check the manifest and every data file as a reader would")
    sp.add_argument("-v", "--verbose", action="store_true", help="list good files too")
    sp.add_argument("--json", action="store_true", help="print one JSON object (the bad files and why)")
    sp = add("sync", cmd_sync, "copy a (remote) cache into a local directory")
    sp.add_argument("cache_dir", help="local cache directory (the reader's cache_dir)")
    sp.add_argument("--workers", type=int, default=4, help="parallel downloads (default 4)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 data error, 2 usage error)."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as e:
        if len(e.args) > 1:
            sys.stderr.write(e.args[1])
        print(f"{PROG}: error: {e.args[0]}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `| head`; keep Python from complaining at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (LarderError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
