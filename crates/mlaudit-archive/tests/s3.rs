//! The archive on an S3-compatible server (moto, started by `scripts/s3-test-server.sh`) with
//! conditional puts: create-only writes are refused by the server itself, removed payloads
//! leave their bundles, and the archive verifies and names a damaged object exactly as on a
//! filesystem.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use common::{checkpoint, extend_to, log_with, verify_all, TempDir};
use mlaudit_archive::{Archive, ArchiveError};
use mlaudit_store::prelude::*;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

const BUCKET: &str = "mlaudit-archive-test";

/// Starts (or finds) the S3 server, creates the bucket, and points `object_store`'s standard
/// environment variables at it. Setting the environment is safe only because this binary runs
/// one test: add another here and it must share one setup (e.g. a `Once`).
fn s3_server() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = std::process::Command::new("bash")
        .arg(format!("{root}/scripts/s3-test-server.sh"))
        .arg(BUCKET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/s3-test-server.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::env::var("MLAUDIT_TEST_S3_PORT").unwrap_or_else(|_| "5077".into());
    let endpoint = format!("http://127.0.0.1:{port}");
    for (k, v) in [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ] {
        std::env::set_var(k, v);
    }
    endpoint
}

#[test]
fn an_archive_on_s3_is_create_only_and_verifies_alone() {
    let endpoint = s3_server();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("run-{}-{stamp}", std::process::id());
    let url = format!("s3://{BUCKET}/{prefix}");
    let (a_dir, b_dir) = (TempDir::new("log-a"), TempDir::new("log-b"));
    let a = log_with(&a_dir.0, &[1000, 300], "a");
    let archive = Archive::open(&url).unwrap();
    extend_to(&archive, &a, 1000).unwrap();
    let done = extend_to(&archive, &a, 1300).unwrap();
    assert_eq!((done.from, done.size), (1000, 1300));
    let v = verify_all(&archive).unwrap();
    assert_eq!((v.size, v.payloads, v.checkpoints), (1300, 1300, 2));
    assert_eq!(
        archive.events(1299, 1300).unwrap()[0].entry,
        a.event(1299).unwrap().entry
    );
    // Removing a payload (erasure) writes its bundles again; the archive still verifies.
    let removed = archive.remove_payloads(&[990, 1299]).unwrap();
    assert_eq!(
        removed.bundles, 3,
        "payload/003.p/232, payload/003 and payload/005.p/20"
    );
    assert_eq!(archive.events(990, 991).unwrap()[0].payload, None);
    let v = verify_all(&archive).unwrap();
    assert_eq!((v.payloads, v.payloads_absent), (1298, 2));

    // Another log's bytes under the same names: the server refuses (If-None-Match), nothing is
    // overwritten.
    let b = log_with(&b_dir.0, &[1300], "b");
    let raw = AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_bucket_name(BUCKET)
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_region("us-east-1")
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let path = |name: &str| ObjectPath::from(format!("{prefix}/{name}"));
    rt.block_on(raw.delete(&path("checkpoint"))).unwrap();
    let err = extend_to(&archive, &b, 1300).unwrap_err();
    assert!(matches!(err, ArchiveError::Conflict { .. }), "{err}");
    rt.block_on(raw.put(&path("checkpoint"), checkpoint(&a, 1300).into()))
        .unwrap();
    assert_eq!(verify_all(&archive).unwrap().size, 1300);

    // Damage an object on the server: verification names it.
    let tile = path("tile/0/002");
    let mut bytes = rt
        .block_on(async { raw.get(&tile).await.unwrap().bytes().await })
        .unwrap()
        .to_vec();
    bytes[33] ^= 0x80;
    rt.block_on(raw.put(&tile, bytes.into())).unwrap();
    let err = verify_all(&archive).unwrap_err();
    assert!(err.to_string().starts_with("tile/0/002: "), "{err}");
}
