#!/usr/bin/env bash
# Control-plane throughput on the sim driver, measured side by side in one run on the same release build:
#   1. GET /v1/ping            - an authenticated no-op handler (the floor)
#   2. GET /v1/instances/{id}  - an instance read
#   3. POST /v1/instances      - creations accepted per second, then how fast the workers complete them
# Usage: bench/api.sh [SECONDS]   (prints a markdown table; needs wrk, installed with apt-get if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-15}
command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }
cargo build --release -q -p nimbus
BIN=target/release/nimbus
DIR=$(mktemp -d /tmp/nb-XXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SECRET=bench-secret-0123456789
URL=http://127.0.0.1:$PORT
NIMBUS_BOOTSTRAP_KEY=NIMbench NIMBUS_BOOTSTRAP_SECRET=$SECRET NIMBUS_LOG=warn \
  "$BIN" server --driver sim --data-dir "$DIR" --listen "127.0.0.1:$PORT" --network-cidr 10.0.0.0/12 >/dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$DIR"' EXIT
until curl -sf "$URL/healthz" >/dev/null; do sleep 0.1; done
AUTH="Authorization: Bearer $SECRET"
api() { curl -sf -H "$AUTH" -H 'Content-Type: application/json' "$@"; }
PROJECT=$(api "$URL/v1/whoami" | python3 -c 'import json,sys; print(json.load(sys.stdin)["project"]["id"])')
api -X PUT "$URL/v1/projects/$PROJECT/quota" -d '{"instances":1000000,"vcpus":100000000,"memory_mib":100000000000,"disk_gb":100000000000}' >/dev/null
OP=$(api "$URL/v1/instances" -d '{"name":"probe","instance_type":"standard.small","template":"busybox"}')
ID=$(echo "$OP" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target"]["id"])')
api "$URL/v1/operations/$(echo "$OP" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')?wait=10" >/dev/null

run() { # key, name, wrk args...
  local key=$1 name=$2; shift 2
  local out; out=$(wrk -t2 -c32 -d"${SECS}s" --latency -H "$AUTH" "$@")
  local rps; rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local p99; p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  local p50; p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  echo "| $name | $rps | $p50 | $p99 |"
  echo "$rps" > "$DIR/$key.rps"
}
echo "| request | requests/s | p50 | p99 |"
echo "|---|---|---|---|"
run ping "GET /v1/ping (authenticated no-op)" "$URL/v1/ping"
run get "GET /v1/instances/{id}" "$URL/v1/instances/$ID"
python3 -c "print(f'\ninstance read at {100*$(cat "$DIR/get.rps")/$(cat "$DIR/ping.rps"):.0f}% of the no-op handler\'s throughput')"

ended() { curl -sf -H "$AUTH" "$URL/metrics" | awk '$1=="nimbus_operations_succeeded_total" || $1=="nimbus_operations_failed_total" {n += $2} END {print n}'; }
before=$(ended)
out=$(wrk -t2 -c16 -d"${SECS}s" --latency -H "$AUTH" -s bench/create.lua "$URL")
accepted_rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
total=$(echo "$out" | awk '/requests in/ {print $1}')
non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}'); non2xx=${non2xx:-0}
start=$(date +%s.%N)
target=$((before + total - non2xx))
while :; do
  [ "$(ended)" -ge "$target" ] && break
  sleep 0.2
done
drain=$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')")
echo
echo "| creations | value |"
echo "|---|---|"
echo "| POST /v1/instances accepted (202) per second, ${SECS}s, 16 connections | $accepted_rps |"
echo "| creates accepted / refused | $((total - non2xx)) / $non2xx |"
failed=$(curl -sf -H "$AUTH" "$URL/metrics" | awk '$1=="nimbus_operations_failed_total" {print $2}')
echo "| create operations that failed | $failed |"
echo "| time for the workers to finish the backlog after the load stopped | ${drain}s |"
python3 -c "print(f'| creations completed per second (accepted / (load + drain)) | {($total - $non2xx) / ($SECS + $drain):.0f} |')"
