#!/usr/bin/env bash
# Install (if needed) and start a local PostgreSQL server for the persistence
# tests, then print the URL to use as MQUEUE_TEST_PG_URL on standard output.
#
#   url=$(bash .ci/services-postgres.sh) && export MQUEUE_TEST_PG_URL="$url"
#
# - Uses Debian's `postgresql` package and its cluster tools (pg_lsclusters,
#   pg_createcluster, pg_ctlcluster); must run as root.
# - Idempotent and quick when already done: it installs only when no server
#   binaries are found, creates a cluster only when none exists, starts it only
#   when it is down, and creates the role and database only when missing.
# - The server listens on 127.0.0.1 only (Debian's default listen_addresses is
#   'localhost'); the role gets a password and logs in over TCP (scram-sha-256,
#   Debian's default pg_hba.conf for 127.0.0.1).
# - Exports nothing; every message except the final URL goes to standard error.
#   Stop the server with:  pg_ctlcluster <version> <cluster> stop
#
# Overridable through the environment: MQUEUE_PG_USER (mqueue),
# MQUEUE_PG_PASSWORD (mqueue), MQUEUE_PG_DB (mqueue_test); they go into the URL as
# they are, so keep them URL-safe (letters, digits, `_`, `-`, `.`).
set -euo pipefail

PG_USER=${MQUEUE_PG_USER:-mqueue}
PG_PASSWORD=${MQUEUE_PG_PASSWORD:-mqueue}
PG_DB=${MQUEUE_PG_DB:-mqueue_test}

log() { printf 'services-postgres: %s\n' "$*" >&2; }

newest_version() {
    # Highest installed server major version, or nothing.
    local d v best=""
    for d in /usr/lib/postgresql/*/bin/postgres; do
        [ -x "$d" ] || continue
        v=${d#/usr/lib/postgresql/}
        v=${v%%/*}
        if [ -z "$best" ] || [ "$v" -gt "$best" ] 2>/dev/null; then best=$v; fi
    done
    printf '%s' "$best"
}

if [ "$(id -u)" != 0 ]; then
    log "must run as root (apt-get, pg_ctlcluster)"
    exit 1
fi

PG_VERSION=$(newest_version)
if [ -z "$PG_VERSION" ] || ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    PG_VERSION=$(newest_version)
    if [ -z "$PG_VERSION" ]; then
        log "postgresql installed but no server binary found under /usr/lib/postgresql"
        exit 1
    fi
fi

# Pick (or create) a cluster of that version.
cluster_line() { pg_lsclusters --no-header 2>/dev/null | awk -v v="$PG_VERSION" '$1 == v' | head -n 1; }
line=$(cluster_line)
if [ -z "$line" ]; then
    log "creating cluster $PG_VERSION/main"
    pg_createcluster "$PG_VERSION" main >&2
    line=$(cluster_line)
fi
PG_CLUSTER=$(awk '{print $2}' <<<"$line")
PG_PORT=$(awk '{print $3}' <<<"$line")
PG_STATUS=$(awk '{print $4}' <<<"$line")

if [ "$PG_STATUS" != "online" ]; then
    log "starting cluster $PG_VERSION/$PG_CLUSTER on port $PG_PORT"
    # A stale pid file left by a killed server would stop pg_ctl; it checks the
    # pid itself, so only remove the file when that process is gone.
    pidfile=/var/lib/postgresql/$PG_VERSION/$PG_CLUSTER/postmaster.pid
    if [ -f "$pidfile" ] && ! kill -0 "$(head -n 1 "$pidfile")" 2>/dev/null; then
        rm -f "$pidfile"
    fi
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start >&2
fi

# Wait (bounded) until it accepts connections on 127.0.0.1.
for _ in $(seq 1 60); do
    if pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then break; fi
    sleep 0.5
done
if ! pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; then
    log "server did not become ready on 127.0.0.1:$PG_PORT"
    exit 1
fi

psql_admin() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" "$@"; }
sql_literal() { printf "'%s'" "${1//\'/\'\'}"; }
sql_ident() { printf '"%s"' "${1//\"/\"\"}"; }

if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = $(sql_literal "$PG_USER")")" != 1 ]; then
    log "creating role $PG_USER"
    psql_admin -c "CREATE ROLE $(sql_ident "$PG_USER") LOGIN PASSWORD $(sql_literal "$PG_PASSWORD")" >&2
fi
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = $(sql_literal "$PG_DB")")" != 1 ]; then
    log "creating database $PG_DB"
    psql_admin -c "CREATE DATABASE $(sql_ident "$PG_DB") OWNER $(sql_ident "$PG_USER") ENCODING 'UTF8' TEMPLATE template0" >&2
fi

printf 'postgresql://%s:%s@127.0.0.1:%s/%s\n' "$PG_USER" "$PG_PASSWORD" "$PG_PORT" "$PG_DB"
