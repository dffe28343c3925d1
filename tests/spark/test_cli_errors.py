"""The job's error line is on stderr and its exit code is 2 for a bad conf, also through ``./spark-submit.sh``.

spark-submit runs the driver's Python as a child of its JVM, which merges the child's stderr into its own
stdout; the wrapper relays a FIFO (``$LARDER_STDERR``) to its stderr and the job points its stderr at it
(:func:`etl.entry.stderr_to_launcher`). A conf error fails before any Spark session starts, so each case
costs one JVM start.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUBMIT = os.path.join(REPO, "spark-submit.sh")
CHILD = (
    "import sys\n"
    "from etl.entry import stderr_to_launcher\n"
    "print('relayed' if stderr_to_launcher() else 'kept', flush=True)\n"
    "print('larder: error: to stderr', file=sys.stderr)\n"
)


def run_child(fifo: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LARDER_STDERR": fifo, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60)


def test_stderr_goes_to_the_fifo_the_launcher_reads(tmp_path):
    fifo = str(tmp_path / "stderr")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the launcher's relay
    try:
        done = run_child(fifo)
        relayed = os.read(reader, 65536).decode()
    finally:
        os.close(reader)
    assert done.returncode == 0 and done.stdout == "relayed\n"
    assert relayed == "larder: error: to stderr\n" and done.stderr == ""


def test_stderr_stays_when_no_one_reads_the_fifo_or_it_is_no_fifo(tmp_path):
    fifo = str(tmp_path / "stderr")
    os.mkfifo(fifo)
    plain = tmp_path / "plain"
    plain.write_text("keep me")
    for path in (fifo, str(plain), str(tmp_path / "missing")):
        done = run_child(path)  # returns at once: never waits for a reader
        assert (done.returncode, done.stdout, done.stderr) == (0, "kept\n", "larder: error: to stderr\n")
    assert plain.read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "directory", "duplicate-key", "no-conf-argument"])
def test_conf_errors_through_spark_submit_are_one_line_on_stderr_with_exit_2(tmp_path, case):
    conf = tmp_path / "conf.yaml"
    expected = {
        "missing": f"larder: error: conf file {conf} does not exist",
        "directory": f"larder: error: conf file {tmp_path} is a directory, not a YAML file",
        "duplicate-key": f"larder: error: conf file {conf}: key 'output' is given twice (lines 3 and 4); "
        "YAML would keep the last one silently",
        "no-conf-argument": "larder: error: the following arguments are required: --conf (usage: materialize [-h] "
        "--conf CONF [--set KEY=VALUE] [--force] [--verbose])",
    }[case]
    if case == "duplicate-key":
        conf.write_text("name: shop\nsource: {path: /nowhere}\noutput: {root: /a}\noutput: {root: /b}\n")
    args = {"directory": ["--conf", str(tmp_path)], "no-conf-argument": []}.get(case, ["--conf", str(conf)])
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    done = subprocess.run([SUBMIT, "jobs/materialize.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2, (done.stdout[-2000:], done.stderr[-2000:])
    assert expected in done.stderr.splitlines(), done.stderr[-2000:]
    assert "error" not in done.stdout


@pytest.mark.parametrize("mode", ["cluster", "client"])
def test_cluster_deploy_mode_ships_the_conf_file(tmp_path, mode):
    """In cluster mode the driver runs without this checkout: the wrapper passes the conf with --files and
    names it by its base name; in client mode the path is passed as given. (A stand-in spark-submit prints
    the command line it gets.)"""
    fake = tmp_path / "spark" / "bin" / "spark-submit"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\n")
    fake.chmod(0o755)
    conf = tmp_path / "confs" / "job.yaml"
    conf.parent.mkdir()
    conf.write_text("name: x\n")
    proc = subprocess.run(
        [SUBMIT, "--master", "yarn", "--deploy-mode", mode, "jobs/materialize.py", "--conf", str(conf), "--force"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "SPARK_HOME": str(tmp_path / "spark"), "LARDER_PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.splitlines()
    script = args.index("jobs/materialize.py")
    if mode == "cluster":
        assert args[args.index("--files") + 1] == str(conf) and args.index("--files") < script
        assert args[script + 1:] == ["--conf", "job.yaml", "--force"]
    else:
        assert "--files" not in args and args[script + 1:] == ["--conf", str(conf), "--force"]


@pytest.mark.parametrize("argv, words", [
    (["--conf", "x.yaml", "--bogus"], ["unrecognized arguments: --bogus", "usage: materialize"]),
    ([], ["the following arguments are required: --conf"]),
])
def test_usage_errors_are_one_line_with_exit_2(argv, words, capsys):
    sys.path.insert(0, REPO)
    from jobs.materialize import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("larder: error: "), err
    assert all(w in lines[0] for w in words), lines[0]


UNBUFFERED_CHILD = (
    "import os, sys\n"
    "from etl.entry import stderr_to_launcher\n"
    "assert stderr_to_launcher()\n"
    "sys.stderr.write('larder: seconds per phase')\n"  # a line's text, its newline not yet written
    "os.write(2, b'[another writer]')\n"  # what another process writes to the same file meanwhile
    "sys.stderr.write(': {}\\n')\n"
)


def test_a_relayed_stderr_line_is_one_write_even_unbuffered(tmp_path):
    """Under ``python -u`` / ``PYTHONUNBUFFERED`` a print was two writes, the text and then its newline: the demo's
    log (stdout and stderr in one file) showed ``...'publish': 0.1}larder: published ...``."""
    fifo = str(tmp_path / "stderr")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        env = {**os.environ, "LARDER_STDERR": fifo, "PYTHONPATH": REPO, "PYTHONUNBUFFERED": "1"}
        done = subprocess.run([sys.executable, "-c", UNBUFFERED_CHILD], env=env, capture_output=True, text=True,
                              timeout=60)
        relayed = os.read(reader, 65536).decode()
    finally:
        os.close(reader)
    assert done.returncode == 0, done.stderr
    assert relayed == "[another writer]larder: seconds per phase: {}\n"  # the line whole, after the other write
