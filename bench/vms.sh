#!/usr/bin/env bash
# Real instances (qemu driver), measured through the HTTP API of a release `nimbus server`:
#   (a) create -> running through the API (POST to operation success), against
#   (b) a bare QEMU boot of the same guest to its READY marker, with the command line the driver used
#       (read from the instance's qemu.args), side by side in one run, median of RUNS;
#   (c) QEMU RSS and PSS of idle standard.micro instances (/proc/<pid>/smaps_rollup);
#   (d) density: DENSITY idle busybox instances started through the API in batches of BATCH: how many reach
#       running, host memory used, load; then all are deleted.
# Prints a markdown table (and the raw figures as JSON) for docs/BENCHMARKS.md.
#
# Usage: bench/vms.sh            (as root; env: RUNS=5 DENSITY=100 BATCH=10 MIN_AVAILABLE_MIB=2048
#                                 NIMBUS_BIN=path, default: cargo build --release -p nimbus)
# Everything lives in a fresh /tmp/nb-XXXX data dir and a network namespace of its own; nothing is sent
# outside loopback and that namespace. A trap kills the server and every QEMU of the data dir on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export RUNS=${RUNS:-5} DENSITY=${DENSITY:-100} BATCH=${BATCH:-10}
# The density run stops starting VMs when the host has less than this left, rather than invite the OOM killer.
export MIN_AVAILABLE_MIB=${MIN_AVAILABLE_MIB:-2048}

[ "$(id -u)" = 0 ] || { echo "bench/vms.sh: run as root (the instance network namespace needs CAP_NET_ADMIN)" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "bench/vms.sh: qemu-system-x86_64 is missing (guest/install-deps.sh)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench/vms.sh: python3 is missing" >&2; exit 1; }

