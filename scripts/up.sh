#!/usr/bin/env bash
# Installs what is needed, builds Nimbus, and runs a Nimbus server with the embedded SQLite database and real
# QEMU VMs. Data lives in ./nimbus-data (override with NIMBUS_DATA_DIR); the API listens on 127.0.0.1:8700
# (NIMBUS_LISTEN); templates live in /var/lib/nimbus/templates (NIMBUS_TEMPLATE_DIR), where the server
# builds the stock `busybox` template at its first start. Extra arguments go to `nimbus server`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked -p nimbus
DATA=${NIMBUS_DATA_DIR:-nimbus-data}
echo "Nimbus: http://${NIMBUS_LISTEN:-127.0.0.1:8700}  (a browser there opens the web console; on first start, the admin key is printed below)"
echo "More images: target/release/nimbus template build debian-12; nimbus template import NAME FILE|URL"
exec target/release/nimbus server --data-dir "$DATA" "$@"
