"""How a cache's Parquet columns are encoded: chosen per column from a sample, for the reader's sake.

Both writers (:func:`loader.write_cache` and the Spark job's arrow writer, :mod:`etl.arrow_write`) call
:func:`choose` on a sample of the rows and write with :meth:`Encoding.parquet_options`:

* **Dictionary** only for repetitive columns (labels, categories): at most :data:`DICTIONARY_MAX_DISTINCT`
  of the sample's values distinct. On high-cardinality columns (ids, titles, image bytes) a dictionary is
  built, overflows its page and is abandoned by the writer, and the pages it left behind decode slower.
* **No compression** for columns the codec cannot shrink (JPEG bytes, random ids): where the sample's
  column chunks compress to more than :data:`INCOMPRESSIBLE` of their plain size, the column is stored
  plain. Decompressing them would be a copy that saves nothing; stored plain, the reader decodes their
  pages straight from the bytes it read.

On the benchmark data (``bench/gen_data.py``: JPEG-like image bytes, titles, tokens, ids) the two together
halve the CPU a row group's decode takes. The choice is recorded in the manifest's ``extra.encoding``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .convert_types import empty_table

DICTIONARY_MAX_DISTINCT = 0.5  # a column is dictionary-encoded when at most this share of its values is distinct
INCOMPRESSIBLE = 0.9  # a column is stored uncompressed when the codec keeps more than this share of its bytes
CODECS = {"uncompressed": "none", "none": "none", "snappy": "snappy", "gzip": "gzip", "zstd": "zstd",
          "lz4": "lz4", "lz4_raw": "lz4", "brotli": "brotli"}  # fmt: skip


def codec_name(compression: str) -> str:
    """pyarrow's name of a codec given by its pyarrow or Spark name (``uncompressed`` -> ``none``)."""
    return CODECS.get(compression.lower(), compression.lower())


@dataclass(frozen=True)
class Encoding:
    """Per-column Parquet settings of a cache's files.

    Attributes:
        codec: The codec (pyarrow's name) of every column not in ``uncompressed``.
        dictionary: Parquet leaf column paths to dictionary-encode (None: every column, pyarrow's default).
        uncompressed: Parquet leaf column paths stored without compression.
    """

    codec: str
    dictionary: tuple[str, ...] | None = None
    uncompressed: tuple[str, ...] = ()

    def parquet_options(self, schema: pa.Schema) -> dict:
        """Keyword arguments for ``pq.write_table`` / ``pq.ParquetWriter`` writing ``schema``."""
        codec = codec_name(self.codec)
        compression: str | dict = codec
        if self.uncompressed and codec != "none":
            compression = {path: "none" if path in self.uncompressed else codec for path in leaf_paths(schema)}
        dictionary = True if self.dictionary is None else list(self.dictionary) or False
        return {"compression": compression, "use_dictionary": dictionary}

    def describe(self) -> dict:
        """The choice as JSON-able data (the manifest's ``extra.encoding``)."""
        return {
            "codec": codec_name(self.codec),
            "dictionary": None if self.dictionary is None else list(self.dictionary),
            "uncompressed": list(self.uncompressed),
        }


@functools.lru_cache(maxsize=64)
def leaf_paths(schema: pa.Schema) -> tuple[str, ...]:
    """The Parquet leaf column paths of an Arrow schema (``tokens.list.element`` for a list column), as
    pyarrow's writer names them (read back from an empty file; cached, since every encode asks)."""
    sink = pa.BufferOutputStream()
    pq.write_table(empty_table(schema), sink)
    return tuple(c.path for c in pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema)


def dictionary_columns(sample: pa.Table) -> tuple[str, ...]:
    """The Parquet leaf columns worth a dictionary: those of top-level columns whose values in ``sample``
    are at most :data:`DICTIONARY_MAX_DISTINCT` distinct (list columns are judged by their flat values;
    columns whose values cannot be counted, structs and maps, keep a dictionary)."""
    ratio: dict[str, float] = {}
    for field in sample.schema:
        values = sample.column(field.name)
        while pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
            values = pc.list_flatten(values)
        try:
            distinct = pc.count_distinct(values).as_py()
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError):  # structs, maps: keep the default
            ratio[field.name] = 0.0
            continue
        ratio[field.name] = distinct / max(1, len(values))
    return tuple(p for p in leaf_paths(sample.schema) if ratio.get(p.split(".")[0], 0.0) <= DICTIONARY_MAX_DISTINCT)


def incompressible_columns(sample: pa.Table, codec: str, dictionary: tuple[str, ...] | None,
                           **write_options) -> tuple[str, ...]:
    """The Parquet leaf columns that ``codec`` does not shrink below :data:`INCOMPRESSIBLE` of their plain
    bytes in ``sample`` (written as the data will be: with ``dictionary`` and ``write_options``)."""
    if codec_name(codec) == "none" or not sample.num_rows:
        return ()
    sink = pa.BufferOutputStream()
    pq.write_table(sample, sink, row_group_size=max(1, sample.num_rows),
                   **Encoding(codec, dictionary).parquet_options(sample.schema), **write_options)
    meta = pq.read_metadata(pa.BufferReader(sink.getvalue()))
    compressed: dict[str, int] = {}
    plain: dict[str, int] = {}
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            compressed[chunk.path_in_schema] = compressed.get(chunk.path_in_schema, 0) + chunk.total_compressed_size
            plain[chunk.path_in_schema] = plain.get(chunk.path_in_schema, 0) + chunk.total_uncompressed_size
    return tuple(p for p in leaf_paths(sample.schema) if plain.get(p) and compressed[p] > INCOMPRESSIBLE * plain[p])


def choose(sample: pa.Table, codec: str, **write_options) -> Encoding:
    """Choose the dictionary and compressed columns from a sample of the rows (see the module docstring).

    Args:
        sample: Rows of the data, in the data's schema (an empty sample keeps pyarrow's defaults).
        codec: The codec asked for (pyarrow's or Spark's name).
        **write_options: Further ``pq.write_table`` options the data is written with (e.g. ``data_page_size``).
    """
    if not sample.num_rows:
        return Encoding(codec_name(codec))
    dictionary = dictionary_columns(sample)
    return Encoding(codec_name(codec), dictionary, incompressible_columns(sample, codec, dictionary, **write_options))


__all__ = ["CODECS", "DICTIONARY_MAX_DISTINCT", "INCOMPRESSIBLE", "Encoding", "choose", "codec_name",
           "dictionary_columns", "incompressible_columns", "leaf_paths"]
