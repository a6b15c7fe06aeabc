#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft, broker + controller in one JVM) for development, tests
# and the demo. The broker jars come from Maven Central through deploy/local/pom.xml.
#
#   deploy/local/kafka.sh fetch    download the pinned broker jars into deploy/local/lib and Kafka's
#                                  tools jar into deploy/local/lib/tools (idempotent)
#   deploy/local/kafka.sh start    format storage if needed, start in the background, wait until it answers
#   deploy/local/kafka.sh stop     SIGTERM, wait for exit, SIGKILL if it does not stop in time
#   deploy/local/kafka.sh status   "running" (exit 0) or "stopped" (exit 3)
#   deploy/local/kafka.sh log      print the end of the broker log
#
# Environment:
#   KAFKA_PORT             client listener on 127.0.0.1 (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener (default: a free port, kept for the data dir)
#   KAFKA_DATA_DIR         instance directory (default <repo>/.kafka/data): holds server.properties,
#                          kafka.pid, server.log and the partition data under logs/
#   KAFKA_HEAP_OPTS        JVM heap (default "-Xms128m -Xmx512m")
#   KAFKA_START_TIMEOUT    seconds to wait for the broker to answer (default 60)
#   KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL (default 30)
#   JAVA_HOME              Java 17 or newer (default: java on PATH)
#   KAFKA_SASL_PORT        with KAFKA_SASL_USERS: an extra SASL_PLAINTEXT listener on 127.0.0.1
#                          (default: none; the PLAINTEXT listener stays as it is either way)
#   KAFKA_SSL_PORT         with KAFKA_SASL_USERS and KAFKA_SSL_KEYSTORE: an extra SASL_SSL listener
#   KAFKA_SASL_USERS       "user:password[,user:password...]" (letters, digits, . _ -) accepted by
#                          PLAIN and SCRAM-SHA-256 on those listeners. PLAIN users are re-read on
#                          each start; SCRAM users are stored when the storage is formatted, so a
#                          data dir formatted without them has none (use a fresh KAFKA_DATA_DIR)
#   KAFKA_SSL_KEYSTORE     PKCS12 file with the broker's key and certificate (for KAFKA_SSL_PORT)
#   KAFKA_SSL_KEYSTORE_PASSWORD  its store and key password
#
# Several brokers can run at once with different KAFKA_PORT and KAFKA_DATA_DIR.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LIB="$HERE/lib"
PORT=${KAFKA_PORT:-9092}
DATA_DIR=${KAFKA_DATA_DIR:-$ROOT/.kafka/data}
START_TIMEOUT=${KAFKA_START_TIMEOUT:-60}
STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}
SASL_PORT=${KAFKA_SASL_PORT:-}
SASL_USERS=${KAFKA_SASL_USERS:-}
SSL_PORT=${KAFKA_SSL_PORT:-}
SSL_KEYSTORE=${KAFKA_SSL_KEYSTORE:-}
SSL_KEYSTORE_PASSWORD=${KAFKA_SSL_KEYSTORE_PASSWORD:-}
PYTHON=${PYTHON:-python3}
if [ -n "${JAVA_HOME:-}" ]; then JAVA="$JAVA_HOME/bin/java"; else JAVA=java; fi

log() { echo "kafka.sh: $*" >&2; }
die() { log "$*"; exit 1; }

pom_stamp() { echo "$LIB/.fetched-$(sha256sum "$HERE/pom.xml" | cut -c1-16)"; }

