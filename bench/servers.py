#!/usr/bin/env python3
"""The control plane on SQLite and on PostgreSQL, side by side in one run, on the sim driver.

For each store (and, with --baseline COMMIT, for that earlier build on SQLite, so that "no worse than
before" is checked in the same run on the same machine):
  - GET /v1/ping (an authenticated no-op) and GET /v1/instances/{id}: requests/s, p50, p99 (wrk, 2 threads,
    32 connections);
  - creations completed per second: wrk POSTs /v1/instances for SECS seconds (16 connections), then the
    workers finish the backlog; completed = accepted / (load + drain);
  - on PostgreSQL also with two servers on the one database (each taking half the load), and the
    cross-server event latency: an SSE subscriber on one server, label changes made through the other, the
    time from the change's answer to the event's arrival (p50, p99, max of N changes).

Usage: bench/servers.py [--secs 10] [--baseline COMMIT] [--changes 300]
Prints markdown tables for docs/BENCHMARKS.md. Needs wrk (installed with apt-get if missing) and
PostgreSQL 15 (scripts/install-deps.sh). Everything runs on loopback; every server, cluster and temporary
directory is removed at the end.
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "bench-secret-0123456789"
AUTH = {"Authorization": f"Bearer {SECRET}"}
CHILDREN = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def api(base, method, path, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={**AUTH, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


class Server:
    def __init__(self, binary, data_dir, database=None, host_dir=None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        args = [binary, "server", "--driver", "sim", "--data-dir", data_dir, "--listen", f"127.0.0.1:{self.port}",
                "--network-cidr", "10.0.0.0/12",
                # A simulated host large enough for the 100,000-instance runs (the default holds ~12,000 micros).
                "--sim-vcpus", "1000000", "--sim-memory-mib", "1000000000"]
        if database:
            args += ["--database", database]
        if host_dir:
            args += ["--sim-state-dir", host_dir]
        env = {**os.environ, "NIMBUS_BOOTSTRAP_KEY": "NIMbench", "NIMBUS_BOOTSTRAP_SECRET": SECRET, "NIMBUS_LOG": "warn",
               # Servers on one database share one seal key ring (a public test key).
               "NIMBUS_SEAL_KEYS": "test AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"}
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=open(data_dir + ".log", "w"))
        CHILDREN.append(self.proc)
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(self.base + "/healthz", timeout=1)
                break
            except Exception:
                if time.time() > deadline or self.proc.poll() is not None:
                    sys.exit(f"server did not start; see {data_dir}.log")
                time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def finished_operations(self):
        req = urllib.request.Request(self.base + "/metrics", headers={"Authorization": "Bearer " + SECRET})
        text = urllib.request.urlopen(req, timeout=10).read().decode()
        n = 0
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] in ("nimbus_operations_succeeded_total", "nimbus_operations_failed_total"):
                n += float(parts[1])
        return int(n)


def prepare(server):
    """A quota large enough for the run, and one instance to read."""
    project = api(server.base, "GET", "/v1/whoami")["project"]["id"]
    api(server.base, "PUT", f"/v1/projects/{project}/quota",
        {"instances": 1000000, "vcpus": 100000000, "memory_mib": 100000000000, "disk_gb": 100000000000})
    op = api(server.base, "POST", "/v1/instances", {"name": "probe", "instance_type": "standard.small", "template": "busybox"})
    api(server.base, "GET", f"/v1/operations/{op['id']}?wait=30")
    return op["target"]["id"]


def wrk(url, secs, conns=32, script=None):
    args = ["wrk", "-t2", f"-c{conns}", f"-d{secs}s", "--latency", "-H", f"Authorization: Bearer {SECRET}"]
    if script:
        args += ["-s", os.path.join(ROOT, "bench", script)]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    result = {"out": out}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec"):
            result["rps"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in ("50%", "99%"):
            result[parts[0]] = parts[1]
        elif "requests in" in line:
            result["total"] = int(parts[0])
        elif line.strip().startswith("Non-2xx"):
            result["non2xx"] = int(parts[-1])
    return result


def reads(server, instance, secs):
    ping = wrk(server.base + "/v1/ping", secs)
    get = wrk(server.base + f"/v1/instances/{instance}", secs)
    return ping, get


def creations(servers, secs):
    """Creates through every server at once (16 connections in all), then waits for the backlog."""
    before = sum(s.finished_operations() for s in servers)
    results = [None] * len(servers)

    def load(i, s):
        results[i] = wrk(s.base, secs, conns=max(16 // len(servers), 1), script="create.lua")

    threads = [threading.Thread(target=load, args=(i, s)) for i, s in enumerate(servers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = sum(r["total"] - r.get("non2xx", 0) for r in results)
    refused = sum(r.get("non2xx", 0) for r in results)
    start = time.time()
    while sum(s.finished_operations() for s in servers) < before + accepted:
        if time.time() - start > 600:
            sys.exit("the workers did not finish the backlog in 10 minutes")
        time.sleep(0.2)
    drain = time.time() - start
    return {"accepted": accepted, "refused": refused, "accepted_rps": accepted / secs, "drain": drain,
            "completed_rps": accepted / (secs + drain)}


def event_latency(writer, reader, instance, changes):
    """Changes made through `writer`, seen on `reader`'s event stream: ms from the change's answer to the
    event's arrival."""
    arrived = {}
    ready = threading.Event()
    stop = threading.Event()

    def listen():
        conn = http.client.HTTPConnection("127.0.0.1", int(reader.base.rsplit(":", 1)[1]), timeout=60)
        conn.request("GET", "/v1/events", headers={**AUTH, "Accept": "text/event-stream"})
        resp = conn.getresponse()
        ready.set()
        while not stop.is_set():
            line = resp.readline()
            if not line:
                break
            if line.startswith(b"data:"):
                try:
                    event = json.loads(line[5:])
                except ValueError:
                    continue
                mark = (event.get("data") or {}).get("labels", {}).get("lat")
                if event.get("kind") == "instance.updated" and mark is not None and mark not in arrived:
                    arrived[mark] = time.perf_counter()
        conn.close()

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    ready.wait(10)
    time.sleep(0.5)
    answered = {}
    for n in range(changes):
        api(writer.base, "PATCH", f"/v1/instances/{instance}", {"labels": {"lat": str(n)}})
        answered[str(n)] = time.perf_counter()
        time.sleep(0.01)
    deadline = time.time() + 10
    while len(arrived) < changes and time.time() < deadline:
        time.sleep(0.05)
    stop.set()
    lat = sorted((arrived[k] - answered[k]) * 1000 for k in answered if k in arrived)
    missed = changes - len(lat)
    if not lat:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan"), "missed": missed}
    return {"p50": statistics.median(lat), "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "max": lat[-1],
            "missed": missed}


