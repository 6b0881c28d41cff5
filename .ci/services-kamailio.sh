#!/usr/bin/env bash
# Install Debian's Kamailio (5.6 on bookworm) and its SQLite module for the
# differential tests (tests/test_kamailio_real.py), which start and stop their own
# Kamailio processes on loopback: this script starts nothing.  Also tmux, which the
# tests of `mqueue top` drive (tests/test_top.py).
#
#   bash .ci/services-kamailio.sh
#
# - Idempotent: when tmux, the kamailio binary and the modules the tests load
#   are present, it does nothing.
# - Quiet: apt-get's output goes to a log, shown only when the install fails.
#   Messages go to standard error. Installing needs root.
# - The package's own service is not started: a policy-rc.d that denies starts
#   is in place during the install (and removed after, unless one was there).
set -euo pipefail

log() { printf 'services-kamailio: %s\n' "$*" >&2; }

MODULES="jsonrpcs sl textops pv mqueue db_sqlite"

have_all() {
    command -v tmux >/dev/null 2>&1 || return 1
    command -v kamailio >/dev/null 2>&1 || [ -x /usr/sbin/kamailio ] || return 1
    local d m
    for d in /usr/lib/*/kamailio/modules /usr/lib/kamailio/modules; do
        [ -d "$d" ] || continue
        for m in $MODULES; do
            [ -f "$d/$m.so" ] || continue 2
        done
        return 0
    done
    return 1
}

if have_all; then
    log "Kamailio, its modules and tmux are installed"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    log "Kamailio or tmux is missing and installing needs root: apt-get install kamailio kamailio-sqlite-modules tmux"
    exit 1
fi

aptlog=$(mktemp /tmp/mqueue-ci-kamailio-apt.XXXXXX)
policy=/usr/sbin/policy-rc.d
made_policy=
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
fi
cleanup() {
    [ -n "$made_policy" ] && rm -f "$policy"
    rm -f "$aptlog"
}
trap cleanup EXIT

log "installing kamailio kamailio-sqlite-modules tmux"
if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           kamailio kamailio-sqlite-modules tmux; } >"$aptlog" 2>&1; then
    cat "$aptlog" >&2
    log "apt-get failed"
    exit 1
fi
if ! have_all; then
    log "installed, but tmux, the kamailio binary or one of the modules ($MODULES) is still missing"
    exit 1
fi
log "installed $(kamailio -v 2>/dev/null | head -n1)"
