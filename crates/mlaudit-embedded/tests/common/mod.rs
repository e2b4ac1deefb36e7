//! Helpers shared by the embedded engine's integration tests: a self-cleaning temp directory,
//! a deterministic PRNG, event JSON builders, and a reader of segment framing that works on the
//! raw bytes (independently of the engine's own replay code).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use mlaudit_core::entry::{ActorType, EventId, SubjectField};
use mlaudit_core::event::{format_time, prepare_reserved, PreparedEvent};
use mlaudit_core::note::{NoteSigner, NoteVerifier};
use mlaudit_embedded::record;
use mlaudit_embedded::{EmbeddedStore, OpenError, OpenReport};
use mlaudit_store::verify::{verify, VerifyFailure, VerifyReport};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

// ---------------------------------------------------------------------------------------------
// Temp directories
// ---------------------------------------------------------------------------------------------

/// A directory under `std::env::temp_dir()` with a unique name, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "mlaudit-embedded-test-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh temp directory holding a copy of `src` (without `LOCK`).
    pub fn copy_of(src: &Path, tag: &str) -> TempDir {
        let t = TempDir::new(tag);
        copy_dir(src, t.path());
        t
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Copies every regular file of `src` into `dst` (flat: the store has no subdirectories),
/// leaving out the `LOCK` file.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for ent in std::fs::read_dir(src).unwrap() {
        let ent = ent.unwrap();
        let name = ent.file_name();
        if name == "LOCK" || !ent.file_type().unwrap().is_file() {
            continue;
        }
        std::fs::copy(ent.path(), dst.join(&name)).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and opening
// ---------------------------------------------------------------------------------------------

pub fn signer() -> NoteSigner {
    NoteSigner::from_seed("test.mlaudit.example", [7; 32]).unwrap()
}

pub fn verifier() -> NoteVerifier {
    signer().verifier()
}

pub fn open(dir: &Path) -> (EmbeddedStore, OpenReport) {
    match EmbeddedStore::open(dir, Some(signer())) {
        Ok(x) => x,
        Err(e) => panic!("opening {} failed: {e}", dir.display()),
    }
}

/// Opens with explicit options (small runs, small segments).
pub fn open_with(dir: &Path, options: mlaudit_embedded::Options) -> (EmbeddedStore, OpenReport) {
    match EmbeddedStore::open_with(dir, Some(signer()), options) {
        Ok(x) => x,
        Err(e) => panic!("opening {} failed: {e}", dir.display()),
    }
}

/// Options that write the index's tail out as a run every `run_events` events.
pub fn small_runs(run_events: u64) -> mlaudit_embedded::Options {
    mlaudit_embedded::Options {
        run_events,
        ..mlaudit_embedded::Options::default()
    }
}

pub fn try_open(dir: &Path) -> Result<(EmbeddedStore, OpenReport), OpenError> {
    EmbeddedStore::open(dir, Some(signer()))
}

pub fn run_verify(store: &EmbeddedStore) -> Result<VerifyReport, VerifyFailure> {
    verify(store, &verifier(), &mut |_, _| {})
}

// ---------------------------------------------------------------------------------------------
// PRNG
// ---------------------------------------------------------------------------------------------

/// xorshift64* — deterministic, seedable, good enough for test inputs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform-ish in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }
    /// True with probability `pct`%.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    pub fn id(&mut self) -> EventId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        b[8..].copy_from_slice(&self.next_u64().to_be_bytes());
        EventId(b)
    }
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// Kinds the random tests use: a few catalogue kinds (whose requirements `event_json` fills in)
/// and custom ones.
pub const KINDS: &[&str] = &[
    "governance.audit_accessed",
    "registry.promotion_requested",
    "training.checkpoint_evaluated",
    "data.source_accessed",
    "operations.traffic_routed",
    "x.custom_alpha",
    "x.beta",
];

/// The subjects a catalogue kind requires.
pub fn required_subjects(kind: &str) -> &'static [SubjectField] {
    match kind {
        "registry.promotion_requested" => &[SubjectField::Model, SubjectField::Version],
        "training.checkpoint_evaluated" => &[SubjectField::Run],
        "data.source_accessed" => &[SubjectField::Dataset],
        "operations.traffic_routed" => &[SubjectField::Deployment],
        _ => &[],
    }
}

/// Attributes that satisfy a kind's requirements.
pub fn attributes(kind: &str, n: u64) -> serde_json::Value {
    use serde_json::json;
    match kind {
        "registry.promotion_requested" => json!({"to_stage": "production"}),
        "training.checkpoint_evaluated" => json!({"step": n, "metrics": {"loss": 0.25}}),
        "data.source_accessed" => json!({"source": format!("s3://bucket/key-{n}")}),
        "operations.traffic_routed" => json!({"split": {"v1": 60, "v2": 40}}),
        _ => json!({"n": n, "note": "custom"}),
    }
}