def postgres():
    # A directory of its own under /tmp: the cluster runs as the `postgres` user, who cannot enter the
    # (root-only) work directory.
    pgdir = tempfile.mkdtemp(prefix="nimbus-bench-pg-")
    port = free_port()
    out = subprocess.run([os.path.join(ROOT, "scripts", "postgres.sh"), "start", pgdir, str(port)],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return pgdir, out


def create_database(server_url, name):
    host_port = server_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    subprocess.run(["/usr/lib/postgresql/15/bin/createdb", "-h", host, "-p", port, "-U", "postgres", name], check=True)
    return server_url.rsplit("/", 1)[0] + "/" + name


def build(commit, work):
    if commit is None:
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "nimbus"], cwd=ROOT, check=True)
        return os.path.join(ROOT, "target", "release", "nimbus")
    tree = os.path.join(work, "baseline")
    subprocess.run(["git", "worktree", "add", "-q", "--detach", tree, commit], cwd=ROOT, check=True)
    target = os.path.join(ROOT, "target", "baseline")
    subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "nimbus"], cwd=tree, check=True,
                   env={**os.environ, "CARGO_TARGET_DIR": target})
    subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, check=True)
    return os.path.join(target, "release", "nimbus")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--secs", type=int, default=10)
    parser.add_argument("--baseline", help="an earlier commit to measure on SQLite in the same run")
    parser.add_argument("--changes", type=int, default=300)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, stdout=sys.stderr)
    work = tempfile.mkdtemp(prefix="nimbus-bench-")
    pgdir = None
    try:
        binary = build(None, work)
        baseline = build(args.baseline, work) if args.baseline else None
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        rows = []

        def one_server(label, binary, database=None):
            d = tempfile.mkdtemp(dir=work)
            s = Server(binary, d, database)
            instance = prepare(s)
            ping, get = reads(s, instance, args.secs)
            made = creations([s], args.secs)
            same = event_latency(s, s, instance, args.changes)
            s.stop()
            rows.append((label, ping, get, made, same))

        if baseline:
            one_server(f"SQLite, before ({args.baseline})", baseline)
        one_server(f"SQLite ({commit})", binary)
        pgdir, pg = postgres()
        one_server(f"PostgreSQL ({commit})", binary, create_database(pg, "bench_one"))

        db = create_database(pg, "bench_two")
        host = os.path.join(work, "shared-host")
        a = Server(binary, tempfile.mkdtemp(dir=work), db, host)
        b = Server(binary, tempfile.mkdtemp(dir=work), db, host)
        instance = prepare(a)
        two = creations([a, b], args.secs)
        cross = event_latency(a, b, instance, args.changes)
        a.stop()
        b.stop()

        print(f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}, "
              f"`bench/servers.py --secs {args.secs}{' --baseline ' + args.baseline if args.baseline else ''} "
              f"--changes {args.changes}`, release builds, sim driver, {os.cpu_count()} cores.\n")
        print("| store | GET /v1/ping req/s | GET /v1/instances/{id} req/s | p50 | p99 | creates accepted/s | "
              "creates completed/s | event latency, same server p50 / p99 |")
        print("|---|---|---|---|---|---|---|---|")
        for label, ping, get, made, same in rows:
            print(f"| {label} | {ping['rps']:.0f} | {get['rps']:.0f} | {get.get('50%')} | {get.get('99%')} | "
                  f"{made['accepted_rps']:.0f} | {made['completed_rps']:.0f} | "
                  f"{same['p50']:.1f} / {same['p99']:.1f} ms |")
        print()
        print("| two servers on one PostgreSQL | value |")
        print("|---|---|")
        print(f"| creates accepted/s (both servers, 16 connections in all) | {two['accepted_rps']:.0f} |")
        print(f"| creates completed/s | {two['completed_rps']:.0f} |")
        print(f"| accepted / refused | {two['accepted']} / {two['refused']} |")
        print(f"| cross-server event latency (change through one server, event on the other's stream), "
              f"p50 / p99 / max of {args.changes} | {cross['p50']:.1f} / {cross['p99']:.1f} / {cross['max']:.1f} ms |")
        print(f"| changes whose event never arrived | {cross['missed']} |")
    finally:
        for child in CHILDREN:
            if child.poll() is None:
                child.kill()
                child.wait()
        if pgdir:
            subprocess.run([os.path.join(ROOT, "scripts", "postgres.sh"), "stop", pgdir], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
