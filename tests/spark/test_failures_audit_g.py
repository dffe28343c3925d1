"""Audit G, failures without a Spark error class or a Python traceback: an executor's Python worker killed outright
(the OOM killer) and an embedded Derby metastore held by another process. Each is one typed line saying what
happened (exit 1), not ``unexpected Py4JJavaError: An error occurred while calling ...`` (exit 3).

The unit cases take the failure texts the driver got in real runs (:func:`etl.failures.failure_text` of the
exception, Java stack frames left out); one case kills a Python worker of the suite's session for real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from etl.entry import guarded
from etl.failures import as_larder_error, root_cause
from loader.errors import SourceError, WorkerError

ADVICE = ("Consider setting 'spark.sql.execution.pyspark.udf.faulthandler.enabled' or'spark.python.worker.faulthandler"
          ".enabled' configuration to 'true' for the better Python traceback.")
CRASH = "org.apache.spark.SparkException: Python worker exited unexpectedly (crashed). " + ADVICE
# A pyspark.daemon worker SIGKILLed while it ran a task (local[1], mapInArrow).
CRASHED_TEXT = f"""An error occurred while calling z:org.apache.spark.api.python.PythonRDD.collectAndServe.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 0.0 failed 1 times, most recent \
failure: Lost task 0.0 in stage 0.0 (TID 0) (localhost executor driver): {CRASH}
Caused by: java.net.SocketException: Connection reset

Driver stacktrace:
Caused by: {CRASH}
Caused by: java.net.SocketException: Connection reset

org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 0.0 failed 1 times, most recent \
failure: Lost task 0.0 in stage 0.0 (TID 0) (localhost executor driver): {CRASH}
Caused by: java.net.SocketException: Connection reset

