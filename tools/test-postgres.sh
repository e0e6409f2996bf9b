#!/usr/bin/env bash
# Start or stop a private PostgreSQL server for the test suite, listening on 127.0.0.1 only.
#
#   tools/test-postgres.sh start   # prints the URL to export as COMPRESSOR_TEST_PG_URL
#   tools/test-postgres.sh stop
#
# The server runs as the `postgres` system user, because initdb refuses to run as root. Debian's `postgresql` package is installed when
# initdb is missing and apt-get is available.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
# The cluster lives under /tmp, not in the checkout, because the `postgres` user must be able to
# reach it and a checkout under /root is closed to other users. One folder per checkout.
base="/tmp/compressor-test-pg-$(printf '%s' "$root" | sha1sum | cut -c1-12)"
data="$base/data"
log="$base/server.log"
port="${COMPRESSOR_TEST_PG_PORT:-55432}"

find_bin() {
    local name="$1"
    command -v "$name" 2>/dev/null && return 0
    ls /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -n 1
}

as_postgres() {
    if [ "$(id -u)" = "0" ]; then
        su postgres -s /bin/bash -c "$*"
    else
        bash -c "$*"
    fi
}

case "${1:-}" in
start)
    if [ -z "$(find_bin initdb)" ]; then
        echo "initdb not found; installing Debian's postgresql package" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    fi
    initdb="$(find_bin initdb)"
    pg_ctl="$(find_bin pg_ctl)"
    mkdir -p "$base"
    if [ "$(id -u)" = "0" ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown postgres "$base"
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
        as_postgres "'$initdb' -D '$data' -U postgres --auth=trust -E UTF8 >/dev/null"
    fi
    if ! as_postgres "'$pg_ctl' -D '$data' status" >/dev/null 2>&1; then
        as_postgres "'$pg_ctl' -D '$data' -l '$log' -w -o \"-c listen_addresses=127.0.0.1 -p $port -k /tmp\" start" >/dev/null
    fi
    echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
    ;;
stop)
    pg_ctl="$(find_bin pg_ctl)"
    if [ -f "$data/PG_VERSION" ]; then
        as_postgres "'$pg_ctl' -D '$data' -m fast stop" >/dev/null 2>&1 || true
    fi
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
