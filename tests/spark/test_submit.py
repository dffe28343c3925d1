"""The job as operators run it: through ./spark-submit.sh, in its own processes.

* A run killed with SIGKILL while it writes into its staging directory leaves the previous version live
  and readable; the next run removes the dead run's staging directory and publishes.
* A real standalone cluster (master + one worker on 127.0.0.1, started with ``spark-class``) runs the job
  submitted with ``--master spark://...``; both processes are stopped by their pids.

The source is the demo table's Parquet directory (a path source): the embedded Derby metastore belongs to
the test process and cannot be shared with another JVM.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

import loader
from etl.config import from_dict
from etl.job import run
from etl.sizing import SAMPLE_DIR
from tests.spark.conftest import DEMO_ROWS

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUBMIT = os.path.join(REPO, "spark-submit.sh")


def path_source(spark_dirs) -> str:
    return os.path.join(spark_dirs["warehouse_dir"], "demo.db", "shopping_products")


def write_conf(tmp_path, source: str, root, block: str = "64KiB") -> str:
    raw = {
        "name": "shop",
        "source": {"path": source, "format": "parquet", "columns": ["product_id", "title", "image", "category", "dt"]},
        "transforms": [{"kind": "index", "column": "category", "output": "label"}],
        "output": {"root": str(root), "block_size": block, "keep_versions": 2},
        "spark": {"hive": False, "warehouse_dir": str(tmp_path / "wh"), "metastore_dir": None,
                  "conf": {"spark.ui.enabled": False}},
    }  # fmt: skip
    path = tmp_path / "conf.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return str(path)


def env() -> dict:
    return {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}


def read_all_ids(url) -> list[int]:
    ds = loader.open_dataset(url)
    return sorted(i for f in ds.files for g in range(len(f.row_groups))
                  for i in ds.read_row_group(f, g, columns=["product_id"])["product_id"].to_pylist())  # fmt: skip


def test_sigkill_mid_write_keeps_previous_version(spark, demo_table, spark_dirs, tmp_path):
    root = tmp_path / "cache"
    conf_path = write_conf(tmp_path, path_source(spark_dirs), root)
    cfg = from_dict(json.load(open(conf_path)))
    first = run(cfg, spark, log=lambda _m: None)
    dataset = root / "shop"
    proc = subprocess.Popen(
        [SUBMIT, "jobs/materialize.py", "--conf", conf_path, "--force"], cwd=REPO, env=env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            written = glob.glob(str(dataset / "_staging-*" / "**" / "*.parquet"), recursive=True)
            if any(SAMPLE_DIR not in path for path in written):  # data files, past the sizing sample
                os.killpg(proc.pid, signal.SIGKILL)  # the wrapper, spark-submit's JVM and the Python driver
                break
            time.sleep(0.02)
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, out  # killed while writing, not finished
    assert glob.glob(str(dataset / "_staging-*"))  # the dead run's leftovers
    assert (dataset / "CURRENT").read_text().strip() == first.version
    assert read_all_ids(dataset) == list(range(DEMO_ROWS))

    again = run(cfg, spark, force=True, log=lambda _m: None)
    assert again.status == "published" and again.version != first.version
    assert not glob.glob(str(dataset / "_staging-*"))
    assert read_all_ids(dataset) == list(range(DEMO_ROWS))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def master_state(webui: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{webui}/json/", timeout=2) as r:
            return json.load(r)
    except OSError:
        return None


def test_standalone_cluster_runs_the_job(spark, demo_table, spark_dirs, tmp_path):
    import pyspark

    spark_class = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-class")
    port, webui, worker_ui = free_port(), free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    procs = []
    try:
        with open(tmp_path / "master.log", "wb") as log:
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                 "--webui-port", str(webui)], env=env(), stdout=log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        wait_for(lambda: master_state(webui), 90, "the master")
        with open(tmp_path / "worker.log", "wb") as log:
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1",
                 "--webui-port", str(worker_ui), "--cores", "1", "--memory", "1g",
                 "--work-dir", str(tmp_path / "work")], env=env(), stdout=log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        wait_for(lambda: [w for w in master_state(webui)["workers"] if w["state"] == "ALIVE"], 90, "the worker")

        root = tmp_path / "cache"
        conf_path = write_conf(tmp_path, path_source(spark_dirs), root, block="256KiB")
        done = subprocess.run(
            [SUBMIT, "--master", master_url, "jobs/materialize.py", "--conf", conf_path,
             "--conf", "spark.executor.memory=512m", "--conf", "spark.cores.max=1"],
            cwd=REPO, env=env(), capture_output=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
        assert "larder: published" in done.stdout.decode()
        assert " INFO " not in done.stderr.decode() and " WARN " not in done.stderr.decode()  # quiet by default
        apps = master_state(webui)["completedapps"] + master_state(webui)["activeapps"]
        assert any(a["name"] == "larder-materialize" for a in apps)
        ds = loader.open_dataset(root / "shop")
        assert read_all_ids(root / "shop") == list(range(DEMO_ROWS))
        assert ds.columns == ["product_id", "title", "image", "category", "dt", "label"]
        assert max(g.compressed_bytes for f in ds.files for g in f.row_groups) <= 256 << 10
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
