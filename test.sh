#!/usr/bin/env bash
# Run larder's whole test suite (unit, reader, Spark end-to-end, WebHDFS, adapters) on a fresh machine.
# Creates ./.venv if needed and installs everything the tests need from pyproject.toml.
# Extra arguments go to pytest, e.g. ./test.sh -k reader -x
set -euo pipefail
cd "$(dirname "$0")"
VENV="${LARDER_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# torch 2.13.0 CPU lies on this machine's disk; a bare `torch` requirement would download a multi-GB CUDA build.
install() {  # quiet unless it fails
  local log; log="$(mktemp)"
  python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; exit 1; }
  rm -f "$log"
}
install 'torch==2.13.0'
install -e '.[dev,spark,hdfs,torch,tf]'
export SPARK_LOCAL_IP=127.0.0.1
export PYSPARK_PYTHON="$(cd "$VENV" && pwd)/bin/python"  # absolute: executors run in other directories
exec python -m pytest -q "$@"
