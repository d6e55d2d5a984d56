#!/usr/bin/env bash
# A PostgreSQL cluster of a test's own, for tests that stop and restart the
# database (never the shared server on 5432). Loopback TCP only, no Unix
# socket, trust auth for user `postgres`, fsync off (test data only). Commits
# stay synchronous: an immediate stop is a process crash, and with fsync off
# the kernel still holds every WAL write, so an acknowledged commit survives
# it (synchronous_commit = off would drop the last ones, and the outage tests
# would blame the gateway for the database's loss).
#
#   scripts/pg-private.sh start DIR PORT   # initdb DIR/data on first use, start, wait until it accepts connections
#   scripts/pg-private.sh stop DIR         # immediate shutdown, as a crash (no checkpoint)
#   scripts/pg-private.sh destroy DIR      # stop if running, remove DIR
#
# The server runs as the `postgres` OS user when invoked as root (initdb
# refuses root), else as the caller; DIR's parents must be traversable by
# that user (mode 755, not the 700 of `mktemp -d`). Exit 3: the server binaries are missing
# (Debian: apt-get install postgresql).
set -euo pipefail

action=${1:?start|stop|destroy}
dir=${2:?data directory parent}
port=${3:-}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
    echo "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)" >&2
    exit 3
fi
data="$dir/data"

as_pg() {
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid=postgres --regid=postgres --init-groups "$@"
    else
        "$@"
    fi
}

running() { [ -f "$data/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$data" status >/dev/null 2>&1; }

case $action in
start)
    [ -n "$port" ] || { echo "start needs a PORT" >&2; exit 2; }
    mkdir -p "$dir"
    if [ ! -f "$data/PG_VERSION" ]; then
        mkdir -p "$data"
        [ "$(id -u)" = 0 ] && chown postgres: "$dir" "$data"
        chmod 700 "$data"
        ( cd "$dir" && as_pg "$PGBIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 \
            --no-instructions >"$dir/initdb.log" 2>&1 ) || { cat "$dir/initdb.log" >&2; exit 1; }
        cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
CONF
    fi
    running && exit 0
    ( cd "$dir" && as_pg "$PGBIN/pg_ctl" -D "$data" -l "$dir/postgres.log" -o "-p $port" -w -t 60 start >/dev/null ) \
        || { tail -20 "$dir/postgres.log" >&2; exit 1; }
    ;;
stop)
    if running; then
        ( cd "$dir" && as_pg "$PGBIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null )
    fi
    ;;
destroy)
    if running; then
        ( cd "$dir" && as_pg "$PGBIN/pg_ctl" -D "$data" -m immediate -w stop >/dev/null ) || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start DIR PORT | stop DIR | destroy DIR" >&2
    exit 2
    ;;
esac