if [ -z "${NIMBUS_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -p nimbus)
    NIMBUS_BIN=$ROOT/target/release/nimbus
fi

# Short: QEMU's unix sockets live under the data dir and their paths are limited to 108 bytes.
D=$(mktemp -d /tmp/nb-XXXX)
NS=nbench$$
SERVER=
cleanup() {
    if [ -n "$SERVER" ]; then
        kill -9 "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
    fi
    for pid in $(pgrep -f "^qemu-system-x86_64 .*$D/" || true); do kill -9 "$pid" 2>/dev/null || true; done
    sleep 0.5
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bash "$ROOT/guest/build.sh" "$D/templates/busybox" >/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SECRET=bench-secret-$$-0123456789
NIMBUS_BOOTSTRAP_KEY=NIMbench NIMBUS_BOOTSTRAP_SECRET=$SECRET "$NIMBUS_BIN" server --data-dir "$D" \
    --listen "127.0.0.1:$PORT" --netns "$NS" --network-cidr 10.215.0.0/24 > "$D/server.log" 2>&1 &
SERVER=$!

export NB_URL=http://127.0.0.1:$PORT NB_SECRET=$SECRET NB_DATA=$D NB_NS=$NS
export NB_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
export NB_QEMU=$(qemu-system-x86_64 --version | head -1)
python3 - <<'PY'
import json, os, shutil, statistics, subprocess, threading, time, urllib.error, urllib.request

URL, SECRET, DATA, NS = os.environ["NB_URL"], os.environ["NB_SECRET"], os.environ["NB_DATA"], os.environ["NB_NS"]
RUNS, DENSITY, BATCH = int(os.environ["RUNS"]), int(os.environ["DENSITY"]), int(os.environ["BATCH"])
MIN_AVAILABLE_MIB = int(os.environ["MIN_AVAILABLE_MIB"])
INSTANCES = os.path.join(DATA, "qemu", "instances")
# Loopback only: never let an http_proxy variable route the API calls elsewhere.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
now = time.monotonic
POLL = 0.002  # the bench watches files every 2 ms, the same way for both boots


def parse(raw):
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode(errors="replace")


def api(method, path, body=None, timeout=300):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(URL + path, data=data, method=method,
                                 headers={"Authorization": "Bearer " + SECRET, "Content-Type": "application/json"})
    try:
        with HTTP.open(req, timeout=timeout) as r:
            return r.status, parse(r.read())
    except urllib.error.HTTPError as e:
        return e.code, parse(e.read())


def wait_op(op_id, limit=300):
    deadline = now() + limit
    while True:
        _, op = api("GET", f"/v1/operations/{op_id}?wait=60")
        if op["state"] not in ("pending", "running") or now() > deadline:
            return op


def log(*a):
    print(*a, flush=True)


def has_ready(path):
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return False
    return text.startswith(b"READY") or b"\nREADY" in text or b"\rREADY" in text


def meminfo():
    m = {}
    for line in open("/proc/meminfo"):
        k, v = line.split(":")
        m[k] = int(v.split()[0]) // 1024
    return m


def cpu_ticks():
    f = open("/proc/stat").readline().split()[1:]
    v = list(map(int, f))
    return sum(v), v[3] + v[4]  # total, idle + iowait


def smaps(pid):
    out = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "kB":
            out[parts[0].rstrip(":")] = int(parts[1])
    return out


def qemu_pid(iid):
    return json.load(open(os.path.join(INSTANCES, iid, "qemu.json")))["pid"]


def proc_cpu_ticks(pid):
    rest = open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def create(name):
    status, op = api("POST", "/v1/instances", {"name": name, "instance_type": "standard.micro", "template": "busybox"})
    assert status == 202, (status, op)
    return op


def delete(iid):
    status, op = api("DELETE", f"/v1/instances/{iid}")
    assert status == 202, (status, op)
    return op


deadline = now() + 60
while True:
    try:
        if api("GET", "/healthz", timeout=2)[0] == 200:
            break
    except OSError:
        pass
    assert now() < deadline, "server did not come up"
    time.sleep(0.05)
_, host = api("GET", "/v1/host")
log(f"host {host}")


def api_boot(name):
    """(a): POST -> operation success, watching the instance dir to split the time."""
    t0 = now()
    op = create(name)
    t_posted = now() - t0
    iid = op["target"]["id"]
    d = os.path.join(INSTANCES, iid)
    done = {}

    def waiter():
        done["op"] = wait_op(op["id"])
        done["t"] = now() - t0

    th = threading.Thread(target=waiter)
    th.start()
    t_spawn = t_ready = None
    while th.is_alive():
        if t_spawn is None and os.path.exists(os.path.join(d, "qemu.json")):
            t_spawn = now() - t0
        if t_spawn is not None and t_ready is None and has_ready(os.path.join(d, "serial.log")):
            t_ready = now() - t0
        time.sleep(POLL)
    th.join()
    assert done["op"]["state"] == "success", done["op"]
    return iid, {"posted": t_posted, "spawned": t_spawn, "ready_seen": t_ready, "success": done["t"]}


def bare_boot(args, seed, disk_bytes, k):
    """(b): the driver's command line, run by hand on a fresh overlay, to the READY marker."""
    s = os.path.join(DATA, f"b{k}")
    os.makedirs(s)
    shutil.copytree(seed, os.path.join(s, "seed"))
    base = os.path.realpath(os.path.join(DATA, "templates", "busybox", "base.qcow2"))
    t0 = now()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
                    os.path.join(s, "disk.qcow2"), str(disk_bytes)], check=True)
    t_img = now() - t0
    log_path = os.path.join(s, "serial.log")
    t0 = now()
    p = subprocess.Popen(["ip", "netns", "exec", NS, "qemu-system-x86_64", *args], cwd=s,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=open(os.path.join(s, "qemu.stderr"), "wb"), start_new_session=True)
    t_ready = None
    while now() - t0 < 60 and p.poll() is None:
        if has_ready(log_path):
            t_ready = now() - t0
            break
        time.sleep(POLL)
    p.kill()
    p.wait()
    shutil.rmtree(s)
    assert t_ready is not None, "bare boot did not reach READY"
    return {"qemu_img_create": t_img, "ready": t_ready}


# Warm-up (not counted): fills the page cache with the kernel and initrd, and gives the driver's command line.
iid, _ = api_boot("warmup")
inst = os.path.join(INSTANCES, iid)
args_template = open(os.path.join(inst, "qemu.args")).read().splitlines()
seed = os.path.join(DATA, "seed-copy")
shutil.copytree(os.path.join(inst, "seed"), seed)
_, vm = api("GET", f"/v1/instances/{iid}")
disk_bytes = vm["disk_size_gb"] << 30
assert wait_op(delete(iid)["id"])["state"] == "success"
# The same arguments, pointed at the bare boot's own directory; the tap name is the deleted instance's.
bare_args = lambda k: [a.replace(inst, os.path.join(DATA, f"b{k}")) for a in args_template]

