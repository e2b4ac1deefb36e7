//! TLS: the API answers over TLS with a certificate from PEM files, refuses plaintext on the TLS
//! port, and stops gracefully; unusable certificate or key files are clear errors.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use mlaudit_core::note::NoteSigner;
use mlaudit_embedded::EmbeddedStore;
use mlaudit_server::auth::{Role, Tokens};
use mlaudit_server::tls::{load_config, serve_tls, TlsError};
use mlaudit_server::AppState;
use mlaudit_store::prelude::*;
use std::sync::{Arc, RwLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;

mod common;

use common::{client, tls_fixture as fixture};

async fn https(addr: std::net::SocketAddr, request: String) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = client()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn serves_over_tls_and_refuses_plaintext() {
    let dir = std::env::temp_dir().join(format!("mlaudit-tls-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let signer = NoteSigner::from_seed("tls.test", [3; 32]).unwrap();
    let (store, _) = EmbeddedStore::open(&dir.join("log"), Some(signer.clone())).unwrap();
    let store = Arc::new(store);
    let tokens = RwLock::new(Tokens::load(&dir.join("tokens.json")).unwrap());
    let setup = mlaudit_server::auth::Principal {
        name: "local:setup".into(),
        role: Some(Role::Admin),
    };
    let writer = Tokens::create(&tokens, &*store, &setup, "w", Role::Writer).unwrap();
    let state = AppState::new(store.clone(), signer.verifier(), Some(Arc::new(tokens)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = load_config(&fixture("cert.pem"), &fixture("key.pem")).unwrap();
    let server = tokio::spawn(serve_tls(listener, state, config, async move {
        let _ = stopped.await;
    }));

    let health = https(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let body = r#"{"kind":"x.tls","actor":{"id":"a","type":"service"}}"#;
    let post = https(addr, format!("POST /v1/events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {writer}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())).await;
    assert!(post.starts_with("HTTP/1.1 200"), "{post}");
    // The writer token's creation, then the event.
    assert_eq!(store.tree_size(), 2);

    // Plaintext HTTP on the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        plain.read_to_end(&mut out),
    )
    .await;
    assert!(
        !String::from_utf8_lossy(&out).contains("200 OK"),
        "plaintext must not be served: {:?}",
        String::from_utf8_lossy(&out)
    );

    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    store.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unusable_files_are_clear_errors() {
    let missing = fixture("missing.pem");
    assert!(matches!(
        load_config(&missing, &fixture("key.pem")),
        Err(TlsError::Certificate { .. })
    ));
    assert!(matches!(
        load_config(&fixture("cert.pem"), &missing),
        Err(TlsError::Key { .. })
    ));
    assert!(
        matches!(
            load_config(&fixture("key.pem"), &fixture("key.pem")),
            Err(TlsError::Certificate { .. })
        ),
        "a key is not a certificate"
    );
    assert!(
        matches!(
            load_config(&fixture("cert.pem"), &fixture("cert.pem")),
            Err(TlsError::Key { .. })
        ),
        "a certificate is not a key"
    );
}
