#!/usr/bin/env bash
# Install (if needed) and start a local redis-server for the Redis backend's
# tests, then print the URL to use as MQUEUE_TEST_REDIS_URL on standard output.
#
#   url=$(bash .ci/services-redis.sh) && export MQUEUE_TEST_REDIS_URL="$url"
#   bash .ci/services-redis.sh stop        # stop the server this script started
#
# - Uses Debian's `redis-server` package (installed with apt-get when the binary
#   is missing; must then run as root).
# - Idempotent: when a server already answers PING on the port, it is reused.
# - The server listens on 127.0.0.1 only, daemonized, with no persistence
#   (no RDB snapshots, no AOF), so a test run leaves nothing on disk.
# - Every message except the final URL goes to standard error.
#
# Overridable through the environment: MQUEUE_REDIS_PORT (6399),
# MQUEUE_REDIS_DIR (/tmp/mqueue-ci-redis: pid file, log, working directory).
set -euo pipefail

PORT=${MQUEUE_REDIS_PORT:-6399}
DIR=${MQUEUE_REDIS_DIR:-/tmp/mqueue-ci-redis}
PIDFILE="$DIR/redis-$PORT.pid"
URL="redis://127.0.0.1:$PORT/0"

LOG_NAME=services-redis
# shellcheck source=.ci/lib-redis.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-redis.sh"

if [ "${1:-start}" = stop ]; then
    if [ -f "$PIDFILE" ]; then
        pid=$(cat "$PIDFILE")
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping redis-server (pid $pid) on port $PORT"
            redis_stop "$PORT" "$pid"
        fi
        rm -f "$PIDFILE"
    else
        log "no pid file $PIDFILE: nothing of ours to stop"
    fi
    exit 0
fi

redis_install

mkdir -p "$DIR"
if ping "$PORT"; then
    log "a server already answers on 127.0.0.1:$PORT; reusing it"
else
    log "starting redis-server on 127.0.0.1:$PORT (no persistence)"
    redis-server --bind 127.0.0.1 --port "$PORT" --daemonize yes \
        --pidfile "$PIDFILE" --logfile "$DIR/redis-$PORT.log" --dir "$DIR" \
        --save '' --appendonly no --protected-mode yes >&2
    redis_wait_ping "$PORT" "$DIR/redis-$PORT.log" redis-server
fi
printf '%s\n' "$URL"
