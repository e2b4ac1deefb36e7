//! The shared store conformance suite (`mlaudit_store::conformance`) on the embedded engine:
//! with its default settings, and with tiny index runs and segments so that the answers come
//! from merged runs and packed segments rather than the in-memory tail.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use common::{open, open_with, small_runs, verifier, TempDir};
use mlaudit_store::conformance;

#[test]
fn the_embedded_store_conforms() {
    let dir = TempDir::new("conformance-default");
    let (store, _) = open(dir.path());
    conformance::check(&store, &verifier()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn the_embedded_store_conforms_from_runs_and_packed_segments() {
    let dir = TempDir::new("conformance-runs");
    let options = mlaudit_embedded::Options {
        segment_target: 4 << 10,
        ..small_runs(8)
    };
    let (store, _) = open_with(dir.path(), options);
    conformance::check(&store, &verifier()).unwrap_or_else(|e| panic!("{e}"));
    store.settle();
    // Reopened, the same answers come from disk.
    drop(store);
    let (again, _) = open_with(dir.path(), small_runs(8));
    mlaudit_store::verify::verify(&again, &verifier(), &mut |_, _| {}).unwrap();
}
