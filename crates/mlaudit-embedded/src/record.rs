//! Record framing inside segment files.
//!
//! ```text
//! u8  type (1 = event, 2 = checkpoint, 3 = event whose payload was removed,
//!           4 = event whose payload is kept only in the cold archive)
//! u32 len_a (entry bytes, or note bytes)      u32 len_b (payload bytes; 0 for checkpoints)
//! u32 header CRC-32C of the 9 bytes above
//! [len_a] [len_b]
//! u32 record CRC-32C of everything above
//! ```
//!
//! The header has its own CRC so that a damaged length is reported as corruption instead of
//! being mistaken for a torn (incomplete) tail. All integers are big-endian.
//!
//! A removed payload (expiry, erasure) turns an event record into a record of type 3 of the
//! same length, in place: its entry is unchanged, and its part B — as long as the payload was —
//! holds the seq of the governance event that removed it (u64) followed by zeros. A payload
//! moved to the cold archive turns it into a record of type 4 of the same length whose part B
//! is all zeros; restoring the payload turns it back into the event record it was. Nothing
//! else ever rewrites a record.

/// Record type of an event.
pub const EVENT: u8 = 1;
/// Record type of a signed checkpoint.
pub const CHECKPOINT: u8 = 2;
/// Record type of an event whose payload was removed (same length as the event record).
pub const REMOVED: u8 = 3;
/// Record type of an event whose payload is kept only in the cold archive (same length as the
/// event record, part B zeros).
pub const IN_ARCHIVE: u8 = 4;
/// Bytes before the body.
pub const HEADER_LEN: usize = 13;
/// Bytes after the body.
pub const TRAILER_LEN: usize = 4;
/// Largest `len_a` or `len_b` accepted.
pub const MAX_PART: u32 = 1 << 24;

/// Appends one framed record to `out`.
pub fn encode_into(out: &mut Vec<u8>, kind: u8, a: &[u8], b: &[u8]) {
    let start = out.len();
    out.push(kind);
    out.extend_from_slice(&(a.len() as u32).to_be_bytes()); // callers keep parts <= MAX_PART
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    let hcrc = crc32c::crc32c(&out[start..start + 9]);
    out.extend_from_slice(&hcrc.to_be_bytes());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A parsed record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub len_a: u32,
    pub len_b: u32,
}

impl Header {
    /// Total record length including header and trailer.
    pub fn total_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.len_a) + u64::from(self.len_b) + TRAILER_LEN as u64
    }
}

/// Why framing bytes were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("record header checksum mismatch")]
    HeaderChecksum,
    #[error("unknown record type {0}")]
    UnknownType(u8),
    #[error("record length {0} exceeds the limit")]
    TooLong(u32),
    #[error("record checksum mismatch")]
    Checksum,
    #[error("the record is {found} bytes, its header declares {declared}")]
    Length { declared: u64, found: u64 },
}

/// Parses and checks a 13-byte header.
pub fn parse_header(bytes: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
    let hcrc = u32::from_be_bytes([bytes[9], bytes[10], bytes[11], bytes[12]]);
    if crc32c::crc32c(&bytes[..9]) != hcrc {
        return Err(FrameError::HeaderChecksum);
    }
    let kind = bytes[0];
    if kind != CHECKPOINT && !is_event(kind) {
        return Err(FrameError::UnknownType(kind));
    }
    let len_a = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let len_b = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
    for len in [len_a, len_b] {
        if len > MAX_PART {
            return Err(FrameError::TooLong(len));
        }
    }
    Ok(Header { kind, len_a, len_b })
}

/// Checks a whole record (header + body + trailer) and returns its two parts. `record` must be
/// exactly as long as the header declares (`Header::total_len`); any other length is refused.
pub fn check_record<'a>(h: &Header, record: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), FrameError> {
    if record.len() as u64 != h.total_len() {
        return Err(FrameError::Length {
            declared: h.total_len(),
            found: record.len() as u64,
        });
    }
    let body_end = record.len() - TRAILER_LEN;
    let crc = u32::from_be_bytes([
        record[body_end],
        record[body_end + 1],
        record[body_end + 2],
        record[body_end + 3],
    ]);
    if crc32c::crc32c(&record[..body_end]) != crc {
        return Err(FrameError::Checksum);
    }
    let a_end = HEADER_LEN + h.len_a as usize;
    Ok((&record[HEADER_LEN..a_end], &record[a_end..body_end]))
}

