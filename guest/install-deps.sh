#!/bin/sh
# Installs guest/packages.txt with apt-get. Some images carry qemu-utils from bookworm-backports, which
# "Breaks" the bookworm qemu-system-x86; in that case qemu-utils is moved back to the bookworm version so
# that both come from the same QEMU release.
set -eu
cd "$(dirname "$0")"
pkgs=$(sed 's/#.*//' packages.txt | tr -s ' \n' ' ')
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
if ! apt-get install -y -q --no-install-recommends $pkgs; then
    pkgs=$(echo "$pkgs" | sed 's/\bqemu-utils\b/qemu-utils\/bookworm/')
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends --allow-downgrades $pkgs
fi
