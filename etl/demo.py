"""The demo table: synthetic shopping-catalog rows, partitioned by day, built entirely in Spark SQL.

Columns: ``product_id`` (bigint), ``title`` (Korean-like, Hangul syllables), ``tokens`` (array<string>),
``wordpiece_ids`` (array<int>), ``image`` (a small, valid JPEG), ``category`` (a path like
"패션의류>여성의류>원피스"), ``price`` (int, won); and columns a job usually leaves out:
``seller_id``, ``description``, ``attrs`` (map<string,string>, a type the cache refuses), and the
partition column ``dt``.

Rows are clustered the way real catalog dumps are: one partition per day, and inside a day long runs of
one category (skewed: early categories are more frequent). JPEGs are a handful of 16x16 templates
encoded by the JVM's ImageIO, each made unique by a COM segment of random bytes (the size of the
segment sets the row width).
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

CATEGORIES = [
    "패션의류>여성의류>원피스", "패션의류>여성의류>블라우스", "패션의류>남성의류>티셔츠", "패션의류>남성의류>청바지",
    "디지털>휴대폰>스마트폰", "디지털>노트북>게이밍", "디지털>카메라>미러리스", "가전>주방가전>전기밥솥",
    "가전>생활가전>청소기", "식품>과일>사과", "식품>수산물>고등어", "식품>음료>커피", "뷰티>스킨케어>토너",
    "뷰티>메이크업>립스틱", "스포츠>캠핑>텐트", "스포츠>자전거>헬멧", "가구>침실>매트리스", "가구>거실>소파",
    "도서>소설>한국소설", "완구>블록>레고",
]  # fmt: skip
NUM_TEMPLATES = 6


def _syllables(n: int = 240, seed: int = 7) -> list[str]:
    """``n`` distinct Hangul syllables (U+AC00..U+D7A3), chosen with a seeded generator."""
    import numpy as np

    codes = np.random.default_rng(seed).choice(11172, size=n, replace=False)
    return [chr(0xAC00 + int(c)) for c in codes]


def jpeg_templates(spark: SparkSession, count: int = NUM_TEMPLATES, size: int = 16) -> list[bytes]:
    """Encode ``count`` small gradient images as baseline JPEGs with the JVM's ImageIO."""
    jvm = spark._jvm
    gateway = spark.sparkContext._gateway
    out = []
    for t in range(count):
        image = jvm.java.awt.image.BufferedImage(size, size, 1)  # TYPE_INT_RGB
        pixels = gateway.new_array(gateway.jvm.int, size * size)
        for y in range(size):
            for x in range(size):
                r, g, b = (x * 16 + t * 40) % 256, (y * 16 + t * 25) % 256, ((x + y) * 8 + t * 60) % 256
                pixels[y * size + x] = (r << 16) | (g << 8) | b
        image.setRGB(0, 0, size, size, pixels, 0, size)
        sink = jvm.java.io.ByteArrayOutputStream()
        if not jvm.javax.imageio.ImageIO.write(image, "jpg", sink):
            raise RuntimeError("the JVM has no JPEG writer")
        out.append(bytes(sink.toByteArray()))
    return out


def is_jpeg(spark: SparkSession, data: bytes) -> bool:
    """Whether the JVM's ImageIO decodes ``data`` as an image."""
    jvm = spark._jvm
    stream = jvm.java.io.ByteArrayInputStream(bytearray(data))
    return jvm.javax.imageio.ImageIO.read(stream) is not None


