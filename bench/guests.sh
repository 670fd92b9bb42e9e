#!/usr/bin/env bash
# Create -> SSH-reachable for the debian-12 template under whatever accelerator the host has, against a bare
# QEMU boot of the same image with the same seed, plus the idle memory of one such VM.
#
#   bench/guests.sh TEMPLATE_DIR [RUNS]
#
# TEMPLATE_DIR holds debian-12/ (nimbus template build debian-12, or guest/build-debian.sh). Needs root (the
# server's network namespace), a built target/release/nimbus (or NIMBUS_BIN), ssh-keygen and ssh. Each run
# is sequential with nothing else running; the script prints one line per run and the medians.
#
# "Reachable" is the same test on both sides: `ssh ... true` as the image's default user with the key given
# at create succeeds. The bare boot reaches the guest through QEMU's user-mode network (hostfwd on the
# loopback); Nimbus through its tunnel in the instance network. Everything the script starts is stopped on
# exit (the server by pid, its namespace by name, the bare QEMU by pid).
set -euo pipefail
cd "$(dirname "$0")/.."
TEMPLATES=$(realpath "$1")
RUNS=${2:-3}
BIN=${NIMBUS_BIN:-target/release/nimbus}
W=$(mktemp -d /tmp/nbench.XXXXXX)
NETNS=nbench$$
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SSH_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SECRET=bench-secret-0123456789
server=
bare=
cleanup() {
    [ -n "$bare" ] && kill "$bare" 2>/dev/null || true
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
    for pid in $(pgrep -f "$W/data" || true); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$NETNS" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
ssh-keygen -q -t ed25519 -N '' -f "$W/key"
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
now() { date +%s.%N; }

# Bare QEMU: the driver's machine (q35, TCG, 1 vCPU, 512 MiB, virtio disk over the template, cidata seed).
BASE=$(readlink -f "$TEMPLATES/debian-12/base.qcow2")
cat > "$W/user-data" <<'EOF'
#cloud-config
{}
EOF
bare_times=()
for i in $(seq "$RUNS"); do
    rm -f "$W/disk.qcow2" "$W/seed.iso"
    qemu-img create -q -f qcow2 -b "$BASE" -F qcow2 "$W/disk.qcow2" 5G
    printf '{"instance-id": "bare-%s", "local-hostname": "bare", "public-keys": ["%s"]}\n' "$i" "$(cat "$W/key.pub")" > "$W/meta-data"
    cloud-localds "$W/seed.iso" "$W/user-data" "$W/meta-data"
    t0=$(now)
    qemu-system-x86_64 -accel tcg -M q35 -cpu max -smp 1 -m 512 -nodefaults -no-user-config -display none \
        -serial file:"$W/bare.log" \
        -blockdev driver=file,filename="$W/disk.qcow2",node-name=f0 -blockdev driver=qcow2,file=f0,node-name=d0 \
        -device virtio-blk-pci,drive=d0,bootindex=0 \
        -blockdev driver=file,filename="$W/seed.iso",node-name=f1,read-only=on \
        -blockdev driver=raw,file=f1,node-name=s,read-only=on -device virtio-blk-pci,drive=s \
        -netdev user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:"$SSH_PORT"-:22 -device virtio-net-pci,netdev=n0 \
        -device virtio-rng-pci &
    bare=$!
    until ssh -q -i "$W/key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 \
        -o BatchMode=yes -p "$SSH_PORT" debian@127.0.0.1 true 2>/dev/null; do sleep 1; done
    t=$(awk "BEGIN {printf \"%.1f\", $(now) - $t0}")
    echo "bare qemu run $i: ssh reachable after ${t}s"
    bare_times+=("$t")
    if [ "$i" = "$RUNS" ]; then
        sleep 60
        rss=$(awk '/^VmRSS/ {print $2}' "/proc/$bare/status")
        pss=$(awk '/^Pss:/ {print $2}' "/proc/$bare/smaps_rollup")
        echo "bare qemu idle after 60s: RSS $((rss / 1024)) MiB, PSS $((pss / 1024)) MiB"
    fi
    kill "$bare"
    wait "$bare" 2>/dev/null || true
    bare=
done

# Nimbus: the same image through the HTTP API and `nimbus instance ssh`.
mkdir -p "$W/data/templates"
ln -s "$TEMPLATES/debian-12" "$W/data/templates/debian-12"
NIMBUS_BOOTSTRAP_KEY=NIMbench NIMBUS_BOOTSTRAP_SECRET=$SECRET "$BIN" server --listen 127.0.0.1:"$PORT" \
    --data-dir "$W/data" --template-dir "$W/data/templates" --netns "$NETNS" --network-cidr 10.213.250.0/24 \
    > "$W/server.log" 2>&1 &
server=$!
export NIMBUS_URL=http://127.0.0.1:$PORT NIMBUS_TOKEN=$SECRET NIMBUS_CONFIG=$W/cli.yaml XDG_CONFIG_HOME=$W/xdg
until curl -sf "$NIMBUS_URL/healthz" >/dev/null; do sleep 0.2; done
"$BIN" ssh-key add bench --file "$W/key.pub" >/dev/null
nimbus_times=()
for i in $(seq "$RUNS"); do
    t0=$(now)
    "$BIN" instance create "b$i" --type standard.micro --template debian-12 --disk-size 5 --ssh-key bench --no-wait >/dev/null
    until "$BIN" instance ssh "b$i" -i "$W/key" -- true </dev/null 2>/dev/null; do sleep 1; done
    t=$(awk "BEGIN {printf \"%.1f\", $(now) - $t0}")
    echo "nimbus run $i: create -> ssh reachable after ${t}s"
    nimbus_times+=("$t")
    if [ "$i" = "$RUNS" ]; then
        sleep 60
        id=$("$BIN" instance show "b$i" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
        pid=$(pgrep -f "nimbus-$id" | head -1)
        rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
        pss=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup")
        echo "nimbus debian-12 VM idle after 60s: RSS $((rss / 1024)) MiB, PSS $((pss / 1024)) MiB"
    fi
    "$BIN" instance delete "b$i" >/dev/null
done
echo "median bare qemu boot -> ssh: $(printf '%s\n' "${bare_times[@]}" | median)s over $RUNS runs"
echo "median nimbus create -> ssh: $(printf '%s\n' "${nimbus_times[@]}" | median)s over $RUNS runs"
