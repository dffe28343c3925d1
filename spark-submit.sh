#!/usr/bin/env bash
# Submit a larder job with the project's own pyspark; works without an activated venv.
#
#   ./spark-submit.sh [spark-submit options] jobs/materialize.py --conf conf/demo.yaml [--set k=v ...] [--force]
#
# Spark options may also follow the job script: --master URL, --deploy-mode MODE, --conf key=value (a
# --conf whose value looks like key=value goes to Spark; --conf file.yaml goes to the job), --spark-opt X
# (any other spark-submit option as one word, e.g. --spark-opt --archives=env.tar.gz#env; repeatable). In
# cluster deploy mode the job's --conf file is shipped with --files. Defaults: --master local[*], quiet
# logs (conf/log4j2.properties; LARDER_SPARK_VERBOSE=1 shows Spark's logs), SPARK_LOCAL_IP=127.0.0.1 for local and standalone masters.
# etl/ and loader/ are shipped to executors as a --py-files zip built on the fly, in a temp dir removed on exit
# (a later run removes the dir of a run killed with SIGKILL). TERM, INT or HUP sent to this script stop the
# job (spark-submit and the processes under it); it exits 128 + the signal's number once the job has ended.
# The job's stderr (error lines, progress) stays on stderr: see the relay below.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# The project's python: $LARDER_PYTHON, else ./.venv, else python3 on PATH.
PY="${LARDER_PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$HERE/.venv/bin/python" ]; then PY="$HERE/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi
PYSPARK_DIR="$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))' 2>/dev/null)" || {
  echo "larder: error: pyspark is not installed for $PY (pip install -e '.[spark]' in the larder checkout)" >&2; exit 2; }
export SPARK_HOME="${SPARK_HOME:-$PYSPARK_DIR}"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PY}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$PY}"

usage="usage: $0 [spark-submit options] [--master URL] jobs/<job>.py [--conf job.yaml] [--set k=v ...] [--force]
  Spark options may also follow the job script: --master URL, --deploy-mode client|cluster,
  --conf key=value (to Spark; --conf file.yaml goes to the job), --spark-opt X (one spark-submit word).
  Defaults: --master local[*]; PYSPARK_PYTHON for the executors, the project's Python for the driver."
# Bad usage: one line on stderr, exit 2 (conf/README.md's exit codes).
die_usage() { echo "larder: error: $1 (./spark-submit.sh --help for usage)" >&2; exit 2; }
# $1: the option, $2: the number of arguments left including it.
need_value() { [ "$2" -ge 2 ] || die_usage "$1 needs a value"; }
check_master() {
  case "$1" in
    local|local\[*\]|local-cluster\[*\]|spark://?*|yarn|k8s://?*) ;;
    *) die_usage "--master $1 is not a Spark master URL (local[N], spark://host:port, yarn, k8s://https://host:port)" ;;
  esac
}
check_deploy_mode() {
  case "$1" in client|cluster) ;; *) die_usage "--deploy-mode $1 must be client or cluster" ;; esac
}

spark_args=()
job_args=()
script=""
master=""
deploy_mode=""
while [ $# -gt 0 ]; do
  arg="$1"
  if [ -z "$script" ]; then
    case "$arg" in
      -h|--help) echo "$usage"; exit 0 ;;
      *.py) script="$arg" ;;
      --master) need_value "$arg" $#; master="$2"; shift ;;
      --master=*) master="${arg#--master=}" ;;
      --deploy-mode) need_value "$arg" $#; deploy_mode="$2"; spark_args+=("$arg" "$2"); shift ;;
      --deploy-mode=*) deploy_mode="${arg#--deploy-mode=}"; spark_args+=("$arg") ;;
      --conf)
        need_value "$arg" $#
        [[ "$2" =~ ^[A-Za-z0-9_.-]+= && ! "$2" =~ \.ya?ml$ ]] ||
          die_usage "--conf $2 before the job script: a job conf goes after it (jobs/materialize.py --conf $2)"
        spark_args+=("$arg" "$2"); shift ;;
      --verbose|--supervise) spark_args+=("$arg") ;;
      --*=*) spark_args+=("$arg") ;;
      --*) need_value "$arg" $#; spark_args+=("$arg" "$2"); shift ;;
      *) die_usage "unexpected argument before the job script: $arg" ;;
    esac
  else
    case "$arg" in
      --master) need_value "$arg" $#; master="$2"; shift ;;
      --master=*) master="${arg#--master=}" ;;
      --deploy-mode) need_value "$arg" $#; deploy_mode="$2"; spark_args+=("--deploy-mode" "$2"); shift ;;
      --spark-opt) need_value "$arg" $#; spark_args+=("$2"); shift ;;
      --conf)
        need_value "$arg" $#
        if [[ "$2" =~ ^[A-Za-z0-9_.-]+= && ! "$2" =~ \.ya?ml$ ]]; then spark_args+=("--conf" "$2");
        else job_args+=("--conf" "$2"); fi
        shift ;;
      *) job_args+=("$arg") ;;
    esac
  fi
  shift
