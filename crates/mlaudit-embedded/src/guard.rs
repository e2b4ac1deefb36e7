//! `latest-checkpoint`: the size and root of the latest checkpoint the store made durable,
//! rewritten in place after every durable group, so that opening can tell a log that lost
//! acknowledged events (restored from an old copy, cut at a record boundary) from an intact
//! one, and refuse it instead of silently signing the shorter tree.
//!
//! ```text
//! [8]  magic "MLALATST"
//! u64  tree size
//! [32] root hash
//! u32  CRC-32C of the 48 bytes above
//! ```
//!
//! The file is written after the segment's `fdatasync` and is not itself synced: after a power
//! failure it may name an older checkpoint than the log holds (never a newer one), which the
//! check accepts. It is not derived data: deleting it disables the check (opening says so).
//! It is a guard against accidents and naive tampering only; an operator who controls the disk
//! can rewrite both, which only checkpoints kept outside (auditors, SDKs, witnesses) detect.

use mlaudit_core::merkle::Hash;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// The file name inside the store's directory.
pub const FILE_NAME: &str = "latest-checkpoint";
const MAGIC: &[u8; 8] = b"MLALATST";
const SIZE_OFFSET: usize = MAGIC.len();
const ROOT_OFFSET: usize = SIZE_OFFSET + 8;
const CRC_OFFSET: usize = ROOT_OFFSET + 32;
const LEN: usize = CRC_OFFSET + 4;

/// What the file says, when opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// No file.
    Missing,
    /// A file that does not decode (a torn write, or damage).
    Damaged,
    /// The latest durable checkpoint.
    At { size: u64, root: Hash },
}

/// Reads the file of `dir`.
pub fn read(dir: &Path) -> std::io::Result<Recorded> {
    let bytes = match std::fs::read(dir.join(FILE_NAME)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Recorded::Missing),
        Err(e) => return Err(e),
    };
    Ok(decode(&bytes).unwrap_or(Recorded::Damaged))
}

fn decode(b: &[u8]) -> Option<Recorded> {
    if b.len() != LEN || &b[..SIZE_OFFSET] != MAGIC {
        return None;
    }
    let crc = u32::from_be_bytes(b[CRC_OFFSET..].try_into().ok()?);
    if crc32c::crc32c(&b[..CRC_OFFSET]) != crc {
        return None;
    }
    let size = u64::from_be_bytes(b[SIZE_OFFSET..ROOT_OFFSET].try_into().ok()?);
    let root = Hash::from_slice(&b[ROOT_OFFSET..CRC_OFFSET])?;
    Some(Recorded::At { size, root })
}

fn encode(size: u64, root: &Hash) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..SIZE_OFFSET].copy_from_slice(MAGIC);
    b[SIZE_OFFSET..ROOT_OFFSET].copy_from_slice(&size.to_be_bytes());
    b[ROOT_OFFSET..CRC_OFFSET].copy_from_slice(&root.0);
    let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
    b[CRC_OFFSET..].copy_from_slice(&crc.to_be_bytes());
    b
}

/// The open file, kept by the syncer.
#[derive(Debug)]
pub struct Guard {
    file: Option<File>,
}

impl Guard {
    /// Opens (creating) the file of `dir`; without it the store still works, unguarded.
    pub fn open(dir: &Path) -> Guard {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(crate::FILE_MODE)
            .open(dir.join(FILE_NAME))
            .ok();
        Guard { file }
    }

    /// Records a durable checkpoint: one 52-byte write at offset 0. A failure (a full disk)
    /// leaves the older checkpoint in place, which the check at open accepts.
    pub fn record(&mut self, size: u64, root: &Hash) {
        if let Some(f) = &self.file {
            let _ = f.write_all_at(&encode(size, root), 0);
        }
    }
}
