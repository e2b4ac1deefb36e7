//! Property-based robustness of the segment record frame (proptest): `record::parse_header` and
//! `record::check_record` on arbitrary bytes and on mutations of valid records return `Ok` or
//! `Err` and never panic, accept only what was framed, and a header whose lengths claim more
//! than a record may hold (up to `u32::MAX`) is refused before anyone allocates it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

use mlaudit_embedded::record::{
    self, FrameError, Header, CHECKPOINT, EVENT, HEADER_LEN, IN_ARCHIVE, MAX_PART, REMOVED,
    TRAILER_LEN,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config;

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// The largest record a header may declare: what a reader allocates for it at most.
const MAX_RECORD: u64 = HEADER_LEN as u64 + 2 * MAX_PART as u64 + TRAILER_LEN as u64;

/// Whether a record type is one the frame knows: events (whole, payload removed, payload in
/// the archive) and checkpoints.
fn known(kind: u8) -> bool {
    matches!(kind, EVENT | CHECKPOINT | REMOVED | IN_ARCHIVE)
}

/// A 13-byte header with a correct checksum, whatever its fields.
fn header(kind: u8, len_a: u32, len_b: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = kind;
    h[1..5].copy_from_slice(&len_a.to_be_bytes());
    h[5..9].copy_from_slice(&len_b.to_be_bytes());
    let crc = crc32c::crc32c(&h[..9]);
    h[9..].copy_from_slice(&crc.to_be_bytes());
    h
}

/// A checked record: its header and its two parts.
type Parts = (Header, Vec<u8>, Vec<u8>);

/// What a reader of a segment does with the bytes at a record's start: parse the header, take
/// the record it declares if that many bytes remain, check it. `None` when the bytes end first.
fn read_record(bytes: &[u8]) -> Option<Result<Parts, FrameError>> {
    let head: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
    let h = match record::parse_header(head) {
        Ok(h) => h,
        Err(e) => return Some(Err(e)),
    };
    assert!(h.total_len() <= MAX_RECORD, "{h:?}");
    let rec = bytes.get(..usize::try_from(h.total_len()).ok()?)?;
    Some(record::check_record(&h, rec).map(|(a, b)| (h, a.to_vec(), b.to_vec())))
}

/// One edit of a byte string; positions are taken modulo the length.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    /// Overwrites 4 bytes with a big-endian u32 (a length field, say).
    Word(usize, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let word = prop_oneof![
        any::<u32>(),
        Just(u32::MAX),
        Just(MAX_PART),
        Just(MAX_PART + 1),
        0u32..64
    ];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Set(at, b)),
        (any::<usize>(), vec(any::<u8>(), 1..5)).prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<usize>(), 1usize..17).prop_map(|(at, n)| Mutation::Delete(at, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), word).prop_map(|(at, w)| Mutation::Word(at, w)),
    ]
}

