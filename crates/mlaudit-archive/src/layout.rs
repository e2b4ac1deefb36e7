//! Object names and the formats of the bundles.
//!
//! Hash tiles and entry bundles are exactly C2SP tlog-tiles'. A payload bundle is mlaudit's
//! own: one zstd frame (RFC 8878) holding the payloads of the events of the entry bundle of the
//! same name, in order:
//!
//! ```text
//! "MLAPAYL1"                      8-byte magic
//! per event:  u32 length, bytes   big-endian length; 0xFFFFFFFF (and no bytes) when the
//!                                 payload is not kept (expired or erased)
//! ```
//!
//! Decompression stops at the most a bundle of its width can hold (each event's JSON is at
//! most `MAX_EVENT_BYTES`), so a hostile frame cannot exhaust memory.

use crate::ArchiveError;
use mlaudit_store::tiles::{tile_path, tile_path_index, TileRef, TILE_WIDTH};

/// The latest archived checkpoint.
pub const CHECKPOINT: &str = "checkpoint";
/// Every checkpoint the archive was extended to: `checkpoints/<size>`.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
const PAYLOAD_MAGIC: &[u8; 8] = b"MLAPAYL1";
/// zstd level of payload bundles.
const PAYLOAD_LEVEL: i32 = 3;
const ABSENT: u32 = u32::MAX;

/// The most bytes an object named `name` can hold: a full hash tile, a bundle of 256 of the
/// longest entries or payloads, a signed note of a few lines.
pub fn max_object_bytes(name: &str) -> u64 {
    let width = TILE_WIDTH;
    if name.starts_with("tile/entries/") {
        width * (2 + u64::from(u16::MAX))
    } else if name.starts_with("tile/") {
        width * 32
    } else if name.starts_with("payload/") {
        // Compressed; zstd's worst case adds a little to incompressible input.
        let raw = 8 + width * (4 + mlaudit_core::event::MAX_EVENT_BYTES as u64);
        raw + raw / 64 + (1 << 16)
    } else {
        1 << 20
    }
}

/// Name of hash tile `tile` of level `level`.
pub fn hash_tile_name(level: u8, tile: TileRef) -> String {
    tile_path(Some(level), tile)
}

/// Name of the entry bundle `tile`.
pub fn entry_bundle_name(tile: TileRef) -> String {
    tile_path(None, tile)
}

/// Name of the payload bundle beside entry bundle `tile`.
pub fn payload_bundle_name(tile: TileRef) -> String {
    let mut name = format!("payload/{}", tile_path_index(tile.index));
    if u64::from(tile.width) < TILE_WIDTH {
        name.push_str(&format!(".p/{}", tile.width));
    }
    name
}

/// Name of the archived checkpoint of `size`.
pub fn checkpoint_name(size: u64) -> String {
    format!("{CHECKPOINTS_DIR}/{size}")
}

/// Tree hashes at level `8·level` in a tree of `size` leaves.
pub fn hashes_at(level: u8, size: u64) -> u64 {
    size.checked_shr(8 * u32::from(level)).unwrap_or(0)
}

/// The tile holding tree index `i` of a level holding `count` hashes (full unless it is the
/// last, incomplete one).
pub fn tile_of(i: u64, count: u64) -> TileRef {
    let index = i / TILE_WIDTH;
    let width = (count - index * TILE_WIDTH).min(TILE_WIDTH);
    TileRef {
        index,
        width: width as u16,
    }
}

/// The tiles of a level holding `count` hashes, from the one holding index `from`.
pub fn tiles_from(from: u64, count: u64) -> impl Iterator<Item = TileRef> {
    let first = from / TILE_WIDTH;
    let end = count.div_ceil(TILE_WIDTH);
    (first..end).map(move |t| tile_of(t * TILE_WIDTH, count))
}

/// Encodes a payload bundle.
pub fn encode_payloads<'a>(
    payloads: impl Iterator<Item = Option<&'a [u8]>>,
) -> std::io::Result<Vec<u8>> {
    let mut out = PAYLOAD_MAGIC.to_vec();
    for p in payloads {
        match p {
            Some(bytes) => {
                out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                out.extend_from_slice(bytes);
            }
            None => out.extend_from_slice(&ABSENT.to_be_bytes()),
        }
    }
    zstd::bulk::compress(&out, PAYLOAD_LEVEL)
}

