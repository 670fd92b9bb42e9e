#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests, needing no service manager (Debian 12's postgresql 15 packages).
#
#   scripts/postgres.sh start DIR PORT   creates a cluster in DIR (its data directory, holding its unix
#                                        socket too), listening on 127.0.0.1:PORT only, trusting local
#                                        connections, fsync on; prints its server URL on stdout:
#                                        postgres://postgres@127.0.0.1:PORT/postgres
#   scripts/postgres.sh stop DIR         stops it and removes DIR.
#
# Run the store's suite against it with
#   NIMBUS_TEST_DATABASE_URL=$(scripts/postgres.sh start /tmp/nimbus-pg 55432) NIMBUS_REQUIRE_POSTGRES=1 \
#       cargo test -p nimbus-store
# As root, the cluster runs as the `postgres` system user (initdb refuses root); otherwise as you.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

usage() {
    echo "usage: $0 start DIR PORT | stop DIR" >&2
    exit 2
}

say() {
    echo "postgres.sh: $*" >&2
}

need_binaries() {
    if [ ! -x "$PGBIN/initdb" ] || [ ! -x "$PGBIN/pg_ctl" ]; then
        say "PostgreSQL 15 binaries not found in $PGBIN. On Debian 12, as root:"
        cat >&2 <<'EOF'
    # Debian's package creates and starts a 'main' cluster at install unless told not to:
    mkdir -p /etc/postgresql-common
    echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
    apt-get update && apt-get install -y postgresql
EOF
        exit 1
    fi
}

# Runs a command as the cluster's owner.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    local dir=$1 port=$2
    case $port in '' | *[!0-9]*) usage ;; esac
    need_binaries
    if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
        say "$dir exists and is not empty; stop the cluster there first, or pick another directory"
        exit 1
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" = 0 ]; then
        chown postgres:postgres "$dir"
    fi
    chmod 700 "$dir"
    if ! as_owner test -w "$dir"; then
        say "the postgres user cannot write $dir (is a parent directory closed to it, like /root?)"
        exit 1
    fi
    local out
    if ! out=$(as_owner "$PGBIN/initdb" -D "$dir" --username=postgres --auth=trust --encoding=UTF8 --locale=C 2>&1); then
        echo "$out" >&2
        say "initdb failed"
        exit 1
    fi
    # Only this machine may connect, and only the test's own address: 127.0.0.1, not every interface.
    as_owner tee -a "$dir/postgresql.conf" >/dev/null <<EOF

# scripts/postgres.sh
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
# Durability is part of what the tests check: keep every write flushed.
fsync = on
synchronous_commit = on
full_page_writes = on
# Test suites open a database (and a pool) per test, several at once.
max_connections = 200
EOF
    as_owner tee "$dir/pg_hba.conf" >/dev/null <<'EOF'
# scripts/postgres.sh: a throwaway cluster reachable only from this machine, so trust is enough.
local all all trust
host all all 127.0.0.1/32 trust
EOF
    if ! as_owner "$PGBIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null; then
        tail -n 20 "$dir/server.log" >&2 || true
        say "the server did not start (is port $port taken?)"
        exit 1
    fi
    echo "postgres://postgres@127.0.0.1:$port/postgres"
}

stop() {
    local dir=$1
    if [ ! -d "$dir" ]; then
        say "no cluster at $dir"
        return 0
    fi
    # Never remove a directory that is not a cluster this script could have made.
    if [ -n "$(ls -A "$dir")" ] && [ ! -f "$dir/PG_VERSION" ]; then
        say "$dir is not a PostgreSQL data directory; leaving it alone"
        exit 1
    fi
    if [ -f "$dir/postmaster.pid" ]; then
        local pid
        pid=$(head -n 1 "$dir/postmaster.pid")
        if ! { [ -x "$PGBIN/pg_ctl" ] && as_owner "$PGBIN/pg_ctl" -D "$dir" -m fast -w -t 30 stop >/dev/null; }; then
            say "pg_ctl could not stop it; killing the postmaster ($pid)"
            # SIGQUIT is PostgreSQL's immediate shutdown; SIGKILL if even that hangs. Its backends exit when
            # they see the postmaster gone.
            kill -QUIT "$pid" 2>/dev/null || true
            for _ in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.2
            done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -rf "$dir"
}

case ${1:-} in
start)
    [ $# = 3 ] || usage
    start "$2" "$3"
    ;;
stop)
    [ $# = 2 ] || usage
    stop "$2"
    ;;
*) usage ;;
esac
