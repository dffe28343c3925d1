"""Build the SparkSession of a job: Hive support, warehouse and embedded Derby metastore directories.

Under ``spark-submit`` the master, deploy mode and resources come from the command line; the conf's
``spark.master`` only applies when the job runs as a plain Python process (tests, notebooks).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import TYPE_CHECKING

from loader.errors import LarderError

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


def check_master(master: str, timeout: float = 5.0) -> None:
    """Refuse a standalone master (``spark://host:port[,host:port...]``) none of whose addresses answers: Spark
    would try to register for about 90 s and then fail with a Java error naming nothing.

    Raises:
        SparkUnavailableError: No address of ``master`` accepts a connection (names the master).
    """
    if not master.startswith("spark://"):
        return
    errors = []
    for address in master[len("spark://"):].split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return
        except (OSError, ValueError) as e:
            errors.append(f"{address.strip()}: {e}")
    raise SparkUnavailableError(f"the Spark master {master} cannot be reached ({'; '.join(errors)}): is it "
                                "running, and is the URL the one its log prints?")


class SparkUnavailableError(LarderError, ConnectionError):
    """The Spark cluster named by the job's master URL cannot be reached (exit 1: it may come back)."""


def build_session(cfg: SparkConfig) -> SparkSession:
    """Create (or get) the job's SparkSession.

    Args:
        cfg: The conf's ``spark`` section.

    Returns:
        A session with Hive support when ``cfg.hive`` is set.

    Raises:
        SparkUnavailableError: A standalone master that no address of answers (:func:`check_master`).
    """
    from pyspark.sql import SparkSession

    python_for_workers()
    if "PYSPARK_GATEWAY_PORT" in os.environ:  # under spark-submit: its --master is a property of its JVM
        from pyspark import SparkContext

        SparkContext._ensure_initialized()  # connects to spark-submit's JVM; starts no SparkContext
        check_master(SparkContext._jvm.java.lang.System.getProperty("spark.master") or "")
    else:
        check_master(cfg.master or "")
    builder = SparkSession.builder.appName(cfg.app_name)
    if cfg.master and "PYSPARK_GATEWAY_PORT" not in os.environ:  # not under spark-submit
        builder = builder.master(cfg.master)
    for key, value in session_settings(cfg).items():
        builder = builder.config(key, value)
    if cfg.hive:
        builder = builder.enableHiveSupport()
    return builder.getOrCreate()
