"""Generate the source article's benchmark data as a larder cache.

Columns (one row is one shopping product):

* ``product_id`` int64 — unique, ``0 .. rows-1`` (doubles as a row id in checks)
* ``title`` string — Korean-like title: the tokens joined by spaces
* ``tokens`` list<string> — the tokenized title (3–14 Hangul tokens from a skewed 20,000-word vocabulary)
* ``wordpiece_ids`` list<int32> — wordpiece ids of the title (4–48 ids below 32,000)
* ``image`` binary — a small image of 2–6 KB (``--image-bytes``): a real JPEG when Pillow is installed
  (drawn from a pool of 256 encoded noise images, padded with a COM segment to the drawn size), otherwise
  JPEG-like bytes: SOI + APP0/JFIF header, random high-entropy payload, EOI — incompressible like real
  JPEG data, which is what matters for I/O and decode cost
* ``label`` int32 — category label, Zipf-like over 1,000 classes

Everything is generated vectorised in chunks (memory stays flat) and published with
:func:`loader.write_cache`, so the layout and manifest are those of a real cache.

Examples::

    python bench/gen_data.py --out /tmp/bench --name base                  # 200k rows, 4 MiB row groups
    python bench/gen_data.py --out /tmp/bench --name base4x --scale 4      # the 4x dataset
    python bench/gen_data.py --out /tmp/bench --name tiny --rows 10000 --files 10000 --image-bytes 64:256
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loader  # noqa: E402
import loader.encoding  # noqa: E402

HANGUL_FIRST, HANGUL_COUNT = 0xAC00, 11172
VOCAB_SIZE = 20_000
WORDPIECE_VOCAB = 32_000
NUM_LABELS = 1_000
CHUNK_ROWS = 8_192
SCHEMA = pa.schema(
    [
        pa.field("product_id", pa.int64(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("tokens", pa.list_(pa.string())),
        pa.field("wordpiece_ids", pa.list_(pa.int32())),
        pa.field("image", pa.binary()),
        pa.field("label", pa.int32(), nullable=False),
    ]
)


def _vocabulary(rng: np.random.Generator) -> pa.StringArray:
    """20,000 Korean-like words of 1–4 Hangul syllables, built from one UTF-32 buffer."""
    lengths = rng.integers(1, 5, VOCAB_SIZE)
    codes = (HANGUL_FIRST + rng.integers(0, HANGUL_COUNT, int(lengths.sum()))).astype("<u4")
    text = codes.tobytes().decode("utf-32-le")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return pa.array([text[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)], pa.string())


def _offsets(lengths: np.ndarray) -> pa.Array:
    return pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))


def _have_pillow() -> bool:
    try:
        import PIL  # noqa: F401
    except ImportError:
        return False
    return True


def _jpeg_pool(rng: np.random.Generator) -> list[bytes] | None:
    """256 real JPEG encodings of noise images, or None when Pillow is absent."""
    try:
        from PIL import Image
    except ImportError:
        return None
    import io

    pool = []
    for _ in range(256):
        side = int(rng.integers(24, 40))
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="JPEG", quality=85)
        pool.append(out.getvalue())
    return pool


def _images(rng: np.random.Generator, n: int, lo: int, hi: int, pool: list[bytes] | None) -> pa.Array:
    """``n`` image blobs of ``lo..hi`` bytes as one BinaryArray, without a per-row Python loop when JPEG-like."""
    sizes = rng.integers(lo, hi + 1, n).astype(np.int64)
    if pool is not None:
        blobs = []
        for size, k in zip(sizes, rng.integers(0, len(pool), n), strict=True):
            jpg = pool[k]
            pad = max(0, int(size) - len(jpg) - 4)
            pad = min(pad, 65_533)
            # COM segment right after SOI keeps the file a valid JPEG at the drawn size.
            blobs.append(jpg[:2] + b"\xff\xfe" + (pad + 2).to_bytes(2, "big") + rng.bytes(pad) + jpg[2:])
        return pa.array(blobs, pa.binary())
    sizes = np.maximum(sizes, 24)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    data = np.frombuffer(rng.bytes(int(offsets[-1])), dtype=np.uint8).copy()
    header = np.frombuffer(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00", np.uint8)
    starts = offsets[:-1]
    idx = starts[:, None] + np.arange(header.size)[None, :]
    data[idx] = header
    data[offsets[1:] - 2] = 0xFF
    data[offsets[1:] - 1] = 0xD9
    return pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)]
    )


def generate(
    rows: int, *, seed: int = 0, image_bytes: tuple[int, int] = (2048, 6144), real_jpeg: bool = True
) -> Iterator[pa.RecordBatch]:
    """Yield the benchmark rows as record batches of ``CHUNK_ROWS`` rows.

    Args:
        rows: Rows to generate.
        seed: Seed of the generator; the same (rows, seed) gives the same data.
        image_bytes: Inclusive range of image sizes in bytes.
        real_jpeg: Use real JPEG encodings when Pillow is installed.
    """
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng)
    pool = _jpeg_pool(rng) if real_jpeg else None
    label_p = 1.0 / np.arange(1, NUM_LABELS + 1) ** 0.8
    label_p /= label_p.sum()
    for start in range(0, rows, CHUNK_ROWS):
        n = min(CHUNK_ROWS, rows - start)
        tok_len = rng.integers(3, 15, n)
        tok_idx = (VOCAB_SIZE * rng.random(int(tok_len.sum())) ** 2).astype(np.int64)  # skewed: frequent words
        tokens = pa.ListArray.from_arrays(_offsets(tok_len), vocab.take(pa.array(tok_idx)))
        wp_len = rng.integers(4, 49, n)
        wp = pa.ListArray.from_arrays(
            _offsets(wp_len), pa.array(rng.integers(0, WORDPIECE_VOCAB, int(wp_len.sum())).astype(np.int32))
        )
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(np.arange(start, start + n, dtype=np.int64)),
                pc.binary_join(tokens, " "),
                tokens,
                wp,
                _images(rng, n, image_bytes[0], image_bytes[1], pool),
                pa.array(rng.choice(NUM_LABELS, n, p=label_p).astype(np.int32)),
            ],
            schema=SCHEMA,
        )


def _bytes_per_row(image_bytes: tuple[int, int], seed: int) -> float:
    """Compressed bytes per row, measured on a generated sample."""
    import pyarrow.parquet as pq

    batch = next(generate(2048, seed=seed + 1, image_bytes=image_bytes, real_jpeg=False))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_batches([batch]), sink, compression="zstd")
    return sink.getvalue().size / batch.num_rows


def build(
    out: str,
    name: str,
    rows: int,
    *,
    row_group_bytes: int = 4 << 20,
    files: int | None = None,
    row_groups_per_file: int = 1,
    seed: int = 0,
    image_bytes: tuple[int, int] = (2048, 6144),
    real_jpeg: bool = True,
    encoding: str = "auto",
) -> loader.Dataset:
    """Generate ``rows`` rows and publish them as dataset ``name`` under ``out``.

    With ``files`` set, the row-group size is chosen so that about that many one-row-group files come out
    (used for the 10,000-file cache); otherwise row groups are ``row_group_bytes`` and each file holds
    ``row_groups_per_file`` of them.
    """
    if files:
        row_groups_per_file = 1
        rows_per_file = max(1, rows // files)
        # One row per file: any target below a row's size gives exactly one row per group.
        row_group_bytes = 1 if rows_per_file == 1 else int(_bytes_per_row(image_bytes, seed) * rows_per_file / 0.9)
    schema_batches = generate(rows, seed=seed, image_bytes=image_bytes, real_jpeg=real_jpeg)
    reader = pa.RecordBatchReader.from_batches(SCHEMA, schema_batches)
    return loader.write_cache(
        reader,
        out,
        name,
        row_group_bytes=row_group_bytes,
        row_groups_per_file=row_groups_per_file,
        source={"generator": "bench/gen_data.py", "rows": rows, "seed": seed, "image_bytes": list(image_bytes)},
        keep_versions=1,
        encoding=None if encoding == "auto" else loader.encoding.Encoding("zstd"),
    )


def _size_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX in bytes, got {text!r}") from e
    if not 24 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"need 24 <= MIN <= MAX, got {text!r}")
    return lo, hi


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="cache root directory")
    p.add_argument("--name", default="bench", help="dataset name under --out (default: bench)")
    p.add_argument("--rows", type=int, default=200_000, help="rows at scale 1 (default: 200000)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply --rows, e.g. 4 for the 4x dataset")
    p.add_argument("--row-group-mb", type=float, default=4.0, help="compressed row-group target in MiB (default 4)")
    p.add_argument("--row-groups-per-file", type=int, default=1, help="row groups per file (default 1)")
    p.add_argument("--files", type=int, default=None, help="aim at this many one-row-group files (e.g. 10000)")
    p.add_argument("--image-bytes", type=_size_range, default=(2048, 6144), help="image size range MIN:MAX")
    p.add_argument("--no-real-jpeg", action="store_true", help="JPEG-like bytes even if Pillow is installed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoding", choices=["auto", "defaults"], default="auto",
                   help="auto: the per-column choice of loader.encoding (what larder writes); defaults: pyarrow's "
                        "(a dictionary and zstd on every column), for comparison (bench/bench_encoding.py)")
    args = p.parse_args(argv)
    rows = int(args.rows * args.scale)
    if rows <= 0:
        p.error("--rows × --scale must be positive")
    if args.files is not None and not 0 < args.files <= rows:
        p.error("--files must be in [1, rows]")
    t0 = time.perf_counter()
    ds = build(
        args.out,
        args.name,
        rows,
        row_group_bytes=int(args.row_group_mb * (1 << 20)),
        files=args.files,
        row_groups_per_file=args.row_groups_per_file,
        seed=args.seed,
        image_bytes=args.image_bytes,
        real_jpeg=not args.no_real_jpeg,
        encoding=args.encoding,
    )
    sizes = ds.row_group_sizes()
    images = "real JPEG (Pillow)" if not args.no_real_jpeg and _have_pillow() else "JPEG-like"
    print(
        f"{ds.version_path}: {ds.num_rows} rows, {len(ds.files)} files, {ds.num_row_groups} row groups "
        f"(rows per group {min(sizes)}..{max(sizes)}), {ds.total_bytes / 2**20:.1f} MiB, images {images}, "
        f"{time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