done
if [ -z "$script" ]; then
  die_usage "no job script (jobs/<job>.py) given"
fi
[ -z "$master" ] || check_master "$master"
[ -z "$deploy_mode" ] || check_deploy_mode "$deploy_mode"
master="${master:-local[*]}"
# In cluster deploy mode the driver runs in a cluster container without this checkout: ship the job's conf
# file with --files (it lands in the driver's working directory) and name it there.
if [ "$deploy_mode" = "cluster" ]; then
  for i in "${!job_args[@]}"; do
    if [ "${job_args[$i]}" = "--conf" ] && [ -f "${job_args[$((i + 1))]:-}" ]; then
      conf_file="${job_args[$((i + 1))]}"
      spark_args+=("--files" "$(cd "$(dirname "$conf_file")" && pwd)/$(basename "$conf_file")")
      job_args[$((i + 1))]="$(basename "$conf_file")"
    fi
  done
fi
case "$master" in
  local*|spark://127.0.0.1*|spark://localhost*) export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}" ;;
esac

# The temp dir is named after this host and this wrapper's pid, and records spark-submit's pid (job-pid): the
# dirs of earlier runs killed with SIGKILL (their EXIT trap never ran) are removed here once both their
# wrapper and their job are gone. Only this user's dirs of this host: a live run's dir is never removed.
still_running() {  # $@: pids; whether one of them runs (a zombie runs nothing: one no one reaps may stay)
  local p
  for p in "$@"; do
    case "$(ps -o stat= -p "$p" 2>/dev/null)" in
      Z*) ;;
      "") ! kill -0 "$p" 2>/dev/null || return 0 ;;  # no such process, or no ps
      *) return 0 ;;
    esac
  done
  return 1
}
tmp_prefix="${TMPDIR:-/tmp}/larder-submit.${HOSTNAME:-localhost}."
for old in "$tmp_prefix"*; do
  owner="${old#"$tmp_prefix"}"
  owner="${owner%%.*}"
  [[ -d "$old" && -O "$old" && "$owner" =~ ^[0-9]+$ ]] || continue
  ! still_running "$owner" || continue
  old_job="$(cat "$old/job-pid" 2>/dev/null || true)"
  [[ ! "$old_job" =~ ^[0-9]+$ ]] || ! still_running "$old_job" || continue
  rm -rf "$old"
done
tmp="$(mktemp -d "$tmp_prefix$$.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# TERM, INT and HUP sent to this wrapper stop the job: they go to spark-submit and every process under it (the
# JVM, the Python driver, its Python workers), like a signal to the whole process group. Before the job
# starts they are only noted.
job=""
job_pids=""
sig=""
descendants() {  # $1: a pid; prints it and the pids of the processes under it (only it without ps)
  ps -A -o pid= -o ppid= 2>/dev/null | awk -v root="$1" '
    { parent[$1] = $2 }
    END { print root; for (p in parent) { q = p; while (q in parent && q != root && q > 1) q = parent[q]; if (q == root && p != root) print p } }'
}
on_signal() {  # $1: the signal's number
  sig="$1"
  [ -n "$job" ] || return 0
  job_pids="$(descendants "$job")"
  kill -"$1" $job_pids 2>/dev/null || true
}
trap 'on_signal 15' TERM
trap 'on_signal 2' INT
trap 'on_signal 1' HUP
(cd "$HERE" && "$PY" - "$tmp/larder.zip" <<'PYEOF'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:
    for pkg in ("etl", "loader"):
        for root, dirs, files in os.walk(pkg):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                if name.endswith(".py"):
                    z.write(os.path.join(root, name))
PYEOF
)

