#!/usr/bin/env bash
# The cloud topology of docs/cluster.md on one machine, with the real parts: a Ray head and two
# worker nodes (separate raylets, token auth), an MLflow tracking server with a SQL store and its
# artifacts on object storage, and an S3-compatible server (moto) holding the study directories.
#
#   bench/local_cluster.sh up            # start everything; prints the environment to use
#   bench/local_cluster.sh run [ARGS]    # submit search_spaces/smoke.yaml as the README's cluster section does
#   bench/local_cluster.sh env           # the exports a shell needs to talk to it (eval "$(... env)")
#   bench/local_cluster.sh resume URI    # `ser-study resume` a study submitted the same way
#   bench/local_cluster.sh stop-worker N # kill one worker node's raylet (a node lost mid-study)
#   bench/local_cluster.sh start-worker N # start it again
#   bench/local_cluster.sh down          # stop everything this script started, nothing else
#
# Everything lives under $LOCAL_CLUSTER_DIR (default /tmp/ser-study-local-cluster); only processes
# started from there are stopped. Ports: Ray 6390 (GCS), 8275 (dashboard), 52400-52429 (each node's
# agents), MLflow 5055, S3 9100 (change with RAY_PORT, DASHBOARD_PORT, AGENT_PORT, MLFLOW_PORT, S3_PORT). Needs the venv (`make install`) and
# moto (`pip install "moto[server]"`, in the test extra).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$REPO/.venv/bin}
ROOT=${LOCAL_CLUSTER_DIR:-/tmp/ser-study-local-cluster}
RAY_PORT=${RAY_PORT:-6390}
DASHBOARD_PORT=${DASHBOARD_PORT:-8275}
MLFLOW_PORT=${MLFLOW_PORT:-5055}
S3_PORT=${S3_PORT:-9100}
AGENT_PORT=${AGENT_PORT:-52400}
BUCKET=${BUCKET:-ser-study}
CPUS_PER_NODE=${CPUS_PER_NODE:-1}

environment() {
  # Ray: token auth, as a cluster should run; the token is this cluster's own file.
  echo "export RAY_AUTH_MODE=token"
  echo "export RAY_AUTH_TOKEN_PATH=$ROOT/auth_token"
  echo "export RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT"
  # Object storage: any S3 client (pyarrow for the study, boto3 for MLflow) goes to the local server.
  echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT"
  echo "export MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT"
  echo "export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_DEFAULT_REGION=us-east-1"
  echo "export MLFLOW_URI=http://127.0.0.1:$MLFLOW_PORT"
  echo "export STUDY_BUCKET=s3://$BUCKET"
}

wait_for_port() {  # host port what
  for _ in $(seq 1 120); do
    if "$BIN/python" -c "import socket,sys; socket.create_connection(('$1', $2), 1)" 2>/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "$3 did not start on $1:$2; see $ROOT/*.log" >&2
  return 1
}

agent_ports() {  # index: each raylet's agents on their own ports (several nodes share this machine)
  local base=$((AGENT_PORT + 10 * $1))
  echo "--dashboard-agent-listen-port=$base --dashboard-agent-grpc-port=$((base + 1)) --runtime-env-agent-port=$((base + 2))" \
    "--metrics-export-port=$((base + 3)) --node-manager-port=$((base + 4)) --object-manager-port=$((base + 5))"
}

start_worker() {  # index
  # Each node keeps its own node-local copy of the object-store cache, as separate machines would (and none from an
  # earlier cluster on this machine: the same bucket URI would otherwise find it in ~/.cache/ser-study).
  # shellcheck disable=SC2046
  SER_STUDY_LOCAL_CACHE="$ROOT/node_$1/cache" "$BIN/ray" start --address="127.0.0.1:$RAY_PORT" --num-cpus="$CPUS_PER_NODE" --num-gpus=0 \
    --resources="{\"worker_$1\": 1}" --temp-dir="$ROOT/ray" $(agent_ports "$1") > "$ROOT/worker_$1.log" 2>&1
}