/// Decodes a payload bundle of exactly `count` payloads.
pub fn decode_payloads(
    name: &str,
    bytes: &[u8],
    count: usize,
) -> Result<Vec<Option<Vec<u8>>>, ArchiveError> {
    let bad = |problem: String| ArchiveError::invalid(name, problem);
    let limit = PAYLOAD_MAGIC.len() + count * (4 + mlaudit_core::event::MAX_EVENT_BYTES);
    let raw = decompress_at_most(bytes, limit)
        .map_err(|e| bad(format!("not a zstd frame of at most {limit} bytes: {e}")))?;
    let mut rest = raw
        .strip_prefix(PAYLOAD_MAGIC.as_slice())
        .ok_or_else(|| bad("not a payload bundle (bad magic)".into()))?;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad(format!("ends inside payload {i}")))?;
        let len = u32::from_be_bytes(*len);
        if len == ABSENT {
            out.push(None);
            rest = tail;
            continue;
        }
        let len = len as usize;
        if tail.len() < len {
            return Err(bad(format!("ends inside payload {i}")));
        }
        out.push(Some(tail[..len].to_vec()));
        rest = &tail[len..];
    }
    if !rest.is_empty() {
        return Err(bad(format!(
            "{} bytes after its {count} payloads",
            rest.len()
        )));
    }
    Ok(out)
}

/// Decompresses one zstd frame, stopping with an error past `limit` bytes (memory grows with
/// the output, never reserved up front).
fn decompress_at_most(bytes: &[u8], limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(bytes)?
        .single_frame()
        .take(limit as u64 + 1)
        .read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(std::io::Error::other("the frame holds more"));
    }
    Ok(out)
}

/// Splits an entry bundle into exactly `count` entry headers.
pub fn decode_entries<'a>(
    name: &str,
    bytes: &'a [u8],
    count: usize,
) -> Result<Vec<&'a [u8]>, ArchiveError> {
    let bad = |problem: String| ArchiveError::invalid(name, problem);
    let mut rest = bytes;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let (len, tail) = rest
            .split_first_chunk::<2>()
            .ok_or_else(|| bad(format!("holds {i} entries, not {count}")))?;
        let len = u16::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return Err(bad(format!("ends inside entry {i}")));
        }
        out.push(&tail[..len]);
        rest = &tail[len..];
    }
    if !rest.is_empty() {
        return Err(bad(format!(
            "{} bytes after its {count} entries",
            rest.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a unit test fails loudly")]
    use super::*;

    #[test]
    fn payload_bundles_round_trip_and_reject_trailing_or_short_bytes() {
        let items: [Option<&[u8]>; 3] = [Some(b"abc"), None, Some(b"")];
        let bytes = encode_payloads(items.iter().copied()).unwrap();
        let back = decode_payloads("p", &bytes, 3).unwrap();
        assert_eq!(back, vec![Some(b"abc".to_vec()), None, Some(vec![])]);
        assert!(decode_payloads("p", &bytes, 2).is_err());
        assert!(decode_payloads("p", &bytes, 4).is_err());
        assert!(decode_payloads("p", &bytes[1..], 3).is_err());
        // A frame that would decompress beyond what its width can hold is refused.
        let bomb = zstd::bulk::compress(&vec![0u8; 8 + 2 * (4 + (1 << 20)) + 1], 3).unwrap();
        assert!(decode_payloads("p", &bomb, 2).is_err());
    }

    #[test]
    fn tiles_cover_a_level_with_one_partial_tile_at_the_end() {
        let tiles: Vec<_> = tiles_from(0, 600).collect();
        assert_eq!(tiles.len(), 3);
        assert_eq!(tiles[2].width, 88);
        assert_eq!(tiles_from(300, 600).count(), 2);
        assert_eq!(tiles_from(512, 512).count(), 0);
        assert_eq!(payload_bundle_name(tiles[2]), "payload/002.p/88");
        assert_eq!(hashes_at(1, 70_000), 273);
        assert_eq!(hashes_at(8, 70_000), 0);
    }
}