# spark.pyspark.python names the executors' Python; Spark's PythonRunner would also start a client-mode driver
# with it (it prefers it over PYSPARK_DRIVER_PYTHON), and an executors-only path (a venv shipped with
# --archives) does not exist here. The driver always runs the project's Python; in cluster mode it runs in
# a cluster container, where the executors' Python is the right one.
driver_python=()
if [ "$deploy_mode" != "cluster" ]; then
  driver_python=(--conf "spark.pyspark.driver.python=$PYSPARK_DRIVER_PYTHON")
fi
quiet=()
if [ "${LARDER_SPARK_VERBOSE:-0}" != "1" ]; then
  quiet=(--driver-java-options "-Dlog4j2.configurationFile=file:$HERE/conf/log4j2.properties -Dderby.stream.error.file=$tmp/derby.log"
         --conf "spark.executor.extraJavaOptions=-Dlog4j2.configurationFile=file:$HERE/conf/log4j2.properties"
         --conf "spark.ui.showConsoleProgress=false")
fi

# spark-submit runs the driver's Python as a child of its JVM and merges the child's stderr into its own
# stdout. The job's stderr (error lines, progress) comes back through a FIFO relayed to our stderr instead:
# the job points its stderr at $LARDER_STDERR (etl/entry.py) when someone reads it. We hold a write end
# open while spark-submit runs (so the relay waits for a driver that opens it late or never), then close
# it: the relay ends once the driver has exited (at most 2 s later).
relay=""
if mkfifo "$tmp/stderr" 2>/dev/null; then
  cat "$tmp/stderr" >&2 &
  relay=$!
  exec 4>"$tmp/stderr"  # returns once the relay has the FIFO open
  export LARDER_STDERR="$tmp/stderr"
fi

# spark-submit runs in the background so that the signal traps run while we wait for it. After a signal we
# wait for the job to end (what outlives the JVM by 5 s is killed), then remove the temp dir and exit 128 +
# the signal's number (143, 130, 129). The job decides what a stopped run leaves: the previous version stays
# live (a TERMed driver dies at once; the next run removes its staging directory).
# A background command would ignore INT and QUIT and read /dev/null: it gets them back as a foreground one has.
[ -z "$sig" ] || exit $((128 + sig))
set +e
(trap - INT QUIT; exec "$SPARK_HOME/bin/spark-submit" --master "$master" --py-files "$tmp/larder.zip" \
  --conf "spark.pyspark.python=$PYSPARK_PYTHON" "${driver_python[@]}" "${quiet[@]}" "${spark_args[@]}" "$script" "${job_args[@]}") 4>&- <&0 &
job=$!
echo "$job" >"$tmp/job-pid"
[ -z "$sig" ] || on_signal "$sig"
while wait "$job"; rc=$?; kill -0 "$job" 2>/dev/null; do :; done  # a trapped signal ends a wait early
if [ -n "$sig" ]; then
  for _ in $(seq 50); do
    still_running $job_pids || break
    sleep 0.1
  done
  ! still_running $job_pids || kill -KILL $job_pids 2>/dev/null
  rc=$((128 + sig))
fi
if [ -n "$relay" ]; then
  exec 4>&-
  # spark-submit waits for its driver, so the driver's lines are in the FIFO by now: the relay only drains
  # them. A process the driver left behind that still holds the FIFO must not hold us: 2 s at most.
  for _ in $(seq 20); do
    kill -0 "$relay" 2>/dev/null || break
    sleep 0.1
  done
  kill "$relay" 2>/dev/null || true
  wait "$relay" 2>/dev/null || true
fi
exit $rc
