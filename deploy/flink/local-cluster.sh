#!/usr/bin/env bash
# deploy/flink/local-cluster.sh: a local standalone Apache Flink session cluster
# (the version in versions.env) on 127.0.0.1, assembled from PyPI artifacts, for
# `python -m pipeline --runner=FlinkRunner --flink_master=localhost:8081` and for
# tests/test_flink.py.
#
#   local-cluster.sh start            assemble the Flink home and fetch/build the
#                                     Beam job-server jar (both once, cached), then
#                                     start a JobManager and the TaskManagers (each
#                                     its own JVM; with FLINK_WORKER_POOL_PORT each
#                                     with its own worker pool), and wait until the
#                                     REST API lists them
#   local-cluster.sh stop             stop exactly the processes this script started
#   local-cluster.sh status           process and REST state (exit 3 when down)
#   local-cluster.sh add-taskmanager  start one more TaskManager, with its worker
#                                     pool (e.g. to replace one that was killed)
#   local-cluster.sh home             print FLINK_HOME (assembling it if needed)
#
# The production topology on loopback (docs/flink.md, "Running on Flink"):
#   FLINK_TOPOLOGY=production local-cluster.sh start
# is a JobManager and two TaskManagers of one slot, each with its own Beam worker
# pool (python -m pipeline.worker_pool, the Kubernetes sidecar) on port
# FLINK_WORKER_POOL_PORT (default 50000), RocksDB state with incremental
# checkpoints, and checkpoints and savepoints on s3://$FLINK_S3_BUCKET through
# Flink's S3 file system plugin, against a moto server started here (as
# deploy/k8s/flink-session-cluster.yaml configures them, HA aside). Jobs run
# there with --environment_type=EXTERNAL --environment_config=localhost:PORT,
# as in Kubernetes: each TaskManager's JVM resolves localhost to its own
# loopback address 127.0.1.N (a hosts file of its own, -Djdk.net.hosts.file),
# where its pool listens, as localhost in a pod is that pod. A pool's harnesses
# run the `python` first on its PATH, which is the repo's .venv.
#
# Where the Flink distribution comes from (no Flink tarball is needed):
#   apache-flink==X wheel            -> pyflink/bin/* (start scripts), pyflink/conf/*
#   apache-flink-libraries==X sdist  -> deps/lib, deps/opt, deps/plugins,
#                                       deps/bin/bash-java-utils.jar
#   Maven Central                    -> flink-s3-fs-hadoop-X.jar (versions.env),
#                                       copied into the cluster's plugins/ as the
#                                       Flink image's ENABLE_BUILT_IN_PLUGINS does
# The first two are fetched with `pip download --no-deps` into the cache and
# unpacked into $VFP_CACHE/flink-X; they are never pip-installed (PyFlink next to
# Beam in one environment would clash).
#
# Env:
#   VFP_CACHE            cache directory (default ~/.cache/vpc-flow-peers)
#   FLINK_STATE_DIR      conf, logs, pids, checkpoints (default $VFP_CACHE/flink-state);
#                        two clusters need two state directories and two sets of ports
#   FLINK_REST_PORT      default 8081, always bound to 127.0.0.1
#   FLINK_RPC_PORT       the JobManager's RPC port, default 6123 (127.0.0.1)
#   FLINK_START_TIMEOUT  seconds to wait for the TaskManagers (default 300)
#   FLINK_TOPOLOGY       single (default: one TaskManager of 2 slots, checkpoints in
#                        files) or production (the defaults below in brackets)
#   FLINK_TASKMANAGERS   TaskManagers `start` launches (default 1 [2])
#   FLINK_WORKER_POOL_PORT  a worker pool per TaskManager on this port (default
#                        none [50000])
#   FLINK_S3_ENDPOINT    an S3 emulator's URL for checkpoints and savepoints, or
#                        `moto` to start moto server here on FLINK_S3_PORT (default
#                        5000) (default none [moto]); keys from AWS_ACCESS_KEY_ID and
#                        AWS_SECRET_ACCESS_KEY (default `testing`)
#   FLINK_S3_BUCKET      default vpc-flow-peers-flink (created when moto starts here)
#   FLINK_TM_PROCESS_SIZE, FLINK_JM_PROCESS_SIZE, FLINK_TM_SLOTS  sizing
#   FLINK_EXTRA_CONF     a file of extra config.yaml lines (flat keys) to append
#   PYTHON               interpreter used for `pip download`, the worker pools and
#                        moto (default: the repo's .venv, else python3)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
VFP_CACHE="${VFP_CACHE:-$HOME/.cache/vpc-flow-peers}"
FLINK_HOME_DIR="$VFP_CACHE/flink-$FLINK_VERSION"
DOWNLOAD_DIR="$VFP_CACHE/downloads"
STATE_DIR="${FLINK_STATE_DIR:-$VFP_CACHE/flink-state}"
REST_PORT="${FLINK_REST_PORT:-8081}"
RPC_PORT="${FLINK_RPC_PORT:-6123}"
REST_URL="http://127.0.0.1:$REST_PORT"
START_TIMEOUT="${FLINK_START_TIMEOUT:-300}"
TOPOLOGY="${FLINK_TOPOLOGY:-single}"
case "$TOPOLOGY" in
  single) ;;
  production)
    : "${FLINK_TASKMANAGERS:=2}" "${FLINK_TM_SLOTS:=1}" "${FLINK_TM_PROCESS_SIZE:=2560m}"
    : "${FLINK_WORKER_POOL_PORT:=50000}" "${FLINK_S3_ENDPOINT:=moto}" ;;
  *) echo "FLINK_TOPOLOGY must be single or production, not $TOPOLOGY" >&2; exit 2 ;;
