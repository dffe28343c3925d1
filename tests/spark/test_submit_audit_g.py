"""./spark-submit.sh stopped by a signal or killed outright, and what its run leaves behind (audit G).

* TERM, INT or HUP sent to the wrapper's own pid (``kill PID``, ``timeout``, a supervisor,
  ``Popen.terminate()``) stops the job it started: the wrapper forwards the signal to the job's process
  group, waits for the job, removes its temp directory and exits 128 + the signal's number. A real run
  TERMed while it writes leaves the previous version live (it went on and published as an orphan).
* The temp directory of a run killed with SIGKILL (which no trap sees) is removed by the next run once that
  run's wrapper and job are gone; the directory of a live run, or of a job still running without its
  wrapper, is kept.

All but the first test give the wrapper a stand-in ``$SPARK_HOME/bin/spark-submit`` (a Python script that
starts a child, as spark-submit's JVM starts the driver, and on a signal waits for it as the JVM waits for its
shutdown hooks): the wrapper is the real one; Spark is not needed to see what it does with its job's
processes and its temp directory. Processes are looked up in ``/proc`` (Linux).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from etl.config import from_dict
from etl.job import run
from etl.sizing import SAMPLE_DIR
from tests.spark.conftest import DEMO_ROWS
from tests.spark.test_submit import REPO, SUBMIT, env, path_source, read_all_ids, wait_for, write_conf

FAKE_SPARK_SUBMIT = f"""#!{sys.executable}
import os, signal, subprocess, sys, time
out = os.environ["FAKE_SPARK_OUT"]
args = sys.argv[1:]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # the driver
stopped = []
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, lambda signum, frame: stopped.append(signum))
with open(out + ".tmp", "w") as f:
    f.write(f"{{os.getpid()}} {{child.pid}} {{args[args.index('--py-files') + 1]}}")
os.replace(out + ".tmp", out)
while child.poll() is None:  # as the JVM does on a signal: it waits for its shutdown hooks, then exits
    time.sleep(0.05)
sys.exit(128 + stopped[0] if stopped else child.returncode)
"""


def live_pids(sid: int) -> list[int]:
    """The processes of session ``sid`` that are not zombies (a zombie runs nothing)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if os.getsid(int(name)) == sid and state != "Z":
                found.append(int(name))
        except (OSError, IndexError):
            continue  # gone meanwhile
    return found


@pytest.fixture
def fake_spark(tmp_path):
    """A ``$SPARK_HOME`` whose ``bin/spark-submit`` is the stand-in, and a private ``$TMPDIR``."""
    home = tmp_path / "spark-home"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "spark-submit").write_text(FAKE_SPARK_SUBMIT)
    (home / "bin" / "spark-submit").chmod(0o755)
    (tmp_path / "tmp").mkdir()
    return {**env(), "SPARK_HOME": str(home), "TMPDIR": str(tmp_path / "tmp")}


