//! The Python SDK's pytest suite (`clients/python/tests`), run from `cargo test` so that the
//! README's one test command covers both SDKs: it installs the package with its `test` extra
//! (pytest, cryptography, scikit-learn — from PyPI) and runs pytest with `MLAUDIT_BIN` set to
//! the `mlaudit` binary this test was built with. The suite starts its own `mlaudit serve`
//! processes; it covers delivery (exactly once, order through a kill -9, the spool), the
//! decorator, the stage helpers, sampling, the independent bundle verifier and the example.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mlaudit");

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn install_test_dependencies() {
    let mut last = String::new();
    for attempt in 1..=3 {
        let out = Command::new("python3")
            .current_dir(root())
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "./clients/python[test]"])
            .output()
            .unwrap_or_else(|e| panic!("running python3 (CPython 3.9 or later is needed for the Python SDK's tests): {e}"));
        if out.status.success() {
            return;
        }
        last = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_secs(5 * attempt));
    }
    panic!("pip install ./clients/python[test] failed three times:\n{last}");
}

#[test]
fn the_python_sdk_test_suite_passes_against_real_servers() {
    install_test_dependencies();
    let out = Command::new("python3")
        .current_dir(root())
        .args([
            "-m",
            "pytest",
            "clients/python/tests",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .env("MLAUDIT_BIN", BIN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "pytest failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains(" passed"))
        .unwrap_or_default();
    assert!(
        !summary.contains("skipped"),
        "every Python test must run here: {summary}"
    );
}
