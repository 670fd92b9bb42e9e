#!/usr/bin/env bash
# Installs what the tests need (system packages, PostgreSQL, and the real client SDKs the dialect tests
# drive) and runs every test of the workspace, the real-VM ones included (they boot the busybox template
# under QEMU inside network namespaces they create, so this runs as root), and with them the reliability
# tests: the crash loop (the server killed 30 times over 300 calls), the issue-20 defects reproduced by
# kill -9, the faults (a full and a read-only data dir, failing qemu-img and QEMU) and backup/restore.
# Then it runs the store's conformance suite, the engine's saga tests, the API tests, the many-servers
# test and the PostgreSQL crash loop and faults on PostgreSQL, against a throwaway cluster it starts in a
# temporary directory and removes at the end; then it fuzzes the native API with schemathesis
# (scripts/fuzz-api.sh). Ends with the crash loops' and the fuzzer's counts and one line that adds up every
# test binary's result.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/install-sdks.sh
log=$(mktemp)
pgdir=$(mktemp -d /tmp/nimbus-test-pg.XXXXXX)
# The reliability tests append their count lines here (their CARGO_TARGET_TMPDIR).
summary=${CARGO_TARGET_DIR:-target}/tmp/reliability-summary.txt
mkdir -p "$(dirname "$summary")"
rm -f "$summary"
cleanup() {
    scripts/postgres.sh stop "$pgdir" >/dev/null 2>&1 || true
    rm -f "$log" "$log.fuzz"
}
trap cleanup EXIT
status=0

echo "== every test, on SQLite"
cargo test --workspace --locked 2>&1 | tee -a "$log" || status=$?

echo "== the store, the engine's sagas, the APIs, two servers, the crash loop and the faults, on PostgreSQL"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=$(scripts/postgres.sh start "$pgdir" "$port" | tail -n 1)
NIMBUS_TEST_DATABASE_URL="$url" NIMBUS_REQUIRE_POSTGRES=1 \
    cargo test --locked -p nimbus-store -p nimbus-engine -p nimbus-api 2>&1 | tee -a "$log" || status=$?
NIMBUS_TEST_DATABASE_URL="$url" NIMBUS_REQUIRE_POSTGRES=1 \
    cargo test --locked -p nimbus --test many_servers 2>&1 | tee -a "$log" || status=$?
NIMBUS_TEST_DATABASE_URL="$url" NIMBUS_REQUIRE_POSTGRES=1 \
    cargo test --locked -p nimbus --test crash_loop --test faults postgres 2>&1 | tee -a "$log" || status=$?

echo "== the native API fuzzed (schemathesis)"
fuzz_status=0
scripts/fuzz-api.sh >"$log.fuzz" 2>&1 || fuzz_status=$?
# Whole when something went wrong (schemathesis prints its errors' details above its summary), else the summary.
if [ "$fuzz_status" != 0 ] || grep -q "raised an error of its own" "$log.fuzz"; then
    cat "$log.fuzz"
else
    tail -n 30 "$log.fuzz"
fi
[ "$fuzz_status" = 0 ] || status=$fuzz_status

echo "== reliability"
cat "$summary" 2>/dev/null || echo "no crash loop ran"
grep '^api fuzz:' "$log.fuzz" || echo "api fuzz: did not run"

awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