cmd_fetch() {
    local stamp
    stamp=$(pom_stamp)
    [ -f "$stamp" ] && return 0
    command -v mvn >/dev/null || die "Maven (mvn) is not installed; run scripts/bootstrap.sh"
    log "fetching the Kafka broker jars with Maven into $LIB"
    rm -rf "$LIB"
    mkdir -p "$LIB"
    local out
    out=$(mktemp)
    if ! mvn -B -q -Dstyle.color=never -f "$HERE/pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$LIB" >"$out" 2>&1; then
        cat "$out" >&2
        rm -rf "$LIB" "$out"
        die "Maven could not fetch the broker jars"
    fi
    # Kafka's tools (ProducerPerformance for the benchmarks) in lib/tools: not on the broker's
    # classpath (lib/*); a tool runs with "lib/*:lib/tools/*".
    if ! mvn -B -q -Dstyle.color=never -f "$HERE/pom.xml" dependency:copy-dependencies@tools \
        -DoutputDirectory="$LIB/tools" >"$out" 2>&1; then
        cat "$out" >&2
        rm -rf "$LIB" "$out"
        die "Maven could not fetch the kafka-tools jar"
    fi
    rm -f "$out"
    touch "$stamp"
}

# Set $abs_data_dir and $pid_file; only `start` creates the directory.
resolve_dirs() {
    [ "${1:-}" = create ] && mkdir -p "$DATA_DIR"
    if [ -d "$DATA_DIR" ]; then
        abs_data_dir=$(cd "$DATA_DIR" && pwd)
    else
        abs_data_dir=$(realpath -m "$DATA_DIR")
    fi
    pid_file="$abs_data_dir/kafka.pid"
}

# The pid of this data dir's broker if it is alive, else nothing.
running_pid() {
    local pid
    [ -f "$pid_file" ] || return 0
    pid=$(cat "$pid_file" 2>/dev/null || true)
    [ -n "$pid" ] || return 0
    # A pid recorded long ago may belong to another process now: check it is our JVM.
    if [ -r "/proc/$pid/cmdline" ] &&
        tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF -- "-Dkafka.instance.dir=$abs_data_dir"; then
        echo "$pid"
    fi
}

free_port() {
    "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_in_use() {
    "$PYTHON" -c 'import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)' "$1"
}

show_log_tail() {
    local f
    for f in "$abs_data_dir/server.log" "$abs_data_dir/kafka.out"; do
        if [ -s "$f" ]; then
            echo "---- last lines of $f ----" >&2
            tail -n 40 "$f" >&2
        fi
    done
}

java_check() {
    command -v "$JAVA" >/dev/null || die "Java not found ($JAVA); run scripts/bootstrap.sh"
    local major
    major=$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
    [ "${major%%.*}" -ge 17 ] 2>/dev/null || die "Kafka 4 needs Java 17 or newer, found '$major' ($JAVA)"
}

# Check KAFKA_SASL_* / KAFKA_SSL_*; set $sasl_names and $sasl_passwords (same order).
sasl_check() {
    sasl_names=() sasl_passwords=()
    [ -n "$SASL_PORT$SSL_PORT$SASL_USERS" ] || return 0
    [ -n "$SASL_PORT$SSL_PORT" ] && [ -n "$SASL_USERS" ] ||
        die "KAFKA_SASL_USERS goes with KAFKA_SASL_PORT and/or KAFKA_SSL_PORT (set both or neither)"
    local p
    for p in "$SASL_PORT" "$SSL_PORT"; do
        [ -z "$p" ] || { [[ "$p" =~ ^[0-9]+$ ]] && [ "$p" != "$PORT" ]; } ||
            die "KAFKA_SASL_PORT/KAFKA_SSL_PORT must be port numbers other than KAFKA_PORT, got '$p'"
    done
    [ -z "$SASL_PORT" ] || [ "$SASL_PORT" != "$SSL_PORT" ] ||
        die "KAFKA_SASL_PORT and KAFKA_SSL_PORT are both $SSL_PORT"
    if [ -n "$SSL_PORT" ]; then
        [ -f "$SSL_KEYSTORE" ] && [ -n "$SSL_KEYSTORE_PASSWORD" ] ||
            die "KAFKA_SSL_PORT needs KAFKA_SSL_KEYSTORE (a PKCS12 file) and KAFKA_SSL_KEYSTORE_PASSWORD"
    fi
    local entry entries
    IFS=, read -ra entries <<<"$SASL_USERS"
    for entry in "${entries[@]}"; do
        [[ "$entry" =~ ^([A-Za-z0-9._-]+):([A-Za-z0-9._-]+)$ ]] ||
            die "KAFKA_SASL_USERS entry '${entry%%:*}:...' is not user:password (letters, digits, . _ -)"
        sasl_names+=("${BASH_REMATCH[1]}")
        sasl_passwords+=("${BASH_REMATCH[2]}")
    done
}

