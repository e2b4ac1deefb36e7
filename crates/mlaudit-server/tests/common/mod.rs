//! The fixture the handler tests share: a real embedded store in a temporary directory, three
//! tokens (writer, reader, admin) and calls through `Router::oneshot`, without sockets.

#![allow(dead_code, clippy::unwrap_used, reason = "test helpers fail loudly")]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use mlaudit_core::note::NoteSigner;
use mlaudit_embedded::EmbeddedStore;
use mlaudit_server::auth::{Role, Tokens};
use mlaudit_server::{router, AppState, Limits};
use mlaudit_store::{Appender, Diagnostics, LogReader, Querier};
use serde_json::{json, Value};
use std::sync::{Arc, RwLock};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tower::ServiceExt;

pub struct Fixture {
    pub dir: std::path::PathBuf,
    pub store: Arc<EmbeddedStore>,
    pub state: AppState,
    pub writer: String,
    pub reader: String,
    pub admin: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.store.close();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn fixture(name: &str, limits: Limits) -> Fixture {
    let dir =
        std::env::temp_dir().join(format!("mlaudit-server-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let signer = NoteSigner::from_seed("test.mlaudit/server", [5; 32]).unwrap();
    let (store, _) = EmbeddedStore::open(&dir, Some(signer.clone())).unwrap();
    let store = Arc::new(store);
    // The fixture's own tokens are recorded in a log of their own, so that the log under test
    // starts empty (token changes made through the API are recorded in it, and tested).
    let setup_dir = dir.with_extension("setup");
    let _ = std::fs::remove_dir_all(&setup_dir);
    let (setup_log, _) = EmbeddedStore::open(&setup_dir, Some(signer.clone())).unwrap();
    let tokens = RwLock::new(Tokens::load(&dir.join("tokens.json")).unwrap());
    let setup = mlaudit_server::auth::Principal {
        name: "local:setup".into(),
        role: Some(Role::Admin),
    };
    let create = |name, role| Tokens::create(&tokens, &setup_log, &setup, name, role).unwrap();
    let (writer, reader, admin) = (
        create("writer", Role::Writer),
        create("reader", Role::Reader),
        create("admin", Role::Admin),
    );
    drop(setup_log);
    let _ = std::fs::remove_dir_all(&setup_dir);
    let state = AppState {
        limits,
        ..AppState::new(store.clone(), signer.verifier(), Some(Arc::new(tokens)))
    };
    Fixture {
        dir,
        store,
        state,
        writer,
        reader,
        admin,
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

pub async fn call(f: &Fixture, req: Request<Body>) -> Reply {
    let resp = router(f.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        content_type,
        body,
    }
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A GET as the reader.
pub async fn get(f: &Fixture, uri: &str) -> Reply {
    call(
        f,
        Request::get(uri)
            .header("authorization", bearer(&f.reader))
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

/// A POST of events as the writer.
pub async fn post(f: &Fixture, content_type: &str, body: impl Into<Body>) -> Reply {
    call(
        f,
        Request::post("/v1/events")
            .header("authorization", bearer(&f.writer))
            .header("content-type", content_type)
            .body(body.into())
            .unwrap(),
    )
    .await
}

pub fn event(i: usize) -> Value {
    json!({
        "id": format!("00000000-0000-4000-8000-{i:012}"),
        "time": "2026-11-20T10:00:00Z",
        "kind": "prediction.served",
        "actor": {"id": "scoring-api", "type": "service"},
        "subject": {"model": "credit-risk", "version": "7", "request": format!("r{i}")},
        "attributes": {"inputs": {"x": i}, "outputs": {"score": 0.5}}
    })
}

pub fn ndjson(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

/// The 4xx contract: a JSON error body, and nothing written.
pub fn assert_rejected(f: &Fixture, r: &Reply, status: StatusCode, code: &str, size_before: u64) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.content_type.starts_with("application/json"),
        "{}",
        r.content_type
    );
    let body = r.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(
        f.store.tree_size(),
        size_before,
        "a rejected request wrote something"
    );
}

/// A file of `tests/fixtures/tls` (a test CA, and a certificate for `localhost` it signed).
pub fn tls_fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// A TLS client that trusts the test CA.
pub fn client() -> tokio_rustls::TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(tls_fixture("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// What a [`QuirkyEngine`] does differently from the embedded store it wraps.
pub enum Quirk {
    /// It keeps the default, blocking `Store::submit`; its `append` waits for a permit that
    /// only an async task on the test's single-threaded runtime can give.
    NeedsPermit(std::sync::Mutex<std::sync::mpsc::Receiver<()>>),
    /// Its `try_submit` (called on the async worker) panics: a bug in an engine.
    PanicsOnSubmit,
    /// It refuses every append as the embedded engine does when the disk is full (`true`) or
    /// file descriptors ran out (`false`).
    Refuses { disk_full: bool },
}

pub struct QuirkyEngine {
    pub inner: Arc<EmbeddedStore>,
    pub quirk: Quirk,
}

impl Appender for QuirkyEngine {
    fn append(
        &self,
        events: Vec<mlaudit_core::event::PreparedEvent>,
    ) -> Result<mlaudit_store::AppendReceipt, mlaudit_store::StoreError> {
        if let Quirk::Refuses { disk_full } = self.quirk {
            return Err(if disk_full {
                mlaudit_store::StoreError::DiskFull(
                    "writing the log: No space left on device (os error 28)".into(),
                )
            } else {
                mlaudit_store::StoreError::Unavailable(
                    "creating the next segment: Too many open files (os error 24)".into(),
                )
            });
        }
        if let Quirk::NeedsPermit(permit) = &self.quirk {
            if permit
                .lock()
                .unwrap()
                .recv_timeout(std::time::Duration::from_secs(10))
                .is_err()
            {
                return Err(mlaudit_store::StoreError::WriterStopped(
                    "append ran on the async worker: the permit task never ran".into(),
                ));
            }
        }
        self.inner.append(events)
    }

    fn try_submit(
        &self,
        events: Vec<mlaudit_core::event::PreparedEvent>,
        done: mlaudit_store::AppendDone,
    ) -> Result<
        (),
        (
            Vec<mlaudit_core::event::PreparedEvent>,
            mlaudit_store::AppendDone,
        ),
    > {
        match self.quirk {
            Quirk::PanicsOnSubmit => panic!("a bug in the engine"),
            Quirk::NeedsPermit(_) | Quirk::Refuses { .. } => Err((events, done)),
        }
    }
}

impl LogReader for QuirkyEngine {
    fn tree_size(&self) -> u64 {
        self.inner.tree_size()
    }

    fn event(&self, seq: u64) -> Result<mlaudit_store::StoredEvent, mlaudit_store::StoreError> {
        self.inner.event(seq)
    }

    fn seq_of(
        &self,
        id: &mlaudit_core::entry::EventId,
    ) -> Result<Option<u64>, mlaudit_store::StoreError> {
        self.inner.seq_of(id)
    }

    fn node(
        &self,
        level: u32,
        index: u64,
    ) -> Result<mlaudit_core::merkle::Hash, mlaudit_store::StoreError> {
        self.inner.node(level, index)
    }

    fn checkpoint(&self, size: u64) -> Result<Option<String>, mlaudit_store::StoreError> {
        self.inner.checkpoint(size)
    }

    fn checkpoint_sizes(&self) -> Result<Vec<u64>, mlaudit_store::StoreError> {
        self.inner.checkpoint_sizes()
    }

    fn scan(
        &self,
        from: u64,
        visit: &mut dyn FnMut(mlaudit_store::StoredEvent) -> std::ops::ControlFlow<()>,
    ) -> Result<(), mlaudit_store::StoreError> {
        self.inner.scan(from, visit)
    }
}

impl Querier for QuirkyEngine {
    fn query(&self, q: &mlaudit_store::Query) -> Result<Vec<u64>, mlaudit_store::StoreError> {
        self.inner.query(q)
    }
}

impl Diagnostics for QuirkyEngine {
    fn location(&self, seq: u64) -> String {
        self.inner.location(seq)
    }
}
