#!/usr/bin/env bash
# The long crash loop of issue 20, as an operator would run it before trusting Nimbus: the real server
# (release build, sim driver with delays and injected failures) killed with SIGKILL 100 times at random
# moments, some during start-up, over 1,000 mutating calls from 8 concurrent clients (native API with
# Idempotency-Keys, SF Compute, ONET, Gcore, signed Exoscale), on SQLite and then on PostgreSQL (a
# throwaway cluster started here and removed at the end). Prints one line per store: kills, calls,
# acknowledged writes, and the lost, duplicated, stuck, leaked and disagreeing counts, which must be 0.
# The test is crates/nimbus/tests/crash_loop.rs; CI (scripts/test.sh) runs a bounded version of it.
#
#   bench/crash_loop.sh                       KILLS=100 CALLS=1000 CLIENTS=8
#   KILLS=300 CALLS=3000 SEED=42 bench/crash_loop.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export NIMBUS_CRASH_LOOP_KILLS=${KILLS:-100} NIMBUS_CRASH_LOOP_CALLS=${CALLS:-1000}
export NIMBUS_CRASH_LOOP_CLIENTS=${CLIENTS:-8}
[ -n "${SEED:-}" ] && export NIMBUS_CRASH_LOOP_SEED=$SEED
summary=${CARGO_TARGET_DIR:-target}/tmp/reliability-summary.txt
pgdir=$(mktemp -d /tmp/nimbus-bench-pg.XXXXXX)
trap 'scripts/postgres.sh stop "$pgdir" >/dev/null 2>&1 || true' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=$(scripts/postgres.sh start "$pgdir" "$port" | tail -n 1)
mkdir -p "$(dirname "$summary")"
rm -f "$summary"
echo "commit $(git rev-parse --short HEAD), $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores"
NIMBUS_TEST_DATABASE_URL="$url" NIMBUS_REQUIRE_POSTGRES=1 \
    cargo test --release --locked -p nimbus --test crash_loop -- --test-threads 1 --nocapture \
    crash_loop_on_sqlite crash_loop_on_postgres
echo "== results"
cat "$summary"
