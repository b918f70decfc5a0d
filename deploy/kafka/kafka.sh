#!/usr/bin/env bash
# A real, single-node Apache Kafka broker (KRaft, combined broker+controller) without Docker.
#
#   deploy/kafka/kafka.sh {start|stop|status|fetch} [--version V] [--port P] [--dir D]
#
# The official jars of version V are resolved from Maven Central with Maven (deploy/kafka/pom.xml) into
# ${COLDSTART_CACHE:-~/.cache/coldstart}/kafka-V/libs, once per machine. `start` writes
# D/server.properties, formats D/data on first use, runs `java kafka.Kafka` in the background
# (D/broker.pid, output in D/broker.log) and returns when the broker accepts connections on 127.0.0.1:P.
#
# Settings: flags win over COLDSTART_KAFKA_VERSION / _PORT / _DIR / _CONTROLLER_PORT, then defaults
# (4.0.0, 9092, var/kafka relative to the current directory, controller port = first free from P+1).
# Tunables: COLDSTART_KAFKA_HEAP (default 512m), COLDSTART_KAFKA_START_TIMEOUT (60 s),
# COLDSTART_KAFKA_STOP_TIMEOUT (30 s). With COLDSTART_KAFKA_SASL_USERNAME and _PASSWORD set, the client
# listener is SASL_PLAINTEXT with mechanism PLAIN and that one user (the same variables configure
# coldstart's clients), to test authenticated clients locally.
# Exit status: 0 ok (status: running), 1 failure, 2 usage error, 3 status: stopped.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="${COLDSTART_KAFKA_VERSION:-4.0.0}"
port="${COLDSTART_KAFKA_PORT:-9092}"
dir="${COLDSTART_KAFKA_DIR:-var/kafka}"
controller_port="${COLDSTART_KAFKA_CONTROLLER_PORT:-}"
heap="${COLDSTART_KAFKA_HEAP:-512m}"
start_timeout="${COLDSTART_KAFKA_START_TIMEOUT:-60}"
stop_timeout="${COLDSTART_KAFKA_STOP_TIMEOUT:-30}"
sasl_user="${COLDSTART_KAFKA_SASL_USERNAME:-}"
sasl_password="${COLDSTART_KAFKA_SASL_PASSWORD:-}"

usage() {
  sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
die() { echo "kafka.sh: $*" >&2; exit 1; }

[ $# -ge 1 ] || usage
cmd="$1"; shift
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version="${2:?--version needs a value}"; shift 2 ;;
    --port) port="${2:?--port needs a value}"; shift 2 ;;
    --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
    --controller-port) controller_port="${2:?--controller-port needs a value}"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "kafka.sh: unknown argument: $1" >&2; usage ;;
  esac
done
case "$cmd" in start|stop|status|fetch) ;; -h|--help|help) usage ;; *) echo "kafka.sh: unknown command: $cmd" >&2; usage ;; esac
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "bad version '$version' (expected e.g. 4.0.0 or 3.9.1)"
[[ "$port" =~ ^[0-9]+$ ]] || die "bad port '$port'"

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
cache="${COLDSTART_CACHE:-$HOME/.cache/coldstart}/kafka-$version"
libs="$cache/libs"
pidfile="$dir/broker.pid"
log="$dir/broker.log"
major="${version%%.*}"
minor="${version#*.}"; minor="${minor%%.*}"

# ---- helpers -------------------------------------------------------------------------------------

listening() {  # is something accepting TCP connections on 127.0.0.1:$1?
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

port_taken() {  # listening, or the local end of any TCP socket (an outgoing connection's port binds no more)
  listening "$1" && return 0
  command -v ss >/dev/null 2>&1 || return 1
  [ -n "$(ss -Htan "( sport = :$1 )" 2>/dev/null)" ]
}

broker_pid() {  # prints the pid of this directory's broker if it is alive, else fails
  local pid
  [ -f "$pidfile" ] || return 1
  pid="$(cat "$pidfile" 2>/dev/null)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against a recycled pid: it must be a kafka.Kafka JVM serving this directory.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka $dir/server.properties" || return 1
  echo "$pid"
}

configured_port() {  # the port a (possibly running) broker in $dir was started with
  sed -n 's|^advertised.listeners=[A-Z_]*://127.0.0.1:\([0-9]*\)$|\1|p' "$dir/server.properties" 2>/dev/null
}

log_tail() {
  echo "---- last lines of $log ----" >&2
  tail -n 40 "$log" >&2 2>/dev/null || true
}

java_bin() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then echo "$JAVA_HOME/bin/java"; return; fi
  command -v java >/dev/null || die "java not found: install a JDK 17 (Debian: apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
  command -v java
}