Driver stacktrace:
{CRASH}
java.net.SocketException: Connection reset"""

DB = "/data/jobs/.larder/metastore/metastore_db"
FAILED_START = (f"Failed to start database '{DB}' with class loader jdk.internal.loader.ClassLoaders$AppClassLoader"
                "@1dbd16a6, see the next exception for details.")
NO_CLIENT = ("org.apache.hadoop.hive.ql.metadata.HiveException: java.lang.RuntimeException: Unable to instantiate "
             "org.apache.hadoop.hive.ql.metadata.SessionHiveMetaStoreClient")
# A second process opening the embedded Derby metastore while another one has it open (spark.sql at the first
# catalog access): pyspark's AnalysisException, then its Java cause chain.
HELD_TEXT = f"""{NO_CLIENT}
org.apache.spark.sql.AnalysisException: {NO_CLIENT}
{NO_CLIENT}
java.lang.RuntimeException: Unable to instantiate org.apache.hadoop.hive.ql.metadata.SessionHiveMetaStoreClient
java.lang.reflect.InvocationTargetException
MetaException(message:{FAILED_START})
MetaException(message:{FAILED_START})
javax.jdo.JDOFatalDataStoreException: {FAILED_START}
NestedThrowables:
java.sql.SQLException: {FAILED_START}
java.sql.SQLException: {FAILED_START}
ERROR XJ040: {FAILED_START}
ERROR XSDB6: Another instance of Derby may have already booted the database {DB}.
An error occurred while calling o41.sql.
: org.apache.spark.sql.AnalysisException: {NO_CLIENT}
Caused by: java.sql.SQLException: {FAILED_START}
Caused by: ERROR XJ040: {FAILED_START}
Caused by: ERROR XSDB6: Another instance of Derby may have already booted the database {DB}."""


def test_a_crashed_python_worker_is_a_worker_error_saying_so():
    error = as_larder_error(RuntimeError(CRASHED_TEXT), "db.t", destination="/data/cache/ds")
    assert type(error) is WorkerError
    line = str(error)
    assert line.startswith("a Spark task's Python worker crashed while the job read, transformed or wrote the rows "
                           "of db.t (Python worker exited unexpectedly (crashed)); the live version of /data/cache/ds "
                           "is unchanged. A worker killed outright is most often the OOM killer")
    assert "spark.executor.memoryOverhead" in line and "\n" not in line and "Consider setting" not in line


def test_a_crashed_python_worker_exits_1_and_unexpected_ones_still_name_it(capsys):
    def failed_job() -> str:
        raise as_larder_error(RuntimeError(CRASHED_TEXT), "db.t")

    def failed_elsewhere() -> str:  # not through the job's mapping: the one line still says what the task died of
        raise RuntimeError(CRASHED_TEXT)

    assert guarded(failed_job) == 1
    assert capsys.readouterr().err.startswith("larder: error: a Spark task's Python worker crashed")
    assert root_cause(RuntimeError(CRASHED_TEXT)) == "SparkException: Python worker exited unexpectedly (crashed)"
    assert guarded(failed_elsewhere) == 3
    assert capsys.readouterr().err.strip().endswith(
        "(SparkException: Python worker exited unexpectedly (crashed))")


def test_a_metastore_held_by_another_process_names_its_directory():
    error = as_larder_error(RuntimeError(HELD_TEXT), "demo.shopping_products", destination="/data/cache/ds")
    assert type(error) is SourceError
    assert str(error) == (
        "the embedded Hive metastore in /data/jobs/.larder/metastore (spark.metastore_dir) is held by another "
        "process: embedded Derby lets one process at a time open it, so another run or Spark shell with this "
        "metastore is running; wait for it to end, or give runs that overlap a shared metastore "
        "(spark.metastore_dir: null and a hive-site.xml naming a metastore service)"
    )
    assert root_cause(RuntimeError(HELD_TEXT)) == (
        f"XSDB6: Another instance of Derby may have already booted the database {DB}.")


def test_other_java_failures_are_left_unmapped():
    text = ("An error occurred while calling o1.sql.\n: org.apache.spark.SparkException: Job aborted due to stage "
            "failure: Task 3 in stage 2.0 failed 4 times, most recent failure: Lost task 3.3 in stage 2.0 (TID 9) "
            "(10.0.0.7 executor 2): java.lang.OutOfMemoryError: Java heap space\nCaused by: java.io.EOFException")
    assert as_larder_error(RuntimeError(text), "db.t") is None
    assert root_cause(RuntimeError(text)) == "OutOfMemoryError: Java heap space"
    assert root_cause(RuntimeError("An error occurred while calling o1.sql.\nCaused by: java.io.EOFException")) is None


def test_a_python_worker_killed_for_real_is_a_worker_error(spark):
    def _die(batches):  # nested: pickled by value, the workers need not import this module
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does
        yield from batches

    with pytest.raises(Exception) as info:
        spark.range(4, numPartitions=1).mapInArrow(_die, "id long").collect()
    error = as_larder_error(info.value, "db.t", destination="/data/cache/ds")
    assert type(error) is WorkerError and "Python worker exited unexpectedly (crashed)" in str(error), info.value
    assert spark.range(3).count() == 3  # the session goes on


@pytest.mark.slow
def test_a_run_while_the_suites_session_holds_the_metastore_exits_1_naming_it(spark, spark_dirs, tmp_path):
    spark.sql("SHOW DATABASES").collect()  # the session's JVM has booted the embedded Derby metastore
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raw = {"name": "ds", "source": {"table": "demo.shopping_products"}, "output": {"root": str(tmp_path / "cache")},
           "spark": {"metastore_dir": spark_dirs["metastore_dir"], "warehouse_dir": spark_dirs["warehouse_dir"],
                     "conf": {"spark.ui.enabled": False}}}  # fmt: skip
    conf = tmp_path / "held.yaml"
    conf.write_text(json.dumps(raw))
    done = subprocess.run([os.path.join(repo, "spark-submit.sh"), "--master", "local[1]", "jobs/materialize.py",
                           "--conf", str(conf)], cwd=repo, env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"},
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    errors = [line for line in done.stderr.splitlines() if line.startswith("larder: error:")]
    assert done.returncode == 1 and len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith(f"larder: error: the embedded Hive metastore in {spark_dirs['metastore_dir']} "
                                "(spark.metastore_dir) is held by another process"), errors
    assert not os.path.exists(tmp_path / "cache" / "ds" / "CURRENT")
