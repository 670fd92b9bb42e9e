#!/usr/bin/env bash
# Installs what Nimbus needs on Debian 12 to build, to boot real VMs and to run its tests: the guest and
# qemu packages (guest/packages.txt), the build tools, and PostgreSQL (for the tests of the store that
# many servers share; no cluster is created or started here). Idempotent; run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: run as root (apt-get install, network namespaces)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
missing=$(for p in $(sed 's/#.*//' guest/packages.txt) build-essential pkg-config curl python3 python3-venv; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
done)
if [ -n "$missing" ]; then
    sh guest/install-deps.sh
    apt-get install -y -q --no-install-recommends build-essential pkg-config curl python3 python3-venv
fi
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
    # Debian's package would create and try to start a `main` cluster; the tests start their own.
    mkdir -p /etc/postgresql-common
    grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf ||
        echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf
    apt-get install -y -q --no-install-recommends postgresql || {
        apt-get update -q
        apt-get install -y -q --no-install-recommends postgresql
    }
fi
if ! command -v cargo >/dev/null; then
    echo "install-deps: no Rust toolchain found; install one with rustup (https://rustup.rs), Rust 1.80 or newer" >&2
    exit 1
fi
