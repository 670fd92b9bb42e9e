"""The web console in a real browser: Debian's headless Chromium driven by Playwright, against a real
`nimbus server --driver sim` (started by crates/nimbus/tests/web_console.rs).

What a user does and sees: a wrong key is refused in words; signing in with a key and with a password;
creating an instance and watching it reach `running` without reloading; editing its labels; stopping it,
starting its rescue system (its state says so) and deleting it through confirmations; a volume made, attached to a running instance and detached with each
change's progress shown, and deleted; a read-only key sees no action buttons and the API refuses the action
when forced; revoking a key ends its session. Every page passes axe-core with no serious or critical
violation, and the main pages are photographed into docs/screenshots/.

Environment: NIMBUS_URL, NIMBUS_SECRET (an operator key), AXE_JS (axe.min.js), NIMBUS_SCREENSHOTS (a
directory, optional).
"""

import json
import os
import sys
import urllib.request

from playwright.sync_api import expect, sync_playwright

URL = os.environ["NIMBUS_URL"]
ADMIN = os.environ["NIMBUS_SECRET"]
AXE = open(os.environ["AXE_JS"]).read()
SHOTS = os.environ.get("NIMBUS_SCREENSHOTS")
TIMEOUT = 20_000
expect.set_options(timeout=TIMEOUT)


def api(method, path, body=None, secret=ADMIN):
    req = urllib.request.Request(URL + path, method=method, data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Authorization", f"Bearer {secret}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req) as r:
            text = r.read()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_operation(op):
    status, done = api("GET", f"/v1/operations/{op['id']}?wait=30")
    assert status == 200 and done["state"] == "success", done
    return done


violations_seen = []


def accessible(page, name):
    """axe-core on the page as it is: no serious or critical violation. Injected through the debugging
    protocol, which the page's Content-Security-Policy does not govern, so the policy stays on."""
    page.evaluate(AXE + "\n;0")
    result = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    bad = [v for v in result if v["impact"] in ("serious", "critical")]
    for v in bad:
        violations_seen.append(f"{name}: {v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:5]}")
    print(f"axe {name}: {len(result)} violations, {len(bad)} serious or critical", flush=True)


def shot(page, name):
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def nav(page):
    return page.get_by_role("navigation", name="Sections")


def sign_in(page, secret):
    page.goto(URL + "/")
    expect(page.get_by_role("heading", name="Sign in to Nimbus")).to_be_visible()
    page.get_by_label("API key secret").fill(secret)
    page.get_by_role("button", name="Sign in").first.click()


def main():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            run(browser)
        finally:
            browser.close()
    if violations_seen:
        print("accessibility violations:\n  " + "\n  ".join(violations_seen))
        sys.exit(1)
    print("web console: all checks passed")


