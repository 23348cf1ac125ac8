#!/usr/bin/env bash
# Debian's PostgreSQL 15 for the test suite, written once for CI and `make test-pg15`.
#
#   .ci/pg15.sh install        apt-get update && apt-get install -y postgresql (root only)
#   .ci/pg15.sh run CMD...     start a throwaway cluster, run CMD with
#                              PERPBOT_TEST_DATABASE_URL pointing at it, stop the
#                              cluster and delete it; exit with CMD's exit code
#
# The throwaway cluster lives in a fresh temporary directory: initdb with SCRAM
# and a random password for the `postgres` role, listening on 127.0.0.1 and a
# free port, with its Unix socket in that directory.  It never touches the
# Debian default cluster or systemd.  As root the server runs as the `postgres`
# user (via runuser); as anyone else it runs as the calling user.
#
# PG15_BIN overrides where the PostgreSQL 15 binaries are
# (default /usr/lib/postgresql/15/bin, where Debian's postgresql-15 puts them).
set -euo pipefail

PG15_BIN=${PG15_BIN:-/usr/lib/postgresql/15/bin}
PG_USER=postgres

log() { printf '[pg15] %s\n' "$*" >&2; }
die() {
    printf '[pg15] error: %s\n' "$*" >&2
    exit 1
}

install_pg15() {
    [[ $EUID -eq 0 ]] || die "installing PostgreSQL needs root: run 'sudo apt-get install postgresql'"
    command -v apt-get >/dev/null || die "apt-get not found: install PostgreSQL 15 yourself and set PG15_BIN"
    export DEBIAN_FRONTEND=noninteractive
    log "apt-get update"
    apt-get update -q
    log "apt-get install -y postgresql"
    apt-get install -y -q postgresql
    [[ -x $PG15_BIN/postgres ]] || die "apt installed postgresql, but $PG15_BIN/postgres does not exist"
    log "installed: $("$PG15_BIN/postgres" --version)"
}

# Run a PostgreSQL binary as the cluster owner, from a directory it can read.
as_owner() {
    if [[ $EUID -eq 0 ]]; then
        (cd "$WORK" && runuser -u "$PG_USER" -- "$@")
    else
        (cd "$WORK" && "$@")
    fi
}

free_port() {
    python3 - <<'EOF'
import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
EOF
}

WORK=""
DATA=""
cleanup() {
    local rc=$?
    if [[ -n $DATA && -f $DATA/postmaster.pid ]]; then
        log "stopping the throwaway cluster"
        as_owner "$PG15_BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null 2>&1 ||
            as_owner "$PG15_BIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [[ -n $WORK ]]; then
        rm -rf -- "$WORK" || true
    fi
    exit "$rc"
}

run_with_pg15() {
    (($# > 0)) || die "usage: $0 run COMMAND [ARGS...]"
    if [[ ! -x $PG15_BIN/initdb ]]; then
        if [[ $EUID -eq 0 ]]; then
            install_pg15
        else
            die "$PG15_BIN/initdb not found: run 'sudo apt-get install postgresql' (or set PG15_BIN)"
        fi
    fi
    if [[ $EUID -eq 0 ]] && ! id -u "$PG_USER" >/dev/null 2>&1; then
        die "user '$PG_USER' does not exist (the postgresql package creates it)"
    fi

    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP

    WORK=$(mktemp -d "${TMPDIR:-/tmp}/perpbot-pg15.XXXXXX")
    chmod 0755 "$WORK" # the cluster owner must be able to enter it
    if [[ $EUID -eq 0 ]] && ! runuser -u "$PG_USER" -- test -x "$WORK"; then
        log "user $PG_USER cannot enter $WORK (a parent lacks o+x); using /tmp instead"
        rm -rf -- "$WORK"
        WORK=$(mktemp -d /tmp/perpbot-pg15.XXXXXX)
        chmod 0755 "$WORK"
    fi
    DATA=$WORK/data
    local sock=$WORK/socket pwfile=$WORK/pwfile logfile=$WORK/postgres.log password
    mkdir -m 0700 "$DATA" "$sock"
    password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    (umask 077 && printf '%s\n' "$password" >"$pwfile")
    : >"$logfile"
    if [[ $EUID -eq 0 ]]; then
        chown "$PG_USER:" "$DATA" "$sock" "$pwfile" "$logfile"
    fi

    log "initdb $DATA ($("$PG15_BIN/postgres" --version))"
    as_owner "$PG15_BIN/initdb" -D "$DATA" -U postgres --auth=scram-sha-256 \
        --pwfile="$pwfile" -E UTF8 --locale=C >"$WORK/initdb.log" 2>&1 || {
        cat "$WORK/initdb.log" >&2
        die "initdb failed"
    }
    rm -f -- "$pwfile"

    # Pick a free port; retry if another process grabs it before the server binds.
    local port="" attempt
    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        log "starting on 127.0.0.1:$port (attempt $attempt)"
        if as_owner "$PG15_BIN/pg_ctl" -D "$DATA" -l "$logfile" -w -t 60 \
            -o "-p $port -k $sock -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            start >/dev/null; then
            break
        fi
        port=""
        if ! grep -q 'could not bind\|Address already in use' "$logfile"; then
            break
        fi
    done
    if [[ -z $port ]]; then
        cat "$logfile" >&2
        die "the throwaway PostgreSQL 15 cluster did not start"
    fi

    local version
    version=$(PGPASSWORD=$password "$PG15_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres \
        -d postgres -XAtqc 'SELECT version()') || {
        cat "$logfile" >&2
        die "cannot connect to the throwaway cluster with its password"
    }
    log "server: $version"

    export PERPBOT_TEST_DATABASE_URL="postgresql+psycopg://postgres:$password@127.0.0.1:$port/postgres"
    log "running: $*"
    local rc=0
    "$@" || rc=$?
    if ((rc != 0)); then
        log "command exited with $rc; last lines of the server log:"
        tail -n 30 "$logfile" >&2 || true
    fi
    exit "$rc"
}

case "${1:-}" in
install) install_pg15 ;;
run)
    shift
    run_with_pg15 "$@"
    ;;
*)
    echo "usage: $0 install | run COMMAND [ARGS...]" >&2
    exit 2
    ;;
esac