esac
TASKMANAGERS="${FLINK_TASKMANAGERS:-1}"
TM_PROCESS_SIZE="${FLINK_TM_PROCESS_SIZE:-3584m}"
JM_PROCESS_SIZE="${FLINK_JM_PROCESS_SIZE:-1024m}"
TM_SLOTS="${FLINK_TM_SLOTS:-2}"
WORKER_POOL_PORT="${FLINK_WORKER_POOL_PORT:-}"
S3_ENDPOINT="${FLINK_S3_ENDPOINT:-}"
S3_PORT="${FLINK_S3_PORT:-5000}"
S3_BUCKET="${FLINK_S3_BUCKET:-vpc-flow-peers-flink}"
if [[ "$S3_ENDPOINT" == moto ]]; then S3_URL="http://127.0.0.1:$S3_PORT"; else S3_URL="$S3_ENDPOINT"; fi
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi

CONF_DIR="$STATE_DIR/conf"
LOG_DIR="$STATE_DIR/log"
PID_DIR="$STATE_DIR/pids"          # our own records: <role>-<n>.pid
FLINK_PID_DIR_INTERNAL="$STATE_DIR/flink-daemon-pids"  # flink-daemon.sh bookkeeping
PLUGINS_DIR="$STATE_DIR/plugins"   # the home's plugins, plus the S3 file system