# ---- fetch ---------------------------------------------------------------------------------------

fetch() {
  [ -f "$cache/.complete" ] && return 0
  command -v mvn >/dev/null || die "mvn not found: install Maven (Debian: apt-get install maven); it fetches Kafka $version from Maven Central"
  mkdir -p "$cache"
  # One fetch per version at a time (parallel test sessions share the cache).
  exec 9>"$cache/.lock"
  flock 9
  if [ ! -f "$cache/.complete" ]; then
    local profile=log4j2 work
    [ "$major" -ge 4 ] || profile=reload4j
    work="$(mktemp -d "$cache/.fetch.XXXXXX")"
    cp "$here/pom.xml" "$work/pom.xml"
    echo "kafka.sh: fetching Apache Kafka $version from Maven Central into $libs" >&2
    if ! (cd "$work" && mvn -B -q -Dkafka.version="$version" -P"$profile" \
          dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$work/libs" >"$work/mvn.log" 2>&1); then
      tail -n 30 "$work/mvn.log" >&2
      rm -rf "$work"
      die "Maven could not resolve org.apache.kafka:kafka_2.13:$version (is the version on Maven Central and the network up?)"
    fi
    [ -f "$work/libs/kafka_2.13-$version.jar" ] || die "Maven finished but kafka_2.13-$version.jar is missing in $work/libs"
    rm -rf "$libs"
    mv "$work/libs" "$libs"
    rm -rf "$work"
    touch "$cache/.complete"
  fi
  flock -u 9
}

# ---- start ---------------------------------------------------------------------------------------

pick_controller_port() {
  local p
  if [ -n "$controller_port" ]; then echo "$controller_port"; return; fi
  # Keep the port a formatted directory was created with (the static voter set names it).
  p="$(sed -n 's|^controller.quorum.voters=1@127.0.0.1:\([0-9]*\)$|\1|p' "$dir/server.properties" 2>/dev/null)"
  if [ -n "$p" ] && [ "$p" != "$port" ] && ! port_taken "$p"; then echo "$p"; return; fi
  for ((p = port + 1; p < port + 100; p++)); do
    [ "$p" = "${controller_port_skip:-}" ] && continue
    port_taken "$p" || { echo "$p"; return; }
  done
  die "no free controller port above $port"
}

write_properties() {
  local cport="$1" proto=PLAINTEXT sasl_lines=""
  if [ -n "$sasl_user" ]; then
    [ -n "$sasl_password" ] || die "COLDSTART_KAFKA_SASL_USERNAME is set but COLDSTART_KAFKA_SASL_PASSWORD is not"
    [[ "$sasl_user$sasl_password" != *[\"\\]* ]] || die "SASL username/password must not contain quotes or backslashes"
    proto=SASL_PLAINTEXT
    sasl_lines="
sasl.enabled.mechanisms=PLAIN
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"$sasl_user\" password=\"$sasl_password\" user_$sasl_user=\"$sasl_password\";"
  fi
  # A static single-voter quorum works the same on 3.9 and 4.x (no --standalone/dynamic quorum needed).
  cat >"$dir/server.properties" <<EOF
# Written by deploy/kafka/kafka.sh for Apache Kafka $version; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=$proto://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=$proto://127.0.0.1:$port
listener.security.protocol.map=$proto:$proto,CONTROLLER:PLAINTEXT
inter.broker.listener.name=$proto
controller.listener.names=CONTROLLER$sasl_lines
log.dirs=$dir/data
# Topics must be created explicitly (tests catch a missing creation).
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# On restart the controller keeps the previous run's broker registration until its session expires
# (default 9 s) before the broker may re-register; a short session makes restarts quick.
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=4000
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
log.segment.bytes=67108864
EOF
}

format_storage() {
  local java="$1" cid
  [ -f "$dir/data/meta.properties" ] && return 0
  # A cluster id is 16 random bytes, base64url without padding; one starting with '-' would read as a flag.
  cid="-"
  while [[ "$cid" == -* ]]; do
    cid="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)"
  done
  # Same class and arguments on 3.9 and 4.x: kafka.tools.StorageTool (in kafka_2.13) with a static quorum.
  if ! "$java" -Xmx256m -cp "$libs/*" "${log_opts[@]}" kafka.tools.StorageTool \
        format -t "$cid" -c "$dir/server.properties" >>"$log" 2>&1; then
    log_tail
    die "formatting $dir/data failed"
  fi
  echo "$version" >"$dir/version"
}

start() {
  local pid java cport deadline
  if pid="$(broker_pid)"; then
    echo "kafka.sh: already running (pid $pid, port $(configured_port), $dir)"
    return 0
  fi
  if listening "$port"; then
    die "port $port on 127.0.0.1 is in use by another process; choose another with --port or COLDSTART_KAFKA_PORT"
  fi
  if [ -f "$dir/version" ] && [ "$(cat "$dir/version")" != "$version" ]; then
    echo "kafka.sh: note: $dir was formatted by Kafka $(cat "$dir/version"), starting $version on it" >&2
  fi
  java="$(java_bin)"
  fetch
  if [ "$major" -ge 4 ]; then
    log_opts=("-Dlog4j2.configurationFile=$here/log4j2.xml")
  else
    log_opts=("-Dlog4j.configuration=file:$here/log4j.properties")
  fi
  local attempt fresh
  for attempt in 1 2 3; do
    fresh=0
    [ -f "$dir/data/meta.properties" ] || fresh=1
    cport="$(pick_controller_port)"
    write_properties "$cport"
    : >"$log"
    format_storage "$java"
    # setsid: the broker outlives the shell (and the terminal's Ctrl-C) that started it.
    setsid "$java" -Xms128m -Xmx"$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
      "${log_opts[@]}" -Dkafka.logs.dir="$dir/logs" \
      -cp "$libs/*" kafka.Kafka "$dir/server.properties" </dev/null >>"$log" 2>&1 &
    pid=$!
    echo "$pid" >"$pidfile"
    deadline=$((SECONDS + start_timeout))
    while :; do
      if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$pidfile"
        # A port taken between the check and the JVM's bind (an outgoing connection's ephemeral port):
        # a fresh directory may try again on another controller port; the data of a restart is kept.
        if [ "$attempt" -lt 3 ] && [ "$fresh" = 1 ] && [ -z "$controller_port" ] && grep -q "BindException" "$log"; then
          echo "kafka.sh: a port was taken while Kafka started; retrying with another controller port" >&2
          rm -rf "$dir/data" "$dir/server.properties"
          controller_port_skip="$cport"
          continue 2
        fi
        log_tail
        die "Kafka $version exited during startup"
      fi
      if listening "$port" && grep -q "Kafka Server started" "$log"; then
        break 2
      fi
      if [ "$SECONDS" -ge "$deadline" ]; then
        log_tail
        stop >/dev/null || true
        die "Kafka $version did not answer on 127.0.0.1:$port within ${start_timeout}s"
      fi
      sleep 0.2
    done
  done
  echo "kafka.sh: Kafka $version running (pid $pid) at 127.0.0.1:$port, controller 127.0.0.1:$cport, dir $dir"
}

# ---- stop / status -------------------------------------------------------------------------------

stop() {
  local pid deadline
  if ! pid="$(broker_pid)"; then
    rm -f "$pidfile"
    echo "kafka.sh: not running ($dir)"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + stop_timeout))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "kafka.sh: pid $pid still alive after ${stop_timeout}s, sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  rm -f "$pidfile"
  echo "kafka.sh: stopped (pid $pid, $dir)"
}

status() {
  local pid
  if pid="$(broker_pid)"; then
    local running_version
    running_version="$(tr '\0' '\n' <"/proc/$pid/cmdline" | sed -n 's|.*/kafka-\([0-9.]*\)/libs/\*$|\1|p' | head -n 1)"
    echo "running pid=$pid port=$(configured_port) version=${running_version:-?} dir=$dir"
    return 0
  fi
  echo "stopped dir=$dir"
  return 3
}

log_opts=()
case "$cmd" in
  fetch) fetch; echo "$libs" ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
esac
