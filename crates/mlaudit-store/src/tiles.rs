//! The log as C2SP tlog-tiles resources (<https://c2sp.org/tlog-tiles>): hash tiles at
//! `tile/<L>/<N>[.p/<W>]` and entry bundles at `tile/entries/<N>[.p/<W>]`, read from any store.
//!
//! Tile `N` of level `L` holds the 256 (or, partial, `W`) consecutive tree hashes at tree level
//! `8·L` from index `256·N`: exactly the perfect-subtree hashes every engine stores. An entry
//! bundle holds the entry headers (the leaf preimages, never payloads) of 256 consecutive
//! events, each prefixed with its length as a big-endian `u16`.
//!
//! **Invariant:** a resource is produced only when the tree of `size` (a checkpointed size)
//! contains every hash or entry it covers, so each is immutable once served. Paths are parsed
//! strictly: exactly the spelling the spec allows, nothing else.

use crate::{LogReader, StoreError};
use std::ops::ControlFlow;

/// Hashes (or entries) in a full tile.
pub const TILE_WIDTH: u64 = 256;

/// A tile or bundle: its index and width (1..=256; below 256 it is partial).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TileRef {
    pub index: u64,
    pub width: u16,
}

/// Why a tile cannot be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TileError {
    /// The path is not one the spec allows.
    #[error("not a tlog-tiles path: {0}")]
    BadPath(String),
    /// The tree of the latest checkpoint does not cover it (yet).
    #[error("{0}")]
    NotFound(String),
    /// An entry header longer than an entry bundle can carry (65,535 bytes).
    #[error("entry {0} is longer than 65,535 bytes and cannot be put in an entry bundle")]
    TooLong(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Parses `<L>` (0..=63, no leading zeros).
pub fn parse_level(text: &str) -> Result<u8, TileError> {
    let bad = || TileError::BadPath(format!("level {text:?}"));
    if text.is_empty() || text.len() > 2 || (text.len() > 1 && text.starts_with('0')) {
        return Err(bad());
    }
    let level: u8 = text.parse().map_err(|_| bad())?;
    if level > 63 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    Ok(level)
}

/// Parses `<N>[.p/<W>]`: 3-digit elements, all but the last prefixed with `x`.
pub fn parse_tile(text: &str) -> Result<TileRef, TileError> {
    let bad = || TileError::BadPath(format!("tile {text:?}"));
    let mut parts: Vec<&str> = text.split('/').collect();
    let mut width = TILE_WIDTH as u16;
    if parts.len() >= 2 && parts[parts.len() - 2].ends_with(".p") {
        let w = parts.pop().ok_or_else(bad)?;
        if w.is_empty()
            || w.len() > 3
            || w.starts_with('0')
            || !w.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        width = w.parse().map_err(|_| bad())?;
        if width == 0 || width >= TILE_WIDTH as u16 {
            return Err(bad());
        }
        let last = parts.pop().ok_or_else(bad)?;
        parts.push(last.strip_suffix(".p").ok_or_else(bad)?);
    }
    let Some((last, rest)) = parts.split_last() else {
        return Err(bad());
    };
    let digits3 = |s: &str| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit());
    let mut index: u64 = 0;
    for p in rest {
        let d = p.strip_prefix('x').filter(|d| digits3(d)).ok_or_else(bad)?;
        index = index
            .checked_mul(1000)
            .and_then(|i| i.checked_add(d.parse::<u64>().ok()?))
            .ok_or_else(bad)?;
    }
    if !digits3(last) {
        return Err(bad());
    }
    index = index
        .checked_mul(1000)
        .and_then(|i| i.checked_add(last.parse::<u64>().ok()?))
        .ok_or_else(bad)?;
    // One spelling per index: no leading `x000/` elements.
    if tile_path_index(index) != parts.join("/") {
        return Err(bad());
    }
    Ok(TileRef { index, width })
}

/// The `<N>` path elements of an index.
pub fn tile_path_index(index: u64) -> String {
    let mut groups = vec![format!("{:03}", index % 1000)];
    let mut rest = index / 1000;
    while rest > 0 {
        groups.push(format!("x{:03}", rest % 1000));
        rest /= 1000;
    }
    groups.reverse();
    groups.join("/")
}

