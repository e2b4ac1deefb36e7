//! The log served as C2SP tlog-tiles, checked from the outside: for the spec's own example of
//! a tree of 70,000 entries, the level-0 tiles and the entry bundles agree entry by entry, the
//! root recomputed from them alone is the checkpoint's, and every level-1 and level-2 hash is
//! the Merkle hash of the 256 (or 65,536) leaves below it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{call, fixture, get};
use mlaudit_server::Limits;
use mlaudit_store::Appender;
use sha2::{Digest, Sha256};

type H = [u8; 32];

fn leaf(entry: &[u8]) -> H {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(entry)
        .finalize()
        .into()
}

/// RFC 9162 §2.1 Merkle tree hash, written here from the RFC, not taken from the product.
fn mth(leaves: &[H]) -> H {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = n.next_power_of_two() / 2;
            let (l, r) = (mth(&leaves[..k]), mth(&leaves[k..]));
            Sha256::new()
                .chain_update([1u8])
                .chain_update(l)
                .chain_update(r)
                .finalize()
                .into()
        }
    }
}

fn index_path(n: u64) -> String {
    let mut parts = vec![format!("{:03}", n % 1000)];
    let mut rest = n / 1000;
    while rest > 0 {
        parts.push(format!("x{:03}", rest % 1000));
        rest /= 1000;
    }
    parts.reverse();
    parts.join("/")
}

fn tile_uri(level: Option<u32>, n: u64, width: u64) -> String {
    let l = level.map_or("entries".to_owned(), |l| l.to_string());
    let partial = if width < 256 {
        format!(".p/{width}")
    } else {
        String::new()
    };
    format!("/tile/{l}/{}{partial}", index_path(n))
}

async fn anonymous(f: &common::Fixture, uri: &str) -> common::Reply {
    call(f, Request::get(uri).body(Body::empty()).unwrap()).await
}

/// Every tile of `level` for the tree of `size`, as hashes.
async fn level_hashes(f: &common::Fixture, level: u32, size: u64) -> Vec<H> {
    let count = size / 256u64.pow(level);
    let mut out = Vec::new();
    for n in 0..count.div_ceil(256) {
        let width = (count - n * 256).min(256);
        let r = anonymous(f, &tile_uri(Some(level), n, width)).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}",
            tile_uri(Some(level), n, width)
        );
        assert_eq!(r.content_type, "application/octet-stream");
        assert_eq!(r.body.len() as u64, width * 32);
        out.extend(r.body.chunks(32).map(|c| <H>::try_from(c).unwrap()));
    }
    out
}

#[tokio::test]
async fn tiles_and_bundles_rebuild_the_checkpointed_tree() {
    let f = fixture("tiles", Limits::default());
    for batch in 0..7 {
        let events = (0..10_000)
            .map(|i| {
                let n = batch * 10_000 + i;
                let json = format!(
                    r#"{{"id":"00000000-0000-4000-8000-{n:012}","kind":"x.tile","actor":{{"id":"t","type":"service"}},"attributes":{{"n":{n}}}}}"#
                );
                mlaudit_core::event::prepare(&json, "test").unwrap()
            })
            .collect();
        f.store.append(events).unwrap();
    }
    let cp = anonymous(&f, "/checkpoint").await;
    assert_eq!(cp.status, StatusCode::OK);
    assert_eq!(cp.content_type, "text/plain; charset=utf-8");
    let note = cp.text();
    let checkpoint =
        mlaudit_core::note::open_checkpoint(&f.state.verifier, &note).expect("a signed checkpoint");
    let size = checkpoint.size;
    assert_eq!(size, 70_000);
    // Nothing beyond the checkpoint, no other spelling, and bundles only for readers (checked
    // before any bundle is read: each read is audited, and so grows the log).
    for uri in [
        "/tile/0/273.p/113",
        "/tile/0/274",
        "/tile/3/000.p/1",
        "/tile/00/000",
        "/tile/0/x000/001",
        "/tile/0/000.p/256",
        "/tile/64/000",
    ] {
        assert_eq!(
            anonymous(&f, uri).await.status,
            StatusCode::NOT_FOUND,
            "{uri}"
        );
    }
    assert_eq!(
        anonymous(&f, "/tile/entries/000").await.status,
        StatusCode::UNAUTHORIZED
    );

    // Level 0: 273 full tiles and one of width 112; the bundles match them entry by entry.
    let leaves = level_hashes(&f, 0, size).await;
    assert_eq!(leaves.len(), 70_000);
    for n in 0..size.div_ceil(256) {
        let width = (size - n * 256).min(256);
        let r = get(&f, &tile_uri(None, n, width)).await;
        assert_eq!(r.status, StatusCode::OK);
        let mut at = 0;
        let mut i = n * 256;
        while at < r.body.len() {
            let len = u16::from_be_bytes([r.body[at], r.body[at + 1]]) as usize;
            let entry = &r.body[at + 2..at + 2 + len];
            assert_eq!(leaf(entry), leaves[i as usize], "entry {i}");
            at += 2 + len;
            i += 1;
        }
        assert_eq!(i, n * 256 + width);
    }
    assert_eq!(
        mth(&leaves),
        checkpoint.root.0,
        "the root from the tiles alone"
    );

    // Level 1: one full tile and one of width 17; level 2: one of width 1.
    let l1 = level_hashes(&f, 1, size).await;
    assert_eq!(l1.len(), 273);
    for (j, h) in l1.iter().enumerate() {
        assert_eq!(*h, mth(&leaves[j * 256..(j + 1) * 256]), "level 1 hash {j}");
    }
    let l2 = level_hashes(&f, 2, size).await;
    assert_eq!(l2, vec![mth(&leaves[..65_536])]);
}