log() { echo "[local-cluster] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------
# Assemble FLINK_HOME from the two PyPI artifacts (idempotent).
# ---------------------------------------------------------------------------
assemble_home() {
  [[ -f "$FLINK_HOME_DIR/.assembled" ]] && return 0
  mkdir -p "$DOWNLOAD_DIR"
  local pyver
  pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')

  # The apache-flink wheel: any CPython build carries the same bin/ and conf/.
  # Pin the platform tags so pip never falls back to building the sdist.
  if ! ls "$DOWNLOAD_DIR"/apache_flink-"$FLINK_VERSION"-*.whl >/dev/null 2>&1; then
    log "pip download apache-flink==$FLINK_VERSION (wheel)"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: \
      --platform manylinux2014_x86_64 --python-version "$pyver" \
      --implementation cp --abi "cp$pyver" \
      -d "$DOWNLOAD_DIR" "apache-flink==$FLINK_VERSION" >&2 \
    || "$PYTHON" -m pip download --no-deps --only-binary=:all: \
      --platform manylinux2014_x86_64 --python-version 3.11 \
      --implementation cp --abi cp311 \
      -d "$DOWNLOAD_DIR" "apache-flink==$FLINK_VERSION" >&2
  fi
  # apache-flink-libraries exists only as an sdist (~230 MB tar.gz). pip runs
  # its metadata step (setup.py egg_info in an isolated env) but builds nothing.
  if [[ ! -f "$DOWNLOAD_DIR/apache-flink-libraries-$FLINK_VERSION.tar.gz" ]]; then
    log "pip download apache-flink-libraries==$FLINK_VERSION (sdist, ~230 MB)"
    "$PYTHON" -m pip download --no-deps --no-binary=:all: \
      -d "$DOWNLOAD_DIR" "apache-flink-libraries==$FLINK_VERSION" >&2
  fi

  local whl tgz tmp
  whl=$(ls "$DOWNLOAD_DIR"/apache_flink-"$FLINK_VERSION"-*.whl | head -n1)
  tgz="$DOWNLOAD_DIR/apache-flink-libraries-$FLINK_VERSION.tar.gz"
  tmp="$FLINK_HOME_DIR.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp/x"
  log "assembling $FLINK_HOME_DIR"
  unzip -q "$whl" 'pyflink/bin/*' 'pyflink/conf/*' -d "$tmp/x"
  tar -xzf "$tgz" -C "$tmp/x" "apache-flink-libraries-$FLINK_VERSION/deps"
  local deps="$tmp/x/apache-flink-libraries-$FLINK_VERSION/deps"
  mv "$tmp/x/pyflink/bin" "$tmp/bin"
  mv "$tmp/x/pyflink/conf" "$tmp/conf"
  mv "$deps/lib" "$deps/opt" "$deps/plugins" "$tmp/"
  [[ -d "$deps/licenses" ]] && mv "$deps/licenses" "$tmp/"
  mv "$deps"/bin/* "$tmp/bin/"          # bash-java-utils.jar (config parser)
  rm -rf "$tmp/x"
  chmod +x "$tmp"/bin/*.sh "$tmp/bin/flink"
  [[ -f "$tmp/lib/flink-dist-$FLINK_VERSION.jar" ]] || die "flink-dist jar missing after assembly"
  [[ -f "$tmp/bin/bash-java-utils.jar" ]] || die "bin/bash-java-utils.jar missing after assembly"
  touch "$tmp/.assembled"
  rm -rf "$FLINK_HOME_DIR"
  mv "$tmp" "$FLINK_HOME_DIR"
}

# ---------------------------------------------------------------------------
# Write $STATE_DIR/conf (config.yaml + log4j files). The Flink home stays
# pristine; every script call points FLINK_CONF_DIR here.
# Flink 1.19 reads conf/config.yaml (standard YAML; flat "a.b.c: v" keys are
# accepted); the legacy flink-conf.yaml is only used when config.yaml is absent.
# ---------------------------------------------------------------------------
write_conf() {
  mkdir -p "$CONF_DIR" "$LOG_DIR" "$PID_DIR" "$FLINK_PID_DIR_INTERNAL" \
           "$STATE_DIR/checkpoints" "$STATE_DIR/savepoints" "$STATE_DIR/tmp" \
           "$STATE_DIR/web-upload" "$STATE_DIR/ha"
  cp -f "$FLINK_HOME_DIR"/conf/log4j*.properties "$CONF_DIR/"
  cp -f "$FLINK_HOME_DIR"/conf/logback*.xml "$CONF_DIR/" 2>/dev/null || true
  echo "127.0.0.1:$REST_PORT" >"$CONF_DIR/masters"
  echo "127.0.0.1" >"$CONF_DIR/workers"
  local state_conf
  if [[ -n "$S3_URL" ]]; then
    # As deploy/k8s/flink-session-cluster.yaml: RocksDB, incremental, on S3.
    state_conf="state.backend.type: rocksdb
state.backend.incremental: true
state.checkpoints.dir: s3://$S3_BUCKET/checkpoints
state.savepoints.dir: s3://$S3_BUCKET/savepoints
state.checkpoints.num-retained: 3
# Flink's S3 file system (plugins/s3-fs-hadoop) against the emulator.
s3.endpoint: $S3_URL
s3.path.style.access: true
s3.access-key: ${AWS_ACCESS_KEY_ID:-testing}
s3.secret-key: ${AWS_SECRET_ACCESS_KEY:-testing}"
  else
    state_conf="state.backend.type: hashmap
state.checkpoints.dir: file://$STATE_DIR/checkpoints
state.savepoints.dir: file://$STATE_DIR/savepoints"
  fi
  cat >"$CONF_DIR/config.yaml" <<EOF
# Generated by deploy/flink/local-cluster.sh: a standalone session cluster on 127.0.0.1.
# JDK 17 needs these --add-opens/--add-exports (copied from the stock config.yaml).
env.java.opts.all: --add-exports=java.base/sun.net.util=ALL-UNNAMED --add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED --add-exports=jdk.compiler/com.sun.tools.javac.api=ALL-UNNAMED --add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED --add-exports=jdk.compiler/com.sun.tools.javac.parser=ALL-UNNAMED --add-exports=jdk.compiler/com.sun.tools.javac.tree=ALL-UNNAMED --add-exports=jdk.compiler/com.sun.tools.javac.util=ALL-UNNAMED --add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED --add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.net=ALL-UNNAMED --add-opens=java.base/java.io=ALL-UNNAMED --add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/sun.nio.ch=ALL-UNNAMED --add-opens=java.base/java.lang.reflect=ALL-UNNAMED --add-opens=java.base/java.text=ALL-UNNAMED --add-opens=java.base/java.time=ALL-UNNAMED --add-opens=java.base/java.util=ALL-UNNAMED --add-opens=java.base/java.util.concurrent=ALL-UNNAMED --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED
env.log.dir: $LOG_DIR
env.pid.dir: $FLINK_PID_DIR_INTERNAL

# --- network: everything on loopback ---
jobmanager.rpc.address: 127.0.0.1
jobmanager.rpc.port: $RPC_PORT
jobmanager.bind-host: 127.0.0.1
taskmanager.host: 127.0.0.1
taskmanager.bind-host: 127.0.0.1
rest.address: 127.0.0.1
rest.bind-address: 127.0.0.1
rest.port: $REST_PORT
# Beam uber-jar submission (--flink_submit_uber_jar) uploads a ~160 MB jar;
# the default limit (100 MiB) would reject it with 413.
rest.server.max-content-length: 536870912
web.upload.dir: $STATE_DIR/web-upload
io.tmp.dirs: $STATE_DIR/tmp

# --- sizing for a 2-core / 24 GB machine ---
jobmanager.memory.process.size: $JM_PROCESS_SIZE
taskmanager.memory.process.size: $TM_PROCESS_SIZE
taskmanager.numberOfTaskSlots: $TM_SLOTS
# Each Beam job loads the uber jar's classes into a class loader of its own,
# and Beam's classes keep it alive after the job ends: a TaskManager's
# metaspace grows by about 50 MB a job (18,000 classes loaded after one job,
# 40,000 after five), and at the default 256 MB the fifth job on one
# TaskManager died of "OutOfMemoryError: Metaspace", leaving that TaskManager
# unable to run any Beam task again. 768 MB holds a dozen jobs or more; a
# long-lived session cluster still needs its TaskManagers restarted now and
# then (docs/flink.md). The process sizes above are 512 MB larger for it, so
# that the extra metaspace does not come out of the task heap.
taskmanager.memory.jvm-metaspace.size: 768m
parallelism.default: 1
# A job's subtasks go to different TaskManagers while there are free slots: on
# the production topology, each has its own worker pool and so its own CPU.
cluster.evenly-spread-out-slots: true

# --- fault tolerance ---
$state_conf
execution.checkpointing.externalized-checkpoint-retention: RETAIN_ON_CANCELLATION
jobmanager.execution.failover-strategy: region
# Exponential backoff, bounded. PITFALL: while no TaskManager is registered,
# a standalone cluster fails each restart attempt within seconds ("Could not
# acquire the minimum required resources"), so a fixed-delay strategy with a
# few attempts is used up in about a minute and the job goes FAILED before a
# replacement TaskManager arrives. With this backoff (capped at 30 s) 100
# attempts last well over 30 minutes; the counter resets after 1 min of
# stable running. (A Beam job can override this with
# --number_of_execution_retries / --execution_retry_delay, which switch to
# fixed-delay.)
restart-strategy.type: exponential-delay
restart-strategy.exponential-delay.initial-backoff: 1 s
restart-strategy.exponential-delay.max-backoff: 30 s
restart-strategy.exponential-delay.backoff-multiplier: 2.0
restart-strategy.exponential-delay.reset-backoff-threshold: 1 min
restart-strategy.exponential-delay.jitter-factor: 0.1
restart-strategy.exponential-delay.attempts-before-reset-backoff: 100
# The REST API's metrics (Beam's counters of a running job among them, which
# bench/ reads) refreshed every second, not every 10 s.
metrics.fetcher.update-interval: 1000
# A JVM's RPC system has 10 s to start by default, which a loaded machine can
# take (the TaskManager then exits: "Could not create actor system").
pekko.startup-timeout: 60 s
# Detect a dead TaskManager faster than the 50 s default.
heartbeat.interval: 2000
heartbeat.timeout: 15000
# Keep a job waiting for slots (e.g. until a replacement TaskManager registers).
slot.request.timeout: 300000
EOF
  if [[ -n "${FLINK_EXTRA_CONF:-}" ]]; then
    cat "$FLINK_EXTRA_CONF" >>"$CONF_DIR/config.yaml"
  fi
}

# $STATE_DIR/plugins: the home's plugin directories, and with S3 Flink's S3 file
# system, copied in as the Flink image's ENABLE_BUILT_IN_PLUGINS copies it from opt/.
write_plugins() {
  rm -rf "$PLUGINS_DIR"; mkdir -p "$PLUGINS_DIR"
  local d
  for d in "$FLINK_HOME_DIR"/plugins/*/; do ln -s "$d" "$PLUGINS_DIR/$(basename "$d")"; done
  if [[ -n "$S3_URL" ]]; then
    mkdir -p "$PLUGINS_DIR/s3-fs-hadoop"
    cp "$(ensure_s3_plugin)" "$PLUGINS_DIR/s3-fs-hadoop/"
  fi
}

# The S3 file system plugin jar in the cache (downloaded once, digest checked).
ensure_s3_plugin() {
  local name="$FLINK_S3_PLUGIN-$FLINK_VERSION.jar"
  local jar="$DOWNLOAD_DIR/$name"
  if [[ ! -f "$jar" ]]; then
    mkdir -p "$DOWNLOAD_DIR"
    log "downloading $name from Maven Central"
    curl -fsSL -o "$jar.part.$$" \
      "https://repo.maven.apache.org/maven2/org/apache/flink/$FLINK_S3_PLUGIN/$FLINK_VERSION/$name" \
      || die "could not download $name"
    echo "$FLINK_S3_PLUGIN_SHA256  $jar.part.$$" | sha256sum -c --quiet - >&2 \
      || { rm -f "$jar.part.$$"; die "$name does not have the SHA-256 of versions.env"; }
    mv "$jar.part.$$" "$jar"
  fi
  echo "$jar"
}

# Environment for every bin/*.sh call.
flink_env() {
  export FLINK_PLUGINS_DIR="$PLUGINS_DIR"
  export FLINK_CONF_DIR="$CONF_DIR"
  export FLINK_LOG_DIR="$LOG_DIR"
  export FLINK_PID_DIR="$FLINK_PID_DIR_INTERNAL"
  # flink-daemon.sh names its pid file flink-$USER-<daemon>.pid; USER is not
  # always set (containers, CI), so set it to get a predictable name.
  export USER="${USER:-$(id -un)}"
}

# Is PID $1 alive and a Flink JVM of ours (guards against PID reuse)?
is_our_jvm() {
  local pid="$1"
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$STATE_DIR" 2>/dev/null \
    || tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$CONF_DIR"
}

# Is PID $1 alive and a worker pool or moto server of ours? They carry
# VFP_CLUSTER_STATE_DIR in their environment.
is_our_helper() {
  local pid="$1"
  [[ -n "$pid" && -r "/proc/$pid/environ" ]] || return 1
  tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF -- "VFP_CLUSTER_STATE_DIR=$STATE_DIR"
}

is_ours() { is_our_jvm "$1" || is_our_helper "$1"; }

# Launch one daemon via its bin script and record the JVM PID as <role>-<n>.pid.
# flink-daemon.sh appends each started JVM's PID to
# $FLINK_PID_DIR/flink-$FLINK_IDENT_STRING-<daemon>.pid (the last line is the new
# one) and names its logs with that string too: each daemon gets its own, so
# that they can be launched at once.
launch() {
  local script="$1" daemon="$2" role="$3" n="$4"
  flink_env
  export FLINK_IDENT_STRING="$USER-$role-$n"
  local flink_pidfile="$FLINK_PID_DIR_INTERNAL/flink-$FLINK_IDENT_STRING-$daemon.pid"
  "$FLINK_HOME_DIR/bin/$script" start >>"$LOG_DIR/launcher.out" 2>&1
  local pid
  pid=$(tail -n1 "$flink_pidfile" 2>/dev/null || true)
  [[ -n "$pid" ]] || die "no PID recorded by flink-daemon.sh for $daemon (see $LOG_DIR)"
  echo "$pid" >"$PID_DIR/$role-$n.pid"
  log "started $role-$n (pid $pid)"
}

# The first TaskManager number with neither a TaskManager nor a pool running.
next_taskmanager_number() {
  local n=1
  while [[ -e "$PID_DIR/taskmanager-$n.pid" || -e "$PID_DIR/worker-pool-$n.pid" ]]; do n=$((n + 1)); done
  echo "$n"
}

pool_address() { echo "127.0.1.$1"; }

# Waits until something listens on $1:$2 while PID $3 lives.
wait_listening() {
  local host="$1" port="$2" pid="$3" what="$4" deadline=$(( $(date +%s) + 60 ))
  while (( $(date +%s) < deadline )); do
    kill -0 "$pid" 2>/dev/null || die "$what exited at start (see $LOG_DIR)"
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  die "$what did not listen on $host:$port within 60 s (see $LOG_DIR)"
}

# TaskManager N's worker pool on its own loopback address, in a session of its
# own (so pool and harnesses can be killed together), harnesses on the .venv.
# It takes seconds to import Beam: wait_worker_pool waits for it.
start_worker_pool() {
  local n="$1" address; address=$(pool_address "$1")
  local venv_bin; venv_bin="$(dirname "$PYTHON")"
  VFP_CLUSTER_STATE_DIR="$STATE_DIR" PATH="$venv_bin:$PATH" setsid "$PYTHON" -m pipeline.worker_pool \
    --service_port="$WORKER_POOL_PORT" --bind_address="$address" \
    >>"$LOG_DIR/worker-pool-$n.log" 2>&1 </dev/null &
  echo "$!" >"$PID_DIR/worker-pool-$n.pid"
}

wait_worker_pool() {
  local n="$1" pid; pid=$(cat "$PID_DIR/worker-pool-$n.pid")
  wait_listening "$(pool_address "$n")" "$WORKER_POOL_PORT" "$pid" "worker pool $n"
  log "started worker-pool-$n (pid $pid) on $(pool_address "$n"):$WORKER_POOL_PORT"
}

# A hosts file in which localhost is TaskManager N's pool address; the rest of
# /etc/hosts is kept (a JVM given jdk.net.hosts.file reads only that file).
write_hosts_file() {
  local n="$1" file="$STATE_DIR/taskmanager-$1/hosts"
  mkdir -p "$(dirname "$file")"
  {
    echo "$(pool_address "$n") localhost"
    awk '!/^[[:space:]]*#/ && NF > 1 { line = $1; for (i = 2; i <= NF; i++) if ($i != "localhost") line = line " " $i; if (line != $1) print line }' /etc/hosts
  } >"$file"
  echo "$file"
}

# TaskManager N, and its worker pool when there are pools (started first, waited for last).
start_taskmanager() {
  local n="$1" java_opts="-Dvfp.taskmanager=$1"
  if [[ -n "$WORKER_POOL_PORT" ]]; then
    start_worker_pool "$n"
    java_opts="$java_opts -Djdk.net.hosts.file=$(write_hosts_file "$n")"
  fi
  FLINK_ENV_JAVA_OPTS_TM="$java_opts" launch taskmanager.sh taskexecutor taskmanager "$n"
  if [[ -n "$WORKER_POOL_PORT" ]]; then wait_worker_pool "$n"; fi
}

# TaskManagers 1..N with their pools, all at once.
start_taskmanagers() {
  local i launches=()
  for i in $(seq 1 "$TASKMANAGERS"); do start_taskmanager "$i" & launches+=($!); done
  for i in "${launches[@]}"; do wait "$i" || return 1; done
}

# moto server for S3 on 127.0.0.1:$S3_PORT, with the bucket.
start_moto() {
  local moto; moto="$(dirname "$PYTHON")/moto_server"
  [[ -x "$moto" ]] || die "$moto not found: FLINK_S3_ENDPOINT=moto needs the repo's .venv (tools/ensure_venv.sh)"
  VFP_CLUSTER_STATE_DIR="$STATE_DIR" setsid "$moto" -H 127.0.0.1 -p "$S3_PORT" \
    >>"$LOG_DIR/moto.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PID_DIR/moto-1.pid"
  wait_listening 127.0.0.1 "$S3_PORT" "$pid" "moto server"
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "$PYTHON" -c '
import sys, boto3
boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1").create_bucket(Bucket=sys.argv[2])' \
    "$S3_URL" "$S3_BUCKET" || die "could not create s3://$S3_BUCKET on moto"
  log "started moto (pid $pid) on $S3_URL with s3://$S3_BUCKET"
}

# Drop our PID records whose process is gone.
prune_pids() {
  local f
  for f in "$PID_DIR"/*.pid; do
    [[ -e "$f" ]] || continue
    is_ours "$(cat "$f")" || rm -f "$f"
  done
}

rest_get() { curl -fsS --max-time 3 "$REST_URL$1" 2>/dev/null; }

registered_tms() {
  rest_get /taskmanagers | "$PYTHON" -c 'import json,sys; print(len(json.load(sys.stdin)["taskmanagers"]))' 2>/dev/null || echo 0
}

wait_for_tms() {
  local want="$1" deadline=$(( $(date +%s) + START_TIMEOUT ))
  while (( $(date +%s) < deadline )); do
    if (( $(registered_tms) >= want )); then return 0; fi
    sleep 1
  done
  die "timed out after ${START_TIMEOUT}s waiting for $want TaskManager(s) at $REST_URL/taskmanagers; logs in $LOG_DIR"
}

registered_tm_ids() {
  rest_get /taskmanagers | "$PYTHON" -c 'import json,sys; print("\n".join(sorted(t["id"] for t in json.load(sys.stdin)["taskmanagers"])))' 2>/dev/null || true
}

# Waits for a TaskManager whose id is not among those listed in $1. (Not for a
# count: a SIGKILLed TaskManager stays listed until its heartbeat times out.)
wait_for_new_tm() {
  local before="$1" deadline=$(( $(date +%s) + START_TIMEOUT ))
  while (( $(date +%s) < deadline )); do
    if comm -13 <(echo "$before") <(registered_tm_ids) | grep -q .; then return 0; fi
    sleep 1
  done
  die "timed out after ${START_TIMEOUT}s waiting for a new TaskManager at $REST_URL/taskmanagers; logs in $LOG_DIR"
}

# The Beam job-server jar the FlinkRunner submits with (see build-job-server.sh).
ensure_job_server_jar() {
  "$HERE/build-job-server.sh" >/dev/null \
    || die "could not fetch or build the Beam job-server jar (see the messages above)"
}

cmd_start() {
  mkdir -p "$STATE_DIR"
  # On a cold cache both are long downloads: run them side by side.
  local jar_job
  ensure_job_server_jar & jar_job=$!
  assemble_home
  wait "$jar_job" || exit 1
  mkdir -p "$PID_DIR"
  prune_pids
  if ls "$PID_DIR"/jobmanager-*.pid >/dev/null 2>&1; then
    if ls "$PID_DIR"/taskmanager-*.pid >/dev/null 2>&1; then
      wait_for_tms 1
      log "already running ($REST_URL)"
      return 0
    fi
    log "jobmanager running but no taskmanager; starting $TASKMANAGERS"
    local i
    for i in $(seq 1 "$TASKMANAGERS"); do start_taskmanager "$(next_taskmanager_number)"; done
    wait_for_tms "$TASKMANAGERS"
    return 0
  fi
  # Refuse to fight a foreign process for the ports.
  if rest_get /config >/dev/null; then
    die "something not started by this script already answers on $REST_URL"
  fi
  # Working dirs of TaskManagers that were SIGKILLed (blobs, extracted jars,
  # ~1 GB after a few Beam jobs) are never cleaned by Flink; nothing of ours
  # runs now, so wipe them.
  rm -rf "$STATE_DIR/tmp"
  write_conf
  write_plugins
  [[ "$S3_ENDPOINT" == moto ]] && start_moto
  local t0; t0=$(date +%s)
  # The bin scripts spend several seconds each in config parsing (they run
  # bash-java-utils.jar in extra JVMs): every daemon is launched at once (the
  # TaskManagers retry until the JobManager's ResourceManager is up).
  local jm_launch tm_launch
  launch jobmanager.sh standalonesession jobmanager 1 & jm_launch=$!
  start_taskmanagers & tm_launch=$!
  wait "$jm_launch" || die "jobmanager launch failed (see $LOG_DIR)"
  wait "$tm_launch" || die "taskmanager launch failed (see $LOG_DIR)"
  wait_for_tms "$TASKMANAGERS"
  log "cluster up in $(( $(date +%s) - t0 ))s: $REST_URL, $TASKMANAGERS TaskManager(s)$(
    [[ -n "$WORKER_POOL_PORT" ]] && echo ", worker pools on localhost:$WORKER_POOL_PORT")$(
    [[ -n "$S3_URL" ]] && echo ", checkpoints on s3://$S3_BUCKET at $S3_URL") (state: $STATE_DIR)"
}

cmd_add_taskmanager() {
  [[ -f "$FLINK_HOME_DIR/.assembled" ]] || die "not assembled; run start first"
  prune_pids
  ls "$PID_DIR"/jobmanager-*.pid >/dev/null 2>&1 || die "jobmanager not running; run start first"
  local before; before=$(registered_tm_ids)
  start_taskmanager "$(next_taskmanager_number)"
  wait_for_new_tm "$before"
}

# SIGTERM to each recorded process (a worker pool's whole session, so that its
# harnesses go too), then up to 30 s, then SIGKILL.
cmd_stop() {
  [[ -d "$PID_DIR" ]] || { log "nothing to stop"; return 0; }
  local f pid pids=()
  # TaskManagers and their pools first, then the JobManager, then moto.
  for f in "$PID_DIR"/taskmanager-*.pid "$PID_DIR"/worker-pool-*.pid "$PID_DIR"/jobmanager-*.pid \
           "$PID_DIR"/moto-*.pid; do
    [[ -e "$f" ]] || continue
    pid=$(cat "$f")
    if is_ours "$pid"; then
      log "stopping $(basename "$f" .pid) (pid $pid)"
      if [[ "$f" == */worker-pool-* ]]; then kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      else kill -TERM "$pid" 2>/dev/null || true; fi
      pids+=("$pid")
    fi
    rm -f "$f"
  done
  local i
  for i in $(seq 1 30); do
    local alive=()
    for pid in "${pids[@]:-}"; do
      [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && alive+=("$pid")
    done
    (( ${#alive[@]} == 0 )) && break
    sleep 1
    if (( i == 30 )); then
      log "force-killing ${alive[*]}"
      kill -KILL "${alive[@]}" 2>/dev/null || true
    fi
  done
  rm -f "$FLINK_PID_DIR_INTERNAL"/*.pid
  log "stopped"
}

cmd_status() {
  echo "flink home : $FLINK_HOME_DIR $( [[ -f $FLINK_HOME_DIR/.assembled ]] && echo '(assembled)' || echo '(not assembled)')"
  echo "state dir  : $STATE_DIR"
  local f pid any=0
  for f in "$PID_DIR"/*.pid; do
    [[ -e "$f" ]] || continue
    any=1
    pid=$(cat "$f")
    if is_ours "$pid"; then
      echo "process    : $(basename "$f" .pid) pid $pid running"
    else
      echo "process    : $(basename "$f" .pid) pid $pid NOT running"
    fi
  done
  (( any )) || echo "process    : none recorded"
  if rest_get /overview >/dev/null; then
    echo "rest       : $REST_URL up"
    echo "overview   : $(rest_get /overview)"
    echo "jobs       : $(rest_get /jobs/overview | "$PYTHON" -c 'import json,sys; print(", ".join(j["jid"] + " " + j["name"] + " " + j["state"] for j in json.load(sys.stdin)["jobs"]) or "none")' 2>/dev/null)"
    return 0
  fi
  echo "rest       : $REST_URL down"
  return 3
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  add-taskmanager) cmd_add_taskmanager ;;
  home) assemble_home; echo "$FLINK_HOME_DIR" ;;
  *) echo "usage: $0 start|stop|status|add-taskmanager|home" >&2; exit 2 ;;
esac
