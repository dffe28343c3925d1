"""Failures on the executors: typed by whose code failed, with the line that says what failed.

* A failure in larder's own task code (the arrow writer's spill and encode tasks, the pyarrow read of the
  source) is larder's: :class:`PublishError` naming the destination and the OS error (exit 1), never
  Spark's generic ``[PYTHON_EXCEPTION]`` line, and never blamed on a ``kind: python`` transform the conf
  happens to have.
* A failure inside a user transform's code (its module's frames, on the driver's path or in a shipped
  zip) names that transform.

The unit cases take failure texts shaped like the ones Spark hands the driver (a PythonException holding
the worker's traceback). The end-to-end cases run ``./spark-submit.sh`` with executors whose Python may
not write files over 64 KiB (``RLIMIT_FSIZE``: writes fail with ``EFBIG`` as a full disk fails with
``ENOSPC``), so the arrow writer fails writing its slices on the executors.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tests.spark.hooks as hooks
from etl.config import TransformConfig
from etl.entry import guarded
from etl.failures import as_larder_error, root_cause
from loader.errors import PublishError, SourceError, TransformError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUBMIT = os.path.join(REPO, "spark-submit.sh")
PYSPARK = "/venv/lib/python3.11/site-packages/pyspark/python/lib/pyspark.zip/pyspark"
ENOSPC = "OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device"
INDEX = TransformConfig(kind="index", column="cat", output="label")
UDF_HOOK = TransformConfig(kind="python", function="tests.spark.hooks:fail_some")


def worker_failure(files: list[str], line: str) -> Exception:
    """What the driver gets when a Python task fails: Spark's exception around the worker's traceback."""
    frames = "\n".join(f'  File "{f}", line 7, in task\n    x = y()' for f in files)
    trace = f"Traceback (most recent call last):\n{frames}\n{line}\n"
    outer = RuntimeError("An error occurred while calling o329.collectToPython.")
    outer.__cause__ = RuntimeError(
        f"An exception was thrown from the Python worker:\n{trace}"
        f"org.apache.spark.api.python.PythonException: [PYTHON_EXCEPTION] An exception was thrown from the "
        f"Python worker: {trace} SQLSTATE: 38000\n\tat org.apache.spark.api.python.BasePythonRunner.handle(x:1)"
    )
    return outer


SPILL = [f"{PYSPARK}/worker.py", "/opt/larder/etl/arrow_write.py", "/opt/larder/etl/arrow_write.py",
         "pyarrow/ipc.pxi", "pyarrow/error.pxi"]  # fmt: skip
DIRECT_SPILL = [f"{PYSPARK}/worker.py", "/opt/larder/etl/direct.py", "/opt/larder/etl/direct.py",
                "/opt/larder/etl/arrow_write.py", "pyarrow/ipc.pxi"]  # fmt: skip


def test_root_cause_is_the_python_exception_line_not_sparks_generic_wrapper():
    assert root_cause(worker_failure(SPILL, ENOSPC)) == ENOSPC


def test_unexpected_python_task_failure_prints_the_exception_line(capsys):
    def body() -> str:
        raise worker_failure([f"{PYSPARK}/worker.py", f"{PYSPARK}/sql/types.py"], "TypeError: field x: bad")

    assert guarded(body) == 3
    err = capsys.readouterr().err
    assert err.strip().endswith("(TypeError: field x: bad)") and "Traceback" not in err


@pytest.mark.parametrize("files", [SPILL, DIRECT_SPILL], ids=["spark-read", "pyarrow-read"])
@pytest.mark.parametrize("transforms", [(INDEX,), (INDEX, UDF_HOOK)], ids=["index", "python-transform"])
def test_larders_own_write_failure_is_a_publish_error_naming_the_destination(files, transforms):
    error = as_larder_error(worker_failure(files, ENOSPC), "db.t", transforms, destination="/data/cache/ds")
    assert type(error) is PublishError  # not TransformError, whatever the conf's transforms
    assert str(error) == f"writing /data/cache/ds failed on the executors; the live version is unchanged: {ENOSPC}"


def test_larders_code_in_the_shipped_zip_is_larders():
    files = [f"{PYSPARK}/worker.py", "/tmp/spark-1/userFiles-2/larder.zip/etl/arrow_write.py",
             "/tmp/spark-1/userFiles-2/larder.zip/loader/manifest.py"]  # fmt: skip
    error = as_larder_error(worker_failure(files, "MemoryError"), "db.t", (UDF_HOOK,), destination="/c/ds")
    assert isinstance(error, PublishError) and str(error).endswith("unchanged: MemoryError")


def test_a_failed_pyarrow_read_of_the_source_is_a_source_error():
    files = [f"{PYSPARK}/worker.py", "/opt/larder/etl/direct.py", "pyarrow/_parquet.pyx"]
    line = "OSError: Couldn't deserialize thrift: TProtocolException: Invalid data"
    error = as_larder_error(worker_failure(files, line), "/data/src", (INDEX,), destination="/c/ds")
    assert type(error) is SourceError
    assert str(error) == f"reading /data/src with pyarrow failed on the executors: {line}"


@pytest.mark.parametrize(
    "hook_file",
    [hooks.__file__, "/tmp/spark-1/userFiles-2/deps.zip/tests/spark/hooks.py"],
    ids=["driver-path", "shipped-zip"],
)
def test_a_failure_inside_a_transforms_module_names_that_transform(hook_file):
    files = [f"{PYSPARK}/worker.py", f"{PYSPARK}/util.py", hook_file]
    error = as_larder_error(worker_failure(files, "ValueError: bad row id=996"), "db.t", (INDEX, UDF_HOOK))
    assert type(error) is TransformError
    assert str(error) == (
        "transforms.1 (tests.spark.hooks:fail_some) failed on the executors: ValueError: bad row id=996"
    )


def test_a_user_module_named_like_pysparks_is_not_matched_in_pyspark():
    worker = TransformConfig(kind="python", function="worker:f")
    error = as_larder_error(worker_failure(SPILL, ENOSPC), "db.t", (worker,), destination="/c/ds")
    assert isinstance(error, PublishError)


def test_a_traceback_through_neither_larder_nor_a_transform():
    files = [f"{PYSPARK}/worker.py", f"{PYSPARK}/sql/types.py"]
    e = worker_failure(files, "TypeError: field id2: LongType() can not accept object 'x'")
    error = as_larder_error(e, "db.t", (INDEX, UDF_HOOK))
    assert isinstance(error, TransformError) and "a python transform (transforms.1" in str(error)
    assert as_larder_error(e, "db.t", (INDEX,)) is None  # unexpected: exit 3 with the line (root_cause)


# ------------------------------------------------------------------------------------ through spark-submit


@pytest.fixture(scope="module")
def full_disk_setup(tmp_path_factory):
    """A 4 MB Parquet source, an identity python transform module and a Python for the executors that
    cannot write a file over 64 KiB."""
    base = tmp_path_factory.mktemp("full-disk")
    (base / "src").mkdir()
    n = 20_000
    rng = np.random.default_rng(0)
    table = pa.table({"id": np.arange(n, dtype=np.int64), "cat": [["a", "b", "c"][i % 3] for i in range(n)],
                      "blob": [rng.bytes(200) for _ in range(n)]})  # fmt: skip
    pq.write_table(table, base / "src" / "p.parquet")
    (base / "hooks_same.py").write_text("def same(df):\n    return df\n")
    limited = base / "limited-python"
    limited.write_text(
        f"#!{sys.executable}\nimport os, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
    )
    limited.chmod(0o755)
    return base


@pytest.mark.slow
@pytest.mark.parametrize(
    "transform",
    [{"kind": "index", "column": "cat", "output": "label"}, {"kind": "python", "function": "hooks_same:same"}],
    ids=["pyarrow-read", "python-transform"],
)
def test_a_write_failing_on_the_executors_exits_1_naming_destination_and_os_error(full_disk_setup, transform):
    base = full_disk_setup
    root = base / f"cache-{transform['kind']}"
    raw = {
        "name": "ds",
        "source": {"path": str(base / "src"), "format": "parquet"},
        "transforms": [transform],
        "output": {"root": str(root), "block_size": "256KiB", "keep_versions": 2},
        "spark": {"hive": False, "warehouse_dir": str(base / "wh"), "metastore_dir": None,
                  "conf": {"spark.ui.enabled": False}},
    }  # fmt: skip
    conf = base / f"{transform['kind']}.yaml"
    conf.write_text(json.dumps(raw))
    path = os.pathsep.join(p for p in (str(base), os.environ.get("PYTHONPATH")) if p)  # the driver imports the hook
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": str(base / "limited-python"),
           "PYTHONPATH": path}  # fmt: skip
    done = subprocess.run([SUBMIT, "jobs/materialize.py", "--conf", str(conf)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    errors = [line for line in done.stderr.splitlines() if line.startswith("larder: error:")]
    assert done.returncode == 1, done.stderr[-3000:]
    assert len(errors) == 1, done.stderr[-3000:]
    assert re.fullmatch(
        rf"larder: error: writing {re.escape(str(root / 'ds'))} failed on the executors; the live version is "
        r"unchanged: OSError: \[Errno 27\] .*File too large",
        errors[0],
    )
    assert "larder: error" not in done.stdout
    assert os.listdir(root / "ds") == []  # nothing published, the staging directory removed