fn mutate(base: &[u8], edits: &[Mutation]) -> Vec<u8> {
    let mut b = base.to_vec();
    for m in edits {
        let len = b.len();
        match m {
            Mutation::Flip(i, bit) if len > 0 => b[i % len] ^= 1 << bit,
            Mutation::Set(i, v) if len > 0 => b[i % len] = *v,
            Mutation::Insert(i, bytes) => {
                let i = i % (len + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let i = i % len;
                b.drain(i..(i + n).min(len));
            }
            Mutation::Truncate(i) => b.truncate(i % (len + 1)),
            Mutation::Word(i, w) if len >= 4 => {
                let i = i % (len - 3);
                b[i..i + 4].copy_from_slice(&w.to_be_bytes());
            }
            _ => {}
        }
    }
    b
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn parse_header_never_panics_on_arbitrary_headers(bytes in any::<[u8; HEADER_LEN]>()) {
        if let Ok(h) = record::parse_header(&bytes) {
            prop_assert!(known(h.kind));
            prop_assert!(h.len_a <= MAX_PART && h.len_b <= MAX_PART);
            prop_assert!(h.total_len() <= MAX_RECORD);
        }
    }

    /// Headers with a correct checksum and any fields: accepted exactly when the type is known
    /// and both lengths are within the limit.
    #[test]
    fn parse_header_checks_every_field_of_a_well_checksummed_header(
        kind in any::<u8>(),
        len_a in prop_oneof![any::<u32>(), 0..=MAX_PART, Just(u32::MAX)],
        len_b in prop_oneof![any::<u32>(), 0..=MAX_PART, Just(u32::MAX)],
    ) {
        let got = record::parse_header(&header(kind, len_a, len_b));
        let valid = known(kind) && len_a <= MAX_PART && len_b <= MAX_PART;
        match got {
            Ok(h) => {
                prop_assert!(valid);
                prop_assert_eq!(h, Header { kind, len_a, len_b });
                prop_assert!(h.total_len() <= MAX_RECORD);
            }
            Err(FrameError::UnknownType(k)) => prop_assert!(k == kind && !valid),
            Err(FrameError::TooLong(n)) => prop_assert!(n > MAX_PART && (n == len_a || n == len_b)),
            Err(e) => return Err(TestCaseError::fail(format!("unexpected {e:?}"))),
        }
    }

    /// `check_record` on a record of the length its header declares (its contract), with any
    /// parts and a right or wrong checksum: it never panics, and hands back exactly the two
    /// parts the header delimits.
    #[test]
    fn check_record_never_panics_on_records_of_the_declared_length(
        kind in prop_oneof![Just(EVENT), Just(CHECKPOINT), Just(REMOVED), Just(IN_ARCHIVE)],
        a in vec(any::<u8>(), 0..64),
        b in vec(any::<u8>(), 0..64),
        checksummed in any::<bool>(),
    ) {
        let h = record::parse_header(&header(kind, a.len() as u32, b.len() as u32)).unwrap();
        let mut rec = header(kind, a.len() as u32, b.len() as u32).to_vec();
        rec.extend_from_slice(&a);
        rec.extend_from_slice(&b);
        if checksummed {
            let crc = crc32c::crc32c(&rec);
            rec.extend_from_slice(&crc.to_be_bytes());
        } else {
            rec.extend_from_slice(&[0xa5; TRAILER_LEN]);
        }
        prop_assert_eq!(rec.len() as u64, h.total_len());
        match record::check_record(&h, &rec) {
            Ok((pa, pb)) => {
                prop_assert_eq!(pa, &a[..]);
                prop_assert_eq!(pb, &b[..]);
            }
            Err(e) => prop_assert_eq!(e, FrameError::Checksum),
        }
        if checksummed {
            prop_assert!(record::check_record(&h, &rec).is_ok());
        }
    }

    /// Valid records, mutated, then read as a segment reader reads them: never a panic, and
    /// whatever is accepted is the record that was framed (CRC-32C misses an edit of a few
    /// bytes with probability 2^-32).
    #[test]
    fn mutated_records_are_refused_or_read_back_unchanged(
        kind in prop_oneof![Just(EVENT), Just(CHECKPOINT), Just(REMOVED), Just(IN_ARCHIVE)],
        a in vec(any::<u8>(), 0..100),
        b in vec(any::<u8>(), 0..100),
        edits in vec(mutation(), 1..4),
        tail in vec(any::<u8>(), 0..32),
    ) {
        let mut framed = Vec::new();
        record::encode_into(&mut framed, kind, &a, &b);
        let h = read_record(&framed).unwrap().unwrap();
        prop_assert_eq!(&h, &(Header { kind, len_a: a.len() as u32, len_b: b.len() as u32 }, a.clone(), b.clone()));
        // Bytes after the record (the next record, or garbage) may follow it.
        framed.extend_from_slice(&tail);
        let bad = mutate(&framed, &edits);
        if let Some(Ok((h, pa, pb))) = read_record(&bad) {
            prop_assert_eq!(h.kind, kind);
            prop_assert_eq!(pa, a);
            prop_assert_eq!(pb, b);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_segment_reader(bytes in vec(any::<u8>(), 0..200)) {
        if let Some(Ok((h, pa, pb))) = read_record(&bytes) {
            prop_assert_eq!(pa.len() + pb.len(), (h.len_a + h.len_b) as usize);
        }
    }
}

/// Every one of the 256 type bytes, not a random sample of them: exactly the known types are
/// accepted, and each with its fields unchanged.
#[test]
fn parse_header_accepts_exactly_the_known_types() {
    for kind in 0..=u8::MAX {
        let got = record::parse_header(&header(kind, 3, 5));
        if known(kind) {
            assert_eq!(
                got,
                Ok(Header {
                    kind,
                    len_a: 3,
                    len_b: 5
                }),
                "type {kind}"
            );
        } else {
            assert_eq!(got, Err(FrameError::UnknownType(kind)), "type {kind}");
        }
    }
}

#[test]
fn lengths_claiming_huge_records_are_refused_before_anything_is_allocated() {
    for (len_a, len_b) in [
        (u32::MAX, 0),
        (0, u32::MAX),
        (u32::MAX, u32::MAX),
        (MAX_PART + 1, 0),
        (0, MAX_PART + 1),
    ] {
        for kind in [EVENT, CHECKPOINT, REMOVED, IN_ARCHIVE] {
            let got = record::parse_header(&header(kind, len_a, len_b));
            assert!(
                matches!(got, Err(FrameError::TooLong(n)) if n == len_a.max(len_b)),
                "{len_a} {len_b}: {got:?}"
            );
        }
    }
    // The most a header may declare, both parts at the limit: 32 MiB and 17 bytes, which is
    // what a reader allocates at most for one record.
    let h = record::parse_header(&header(EVENT, MAX_PART, MAX_PART)).unwrap();
    assert_eq!(h.total_len(), MAX_RECORD);
    assert_eq!(MAX_RECORD, (32 << 20) + 17);
    // A damaged length is caught by the header checksum before the length is believed.
    let mut h = header(EVENT, 5, 7);
    h[1] ^= 0x80;
    assert_eq!(record::parse_header(&h), Err(FrameError::HeaderChecksum));
}

/// Regression: `check_record` trusted its caller to pass exactly the bytes the header declares,
/// and handed fewer (a well-checksummed 17-byte record whose header declares a 100-byte part A)
/// it sliced past the end and panicked. It now answers `Err` for any other length.
#[test]
fn check_record_refuses_a_record_shorter_than_its_header_declares() {
    let head = header(EVENT, 100, 0);
    let h = record::parse_header(&head).unwrap();
    let mut rec = head.to_vec();
    let crc = crc32c::crc32c(&rec);
    rec.extend_from_slice(&crc.to_be_bytes());
    let got = std::panic::catch_unwind(|| record::check_record(&h, &rec).map(|_| ()));
    assert!(
        matches!(got, Ok(Err(_))),
        "check_record panicked on 17 bytes of a record declared as {} bytes",
        h.total_len()
    );
    // Fewer bytes than the trailer alone: 0..4.
    for n in 0..TRAILER_LEN {
        let got = std::panic::catch_unwind(|| record::check_record(&h, &rec[..n]).map(|_| ()));
        assert!(
            matches!(got, Ok(Err(_))),
            "check_record panicked on {n} bytes"
        );
    }
}