api_runs, bare_runs = [], []
for k in range(RUNS):
    # Alternate the order so that neither side always boots on a host still busy with the other.
    order = ["api", "bare"] if k % 2 == 0 else ["bare", "api"]
    for side in order:
        if side == "api":
            iid, r = api_boot(f"boot{k}")
            api_runs.append(r)
            assert wait_op(delete(iid)["id"])["state"] == "success"
        else:
            bare_runs.append(bare_boot(bare_args(k), seed, disk_bytes, k))
    log(f"run {k + 1}/{RUNS}: api {api_runs[-1]} bare {bare_runs[-1]}")

# A run may miss a marker (the API answered before this script's own log watcher looked): skip the gap.
med = lambda xs: statistics.median([x for x in xs if x is not None])
a = {key: med([r[key] for r in api_runs]) for key in api_runs[0]}
b = {key: med([r[key] for r in bare_runs]) for key in bare_runs[0]}
overheads = sorted(ra["success"] - rb["ready"] for ra, rb in zip(api_runs, bare_runs))
# The control plane's own time, where no guest runs: before QEMU is spawned, and after the guest said READY.
after_ready = med([r["success"] - r["ready_seen"] for r in api_runs if r["ready_seen"] is not None])

# (c) idle instances, alone on the host.
IDLE = 3
ids = []
for k in range(IDLE):
    op = create(f"idle{k}")
    ids.append(op["target"]["id"])
    assert wait_op(op["id"])["state"] == "success"
time.sleep(20)
pids = [qemu_pid(i) for i in ids]
c0 = [proc_cpu_ticks(p) for p in pids]
time.sleep(10)
idle_cpu = [100.0 * (proc_cpu_ticks(p) - x) / os.sysconf("SC_CLK_TCK") / 10 for p, x in zip(pids, c0)]
sm = [smaps(p) for p in pids]
idle = {key: med([s.get(key, 0) for s in sm]) / 1024 for key in ("Rss", "Pss", "Pss_Anon", "Pss_File")}
idle["cpu_pct"] = med(idle_cpu)
log(f"idle: {idle}")
for i in ids:
    assert wait_op(delete(i)["id"])["state"] == "success"

# (d) density.
time.sleep(5)
m0 = meminfo()
used0 = m0["MemTotal"] - m0["MemAvailable"]
started, running, failed, stopped_early = [], 0, [], None
t0 = now()
k = 0
while k < DENSITY:
    # Room for the whole next batch, at the RSS an idle VM was just measured to have.
    avail, need = meminfo()["MemAvailable"], MIN_AVAILABLE_MIB + min(BATCH, DENSITY - k) * idle["Rss"]
    if avail < need:
        stopped_early = f"MemAvailable {avail} MiB < {need:.0f} MiB"
        break
    ops = []
    for _ in range(min(BATCH, DENSITY - k)):
        ops.append(create(f"d{k:03d}"))
        k += 1
    for op in ops:
        started.append(op["target"]["id"])
        done = wait_op(op["id"])
        if done["state"] == "success":
            running += 1
        else:
            failed.append(done.get("message") or done.get("reason"))
    log(f"density: {k} created, {running} running, {len(failed)} failed, {now() - t0:.0f}s, "
        f"MemAvailable {meminfo()['MemAvailable']} MiB, load {open('/proc/loadavg').read().split()[0]}")
t_density = now() - t0
time.sleep(60)  # let the last boots settle into idle
ct0, ci0 = cpu_ticks()
time.sleep(10)
ct1, ci1 = cpu_ticks()
busy_pct = 100.0 * (1 - (ci1 - ci0) / (ct1 - ct0))
m1 = meminfo()
used1 = m1["MemTotal"] - m1["MemAvailable"]
load = open("/proc/loadavg").read().split()[:3]
listed = []
token = None
while True:
    _, page = api("GET", "/v1/instances?state=running&limit=500" + (f"&page_token={token}" if token else ""))
    listed += page["items"]
    token = page.get("next_page_token")
    if not token:
        break
alive = [i for i in started if os.path.exists(os.path.join(INSTANCES, i, "qemu.json"))]
pss_total = 0
for i in alive:
    try:
        pss_total += smaps(qemu_pid(i)).get("Pss", 0)
    except (OSError, ValueError, KeyError):
        pass