# The SASL listeners' lines of server.properties (nothing without KAFKA_SASL_PORT/KAFKA_SSL_PORT).
sasl_config() {
    [ -n "$SASL_PORT$SSL_PORT" ] || return 0
    local plain_users="" i name names=()
    for i in "${!sasl_names[@]}"; do
        plain_users+=" user_${sasl_names[$i]}=\"${sasl_passwords[$i]}\""
    done
    [ -z "$SASL_PORT" ] || names+=(sasl_plaintext)
    [ -z "$SSL_PORT" ] || names+=(sasl_ssl)
    echo "# SASL listeners (KAFKA_SASL_PORT, KAFKA_SSL_PORT): PLAIN users here, SCRAM users stored at format."
    echo "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256"
    for name in "${names[@]}"; do
        echo "listener.name.$name.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required${plain_users};"
        echo "listener.name.$name.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
    done
    if [ -n "$SSL_PORT" ]; then
        echo "ssl.keystore.type=PKCS12"
        echo "ssl.keystore.location=$(realpath "$SSL_KEYSTORE")"
        echo "ssl.keystore.password=$SSL_KEYSTORE_PASSWORD"
        echo "ssl.key.password=$SSL_KEYSTORE_PASSWORD"
    fi
}

write_config() {
    local controller_port=$1
    local listeners="PLAINTEXT://127.0.0.1:$PORT" protocols="PLAINTEXT:PLAINTEXT"
    if [ -n "$SASL_PORT" ]; then
        listeners+=",SASL_PLAINTEXT://127.0.0.1:$SASL_PORT"
        protocols+=",SASL_PLAINTEXT:SASL_PLAINTEXT"
    fi
    if [ -n "$SSL_PORT" ]; then
        listeners+=",SASL_SSL://127.0.0.1:$SSL_PORT"
        protocols+=",SASL_SSL:SASL_SSL"
    fi
    cat >"$abs_data_dir/server.properties" <<EOF
# Written by deploy/local/kafka.sh on each start: a single KRaft node (broker and controller).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=$listeners,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=$listeners
listener.security.protocol.map=$protocols,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$abs_data_dir/logs
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Tests kill consumers and want short session timeouts (client default stays 10 s or 45 s).
group.min.session.timeout.ms=1000
# A small machine: fewer threads than the defaults (3 network, 8 I/O).
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
    sasl_config >>"$abs_data_dir/server.properties"
}

