#!/usr/bin/env bash
# Installs what the tests need and runs every test of the workspace, the real-VM ones included (they boot
# the busybox template under QEMU inside a network namespace they create, so this runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --workspace --locked