def start_fake(fake_env: dict, out) -> tuple[subprocess.Popen, int, int, str]:
    """Start the wrapper on the stand-in in a session of its own; returns it, the job's and the driver's pids
    and the wrapper's temp directory, once the job runs."""
    with open(f"{out}.log", "wb") as log:  # a file: a pipe would stay open as long as any process of the run
        proc = subprocess.Popen([SUBMIT, "jobs/materialize.py", "--conf", "none.yaml"], cwd=REPO,
                                env={**fake_env, "FAKE_SPARK_OUT": str(out)}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: os.path.exists(out) or proc.poll() is not None, 60, "the stand-in job", poll=0.05)
    except AssertionError:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.poll() is None, open(f"{out}.log").read()
    job, driver, zip_path = open(out).read().split()
    return proc, int(job), int(driver), os.path.dirname(zip_path)


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL whatever of the session of ``proc`` still runs (the processes of a failed test)."""
    for pid in live_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if proc.poll() is None:
        proc.wait()


# ------------------------------------------------------------------------------------ a signal to the wrapper


@pytest.mark.slow
def test_sigterm_to_the_wrapper_stops_the_job_and_keeps_the_previous_version(spark, demo_table, spark_dirs,
                                                                             tmp_path):  # fmt: skip
    root = tmp_path / "cache"
    conf_path = write_conf(tmp_path, path_source(spark_dirs), root)
    first = run(from_dict(json.load(open(conf_path))), spark, log=lambda _m: None)
    dataset = root / "shop"
    with open(tmp_path / "run.log", "wb") as log:  # a file: a pipe would stay open as long as the orphans run
        proc = subprocess.Popen([SUBMIT, "jobs/materialize.py", "--conf", conf_path, "--force"], cwd=REPO,
                                env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            written = glob.glob(str(dataset / "_staging-*" / "**" / "*.parquet"), recursive=True)
            written += glob.glob(str(dataset / "_staging-*" / "**" / "*.arrow"), recursive=True)
            if any(SAMPLE_DIR not in path for path in written):  # data files, past the sizing sample
                os.kill(proc.pid, signal.SIGTERM)  # the wrapper alone, as `kill PID` or a supervisor does
                break
            time.sleep(0.02)
        proc.wait(timeout=120)
        left = live_pids(proc.pid)  # the wrapper has ended: nothing of its run may run on
        out = (tmp_path / "run.log").read_text(errors="replace")
    finally:
        kill_session(proc)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert left == [], out[-3000:]
    assert "larder: published" not in out
    assert (dataset / "CURRENT").read_text().strip() == first.version
    assert read_all_ids(dataset) == list(range(DEMO_ROWS))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_to_the_wrapper_reaches_its_job_and_is_its_exit_code(fake_spark, tmp_path, sig):
    proc, job, driver, tmp = start_fake(fake_spark, tmp_path / "job")
    try:
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
        left = live_pids(proc.pid)
        out = open(tmp_path / "job.log").read()
    finally:
        kill_session(proc)
    assert proc.returncode == 128 + sig, out
    assert left == [], out  # the stand-in and its child got the signal and were waited for
    assert not os.path.exists(tmp)  # removed after the job ended, not under it


# ------------------------------------------------------------------------------------ temp dirs of killed runs


def test_the_next_run_removes_the_temp_dir_of_a_run_killed_with_sigkill(fake_spark, tmp_path):
    killed, _, _, killed_tmp = start_fake(fake_spark, tmp_path / "killed")
    os.killpg(killed.pid, signal.SIGKILL)  # the wrapper and its job: no trap runs
    killed.wait()
    wait_for(lambda: not live_pids(killed.pid), 10, "the killed run's end", poll=0.05)
    assert os.path.isdir(killed_tmp)

    live, _, _, live_tmp = start_fake(fake_spark, tmp_path / "live")  # a run alongside, still going
    try:
        nxt, _, _, next_tmp = start_fake(fake_spark, tmp_path / "next")
        try:
            assert not os.path.exists(killed_tmp)  # removed by the runs after it
            assert os.path.isdir(live_tmp)  # a live run's directory is never removed
            nxt.terminate()
            nxt.wait(timeout=60)
        finally:
            kill_session(nxt)
        assert os.path.isdir(live_tmp)
        assert not os.path.exists(next_tmp)
    finally:
        kill_session(live)
    assert os.listdir(fake_spark["TMPDIR"]) == [os.path.basename(live_tmp)]  # SIGKILLed by kill_session


def test_the_temp_dir_of_a_job_that_outlives_its_killed_wrapper_is_kept_until_it_ends(fake_spark, tmp_path):
    orphaned, job, _, orphan_tmp = start_fake(fake_spark, tmp_path / "orphaned")
    try:
        os.kill(orphaned.pid, signal.SIGKILL)  # the wrapper only: its job runs on and uses the temp dir
        orphaned.wait()
        nxt, _, _, _ = start_fake(fake_spark, tmp_path / "next")
        try:
            assert os.path.isdir(orphan_tmp)
            nxt.terminate()
            nxt.wait(timeout=60)
        finally:
            kill_session(nxt)
        assert os.path.isdir(orphan_tmp)
    finally:
        kill_session(orphaned)
    wait_for(lambda: not live_pids(orphaned.pid), 10, "the orphaned job's end", poll=0.05)
    later, _, _, _ = start_fake(fake_spark, tmp_path / "later")
    try:
        assert not os.path.exists(orphan_tmp)
    finally:
        kill_session(later)