def run(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT)
    page = context.new_page()
    page.on("pageerror", lambda e: print(f"page error: {e}", flush=True))

    # A wrong key is refused, in the API's words, and nothing else shows.
    sign_in(page, "not-a-key")
    expect(page.get_by_role("alert")).to_contain_text("invalid API key")
    expect(page.get_by_role("navigation", name="Sections")).to_be_hidden()
    accessible(page, "sign-in")
    shot(page, "sign-in")

    # The right one opens the instances page.
    sign_in(page, ADMIN)
    expect(page.get_by_role("heading", name="Instances")).to_be_visible()
    cookies = {c["name"]: c for c in context.cookies()}
    assert cookies["nimbus_session"]["httpOnly"] and cookies["nimbus_session"]["sameSite"] == "Strict", cookies

    # Create an instance; its page follows the operation and the state, live.
    page.get_by_role("link", name="Create instance").first.click()
    expect(page.get_by_role("heading", name="Create an instance")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("web-1")
    page.get_by_label("Instance type").select_option("standard.micro")
    page.get_by_label("Labels").fill("env=demo\ntier=web")
    expect(page.get_by_role("heading", name="Quota left")).to_be_visible()
    accessible(page, "create")
    shot(page, "create")
    page.evaluate("window.__sameDocument = true")
    page.get_by_role("button", name="Create instance").click()
    expect(page.get_by_role("heading", name="web-1")).to_be_visible()
    state = page.locator(".page-head .state")
    expect(state).to_have_text("running", timeout=30_000)
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
    instance_id = page.url.split("#/instances/")[1].split("?")[0]

    # Edit its labels: the page and the API agree.
    labels = page.get_by_label("Labels", exact=True)
    labels.fill("env=prod\nteam=core")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Saved.")).to_be_visible()
    status, seen = api("GET", f"/v1/instances/{instance_id}")
    assert seen["labels"] == {"env": "prod", "team": "core"}, seen["labels"]
    expect(page.locator(".facts .labels").first).to_contain_text("env=prod")
    accessible(page, "instance")
    shot(page, "instance")
    page.get_by_role("button", name="Show root password").click()
    expect(page.locator("#root-password")).to_have_text(api("GET", f"/v1/instances/{instance_id}/password")[1]["password"])

    # The list shows it, filters by label selector, and stays live: a change made elsewhere appears.
    nav(page).get_by_role("link", name="Instances", exact=True).click()
    row = page.locator("tr", has_text="web-1")
    expect(row).to_contain_text("running")
    page.get_by_label("Label selector").fill("env=dev")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No instance matches.")).to_be_visible()
    page.get_by_label("Label selector").fill("env=prod")
    page.get_by_role("button", name="Filter").click()
    expect(row).to_be_visible()
    status, op = api("POST", "/v1/instances", {"name": "api-made", "instance_type": "standard.micro", "template": "busybox", "labels": {"env": "prod"}})
    assert status == 202, op
    expect(page.locator("tr", has_text="api-made")).to_be_visible()
    wait_operation(op)
    expect(page.locator("tr", has_text="api-made")).to_contain_text("running")
    accessible(page, "instances")
    shot(page, "instances")
    # At 200% zoom (half the CSS pixels across) the page reflows: nothing wider than the window but the
    # table, which scrolls inside its own box.
    page.set_viewport_size({"width": 640, "height": 900})
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the window at 200% zoom"
    page.set_viewport_size({"width": 1280, "height": 900})

    # A snapshot, with its operation's progress shown until it ends.
    page.get_by_role("link", name="web-1").click()
    expect(state).to_have_text("running")
    page.get_by_text("Snapshot, resize, scale, reset").click()
    page.get_by_label("Snapshot name").fill("before-stop")
    page.get_by_role("button", name="Take snapshot").click()
    expect(page.locator(".operation")).to_contain_text("create_snapshot: success")
    expect(state).to_have_text("running")
    nav(page).get_by_role("link", name="Snapshots").click()
    expect(page.locator("tr", has_text="before-stop")).to_be_visible()
    page.go_back()
    expect(state).to_have_text("running")

    # Stop, through a confirmation; cancelling it does nothing.
    page.locator("button[data-action=stop]").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Stop web-1?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    # By keyboard alone: Enter on the button opens the question with the safe answer focused; Escape
    # answers no.
    page.locator("button[data-action=stop]").focus()
    page.keyboard.press("Enter")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert api("GET", f"/v1/instances/{instance_id}")[1]["state"] == "running"
    page.locator("button[data-action=stop]").click()
    page.get_by_role("dialog").get_by_role("button", name="Stop").click()
    expect(state).to_have_text("stopped", timeout=30_000)
    expect(page.locator(".operation")).to_contain_text("stop: success")

    # Rescue: a start into the rescue system until it stops, after saying what it does; the state says so.
    page.locator("button[data-action=start-rescue]").click()
    expect(page.get_by_role("dialog")).to_contain_text("rescue system")
    page.get_by_role("dialog").get_by_role("button", name="Rescue").click()
    expect(state).to_have_text("running (rescue)", timeout=30_000)
    expect(page.locator(".operation")).to_contain_text("start: success")
    log = urllib.request.urlopen(urllib.request.Request(f"{URL}/v1/instances/{instance_id}/console",
                                                        headers={"Authorization": f"Bearer {ADMIN}"})).read().decode()
    last_boot = [line for line in log.splitlines() if "booted" in line][-1]
    assert "booted the rescue system" in last_boot, log
    page.locator("button[data-action=stop]").click()
    page.get_by_role("dialog").get_by_role("button", name="Stop").click()
    expect(state).to_have_text("stopped", timeout=30_000)

    # Delete, through a confirmation; the list no longer shows it.
    page.locator("button[data-action=delete]").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="Instances")).to_be_visible(timeout=30_000)
    expect(page.locator("tr", has_text="web-1")).to_have_count(0)
    assert api("GET", f"/v1/instances/{instance_id}")[0] == 404

    # API keys: a new key's secret is shown once.
    nav(page).get_by_role("link", name="API keys").click()
    page.get_by_label("Name", exact=True).fill("viewer")
    page.get_by_label("Role").select_option("read-only")
    page.get_by_role("button", name="Make key").click()
    secret = page.locator("#new-secret").inner_text()
    assert len(secret) > 20
    expect(page.locator("tr", has_text="viewer")).to_contain_text("read-only")
    accessible(page, "api-keys")
    shot(page, "api-keys")

    # A security group with its rules, made from the groups page; a bad rule is refused in words.
    nav(page).get_by_role("link", name="Groups").click()
    form = page.locator("form", has=page.get_by_label("Rules"))
    form.get_by_label("Name", exact=True).fill("ssh")
    form.get_by_label("Rules").fill("ingress tcp 22 0.0.0.0/0")
    form.get_by_role("button", name="Create group").click()
    expect(page.locator("tr", has_text="ssh")).to_contain_text("ingress tcp 22 0.0.0.0/0")
    form.get_by_label("Name", exact=True).fill("broken")
    form.get_by_label("Rules").fill("sideways tcp 22")
    form.get_by_role("button", name="Create group").click()
    expect(page.get_by_role("alert")).to_contain_text("must be ingress or egress")
    expect(page.locator("tr", has_text="broken")).to_have_count(0)

    # Volumes: made from the page, attached to a running instance and detached (each change's progress
    # shown until it ends), deleted through a confirmation; the instance's page lists what it has.
    nav(page).get_by_role("link", name="Volumes", exact=True).click()
    expect(page.get_by_role("heading", name="Volumes", exact=True)).to_be_visible()
    form = page.locator("form", has=page.get_by_label("Size (GB)"))
    form.get_by_label("Name", exact=True).fill("data-1")
    form.get_by_label("Size (GB)").fill("2")
    form.get_by_role("button", name="Create volume").click()
    expect(page.locator(".operation", has_text="create_volume")).to_contain_text("success")
    volume = page.locator("tr", has_text="data-1")
    expect(volume).to_contain_text("available")
    volume.get_by_label("Instance to attach data-1 to").select_option(label="api-made")
    expect(page.locator(".operation", has_text="attach_volume")).to_contain_text("success", timeout=30_000)
    expect(volume).to_contain_text("in-use")
    expect(volume).to_contain_text("api-made")
    made = next(v for v in api("GET", "/v1/volumes")[1]["items"] if v["name"] == "data-1")
    holder = api("GET", f"/v1/instances/{made['instance_id']}")[1]
    assert holder["name"] == "api-made" and made["id"] in holder["volumes"], (made, holder)
    accessible(page, "volumes")
    shot(page, "volumes")
    volume.get_by_role("link", name="api-made").click()
    expect(page.locator(".facts")).to_contain_text(made["id"][:8])
    page.go_back()
    volume = page.locator("tr", has_text="data-1")
    volume.get_by_role("button", name="Detach data-1").click()
    expect(page.locator(".operation", has_text="detach_volume")).to_contain_text("success", timeout=30_000)
    expect(volume).to_contain_text("available")
    volume.get_by_role("button", name="Delete data-1").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.locator("tr", has_text="data-1")).to_have_count(0, timeout=30_000)
    assert not [v for v in api("GET", "/v1/volumes")[1]["items"] if v["name"] == "data-1"]

    # Every other page renders and passes the accessibility check.
    api("POST", "/v1/ssh-keys", {"name": "laptop", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDs8cYQ5RrUQWLhAqk7f4eYt1q0o0e8Vb8Ck8m4lQyE5 me@laptop"})
    api("POST", "/v1/security-groups", {"name": "web", "description": "HTTP in"})
    api("POST", "/v1/anti-affinity-groups", {"name": "spread", "description": "one per host"})
    for section, heading in [("snapshots", "Snapshots"), ("ssh-keys", "SSH keys"), ("groups", "Groups"),
                             ("quotas", "Quotas and usage"), ("events", "Event log"), ("hosts", "Hosts"),
                             ("projects", "Projects")]:
        nav(page).get_by_role("link", name=heading.split(" and")[0] if section == "quotas" else heading, exact=True).click()
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        expect(page.get_by_role("alert")).to_have_count(0)
        if section == "events":
            expect(page.locator("tbody tr").first).to_be_visible()
        accessible(page, section)
        if section in ("events", "hosts", "quotas"):
            shot(page, section)

    # An operator changes a project's quota from the projects page (the last one visited above).
    page.get_by_text("Quota of default").click()
    page.get_by_label("Instances", exact=True).fill("100")
    page.get_by_role("button", name="Set quota").click()
    expect(page.locator("tr", has_text="default")).to_contain_text("100 instances")
    project = api("GET", "/v1/whoami")[1]["project"]["id"]
    assert api("GET", f"/v1/projects/{project}")[1]["quota"]["instances"] == 100

    # A read-only key: no action buttons, and the API refuses the action when the page forces it.
    # This browser prefers a dark theme: the console follows it, and stays readable (axe checks contrast).
    ro = browser.new_context(color_scheme="dark")
    ro.set_default_timeout(TIMEOUT)
    ro_page = ro.new_page()
    sign_in(ro_page, secret)
    expect(ro_page.get_by_role("heading", name="Instances")).to_be_visible()
    expect(ro_page.get_by_role("link", name="Create instance")).to_have_count(0)
    background = ro_page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(20, 23, 28)", f"not the dark theme: {background}"
    accessible(ro_page, "instances, dark")
    ro_page.get_by_role("link", name="api-made").click()
    expect(ro_page.locator(".page-head .state")).to_have_text("running")
    accessible(ro_page, "instance, dark")
    shot(ro_page, "instance-dark")
    expect(ro_page.locator("button[data-action]")).to_have_count(0)
    expect(ro_page.get_by_role("button", name="Save")).to_have_count(0)
    api_made = ro_page.url.split("#/instances/")[1]
    forced = ro_page.evaluate("""async (id) => {
        const csrf = document.cookie.split('; ').find((c) => c.startsWith('nimbus_csrf=')).slice(12);
        const r = await fetch(`/v1/instances/${id}/stop`, {method: 'POST', headers: {'X-CSRF-Token': csrf}});
        return {status: r.status, body: await r.json()};
    }""", api_made)
    assert forced["status"] == 403, forced
    assert api("GET", f"/v1/instances/{api_made}")[1]["state"] == "running"
    # Without the CSRF header even an admin session's change is refused.
    no_csrf = page.evaluate("""async (id) => (await fetch(`/v1/instances/${id}/stop`, {method: 'POST'})).status""", api_made)
    assert no_csrf == 403, no_csrf

    # Revoking the key ends its session: the next request lands on the sign-in page, saying why.
    key_id = next(k["key_id"] for k in api("GET", "/v1/api-keys")[1]["items"] if k["name"] == "viewer")
    assert api("DELETE", f"/v1/api-keys/{key_id}")[0] in (200, 204)
    nav(ro_page).get_by_role("link", name="Quotas").click()
    expect(ro_page.get_by_role("heading", name="Sign in to Nimbus")).to_be_visible()
    expect(ro_page.get_by_role("alert")).to_contain_text("deleted")
    ro.close()

    # Sign out: the cookie no longer works, even replayed.
    session = next(c for c in context.cookies() if c["name"] == "nimbus_session")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to Nimbus")).to_be_visible()
    replay = urllib.request.Request(URL + "/v1/whoami", headers={"Cookie": f"nimbus_session={session['value']}"})
    try:
        urllib.request.urlopen(replay)
        raise AssertionError("a signed-out session still works")
    except urllib.error.HTTPError as e:
        assert e.code == 401, e.code

    # An account with a password (made the way SharedCloud's CLI registers) signs in too; a wrong password
    # is refused in words.
    status, _ = api("POST", "/api/v1/users/", {"email": "ada@example.com", "username": "ada", "password": "correct horse 42"})
    assert status == 201, status
    page.get_by_label("Username", exact=True).fill("ada")
    page.get_by_label("Password", exact=True).fill("wrong")
    page.get_by_role("button", name="Sign in").nth(1).click()
    expect(page.get_by_role("alert")).to_contain_text("wrong username or password")
    page.get_by_label("Password", exact=True).fill("correct horse 42")
    page.get_by_role("button", name="Sign in").nth(1).click()
    expect(page.locator("#who")).to_contain_text("admin")
    nav(page).get_by_role("link", name="Instances", exact=True).click()
    expect(page.get_by_text("No instance matches.")).to_be_visible()
    context.close()


if __name__ == "__main__":
    main()
