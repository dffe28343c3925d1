"""Build the SparkSession of a job: Hive support, warehouse and embedded Derby metastore directories.

Under ``spark-submit`` the master, deploy mode and resources come from the command line; the conf's
``spark.master`` only applies when the job runs as a plain Python process (tests, notebooks).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from .config import SparkConfig

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def derby_url(metastore_dir: str) -> str:
    """The JDBC URL of an embedded Derby metastore kept in ``metastore_dir``."""
    return f"jdbc:derby:;databaseName={os.path.join(os.path.abspath(metastore_dir), 'metastore_db')};create=true"


def session_settings(cfg: SparkConfig) -> dict[str, str]:
    """The Spark settings a job's session gets from its conf (before ``cfg.conf`` overrides)."""
    settings: dict[str, str] = {
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
    }  # adaptive execution stays on (small aggregations coalesce); the sized write turns it off itself
    if cfg.warehouse_dir:
        settings["spark.sql.warehouse.dir"] = os.path.abspath(cfg.warehouse_dir)
    if cfg.metastore_dir:
        os.makedirs(cfg.metastore_dir, exist_ok=True)
        settings["spark.hadoop.javax.jdo.option.ConnectionURL"] = derby_url(cfg.metastore_dir)
        settings["spark.hadoop.datanucleus.schema.autoCreateAll"] = "true"
        settings["spark.hadoop.hive.metastore.schema.verification"] = "false"
    settings.update({str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in cfg.conf.items()})
    return settings


def python_for_workers() -> None:
    """Outside ``spark-submit`` (which sets it), run Spark's Python workers (the arrow writer's tasks) with
    this interpreter, not whatever ``python3`` is first on the PATH: PySpark reads ``PYSPARK_PYTHON``."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def build_session(cfg: SparkConfig) -> SparkSession:
    """Create (or get) the job's SparkSession.

    Args:
        cfg: The conf's ``spark`` section.

    Returns:
        A session with Hive support when ``cfg.hive`` is set.
    """
    from pyspark.sql import SparkSession

    python_for_workers()
    builder = SparkSession.builder.appName(cfg.app_name)
    if cfg.master and "PYSPARK_GATEWAY_PORT" not in os.environ:  # not under spark-submit
        builder = builder.master(cfg.master)
    for key, value in session_settings(cfg).items():
        builder = builder.config(key, value)
    if cfg.hive:
        builder = builder.enableHiveSupport()
    return builder.getOrCreate()
