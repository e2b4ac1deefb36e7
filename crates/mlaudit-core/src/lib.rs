//! The core of mlaudit: everything an independent verifier needs, and nothing that touches a disk,
//! a socket or a clock.
//!
//! * [`merkle`] — RFC 9162 §2.1 tree hashing, inclusion and consistency proofs.
//! * [`entry`] — the binary entry header that is each leaf's preimage.
//! * [`event`] — the v1 event catalogue and its validation.
//! * [`note`] — C2SP signed notes with Ed25519, verifier keys, tlog checkpoints.
//! * [`bundle`] — offline proof bundles.
//!
//! **Invariant:** this crate does no I/O, spawns no threads and never reads the system clock;
//! callers pass times in. Every decoder returns a `Result` and rejects trailing bytes.

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        reason = "a unit test fails loudly on any unexpected error"
    )
)]

pub mod b64;
pub mod bundle;
pub mod entry;
pub mod event;
pub mod merkle;
pub mod note;

pub use entry::{Entry, EventId};
pub use merkle::{Hash, LeafIndex, TreeSize};
