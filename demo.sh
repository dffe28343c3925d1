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
./spark-submit.sh jobs/make_demo_table.py --conf conf/demo.yaml --if-missing
./spark-submit.sh jobs/materialize.py --conf conf/demo.yaml "$@"
root="$("$VENV/bin/python" -c 'import yaml; print(yaml.safe_load(open("conf/demo.yaml"))["output"]["root"])')"
"$VENV/bin/python" -m loader.summary "$root/shopping_category"
