//! The integrations against the real tools, run from `cargo test` so that the README's one
//! test command covers them: `scripts/integration-tests.sh` installs MLflow, openlineage-python,
//! the cloudevents SDK, kfp and ClearML from PyPI into `target/integrations-venv` (once; later
//! runs reuse it) and runs `clients/python/integration_tests` with `MLAUDIT_BIN` set to the
//! binary this test was built with: a real `mlflow server` sending signed webhooks and serving
//! `mlaudit import mlflow`, the OpenLineage client's HTTP transport, KServe- and Seldon-shaped
//! CloudEvents from the cloudevents SDK, a pipeline on kfp's local runner calling
//! `mlaudit.integrations.kfp`, a ClearML offline session and a W&B audit log — each against a
//! real `mlaudit serve` or `mlaudit import`. Every test must run: a skip fails this one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mlaudit");

#[test]
fn the_integrations_work_with_the_real_tools() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let out = Command::new("bash")
        .current_dir(root)
        .arg("scripts/integration-tests.sh")
        .env("MLAUDIT_BIN", BIN)
        .output()
        .unwrap_or_else(|e| panic!("running scripts/integration-tests.sh: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the real-tools suite failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("integration-tests: "))
        .unwrap_or_default();
    assert!(
        summary.contains(" 0 skipped") && !summary.contains(" 0 passed"),
        "every real-tools test must run here: {summary}"
    );
}
