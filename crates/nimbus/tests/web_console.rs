//! The web console (`/ui/`) in a real headless Chromium, driven by Playwright for Python
//! (`tests/sdk/ui/console.py`) against a real `nimbus server --driver sim`. The browser is Debian's
//! `chromium` package; it, Playwright and axe-core (pinned) are installed by
//! `scripts/install-sdks.sh`. The run writes the screenshots of `docs/screenshots/`, so they show the
//! console as it is.

mod sdk;

use std::path::Path;

#[test]
fn a_user_drives_instances_through_the_web_console() {
    let chromium = Path::new("/usr/bin/chromium");
    assert!(
        chromium.exists(),
        "no {} — run scripts/install-sdks.sh (the README's test command does)",
        chromium.display()
    );
    let axe = sdk::venv_dir("axe").join("node_modules/axe-core/axe.min.js");
    assert!(axe.exists(), "no {} — run scripts/install-sdks.sh (the README's test command does)", axe.display());
    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
    std::fs::create_dir_all(&screenshots).expect("docs/screenshots");
    // Slow enough that a user would see `creating` and `stopping` before the landing states; open to
    // registration, as the password sign-in registers its account the way SharedCloud's CLI does.
    let server = sdk::Server::start_with(&["--sim-delay-ms", "300", "--allow-registration"]);
    let out = server.python(
        "ui",
        "ui/console.py",
        &[("AXE_JS", axe.to_str().unwrap()), ("NIMBUS_SCREENSHOTS", screenshots.to_str().unwrap())],
    );
    assert!(out.contains("web console: all checks passed"), "{out}");
}
