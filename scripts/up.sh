#!/usr/bin/env bash
# Installs what is needed, builds Nimbus and the stock `busybox` template, and runs a Nimbus server with the
# embedded SQLite database and real QEMU VMs. Data lives in ./nimbus-data (override with NIMBUS_DATA_DIR);
# the API listens on 127.0.0.1:8700 (NIMBUS_LISTEN). Extra arguments go to `nimbus server`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked -p nimbus
DATA=${NIMBUS_DATA_DIR:-nimbus-data}
if [ ! -f "$DATA/templates/busybox/template.json" ]; then
    echo "building the busybox template into $DATA/templates/busybox"
    bash guest/build.sh "$DATA/templates/busybox"
fi
echo "Nimbus: http://${NIMBUS_LISTEN:-127.0.0.1:8700}  (a browser there opens the web console; on first start, the admin key is printed below)"
exec target/release/nimbus server --data-dir "$DATA" "$@"
