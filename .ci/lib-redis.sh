# Shell functions shared by .ci/services-redis.sh and .ci/services-redis-cluster.sh
# (sourced, not run).  The sourcing script sets LOG_NAME, the prefix of its
# messages; every message goes to standard error.

log() { printf '%s: %s\n' "$LOG_NAME" "$*" >&2; }
cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}" 2>/dev/null; }
# True when the server on port $1 answers PING.
ping() { cli "$1" PING | grep -q PONG; }

# Installs Debian's redis-server package when redis-server or redis-cli is
# missing (as root only; otherwise fails).
redis_install() {
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        if [ "$(id -u)" != 0 ]; then
            log "redis-server is not installed and we are not root: cannot apt-get install it"
            return 1
        fi
        log "installing Debian's redis-server package"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq redis-server >&2
    fi
}

# Waits up to 10 s for the server on port $1 to answer PING; when it does not,
# says so ($3: what it is) with the end of its log file $2, and fails.
redis_wait_ping() {
    for _ in $(seq 100); do ping "$1" && break; sleep 0.1; done
    if ! ping "$1"; then
        log "$3 did not answer PING within 10 s; its log:"
        tail -n 20 "$2" >&2 || true
        return 1
    fi
}

# Stops the running server of pid $2 on port $1 (SHUTDOWN NOSAVE, else
# SIGTERM) and waits up to 5 s for it to exit; true whether or not it has.
redis_stop() {
    cli "$1" SHUTDOWN NOSAVE >/dev/null || kill "$2" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$2" 2>/dev/null || break; sleep 0.1; done
    return 0
}