/// What the tests put into one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub id: Option<EventId>,
    pub time_ns: Option<i64>,
    pub kind: String,
    pub actor_id: String,
    pub actor_type: ActorType,
    /// Sorted by field; `bool` = write the value as a JSON integer.
    pub subjects: Vec<(SubjectField, String, bool)>,
    pub n: u64,
}

impl Spec {
    pub fn simple(id: EventId, kind: &str, n: u64) -> Spec {
        let mut subjects: Vec<(SubjectField, String, bool)> = required_subjects(kind)
            .iter()
            .map(|f| (*f, format!("{}-{n}", f.as_str()), false))
            .collect();
        subjects.sort_by_key(|(f, _, _)| *f);
        Spec {
            id: Some(id),
            time_ns: Some(1_767_225_600_000_000_000 + n as i64 * 1_000_000_007),
            kind: kind.into(),
            actor_id: format!("actor-{}", n % 3),
            actor_type: ActorType::Service,
            subjects,
            n,
        }
    }

    /// The subjects as the entry header stores them.
    pub fn header_subjects(&self) -> Vec<(SubjectField, String)> {
        self.subjects
            .iter()
            .map(|(f, v, _)| (*f, v.clone()))
            .collect()
    }

    pub fn json(&self) -> String {
        use serde_json::{Map, Value};
        let mut obj = Map::new();
        if let Some(id) = self.id {
            obj.insert("id".into(), Value::String(id.to_string()));
        }
        if let Some(t) = self.time_ns {
            obj.insert("time".into(), Value::String(format_time(t)));
        }
        obj.insert("kind".into(), Value::String(self.kind.clone()));
        let mut actor = Map::new();
        actor.insert("id".into(), Value::String(self.actor_id.clone()));
        actor.insert(
            "type".into(),
            Value::String(self.actor_type.as_str().into()),
        );
        obj.insert("actor".into(), Value::Object(actor));
        if !self.subjects.is_empty() {
            let mut subject = Map::new();
            for (f, v, numeric) in &self.subjects {
                let value = if *numeric {
                    Value::Number(v.parse::<u64>().unwrap().into())
                } else {
                    Value::String(v.clone())
                };
                subject.insert(f.as_str().into(), value);
            }
            obj.insert("subject".into(), Value::Object(subject));
        }
        obj.insert("attributes".into(), attributes(&self.kind, self.n));
        serde_json::to_string(&Value::Object(obj)).unwrap()
    }

    pub fn prepare(&self) -> PreparedEvent {
        let json = self.json();
        match prepare_reserved(&json, "test") {
            Ok(p) => p,
            Err(e) => panic!("test event rejected: {e}\n{json}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw segment framing
// ---------------------------------------------------------------------------------------------

/// One framed record as found in a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    pub off: u64,
    pub kind: u8,
    pub len_a: u64,
    pub len_b: u64,
}

impl Rec {
    pub fn total(&self) -> u64 {
        record::HEADER_LEN as u64 + self.len_a + self.len_b + record::TRAILER_LEN as u64
    }
    pub fn end(&self) -> u64 {
        self.off + self.total()
    }
    /// Range of part a (entry or note) within the segment.
    pub fn a(&self) -> std::ops::Range<usize> {
        let s = (self.off as usize) + record::HEADER_LEN;
        s..s + self.len_a as usize
    }
    /// Range of part b (payload) within the segment.
    pub fn b(&self) -> std::ops::Range<usize> {
        let s = self.a().end;
        s..s + self.len_b as usize
    }
    pub fn range(&self) -> std::ops::Range<usize> {
        self.off as usize..self.end() as usize
    }
}

/// Parses every record of a complete segment (panics on anything that does not frame).
pub fn records(bytes: &[u8]) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let header: &[u8; record::HEADER_LEN] =
            bytes[at..at + record::HEADER_LEN].try_into().unwrap();
        let h = record::parse_header(header).unwrap();
        let rec = Rec {
            off: at as u64,
            kind: h.kind,
            len_a: u64::from(h.len_a),
            len_b: u64::from(h.len_b),
        };
        record::check_record(&h, &bytes[rec.range()]).unwrap();
        out.push(rec);
        at = rec.end() as usize;
    }
    out
}

/// The segment files of a store directory, raw or packed, sorted.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("seg-") && (n.ends_with(".log") || n.ends_with(".zst"))
            })
        })
        .collect();
    segs.sort();
    // While a segment is being packed, both copies exist for a moment: count it once.
    segs.dedup_by(|b, a| file_name(a)[..24] == file_name(b)[..24]);
    segs
}

pub fn only_segment(dir: &Path) -> PathBuf {
    let segs = segments(dir);
    assert_eq!(segs.len(), 1, "the tests' stores fit in one segment");
    segs[0].clone()
}

pub fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// XORs one byte of a file.
pub fn flip(path: &Path, off: u64, mask: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[off as usize] ^= mask;
    std::fs::write(path, bytes).unwrap();
}

/// Re-frames a record with new parts (valid CRCs).
pub fn reframe(kind: u8, a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    record::encode_into(&mut out, kind, a, b);
    out
}
