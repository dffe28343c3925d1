"""Benchmark the prepare job against plain Spark, and the trainer's first batch against Spark's.

    .venv/bin/python bench/bench_materialize.py [--rows 2000000] [--block 32MiB] [--image-bytes 48]

Measured in one run, on the same machine and data (figures, never pass/fail):

1. the demo table scaled up (default 2M rows; JPEG payloads narrowed to ~48 random bytes + the ~700-byte
   template so 2M rows fit this machine's time budget);
2. ``plain``: ``df.write.parquet`` of the same selection (same columns and filter, zstd) — the floor;
   and ``df.repartition(n).write.parquet`` — the floor for any job that decorrelates rows across files;
3. ``larder``: the whole job (validation, fingerprint, vocabulary, sizing sample, decorrelating shuffle,
   footer verification, checksums, manifest, atomic publish), forced; ratio to ``plain`` (target <= 1.3),
   and the ratio of its decorrelating write alone (shuffle + in-file order + Parquet) to ``plain``. The
   first run sizes from a shuffled sample; later runs reuse the bytes per row measured in the previous
   version when the selection still looks the same (``extra.sizing.estimate_from``);
   With ``--spark-writer``, the same job with ``output.writer: spark`` too (a Spark exchange, then
   parquet-mr), to compare the two writers in one run;
4. the row-group fill distribution of the published cache (min / median / max of the block);
5. time from process start to the first batch: a fresh Python process with ``loader.make_reader`` on the
   cache vs a fresh process that starts a SparkSession and reads the same table (``limit(batch)``, the
   cheapest possible Spark read, and a shuffled read, which is what an epoch of shuffled batches needs);
   ratios Spark / loader (target >= 20).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from procstat import cpu_ticks, tree  # noqa: E402 - bench/, the script's own directory

TABLE = "bench.shopping_products"
COLUMNS = ["product_id", "title", "tokens", "wordpiece_ids", "image", "category", "price"]
BATCH = 256


def first_batch_seconds(code: str, env: dict) -> float:
    """Wall time of a fresh Python process running ``code`` (interpreter start included)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True)
    took = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"first-batch process failed:\n{done.stderr.decode(errors='replace')[-3000:]}")
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--days", type=int, default=4)
    p.add_argument("--image-bytes", type=int, default=48)
    p.add_argument("--block", default="32MiB", help="block size of the cache (32MiB: ~10 row groups at 2M rows)")
    p.add_argument("--data", default=os.path.join(HERE, "data", "materialize"))
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions of each contender")
    p.add_argument("--spark-writer", action="store_true",
                   help="also time the job with output.writer: spark (a Spark exchange, then parquet-mr)")
    args = p.parse_args()

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from etl.config import from_dict
    from etl.demo import make_demo_table
    from etl.job import run
    from etl.session import build_session

    spark_section = {
        "master": "local[*]",
        "warehouse_dir": os.path.join(args.data, "warehouse"),
        "metastore_dir": os.path.join(args.data, "metastore"),
        "conf": {"spark.ui.enabled": False, "spark.driver.memory": "4g"},
    }
    cfg = from_dict(
        {
            "name": "bench_shop",
            "source": {"table": TABLE, "columns": COLUMNS},
            "transforms": [{"kind": "index", "column": "category", "output": "label"}],
            "output": {"root": os.path.join(args.data, "cache"), "block_size": args.block, "keep_versions": 2},
            "spark": spark_section,
        }
    )
    spark = build_session(cfg.spark)
    spark.sparkContext.setLogLevel("ERROR")
    started = time.perf_counter()
    made = make_demo_table(spark, TABLE, rows=args.rows, days=args.days, image_bytes=args.image_bytes)
    gen = time.perf_counter() - started
    rows = spark.table(TABLE).count()
    if rows != args.rows:  # an older table of another size
        make_demo_table(spark, TABLE, rows=args.rows, days=args.days, image_bytes=args.image_bytes, if_missing=False)
        rows = args.rows
    how = f"generated in {gen:.0f}s" if made else "existing"
    print(f"table {TABLE}: {rows} rows ({how})", flush=True)

    selection = spark.table(TABLE).select(*COLUMNS)
    selection.selectExpr("sum(length(image))").collect()  # warm the page cache for both contenders
    plain_dir = os.path.join(args.data, "plain")
    times: dict[str, list[float]] = {"plain": [], "shuffled": [], "job": [], "job-spark": []}
    result = None
    writes: list[float] = []  # the decorrelating write(s) alone, from each run's manifest
    estimates: list[str] = []  # where each run's bytes per row came from

    cpu: dict[str, list[float]] = {k: [] for k in times}  # CPU seconds of this process and the JVM
    jvm_pid = int(spark._jvm.java.lang.ProcessHandle.current().pid())

    def cpu_seconds() -> float:
        """User + system CPU of the driver JVM (which runs the local executors), of the Python workers it
        starts (the arrow writer's tasks: live ones, and the reaped ones the JVM accounts for), and of
        this process: far less sensitive than wall time to the other load on a shared machine."""
        jvm_cpu = sum(cpu_ticks(p, reaped=True) for p in tree(jvm_pid)) / os.sysconf("SC_CLK_TCK")
        return jvm_cpu + sum(os.times()[:2])

    def timed(kind: str, action) -> None:
        shutil.rmtree(plain_dir, ignore_errors=True)
        t, c = time.perf_counter(), cpu_seconds()
        action()
        times[kind].append(time.perf_counter() - t)
        cpu[kind].append(cpu_seconds() - c)
        print(f"{kind}: {times[kind][-1]:.1f}s, {cpu[kind][-1]:.1f} CPU s", flush=True)

    import loader

    for _ in range(args.repeat):  # interleaved, so load from elsewhere hits all contenders alike
        timed("plain", lambda: selection.write.option("compression", "zstd").parquet(plain_dir))
        plain_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(plain_dir) for f in fs)
        c = cpu_seconds()
        result = run(cfg, spark, force=True, log=lambda m: print(f"  {m}", flush=True))
        times["job"].append(result.seconds)
        cpu["job"].append(cpu_seconds() - c)
        attempts = loader.open_dataset(os.path.join(cfg.output.root, cfg.name)).manifest.extra["sizing"]["attempts"]
        writes.append(sum(a.get("write_seconds", 0) for a in attempts))
        estimates.append(attempts[0].get("estimate_from", "?"))
        print(f"job: {result.seconds:.1f}s, {cpu['job'][-1]:.1f} CPU s", flush=True)
        if args.spark_writer:  # same job, Spark's writer; its own dataset, so neither reuses the other's sizing
            spark_cfg = replace(cfg, name=cfg.name + "_spark", output=replace(cfg.output, writer="spark"))
            c = cpu_seconds()
            other = run(spark_cfg, spark, force=True, log=lambda m: print(f"  [spark writer] {m}", flush=True))
            times["job-spark"].append(other.seconds)
            cpu["job-spark"].append(cpu_seconds() - c)
            print(f"job, writer spark: {other.seconds:.1f}s, {cpu['job-spark'][-1]:.1f} CPU s", flush=True)
        timed(
            "shuffled",
            lambda n=result.files: selection.repartition(n).write.option("compression", "zstd").parquet(plain_dir),
        )
    jvm = spark._jvm
    spark.stop()
    try:  # the embedded Derby metastore admits one JVM at a time: release it for the Spark contender
        jvm.java.sql.DriverManager.getConnection("jdbc:derby:;shutdown=true")
    except Exception:  # noqa: BLE001 - Derby reports a successful shutdown as an SQLException
        pass

    ds = loader.open_dataset(os.path.join(cfg.output.root, cfg.name))
    fills = sorted(g.compressed_bytes / ds.manifest.block_size for f in ds.files for g in f.row_groups)
    env = {**os.environ, "PYTHONPATH": REPO}
    url = os.path.join(cfg.output.root, cfg.name)
    loader_code = (
        "import loader\n"
        f"r = loader.make_reader({url!r}, columns={[c for c in COLUMNS if c != 'tokens']!r}, batch_size={BATCH})\n"
        "next(iter(r)); r.close()\n"
    )
    spark_head = (
        "from pyspark.sql import SparkSession\n"
        "s = SparkSession.builder.master('local[*]').config('spark.ui.enabled', 'false')"
        f".config('spark.sql.warehouse.dir', {spark_section['warehouse_dir']!r})"
        f".config('spark.hadoop.javax.jdo.option.ConnectionURL', "
        f"'jdbc:derby:;databaseName={os.path.abspath(spark_section['metastore_dir'])}/metastore_db;create=true')"
        ".enableHiveSupport().getOrCreate()\n"
        "s.sparkContext.setLogLevel('ERROR')\n"
        f"df = s.table({TABLE!r}).select(*{COLUMNS!r})\n"
    )
    spark_limit = spark_head + f"df.limit({BATCH}).collect()\n"
    spark_shuffled = (
        spark_head + f"from pyspark.sql import functions as F\ndf.orderBy(F.rand(0)).limit({BATCH}).collect()\n"
    )
    first_loader = min(first_batch_seconds(loader_code, env) for _ in range(3))
    first_spark = first_batch_seconds(spark_limit, env)
    first_spark_shuffled = first_batch_seconds(spark_shuffled, env)

    plain, shuffled, job = (statistics.median(times[k]) for k in ("plain", "shuffled", "job"))
    ratios = [j / p for j, p in zip(times["job"], times["plain"], strict=True)]
    ratios_shuffled = [j / p for j, p in zip(times["job"], times["shuffled"], strict=True)]
    table = [
        ("rows", f"{rows:,}"),
        ("cache: files / row groups / bytes", f"{len(ds.files)} / {ds.num_row_groups} / {ds.total_bytes:,}"),
        ("plain df.write.parquet bytes", f"{plain_bytes:,}"),
        (f"plain df.write.parquet (s, median of {args.repeat})", f"{plain:.1f}"),
        ("df.repartition(n).write.parquet (s)", f"{shuffled:.1f}"),
        ("larder job, forced (s)", f"{job:.1f}"),
        ("ratio job / plain (target <= 1.3), per run", " ".join(f"{r:.2f}" for r in ratios)),
        ("ratio job / repartition(n)+write, per run", " ".join(f"{r:.2f}" for r in ratios_shuffled)),
        *([("larder job, writer: spark (s)", f"{statistics.median(times['job-spark']):.1f}"),
           ("ratio job writer spark / plain, per run",
            " ".join(f"{j / p:.2f}" for j, p in zip(times["job-spark"], times["plain"], strict=True)))]
          if times["job-spark"] else []),
        ("CPU seconds plain / repartition(n) / job, medians",
         " / ".join(f"{statistics.median(cpu[k]):.1f}" for k in ("plain", "shuffled", "job"))),
        ("CPU ratio job / plain, per run",
         " ".join(f"{j / p:.2f}" for j, p in zip(cpu["job"], cpu["plain"], strict=True))),
        ("ratio decorrelating write alone / plain, per run",
         " ".join(f"{w / p:.2f}" for w, p in zip(writes, times["plain"], strict=True))),
        ("bytes/row estimate from, per run", " ".join("sample" if e == "sample" else "previous" for e in estimates)),
        (f"row-group fill of {args.block}: min / median / max",
         f"{fills[0]:.3f} / {statistics.median(fills):.3f} / {fills[-1]:.3f}"),
        ("first batch, loader (s, best of 3)", f"{first_loader:.2f}"),
        ("first batch, SparkSession + limit (s)", f"{first_spark:.2f}"),
        ("first batch, SparkSession + shuffled read (s)", f"{first_spark_shuffled:.2f}"),
        ("ratio spark limit / loader (target >= 20)", f"{first_spark / first_loader:.1f}"),
        ("ratio spark shuffled / loader", f"{first_spark_shuffled / first_loader:.1f}"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in table)
    print(f"\n| {'metric'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for key, value in table:
        print(f"| {key.ljust(width)} | {value} |")
    print(f"\nlarder job, seconds per phase (last run): {ds.manifest.extra.get('seconds')}")
    print(f"sizing: {ds.manifest.extra.get('sizing')}")


if __name__ == "__main__":
    main()
