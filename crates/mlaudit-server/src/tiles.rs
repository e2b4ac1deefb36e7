//! The log served as C2SP tlog-tiles (<https://c2sp.org/tlog-tiles>), so that witnesses and
//! monitors follow it with standard tooling: `GET /checkpoint`, hash tiles at
//! `GET /tile/<L>/<N>[.p/<W>]` (proof material: public when proofs are) and entry bundles at
//! `GET /tile/entries/<N>[.p/<W>]` (entry headers, never payloads: readers).
//!
//! Only what the latest checkpoint covers is served, so tiles and bundles never change once
//! served and are cached for a year; the checkpoint is cached for a second at most.

use crate::error::ApiError;
use crate::read::blocking;
use crate::AppState;
use crate::Shown;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use mlaudit_store::tiles::{self, TileError};
use mlaudit_store::{Store, StoreError};

impl From<TileError> for ApiError {
    fn from(e: TileError) -> ApiError {
        match e {
            TileError::BadPath(_) | TileError::NotFound(_) => ApiError::NotFound(e.to_string()),
            TileError::Store(e) => ApiError::Store(e),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The size the latest checkpoint signs: nothing beyond it is served.
fn signed_size(store: &dyn Store) -> Result<u64, ApiError> {
    store
        .latest_checkpoint_size()?
        .ok_or_else(|| ApiError::NotFound("the log has no checkpoint yet".into()))
}

fn octets(body: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, IMMUTABLE),
        ],
        body,
    )
        .into_response()
}

pub async fn checkpoint(State(state): State<AppState>) -> Result<Response, ApiError> {
    let note = blocking(&state, |store| {
        mlaudit_store::latest_checkpoint(store)?
            .ok_or_else(|| ApiError::NotFound("the log has no checkpoint yet".into()))
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=1"),
        ],
        note,
    )
        .into_response())
}

pub async fn hash_tile(
    State(state): State<AppState>,
    Path((level, rest)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let level = tiles::parse_level(&level)?;
    let tile = tiles::parse_tile(&rest)?;
    blocking(&state, move |store| {
        let size = signed_size(store)?;
        Ok(tiles::hash_tile(store, level, tile, size)?)
    })
    .await
    .map(octets)
}

pub async fn entry_bundle(
    State(state): State<AppState>,
    Path(rest): Path<String>,
) -> Result<Response, ApiError> {
    let tile = tiles::parse_tile(&rest)?;
    let body = blocking(&state, move |store| {
        let size = signed_size(store)?;
        tiles::entry_bundle(store, tile, size).map_err(|e| match e {
            TileError::Store(StoreError::NotFound(m)) => ApiError::NotFound(m),
            other => other.into(),
        })
    })
    .await?;
    let mut response = octets(body);
    response
        .extensions_mut()
        .insert(Shown(usize::from(tile.width)));
    Ok(response)
}
