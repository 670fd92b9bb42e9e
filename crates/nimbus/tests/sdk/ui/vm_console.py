"""Typing into a real VM's serial console in the web console: Debian's headless Chromium signs in, opens
the instance's page, connects its terminal, logs in at the busybox guest's getty as root (with the
password the API reveals), runs a command and reads its answer on the screen (crates/nimbus/tests/vms.rs starts
the qemu server and the VM).

Environment: NIMBUS_URL, NIMBUS_SECRET, INSTANCE_ID, NIMBUS_SCREENSHOTS (optional).
"""

import os

from playwright.sync_api import expect, sync_playwright

URL = os.environ["NIMBUS_URL"]
INSTANCE = os.environ["INSTANCE_ID"]
SHOTS = os.environ.get("NIMBUS_SCREENSHOTS")
expect.set_options(timeout=30_000)


def main():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(URL + f"/ui/#/instances/{INSTANCE}")
            page.get_by_label("API key secret").fill(os.environ["NIMBUS_SECRET"])
            page.get_by_role("button", name="Sign in").first.click()
            expect(page.locator(".page-head .state")).to_have_text("running")
            page.get_by_role("button", name="Connect").click()
            expect(page.get_by_text("Connected: type into the console")).to_be_visible()
            terminal = page.locator("#terminal")
            expect(terminal).to_be_focused()
            # getty prints its prompt again for every Enter, until the user logs in.
            page.keyboard.press("Enter")
            expect(terminal).to_contain_text("login:")
            page.keyboard.type("root")
            page.keyboard.press("Enter")
            expect(terminal).to_contain_text("Password:")
            page.keyboard.type(os.environ["INSTANCE_PASSWORD"])
            page.keyboard.press("Enter")
            # Typing before the shell is up would be read (and half lost) by login.
            expect(terminal).to_contain_text("~ #")
            # The shell computes the answer: the text typed ($((6*7))) is not what comes back (42).
            page.keyboard.type("echo answer-$((6*7))")
            page.keyboard.press("Enter")
            expect(terminal).to_contain_text("answer-42")
            page.keyboard.type("uname -s")
            page.keyboard.press("Enter")
            expect(terminal).to_contain_text("Linux")
            if SHOTS:
                page.screenshot(path=os.path.join(SHOTS, "console.png"), full_page=True)
        finally:
            browser.close()
    print("web console: typed into the VM and read its answer")


if __name__ == "__main__":
    main()