/// Whether records of this type are events (with or without their payload).
pub fn is_event(kind: u8) -> bool {
    matches!(kind, EVENT | REMOVED | IN_ARCHIVE)
}

/// The record that replaces an event record once its payload is kept only in the cold
/// archive: the same entry and length, part B zeros.
pub fn in_archive(entry: &[u8], payload_len: u32) -> Option<Vec<u8>> {
    let b = vec![0u8; usize::try_from(payload_len).ok()?];
    let mut out = Vec::with_capacity(HEADER_LEN + entry.len() + b.len() + TRAILER_LEN);
    encode_into(&mut out, IN_ARCHIVE, entry, &b);
    Some(out)
}

/// The event record of `entry` and `payload`: what a restored payload's record becomes again.
pub fn event(entry: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + entry.len() + payload.len() + TRAILER_LEN);
    encode_into(&mut out, EVENT, entry, payload);
    out
}

/// The record that replaces an event record once its payload is removed by the governance
/// event `remover`: the same entry and length, part B the remover's seq then zeros. `None`
/// when the payload is shorter than a seq (no valid event's payload is).
pub fn removed(entry: &[u8], payload_len: u32, remover: u64) -> Option<Vec<u8>> {
    let mut b = vec![0u8; usize::try_from(payload_len).ok()?];
    b.get_mut(..8)?.copy_from_slice(&remover.to_be_bytes());
    let mut out = Vec::with_capacity(HEADER_LEN + entry.len() + b.len() + TRAILER_LEN);
    encode_into(&mut out, REMOVED, entry, &b);
    Some(out)
}

/// The seq of the governance event named by a removed record's part B; `None` unless it is a
/// seq followed by zeros only.
pub fn remover(b: &[u8]) -> Option<u64> {
    let (seq, fill) = (b.get(..8)?, b.get(8..)?);
    fill.iter()
        .all(|&z| z == 0)
        .then(|| u64::from_be_bytes(seq.try_into().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flip_is_caught() {
        let mut buf = Vec::new();
        encode_into(&mut buf, EVENT, b"entry", b"payload");
        let header: [u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().unwrap();
        let h = parse_header(&header).unwrap();
        assert_eq!(h.total_len(), buf.len() as u64);
        assert_eq!(
            check_record(&h, &buf).unwrap(),
            (&b"entry"[..], &b"payload"[..])
        );
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x20;
            let header: [u8; HEADER_LEN] = bad[..HEADER_LEN].try_into().unwrap();
            let caught = match parse_header(&header) {
                Err(_) => true,
                Ok(h) => h.total_len() != bad.len() as u64 || check_record(&h, &bad).is_err(),
            };
            assert!(caught, "flip at {i} not caught");
        }
    }

    #[test]
    fn a_removed_record_keeps_entry_and_length_and_names_its_remover() {
        let mut ev = Vec::new();
        encode_into(&mut ev, EVENT, b"entry", b"{\"kind\":\"x\"}");
        let gone = removed(b"entry", 12, 77).unwrap();
        assert_eq!(gone.len(), ev.len());
        let h = parse_header(gone[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(h.kind, REMOVED);
        let (a, b) = check_record(&h, &gone).unwrap();
        assert_eq!((a, remover(b)), (&b"entry"[..], Some(77)));
        assert!(!b.windows(4).any(|w| w == b"kind"));
        let mut hidden = b.to_vec();
        hidden[9] = 1;
        assert_eq!(remover(&hidden), None, "bytes after the seq must be zeros");
        assert_eq!(removed(b"entry", 7, 1), None);
    }
}