cmd_start() {
    resolve_dirs create
    local pid
    pid=$(running_pid)
    if [ -n "$pid" ]; then
        log "already running (pid $pid) for $abs_data_dir"
        wait_until_answering "$pid"
        return 0
    fi
    sasl_check
    cmd_fetch
    java_check
    if port_in_use "$PORT"; then
        die "port $PORT on 127.0.0.1 is already in use (set KAFKA_PORT)"
    fi
    local extra
    for extra in "$SASL_PORT" "$SSL_PORT"; do
        if [ -n "$extra" ] && port_in_use "$extra"; then
            die "port $extra on 127.0.0.1 is already in use (set KAFKA_SASL_PORT/KAFKA_SSL_PORT)"
        fi
    done

    local controller_port=${KAFKA_CONTROLLER_PORT:-}
    if [ -z "$controller_port" ] && [ -f "$abs_data_dir/controller.port" ]; then
        controller_port=$(cat "$abs_data_dir/controller.port")
    fi
    if [ -z "$controller_port" ]; then
        # a free port that none of this broker's listeners uses (the kernel can hand out the
        # same free port twice in a row)
        local tries=0
        controller_port=$(free_port)
        while [ "$controller_port" = "$PORT" ] || [ "$controller_port" = "${KAFKA_SASL_PORT:-}" ] \
            || [ "$controller_port" = "${KAFKA_SSL_PORT:-}" ]; do
            tries=$((tries + 1))
            [ "$tries" -lt 20 ] || die "found no free controller port"
            controller_port=$(free_port)
        done
    fi
    [ "$controller_port" != "$PORT" ] || die "controller port and client port are both $PORT"
    echo "$controller_port" >"$abs_data_dir/controller.port"
    write_config "$controller_port"

    local cp="$LIB/*"
    local jvm_opts=(
        -Dkafka.instance.dir="$abs_data_dir"
        -Dkafka.logs.dir="$abs_data_dir"
        -Dlog4j2.configurationFile="$HERE/log4j2.xml"
        -Djava.awt.headless=true
        $HEAP_OPTS
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
    )

    if [ ! -f "$abs_data_dir/logs/meta.properties" ]; then
        local cluster_id
        cluster_id=$("$PYTHON" -c 'import base64,uuid; print("k" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")[1:])')
        local scram=() i
        for i in "${!sasl_names[@]}"; do
            scram+=(--add-scram "SCRAM-SHA-256=[name=${sasl_names[$i]},password=${sasl_passwords[$i]}]")
        done
        log "formatting storage in $abs_data_dir/logs (cluster $cluster_id)"
        if ! "$JAVA" "${jvm_opts[@]}" -cp "$cp" kafka.tools.StorageTool format \
            -t "$cluster_id" -c "$abs_data_dir/server.properties" "${scram[@]}" \
            >"$abs_data_dir/format.out" 2>&1; then
            cat "$abs_data_dir/format.out" >&2
            die "formatting the storage failed"
        fi
    fi

    log "starting Kafka on 127.0.0.1:$PORT (controller $controller_port, data $abs_data_dir)"
    # setsid: the broker must not receive a terminal's Ctrl-C meant for the caller.
    setsid "$JAVA" "${jvm_opts[@]}" -cp "$cp" kafka.Kafka "$abs_data_dir/server.properties" \
        >"$abs_data_dir/kafka.out" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pid_file"
    wait_until_answering "$pid"
}

wait_until_answering() {
    local pid=$1 deadline=$((SECONDS + START_TIMEOUT))
    while true; do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log_tail
            rm -f "$pid_file"
            die "the broker exited during start-up"
        fi
        if "$PYTHON" "$HERE/probe.py" 127.0.0.1 "$PORT" 1 2>/dev/null; then
            log "Kafka answers on 127.0.0.1:$PORT (pid $pid)"
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_log_tail
            stop_pid "$pid"
            die "the broker did not answer on 127.0.0.1:$PORT within ${START_TIMEOUT}s; stopped it"
        fi
        sleep 0.25
    done
}

cmd_stop() {
    resolve_dirs
    local pid
    pid=$(running_pid)
    if [ -z "$pid" ]; then
        rm -f "$pid_file"
        log "not running ($abs_data_dir)"
        return 0
    fi
    stop_pid "$pid"
    log "stopped"
}

# SIGTERM, wait up to $STOP_TIMEOUT seconds, then SIGKILL; removes the pid file.
stop_pid() {
    local pid=$1
    log "stopping Kafka (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "still running after ${STOP_TIMEOUT}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$pid_file"
}

cmd_status() {
    resolve_dirs
    local pid
    pid=$(running_pid)
    if [ -n "$pid" ]; then
        local port
        port=$(sed -n 's#^advertised.listeners=PLAINTEXT://\([^,]*\).*#\1#p' "$abs_data_dir/server.properties" 2>/dev/null)
        echo "running pid=$pid bootstrap=$port data=$abs_data_dir"
        return 0
    fi
    echo "stopped data=$abs_data_dir"
    return 3
}

cmd_log() {
    resolve_dirs
    [ -f "$abs_data_dir/server.log" ] || die "no log in $abs_data_dir"
    tail -n "${1:-100}" "$abs_data_dir/server.log"
}

case "${1:-}" in
fetch) cmd_fetch ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
log) shift; cmd_log "$@" ;;
*)
    echo "usage: $0 fetch|start|stop|status|log [LINES]" >&2
    exit 2
    ;;
esac
