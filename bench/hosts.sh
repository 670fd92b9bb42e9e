#!/usr/bin/env bash
# Many hosts on one machine (sim driver), measured: placement throughput with one agent and with three, the
# time to notice a killed agent, and an idle agent's own memory and CPU. Needs root (network namespaces) and
# PostgreSQL 15 (scripts/install-deps.sh). Prints a markdown table for docs/BENCHMARKS.md.
# Usage: bench/hosts.sh            (env: CREATES=600)
set -euo pipefail
cd "$(dirname "$0")/.."
echo "commit $(git rev-parse --short HEAD), $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC')"
cargo test --release --locked -q -p nimbus --test hosts_bench -- --ignored --nocapture 2>/dev/null | sed -n '/^| /p'
