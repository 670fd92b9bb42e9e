#!/usr/bin/env bash
# Installs what the tests need (system packages, and the real client SDKs the dialect tests drive) and runs
# every test of the workspace, the real-VM ones included (they boot the busybox template under QEMU inside
# network namespaces they create, so this runs as root). Ends with one line that adds up every test binary's
# result.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/install-sdks.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