def demo_frame(
    spark: SparkSession, rows: int, days: int = 3, start: str = "2026-11-21", image_bytes: int = 600, seed: int = 0
) -> DataFrame:
    """The demo rows as a DataFrame (nothing is written).

    Args:
        spark: The session.
        rows: Total rows, spread evenly over ``days``.
        days: Number of ``dt`` partitions, from ``start`` on.
        start: First day, ``YYYY-MM-DD``.
        image_bytes: Mean size of the random COM payload inside each JPEG.
        seed: Varies titles, prices and payloads.
    """
    from pyspark.sql import functions as F

    per_day = max(1, -(-rows // days))
    first = _dt.date.fromisoformat(start)
    syl = ", ".join(f"'{s}'" for s in _syllables())
    cats = ", ".join(f"'{c}'" for c in CATEGORIES)
    templates = ", ".join(f"unhex('{t.hex()}')" for t in jpeg_templates(spark))
    day_list = ", ".join(f"'{(first + _dt.timedelta(days=d)).isoformat()}'" for d in range(days))
    h = f"xxhash64(product_id, {int(seed)}"  # open call: add salt arguments and ')'
    df = (
        spark.range(0, rows, 1, numPartitions=max(1, min(days * 2, 64)))
        .selectExpr("id AS product_id")
        .selectExpr(
            "product_id",
            f"element_at(array({day_list}), cast(product_id DIV {per_day} AS int) + 1) AS dt",
            f"cast(pow((product_id % {per_day}) / {per_day}, 2) * {len(CATEGORIES)} AS int) AS cat_idx",
            f"abs({h}, 'len')) % 6 + 3 AS n_words",
            f"cast(abs({h}, 'img')) % {max(1, image_bytes)} + {max(1, image_bytes // 2)} AS int) AS payload",
        )
    )
    words = (
        f"transform(sequence(1, n_words), i -> concat_ws('', transform(sequence(1, 2 + abs({h}, i, 'w')) % 2), "
        f"j -> element_at(array({syl}), cast(abs({h}, i, j)) % 240 AS int) + 1))))"
    )
    hex_payload = (
        f"substr(array_join(transform(sequence(0, cast(payload DIV 32 AS int)), "
        f"k -> sha2(concat_ws('-', cast(product_id AS string), cast(k AS string), '{int(seed)}'), 256)), ''), "
        f"1, payload * 2)"
    )
    return (
        df.withColumn("tokens", F.expr(words))
        .withColumn("title", F.expr("array_join(tokens, ' ')"))
        .withColumn(
            "wordpiece_ids",
            F.expr(
                "flatten(transform(tokens, t -> array(cast(abs(hash(t)) % 30000 AS int), "
                "cast(abs(hash(t, 1)) % 30000 AS int))))"
            ),
        )
        .withColumn(
            "image",
            F.expr(
                f"concat(unhex('FFD8FFFE'), unhex(lpad(hex(payload + 2), 4, '0')), unhex({hex_payload}), "
                f"substr(element_at(array({templates}), cast(product_id % {NUM_TEMPLATES} AS int) + 1), 3))"
            ),
        )
        .withColumn("category", F.expr(f"element_at(array({cats}), least(cat_idx, {len(CATEGORIES) - 1}) + 1)"))
        .withColumn("price", F.expr(f"cast(1000 + abs({h}, 'p')) % 500 * 100 AS int)"))
        .withColumn("seller_id", F.expr("product_id % 997"))
        .withColumn("description", F.expr("concat(title, ' - ', category, ' 상품 설명')"))
        .withColumn(
            "attrs", F.expr("map('color', element_at(array('red','blue','black'), cast(product_id % 3 AS int) + 1))")
        )
        .select(
            "product_id",
            "title",
            "tokens",
            "wordpiece_ids",
            "image",
            "category",
            "price",
            "seller_id",
            "description",
            "attrs",
            "dt",
        )  # fmt: skip
    )


def make_demo_table(
    spark: SparkSession, table: str = "demo.shopping_products", rows: int = 20_000, days: int = 3,
    start: str = "2026-11-21", image_bytes: int = 600, seed: int = 0, if_missing: bool = True,
) -> bool:  # fmt: skip
    """Create the demo Hive table partitioned by ``dt``.

    Returns:
        True if the table was (re)created, False if it existed and ``if_missing`` was set.
    """
    db = table.split(".")[0] if "." in table else "default"
    if if_missing and spark.catalog.tableExists(table):
        return False
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
    spark.sql(f"DROP TABLE IF EXISTS {table}")
    df = demo_frame(spark, rows, days, start, image_bytes, seed)
    df.write.format("parquet").partitionBy("dt").saveAsTable(table)
    return True
