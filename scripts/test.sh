#!/usr/bin/env bash
# Installs what the tests need (system packages, PostgreSQL, and the real client SDKs the dialect tests
# drive) and runs every test of the workspace, the real-VM ones included (they boot the busybox template
# under QEMU inside network namespaces they create, so this runs as root). Then it runs the store's
# conformance suite, the engine's saga tests and the API tests again on PostgreSQL, and the many-servers
# test (two servers on one database), against a throwaway PostgreSQL cluster it starts in a temporary
# directory and removes at the end. Ends with one line that adds up every test binary's result.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/install-sdks.sh
log=$(mktemp)
pgdir=$(mktemp -d /tmp/nimbus-test-pg.XXXXXX)
cleanup() {
    scripts/postgres.sh stop "$pgdir" >/dev/null 2>&1 || true
    rm -f "$log"
}
trap cleanup EXIT
status=0

echo "== every test, on SQLite"
cargo test --workspace --locked 2>&1 | tee -a "$log" || status=$?

echo "== the store, the engine's sagas, the APIs and two servers, on PostgreSQL"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=$(scripts/postgres.sh start "$pgdir" "$port" | tail -n 1)
NIMBUS_TEST_DATABASE_URL="$url" NIMBUS_REQUIRE_POSTGRES=1 \
    cargo test --locked -p nimbus-store -p nimbus-engine -p nimbus-api 2>&1 | tee -a "$log" || status=$?
NIMBUS_TEST_DATABASE_URL="$url" NIMBUS_REQUIRE_POSTGRES=1 \
    cargo test --locked -p nimbus --test many_servers 2>&1 | tee -a "$log" || status=$?

awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
