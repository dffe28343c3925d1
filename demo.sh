#!/usr/bin/env bash
# larder's embedded demo, end to end, on a fresh machine:
#   1. install larder with its Spark extra into ./.venv
#   2. create the demo Hive table demo.shopping_products (Spark's embedded Derby metastore under ./.larder)
#      if it is missing
#   3. materialize it with the Spark job into ./cache/shopping_category (conf/demo.yaml)
#   4. open the published cache with loader (no JVM) and print a summary: rows, files, row-group fill,
#      a few shuffled batches read and the samples/s
# Extra arguments go to the job, e.g. ./demo.sh --force  or  ./demo.sh --set output.root=/tmp/cache
set -euo pipefail
cd "$(dirname "$0")"
VENV="${LARDER_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
log="$(mktemp)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[spark,hdfs]' >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
rm -f "$log"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
export LARDER_PYTHON="${LARDER_PYTHON:-$VENV/bin/python}"  # spark-submit.sh runs the job with this venv
./spark-submit.sh jobs/make_demo_table.py --conf conf/demo.yaml --if-missing
./spark-submit.sh jobs/materialize.py --conf conf/demo.yaml "$@"
# The dataset the job just published: conf/demo.yaml with the same --set overrides (output.root, name...).
dataset="$("$VENV/bin/python" - "$@" <<'PYEOF'
import argparse, os, sys
from etl.config import load
p = argparse.ArgumentParser(add_help=False)
p.add_argument("--set", action="append", default=[])
cfg = load("conf/demo.yaml", p.parse_known_args(sys.argv[1:])[0].set)
print(cfg.output.root.rstrip("/") + "/" + cfg.name)
PYEOF
)"
"$VENV/bin/python" -m loader.summary "$dataset"
