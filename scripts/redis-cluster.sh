#!/usr/bin/env bash
# Start or stop the three-node local Redis Cluster the Redis test suites run
# against (ports 7000-7002, no replicas, nothing persisted).
#
#   scripts/redis-cluster.sh start   # idempotent: reuses a healthy cluster
#   scripts/redis-cluster.sh stop
#
# Node files live under ${PORTCULLIS_CLUSTER_DIR:-/tmp/portcullis-redis-cluster}.
set -euo pipefail

PORTS=(7000 7001 7002)
DIR="${PORTCULLIS_CLUSTER_DIR:-/tmp/portcullis-redis-cluster}"

cluster_ok() {
    redis-cli -p "${PORTS[0]}" cluster info 2>/dev/null | grep -q '^cluster_state:ok'
}

start() {
    command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
    if cluster_ok; then
        echo "redis cluster already running on ${PORTS[*]}"
        return
    fi
    stop quiet
    mkdir -p "$DIR"
    for port in "${PORTS[@]}"; do
        rm -rf "${DIR:?}/$port"
        mkdir -p "$DIR/$port"
        redis-server --port "$port" --bind 127.0.0.1 --daemonize yes \
            --cluster-enabled yes --cluster-config-file "$DIR/$port/nodes.conf" \
            --cluster-node-timeout 5000 --save "" --appendonly no \
            --dir "$DIR/$port" --logfile "$DIR/$port/redis.log" \
            --pidfile "$DIR/$port/redis.pid"
    done
    for port in "${PORTS[@]}"; do
        for _ in $(seq 1 50); do
            redis-cli -p "$port" ping >/dev/null 2>&1 && break
            sleep 0.1
        done
    done
    local nodes=()
    for port in "${PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
    for _ in $(seq 1 100); do
        cluster_ok && { echo "redis cluster up on ${PORTS[*]}"; return; }
        sleep 0.1
    done
    echo "redis cluster did not reach state ok" >&2
    exit 1
}

stop() {
    for port in "${PORTS[@]}"; do
        redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    done
    rm -rf "${DIR:?}"
    [ "${1:-}" = quiet ] || echo "redis cluster stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
