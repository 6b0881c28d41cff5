#!/usr/bin/env bash
# Start a local 3-master Redis Cluster for the Redis backend's cluster tests,
# then print the URL of one node (MQUEUE_TEST_REDIS_CLUSTER_URL) on standard output.
#
#   url=$(bash .ci/services-redis-cluster.sh) && export MQUEUE_TEST_REDIS_CLUSTER_URL="$url"
#   bash .ci/services-redis-cluster.sh stop     # stop the nodes this script started
#
# - Three redis-server processes in cluster mode (`cluster-enabled yes`) on
#   127.0.0.1 only, on three free ports from MQUEUE_REDIS_CLUSTER_PORT (7391) up,
#   daemonized, no persistence (no RDB, no AOF), files in a private directory;
#   joined by `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes`;
#   ready when every node reports `cluster_state:ok`.
# - Idempotent: when the nodes of a previous start still answer with
#   `cluster_state:ok`, they are reused; `stop` stops only the nodes it started.
# - Uses Debian's redis-server package (installed with apt-get when missing;
#   must then run as root).  Every message except the URL goes to standard error.
#
# Overridable: MQUEUE_REDIS_CLUSTER_PORT (7391), MQUEUE_REDIS_CLUSTER_DIR
# (/tmp/mqueue-ci-redis-cluster: pid files, logs, nodes-*.conf, the port list).
set -euo pipefail

BASE=${MQUEUE_REDIS_CLUSTER_PORT:-7391}
DIR=${MQUEUE_REDIS_CLUSTER_DIR:-/tmp/mqueue-ci-redis-cluster}
PORTS_FILE="$DIR/ports"

LOG_NAME=services-redis-cluster
# shellcheck source=.ci/lib-redis.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-redis.sh"
cluster_ok() { cli "$1" CLUSTER INFO | tr -d '\r' | grep -qx 'cluster_state:ok'; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop_nodes() {
    [ -f "$PORTS_FILE" ] || { log "no $PORTS_FILE: nothing of ours to stop"; return 0; }
    for p in $(cat "$PORTS_FILE"); do
        pidfile="$DIR/redis-$p.pid"
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping cluster node (pid $pid) on port $p"
            redis_stop "$p" "$pid"
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
        fi
        rm -f "$pidfile"
    done
    rm -f "$PORTS_FILE" "$DIR"/nodes-*.conf
}

if [ "${1:-start}" = stop ]; then
    stop_nodes
    exit 0
fi

redis_install

mkdir -p "$DIR"
chmod 700 "$DIR"

# Reuse a cluster of ours that is still up.
if [ -f "$PORTS_FILE" ]; then
    ok=1
    for p in $(cat "$PORTS_FILE"); do ping "$p" && cluster_ok "$p" || ok=0; done
    if [ "$ok" = 1 ]; then
        log "the cluster on ports $(tr '\n' ' ' <"$PORTS_FILE")is up; reusing it"
        printf 'redis://127.0.0.1:%s/0\n' "$(head -n1 "$PORTS_FILE")"
        exit 0
    fi
    stop_nodes
fi

ports=()
p=$BASE
while [ "${#ports[@]}" -lt 3 ]; do
    if [ "$p" -gt $((BASE + 200)) ]; then log "no three free ports from $BASE"; exit 1; fi
    # a cluster node also listens on port + 10000 (the cluster bus)
    if port_free "$p" && port_free $((p + 10000)); then ports+=("$p"); fi
    p=$((p + 1))
done
printf '%s\n' "${ports[@]}" >"$PORTS_FILE"

for p in "${ports[@]}"; do
    rm -f "$DIR/nodes-$p.conf"
    redis-server --bind 127.0.0.1 --port "$p" --daemonize yes \
        --pidfile "$DIR/redis-$p.pid" --logfile "$DIR/redis-$p.log" --dir "$DIR" \
        --cluster-enabled yes --cluster-config-file "nodes-$p.conf" \
        --cluster-node-timeout 5000 --save '' --appendonly no --protected-mode yes >&2
done
for p in "${ports[@]}"; do
    redis_wait_ping "$p" "$DIR/redis-$p.log" "node on port $p"
done

log "creating the cluster on ports ${ports[*]}"
redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null 2>"$DIR/create.log" || {
    log "redis-cli --cluster create failed:"; cat "$DIR/create.log" >&2; exit 1; }

for p in "${ports[@]}"; do
    for _ in $(seq 200); do cluster_ok "$p" && break; sleep 0.1; done
    if ! cluster_ok "$p"; then
        log "node on port $p does not report cluster_state:ok after 20 s"
        exit 1
    fi
done
printf 'redis://127.0.0.1:%s/0\n' "${ports[0]}"