def pings(addr):
    return subprocess.run(["ip", "netns", "exec", NS, "ping", "-c", "1", "-W", "2", addr],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


addresses = [v["ip_addresses"][0] for v in listed if v.get("ip_addresses")]
answered = 0
for start in range(0, len(addresses), 10):
    results = [None] * len(addresses[start:start + 10])

    def ping_one(j, addr):
        results[j] = pings(addr)

    threads = [threading.Thread(target=ping_one, args=(j, a)) for j, a in enumerate(addresses[start:start + 10])]
    [t.start() for t in threads]
    [t.join() for t in threads]
    answered += sum(bool(r) for r in results)
t_del = now()
for start in range(0, len(started), BATCH):
    ops = [delete(i) for i in started[start:start + BATCH]]
    for op in ops:
        wait_op(op["id"])
t_del = now() - t_del
left = subprocess.run(["pgrep", "-f", f"^qemu-system-x86_64 .*{DATA}/"], capture_output=True, text=True).stdout.split()
density = {"asked": DENSITY, "created": len(started), "running_ops": running, "failed": failed[:5],
           "stopped_early": stopped_early, "listed_running": len(listed), "answered_ping": answered,
           "seconds_to_start": t_density, "host_used_mib_before": used0, "host_used_mib": used1,
           "per_vm_mib": (used1 - used0) / max(running, 1), "pss_total_mib": pss_total / 1024,
           "load": load, "cpu_busy_pct": busy_pct, "delete_seconds": t_del, "qemu_left": len(left)}
log(f"density: {density}")

ms = lambda s: f"{s * 1000:.0f} ms"
print()
print(f"Accelerator **{host['accelerator']}**, host {host['vcpus']} vCPUs / {host['memory_mib']} MiB; "
      f"{os.environ['NB_QEMU']}; commit {os.environ['NB_COMMIT']}; release build; median of {RUNS}.")
print()
print("| measurement | value |")
print("|---|---|")
print(f"| (a) create -> running through the API (POST to operation success) | {ms(a['success'])} |")
print(f"| &nbsp;&nbsp;POST answered (202) | {ms(a['posted'])} |")
print(f"| &nbsp;&nbsp;POST -> QEMU spawned (qemu.json written) | {ms(a['spawned'])} |")
print(f"| &nbsp;&nbsp;POST -> READY in serial.log (seen by the bench) | {ms(a['ready_seen'])} |")
print(f"| (b) bare QEMU boot, same command line, to READY | {ms(b['ready'])} |")
print(f"| &nbsp;&nbsp;`qemu-img create` of the overlay (not in (b)) | {ms(b['qemu_img_create'])} |")
print(f"| **control-plane overhead (a) - (b)** (median of per-run differences; min..max) | "
      f"**{ms(med(overheads))}** ({ms(overheads[0])}..{ms(overheads[-1])}) |")
print(f"| &nbsp;&nbsp;control plane alone: before the spawn + after READY (medians) | "
      f"{ms(a['spawned'])} + {ms(after_ready)} = {ms(a['spawned'] + after_ready)} |")
print(f"| (c) RSS / PSS of an idle standard.micro VM (median of {IDLE}) | {idle['Rss']:.0f} MiB / {idle['Pss']:.0f} MiB "
      f"(Pss_Anon {idle['Pss_Anon']:.0f}, Pss_File {idle['Pss_File']:.0f}) |")
print(f"| &nbsp;&nbsp;idle CPU per VM | {idle['cpu_pct']:.1f} % of a core |")
print(f"| (d) idle busybox VMs asked / reached running | {DENSITY} / {running}"
      f"{' (stopped early: ' + stopped_early + ')' if stopped_early else ''} |")
print(f"| &nbsp;&nbsp;listed running by the API / answering ping in the namespace | {len(listed)} / {answered} |")
print(f"| &nbsp;&nbsp;time to start them (batches of {BATCH}) | {t_density:.0f} s |")
print(f"| &nbsp;&nbsp;host memory used, before -> with them (MemTotal - MemAvailable) | {used0} -> {used1} MiB "
      f"({(used1 - used0) / max(running, 1):.0f} MiB per VM) |")
print(f"| &nbsp;&nbsp;sum of QEMU PSS | {pss_total / 1024:.0f} MiB ({pss_total / 1024 / max(len(alive), 1):.0f} MiB per VM) |")
print(f"| &nbsp;&nbsp;once idle: load average (1/5/15 min); host CPU busy over 10 s | {' / '.join(load)}; {busy_pct:.0f} % "
      f"({busy_pct * os.cpu_count() / max(running, 1):.2f} % of a core per VM) |")
print(f"| &nbsp;&nbsp;deleting them all | {t_del:.0f} s, {len(left)} QEMU processes left |")
PY
