"""Audit of the distributed path: what a killed task or run leaves behind never reaches a published version
or outlives the next run, and the wrapper's and job's errors are one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import loader
from etl import arrow_write
from etl.failures import as_larder_error
from etl.job import run
from etl.sizing import SizedWriter
from loader import fs as lfs
from loader.claims import claim
from loader.errors import ConfigError
from tests.spark.conftest import job_conf, quiet

STRAY = ".part-00000.parquet.deadbeef.tmp"


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["arrow", "spark"])
def test_a_killed_attempts_temporary_file_is_not_published(spark, demo_table, tmp_path, writer, monkeypatch):
    """A task attempt killed while it wrote ``part-00000.parquet`` leaves its temporary file in the staging
    directory (the retried attempt writes another): the published version holds only the listed files."""
    real = arrow_write.encode_files if writer == "arrow" else SizedWriter._write

    def encode_files(spark, slices, out_dir, *args):
        with open(os.path.join(out_dir, STRAY), "wb") as f:  # the dead attempt, before the retried one
            f.write(b"x" * 4096)
        return real(spark, slices, out_dir, *args)

    def spark_write(self, df, uri, *args, **kwargs):
        real(self, df, uri, *args, **kwargs)
        if uri == self.uri:  # the data, not the sizing sample
            with open(os.path.join(self.path, STRAY), "wb") as f:
                f.write(b"x" * 4096)

    if writer == "arrow":
        monkeypatch.setattr(arrow_write, "encode_files", encode_files)
    else:
        monkeypatch.setattr(SizedWriter, "_write", spark_write)
    cfg = job_conf(tmp_path, output={"writer": writer}, source={"where": "dt = '2026-11-23'"})
    result = run(cfg, spark, log=quiet)
    assert result.status == "published"
    version_dir = os.path.join(str(tmp_path), cfg.name, result.version)
    listed = {f.path for f in loader.open_dataset(version_dir).manifest.files}
    assert listed and sorted(os.listdir(version_dir)) == sorted(listed | {"_manifest.json"})
    assert loader.open_dataset(os.path.join(str(tmp_path), cfg.name)).version == result.version


@pytest.mark.slow
def test_an_up_to_date_rerun_removes_dead_runs_staging_but_not_a_live_runs(spark, demo_table, tmp_path):
    cfg = job_conf(tmp_path, source={"where": "dt = '2026-11-23'"})
    assert run(cfg, spark, log=quiet).status == "published"
    dataset = os.path.join(str(tmp_path), cfg.name)
    dead = os.path.join(dataset, "_staging-20260101T000000Z-deadbeef")  # a killed run: owner file unlocked
    os.makedirs(dead)
    open(os.path.join(dead, "part-00000.parquet"), "wb").close()
    with open(dead + ".owner", "w") as f:
        f.write('{"host": "h", "pid": 1}')
    live = os.path.join(dataset, "_staging-20260101T000001Z-cafecafe")  # a run in progress: owner locked
    claimed, lock = claim(lfs.resolve(dataset)[0], live)
    assert claimed and lock is not None
    try:
        os.makedirs(live)
        assert run(cfg, spark, log=quiet).status == "up to date"
        assert not os.path.exists(dead) and not os.path.exists(dead + ".owner")
        assert os.path.isdir(live) and os.path.exists(live + ".owner")
    finally:
        os.close(lock)


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUBMIT = os.path.join(REPO, "spark-submit.sh")


def fake_spark_home(tmp_path) -> str:
    """A stand-in ``spark-submit`` that prints the arguments it gets, one a line (no JVM)."""
    fake = tmp_path / "spark" / "bin" / "spark-submit"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    return str(tmp_path / "spark")


def submit(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([SUBMIT, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", **env})  # fmt: skip


@pytest.mark.parametrize("args, words", [
    (["jobs/materialize.py", "--conf"], "--conf needs a value"),
    (["jobs/materialize.py", "--conf", "c.yaml", "--master"], "--master needs a value"),
    (["jobs/materialize.py", "--conf", "c.yaml", "--deploy-mode"], "--deploy-mode needs a value"),
    (["jobs/materialize.py", "--conf", "c.yaml", "--spark-opt"], "--spark-opt needs a value"),
    (["--name"], "--name needs a value"),
    (["--conf", "c.yaml", "jobs/materialize.py"], "--conf c.yaml before the job script"),
    (["--master", "sprak://127.0.0.1:7077", "jobs/materialize.py"], "--master sprak://127.0.0.1:7077 is not a Spark"),
    (["jobs/materialize.py", "--deploy-mode", "clutser"], "--deploy-mode clutser must be client or cluster"),
    (["--master", "local[2]"], "no job script"),
])  # fmt: skip
def test_wrapper_usage_errors_are_one_line_with_exit_2(tmp_path, args, words):
    done = submit(args, SPARK_HOME=fake_spark_home(tmp_path))
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("larder: error: ") and words in lines[0], lines


def test_wrapper_help_prints_its_usage_and_exits_0(tmp_path):
    done = submit(["--help"], SPARK_HOME=fake_spark_home(tmp_path))
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: ") and "jobs/<job>.py" in done.stdout


@pytest.mark.parametrize("mode", ["client", "cluster"])
def test_the_driver_python_is_the_projects_in_client_mode(tmp_path, mode):
    done = submit(["--master", "yarn", "--deploy-mode", mode, "jobs/materialize.py", "--conf", "c.yaml"],
                  SPARK_HOME=fake_spark_home(tmp_path), PYSPARK_PYTHON="/opt/executor-venv/bin/python3",
                  LARDER_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON="")  # fmt: skip
    args = done.stdout.splitlines()
    assert done.returncode == 0 and "spark.pyspark.python=/opt/executor-venv/bin/python3" in args
    driver = [a for a in args if a.startswith("spark.pyspark.driver.python=")]
    assert driver == ([f"spark.pyspark.driver.python={sys.executable}"] if mode == "client" else [])


@pytest.mark.slow
def test_an_executors_only_python_does_not_start_the_driver(tmp_path):
    """Real spark-submit, local mode: PYSPARK_PYTHON names an interpreter that does not exist here (a venv the
    executors unpack from --archives); the driver still runs larder, which names the missing conf file."""
    conf = tmp_path / "missing.yaml"
    done = submit(["jobs/materialize.py", "--conf", str(conf)], PYSPARK_PYTHON="/opt/executor-venv/bin/python3")
    assert done.returncode == 2, (done.stdout[-2000:], done.stderr[-2000:])
    assert f"larder: error: conf file {conf} does not exist" in done.stderr.splitlines(), done.stderr[-2000:]


def test_a_missing_executor_python_is_named_as_a_conf_error():
    outer = RuntimeError("An error occurred while calling o178.getResult.")
    outer.__cause__ = RuntimeError(
        "org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 3.0 failed 1 times, "
        'most recent failure: Lost task 0.0: java.io.IOException: Cannot run program "/opt/nowhere/bin/python3": '
        "error=2, No such file or directory\n\tat java.base/java.lang.ProcessBuilder.start(ProcessBuilder.java:1143)"
    )
    error = as_larder_error(outer, "db.t")
    assert isinstance(error, ConfigError)
    assert "executors' Python /opt/nowhere/bin/python3 (No such file or directory)" in str(error)
    assert "PYSPARK_PYTHON" in str(error)


@pytest.mark.slow
def test_a_missing_executor_python_through_spark_submit_is_one_line_with_exit_2(tmp_path):
    """local[2]: the driver runs the project's Python, the executors' Python does not exist."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "src"
    source.mkdir()
    pq.write_table(pa.table({"id": list(range(100)), "cat": [f"c{i % 3}" for i in range(100)]}),
                   str(source / "part-0.parquet"))  # fmt: skip
    raw = {
        "name": "ds",
        "source": {"path": str(source), "format": "parquet"},
        "transforms": [{"kind": "index", "column": "cat", "output": "label"}],
        "output": {"root": str(tmp_path / "cache"), "block_size": "64KiB", "writer": "arrow"},
        "spark": {"hive": False, "warehouse_dir": str(tmp_path / "wh"), "metastore_dir": None,
                  "conf": {"spark.ui.enabled": False}},
    }  # fmt: skip
    conf = tmp_path / "conf.yaml"
    conf.write_text(json.dumps(raw))
    done = submit(["--master", "local[2]", "jobs/materialize.py", "--conf", str(conf)],
                  PYSPARK_PYTHON="/opt/nowhere/bin/python3")  # fmt: skip
    assert done.returncode == 2, (done.stdout[-2000:], done.stderr[-3000:])
    lines = [line for line in done.stderr.splitlines() if line.startswith("larder: error: ")]
    assert len(lines) == 1 and "executors' Python /opt/nowhere/bin/python3" in lines[0], done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == lines[0] and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not os.path.exists(tmp_path / "cache" / "ds" / "CURRENT")


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_master_no_address_of_answers_is_named_and_one_that_answers_passes():
    import socket

    from etl.session import SparkUnavailableError, check_master

    port = _closed_port()
    with pytest.raises(SparkUnavailableError, match=rf"Spark master spark://127.0.0.1:{port} cannot be reached"):
        check_master(f"spark://127.0.0.1:{port}", timeout=2)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        alive = listening.getsockname()[1]
        check_master(f"spark://127.0.0.1:{port},127.0.0.1:{alive}", timeout=2)  # one address of an HA pair
    check_master("local[2]")  # nothing to reach


@pytest.mark.slow
def test_an_unreachable_master_through_spark_submit_is_one_line_with_exit_1(tmp_path):
    """Spark itself tries to register for about 90 s and then fails naming nothing; the job checks first."""
    conf = tmp_path / "conf.yaml"
    conf.write_text(json.dumps({
        "name": "ds", "source": {"path": str(tmp_path / "src"), "format": "parquet"},
        "output": {"root": str(tmp_path / "cache")}, "spark": {"hive": False, "metastore_dir": None},
    }))
    port = _closed_port()
    done = submit(["--master", f"spark://127.0.0.1:{port}", "jobs/materialize.py", "--conf", str(conf)])
    assert done.returncode == 1, (done.stdout[-2000:], done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.startswith("larder: error: ")]
    assert len(lines) == 1 and f"Spark master spark://127.0.0.1:{port} cannot be reached" in lines[0], done.stderr