/// The path of a tile or bundle below `tile/` (`<L>/…` or `entries/…`).
pub fn tile_path(level: Option<u8>, tile: TileRef) -> String {
    let prefix = level.map_or_else(|| "entries".to_owned(), |l| l.to_string());
    let mut path = format!("tile/{prefix}/{}", tile_path_index(tile.index));
    if u64::from(tile.width) < TILE_WIDTH {
        path.push_str(&format!(".p/{}", tile.width));
    }
    path
}

/// The first and one-past-last tree index at tree level `8·level` that `tile` covers, if the
/// tree of `size` holds all of them.
fn covered(level: u8, tile: TileRef, size: u64) -> Result<(u64, u64), TileError> {
    let missing = || {
        TileError::NotFound(format!(
            "{} is beyond the tree of size {size}",
            tile_path(Some(level), tile)
        ))
    };
    let start = tile.index.checked_mul(TILE_WIDTH).ok_or_else(missing)?;
    let end = start
        .checked_add(u64::from(tile.width))
        .ok_or_else(missing)?;
    let span = 256u64.checked_pow(u32::from(level)).ok_or_else(missing)?;
    if end.checked_mul(span).is_none_or(|leaves| leaves > size) {
        return Err(missing());
    }
    Ok((start, end))
}

/// Hash tile `tile` of level `level` in the tree of `size`: `width` hashes of 32 bytes.
pub fn hash_tile(
    store: &dyn LogReader,
    level: u8,
    tile: TileRef,
    size: u64,
) -> Result<Vec<u8>, TileError> {
    let (start, end) = covered(level, tile, size)?;
    let hashes = store.nodes(u32::from(level) * 8, start, end - start)?;
    Ok(hashes.iter().flat_map(|h| h.0).collect())
}

/// Entry bundle `tile` in the tree of `size`: each entry header with a `u16` length prefix.
pub fn entry_bundle(store: &dyn LogReader, tile: TileRef, size: u64) -> Result<Vec<u8>, TileError> {
    let (start, end) = covered(0, tile, size).map_err(|_| {
        TileError::NotFound(format!(
            "{} is beyond the tree of size {size}",
            tile_path(None, tile)
        ))
    })?;
    let mut out = Vec::with_capacity((end - start) as usize * 256);
    let mut problem = None;
    store.scan(start, &mut |ev| {
        if ev.seq >= end {
            return ControlFlow::Break(());
        }
        match u16::try_from(ev.entry.len()) {
            Ok(len) => {
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&ev.entry);
            }
            Err(_) => {
                problem = Some(TileError::TooLong(ev.seq));
                return ControlFlow::Break(());
            }
        }
        if ev.seq + 1 == end {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    if let Some(p) = problem {
        return Err(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_exactly_as_the_spec_spells_them() {
        let t = parse_tile("x001/x234/067").unwrap();
        assert_eq!(
            t,
            TileRef {
                index: 1_234_067,
                width: 256
            }
        );
        assert_eq!(tile_path(Some(0), t), "tile/0/x001/x234/067");
        let p = parse_tile("005.p/112").unwrap();
        assert_eq!(
            p,
            TileRef {
                index: 5,
                width: 112
            }
        );
        assert_eq!(tile_path(None, p), "tile/entries/005.p/112");
        for bad in [
            "5",
            "x000/005",
            "005.p/0",
            "005.p/256",
            "005.p/012",
            "005/",
            "x05/005",
            "abc",
            "005.p",
            "",
        ] {
            assert!(parse_tile(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(parse_level("0").unwrap(), 0);
        assert_eq!(parse_level("63").unwrap(), 63);
        for bad in ["00", "01", "64", "-1", "", "1a"] {
            assert!(parse_level(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(
            tile_path_index(u64::MAX),
            "x018/x446/x744/x073/x709/x551/615"
        );
        assert!(parse_tile("x018/x446/x744/x073/x709/x551/616").is_err());
    }
}