up() {
  mkdir -p "$ROOT"
  eval "$(environment)"
  [ -s "$ROOT/auth_token" ] || "$BIN/python" -c "import secrets; print(secrets.token_hex(32))" > "$ROOT/auth_token"
  chmod 600 "$ROOT/auth_token"

  setsid "$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT" > "$ROOT/s3.log" 2>&1 < /dev/null &
  echo $! > "$ROOT/s3.pid"
  wait_for_port 127.0.0.1 "$S3_PORT" "the S3 server"
  "$BIN/python" -c "import boto3; boto3.client('s3').create_bucket(Bucket='$BUCKET')"

  setsid "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$ROOT/mlflow.db" --artifacts-destination "s3://$BUCKET/mlflow-artifacts" \
    > "$ROOT/mlflow.log" 2>&1 < /dev/null &
  echo $! > "$ROOT/mlflow.pid"
  wait_for_port 127.0.0.1 "$MLFLOW_PORT" "MLflow"

  # The head runs the drivers (Tune, the baselines) but no fold: its one CPU is for them.
  SER_STUDY_LOCAL_CACHE="$ROOT/node_0/cache" "$BIN/ray" start --head --port="$RAY_PORT" --num-cpus="$CPUS_PER_NODE" --num-gpus=0 --dashboard-host=127.0.0.1 \
    --dashboard-port="$DASHBOARD_PORT" --ray-client-server-port=$((RAY_PORT + 1)) --temp-dir="$ROOT/ray" $(agent_ports 0) > "$ROOT/head.log" 2>&1
  start_worker 1
  start_worker 2
  "$BIN/ray" status --address="127.0.0.1:$RAY_PORT" | sed -n '1,/Resources/p'
  echo "local cluster up under $ROOT; talk to it with: eval \"\$($0 env)\""
}

submission() {  # a job id when SUBMISSION_ID is set (so that `ray job stop` can name it)
  if [ -n "${SUBMISSION_ID:-}" ]; then echo "--submission-id=$SUBMISSION_ID"; fi
}

run() {
  # The README's cluster section, with this cluster's ports: submit from the repository, --working-dir .
  eval "$(environment)"
  local name=${STUDY_NAME:-smoke-cluster}
  cd "$REPO"
  # shellcheck disable=SC2046
  "$BIN/ray" job submit $(submission) --working-dir . -- \
    "$BIN/ser-study" run search_spaces/smoke.yaml --address auto \
      --study-dir "s3://$BUCKET/studies/$name" \
      --set "storage.mlflow_uri=http://127.0.0.1:$MLFLOW_PORT" \
      "$@"
}

resume() {  # study URI
  eval "$(environment)"
  cd "$REPO"
  # shellcheck disable=SC2046
  "$BIN/ray" job submit $(submission) --working-dir . -- "$BIN/ser-study" resume "$1" --address auto
}

stop_worker() {  # index: kill that node's raylet; the processes it started notice and exit (a node lost)
  local port=$((AGENT_PORT + 10 * $1 + 4))
  pkill -9 -f -- "raylet.*--node_manager_port=$port" || { echo "worker $1 (raylet on port $port) is not running" >&2; return 1; }
  echo "stopped worker node $1 (raylet on port $port)"
}

down() {
  eval "$(environment)"
  for pidfile in "$ROOT/mlflow.pid" "$ROOT/s3.pid"; do
    [ -f "$pidfile" ] && kill -- -"$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
  # Every Ray process of this cluster was started with --temp-dir under $ROOT, or by such a process (agents and
  # workers rename themselves "ray::..."): stop those trees, nothing else.
  "$BIN/python" - "$ROOT" <<'EOF'
import sys
import psutil
root = sys.argv[1]
me = psutil.Process()
spared = {me.pid, *(parent.pid for parent in me.parents())}  # this helper names $ROOT too
tree = {}
for process in psutil.process_iter(["cmdline"]):
    if process.pid not in spared and root in " ".join(process.info["cmdline"] or []):
        tree[process.pid] = process
        tree.update({child.pid: child for child in process.children(recursive=True)})
for process in tree.values():
    try:
        process.terminate()
    except psutil.NoSuchProcess:
        pass
_, alive = psutil.wait_procs(list(tree.values()), timeout=15)
for process in alive:
    process.kill()
EOF
  echo "local cluster under $ROOT stopped"
}

case "${1:-}" in
  up) up ;;
  run) shift; run "$@" ;;
  resume) resume "${2:?the study URI}" ;;
  start-worker) eval "$(environment)"; start_worker "${2:?which worker: 1 or 2}" ;;
  env) environment ;;
  stop-worker) stop_worker "${2:?which worker: 1 or 2}" ;;
  down) down ;;
  *) echo "usage: $0 up|run [--set ...]|resume URI|env|stop-worker N|start-worker N|down" >&2; exit 2 ;;
esac
