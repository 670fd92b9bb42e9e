#!/usr/bin/env bash
# Creates one virtualenv per client SDK listed in sdk/requirements.txt under target/sdk/<name>, so the
# dialect tests can drive the real Exoscale, Gcore and SharedCloud clients (and the web console's tests
# Playwright, with Debian's Chromium and axe-core, below). Idempotent: a venv whose
# requirements line has not changed is left alone. Needs network access to PyPI the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${NIMBUS_SDK_DIR:-target/sdk}
mkdir -p "$root"
sed 's/#.*//' sdk/requirements.txt | while read -r name reqs; do
    [ -n "$name" ] || continue
    venv="$root/$name"
    if [ -f "$venv/.requirements" ] && [ "$(cat "$venv/.requirements")" = "$reqs" ]; then
        continue
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086 # one word per requirement
    "$venv/bin/pip" install --quiet --disable-pip-version-check $reqs
    echo "$reqs" >"$venv/.requirements"
    echo "install-sdks: $name ready ($reqs)"
done
# The web console's browser tests drive Debian's Chromium (Playwright's own browser download is not used)
# and fetch axe-core with npm. Installed here, with the tests' other needs, so that scripts/up.sh (which
# runs install-deps.sh) does not put a browser on every server.
need=$(dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q 'install ok installed' || echo chromium)
command -v npm >/dev/null || need="$need npm" # any npm will do (a Node.js from elsewhere ships its own)
if [ -n "${need// /}" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install-sdks: needs$need; run as root or install it (apt-get install$need)" >&2
        exit 1
    fi
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need
fi

# axe-core, the accessibility checker the web console's browser test injects into every page
# (crates/nimbus/tests/web_console.rs); pinned like the SDKs, from npm.
axe="$root/axe"
axe_version=4.14.1
if [ "$(cat "$axe/.version" 2>/dev/null)" != "$axe_version" ]; then
    rm -rf "$axe"
    mkdir -p "$axe"
    npm install --silent --no-audit --no-fund --prefix "$axe" "axe-core@$axe_version"
    echo "$axe_version" >"$axe/.version"
    echo "install-sdks: axe-core $axe_version ready"
fi
