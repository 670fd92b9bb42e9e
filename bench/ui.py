#!/usr/bin/env python3
"""The web console's speed in Debian's headless Chromium on loopback, against a real `nimbus server --driver
sim` this script starts (and stops):

  (a) time to first meaningful paint of the instances page: from navigation start to the instances table in
      the document (the page's own `nimbus:instances-rendered` mark, set just before the frame that paints it),
      with a session cookie, for an empty project and one of 50 instances; also the browser's first
      contentful paint; the median of RUNS fresh page loads (browser cache warm, as for a returning user);
  (b) a project of 1,000 instances: the instances page asking for all 1,000 in one page (limit=1000) until
      the table is in the document, and a label change made through the API until the page shows it (the
      live update: event stream, debounced refetch of the page, re-render of 1,000 rows).

Run with the Python that has Playwright (scripts/install-sdks.sh makes target/sdk/ui):
  target/sdk/ui/bin/python bench/ui.py            (env: NIMBUS_BIN=target/release/nimbus, RUNS=10)
Prints markdown table rows for docs/BENCHMARKS.md.
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from playwright.sync_api import sync_playwright

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BIN = os.environ.get("NIMBUS_BIN", os.path.join(ROOT, "target/release/nimbus"))
RUNS = int(os.environ.get("RUNS", "10"))
SECRET = "ui-bench-secret-0123456789"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    def __init__(self):
        self.dir = tempfile.TemporaryDirectory(prefix="nimbus-ui-bench-")
        self.url = f"http://127.0.0.1:{free_port()}"
        env = dict(os.environ, NIMBUS_BOOTSTRAP_KEY="NIMuibench", NIMBUS_BOOTSTRAP_SECRET=SECRET, RUST_LOG="warn")
        self.proc = subprocess.Popen(
            [BIN, "server", "--driver", "sim", "--listen", self.url[7:], "--data-dir", os.path.join(self.dir.name, "data"),
             # 1,000 instances need more addresses than the default /24.
             "--network-cidr", "10.213.0.0/20"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir.name, "server.log"), "w"))
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/healthz")
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.05)

    def api(self, method, path, body=None):
        req = urllib.request.Request(self.url + path, method=method, data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Authorization", f"Bearer {SECRET}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req) as r:
                text = r.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            raise SystemExit(f"{method} {path}: {e.code} {e.read().decode()}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        self.dir.cleanup()


def create(server, n, prefix):
    def one(i):
        op = server.api("POST", "/v1/instances", {"name": f"{prefix}-{i:04d}", "instance_type": "standard.micro",
                                                   "template": "busybox", "labels": {"bench": "ui", "n": str(i)}})
        server.api("GET", f"/v1/operations/{op['id']}?wait=60")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))


def signed_in_context(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(server.url + "/ui/")
    page.get_by_label("API key secret").fill(SECRET)
    page.get_by_role("button", name="Sign in").first.click()
    page.wait_for_selector("main[data-loaded]")
    page.close()
    return context


def load_instances(context, url):
    """Opens `url` in a fresh page; returns (ms to the rendered mark, ms to first contentful paint)."""
    page = context.new_page()
    page.goto(url, wait_until="commit")
    page.wait_for_function("() => performance.getEntriesByName('nimbus:instances-rendered').length > 0", timeout=60_000)
    rendered = page.evaluate("performance.getEntriesByName('nimbus:instances-rendered')[0].startTime")
    page.wait_for_function("() => performance.getEntriesByName('first-contentful-paint').length > 0")
    fcp = page.evaluate("performance.getEntriesByName('first-contentful-paint')[0].startTime")
    page.close()
    return rendered, fcp


def median_loads(context, url):
    runs = [load_instances(context, url) for _ in range(RUNS)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), max(r[0] for r in runs)


def main():
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"commit {commit}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.path.relpath(BIN, ROOT)}, Chromium headless, RUNS={RUNS}")
    server = Server()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            try:
                context = signed_in_context(browser, server)
                page_url = server.url + "/ui/#/instances"
                rendered, fcp, worst = median_loads(context, page_url)
                print(f"| (a) instances page, empty project: first meaningful paint (table in the document) | {rendered:.0f} ms (max {worst:.0f}); first contentful paint {fcp:.0f} ms |")
                create(server, 50, "web")
                rendered, fcp, worst = median_loads(context, page_url)
                print(f"| (a) instances page, 50 instances (one page of 50) | {rendered:.0f} ms (max {worst:.0f}); first contentful paint {fcp:.0f} ms |")

                project = server.api("GET", "/v1/whoami")["project"]["id"]
                server.api("PUT", f"/v1/projects/{project}/quota", {"instances": 2000, "vcpus": 4000, "memory_mib": 4194304, "disk_gb": 65536})
                t = time.time()
                create(server, 950, "big")
                made = time.time() - t
                all_url = server.url + "/ui/#/instances?limit=1000"
                rendered, fcp, worst = median_loads(context, all_url)
                print(f"| (b) 1,000 instances on one page (limit=1000): navigation to table in the document | {rendered:.0f} ms (max {worst:.0f}) |")
                rendered, fcp, worst = median_loads(context, page_url)
                print(f"| (b) 1,000 instances, default page of 50 | {rendered:.0f} ms (max {worst:.0f}) |")

                # Live update on the 1,000-row page: a label changed through the API until the row shows it.
                page = context.new_page()
                page.goto(all_url)
                page.wait_for_selector("main[data-loaded]")
                target = server.api("GET", "/v1/instances?name=big-0500")["items"][0]
                lags = []
                for i in range(RUNS):
                    value = f"v{i}"
                    t = time.time()
                    server.api("PATCH", f"/v1/instances/{target['id']}", {"labels": {"live": value}})
                    page.wait_for_function(
                        "([id, v]) => { const r = document.querySelector(`tr[data-id='${id}']`); return r && r.textContent.includes('live=' + v); }",
                        arg=[target["id"], value], timeout=30_000)
                    lags.append((time.time() - t) * 1000)
                print(f"| (b) 1,000-row page: label changed through the API -> shown (SSE, 150 ms debounce, refetch, re-render) | {statistics.median(lags):.0f} ms (max {max(lags):.0f}) |")
                print(f"| (setup) 950 sim creates through the API, 8 at a time, to operation success | {made:.1f} s |")
            finally:
                browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
