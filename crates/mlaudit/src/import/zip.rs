//! Just enough of the ZIP format to read the archive ClearML writes for an offline session
//! (Python's `zipfile`: stored or deflated members, no ZIP64, no encryption). Every length and
//! offset is checked against the file before it is used; a member is inflated within a limit.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// One member of an archive.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    method: u16,
    compressed: u64,
    local_header: u64,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    let s = b.get(at..at + 2).context("the zip is truncated")?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    let s = b.get(at..at + 4).context("the zip is truncated")?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// An open archive.
#[derive(Debug)]
pub struct Archive {
    file: File,
    len: u64,
    pub members: Vec<Member>,
}

/// Most members read from one archive.
const MAX_MEMBERS: usize = 100_000;

impl Archive {
    pub fn open(path: &Path) -> Result<Archive> {
        let mut file =
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata()?.len();
        // The end-of-central-directory record is in the last 22 + 65,535 bytes.
        let tail_len = len.min(22 + 65_535);
        file.seek(SeekFrom::Start(len - tail_len))?;
        let mut tail = vec![0u8; tail_len as usize];
        file.read_exact(&mut tail)?;
        let eocd = (0..tail.len().saturating_sub(21))
            .rev()
            .find(|&i| tail[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
            .with_context(|| format!("{} is not a zip archive", path.display()))?;
        let count = usize::from(u16_at(&tail, eocd + 10)?);
        let cd_size = u64::from(u32_at(&tail, eocd + 12)?);
        let cd_offset = u64::from(u32_at(&tail, eocd + 16)?);
        if count == 0xffff || cd_offset == 0xffff_ffff || count > MAX_MEMBERS {
            bail!("{}: ZIP64 archives are not supported", path.display());
        }
        if cd_offset.checked_add(cd_size).is_none_or(|end| end > len) {
            bail!(
                "{}: the central directory lies outside the file",
                path.display()
            );
        }
        file.seek(SeekFrom::Start(cd_offset))?;
        let mut cd = vec![0u8; cd_size as usize];
        file.read_exact(&mut cd)?;
        let mut members = Vec::with_capacity(count);
        let mut at = 0usize;
        for _ in 0..count {
            if u32_at(&cd, at)? != 0x0201_4b50 {
                bail!("{}: a damaged central directory", path.display());
            }
            let flags = u16_at(&cd, at + 8)?;
            let method = u16_at(&cd, at + 10)?;
            let compressed = u64::from(u32_at(&cd, at + 20)?);
            let name_len = usize::from(u16_at(&cd, at + 28)?);
            let extra_len = usize::from(u16_at(&cd, at + 30)?);
            let comment_len = usize::from(u16_at(&cd, at + 32)?);
            let local_header = u64::from(u32_at(&cd, at + 42)?);
            let name = cd
                .get(at + 46..at + 46 + name_len)
                .context("the zip is truncated")?;
            if flags & 1 != 0 {
                bail!("{}: encrypted members are not supported", path.display());
            }
            members.push(Member {
                name: String::from_utf8_lossy(name).into_owned(),
                method,
                compressed,
                local_header,
            });
            at += 46 + name_len + extra_len + comment_len;
        }
        // Members may not share bytes: an archive whose entries all point at one large
        // compressed stream would make every read inflate it again.
        let mut spans: Vec<(u64, u64)> = members
            .iter()
            .map(|m| {
                (
                    m.local_header,
                    m.local_header.saturating_add(30 + m.compressed),
                )
            })
            .collect();
        spans.sort_unstable();
        if spans.windows(2).any(|w| w[1].0 < w[0].1)
            || spans.last().is_some_and(|s| s.1 > cd_offset)
        {
            bail!(
                "{}: members overlap (not an archive ClearML writes)",
                path.display()
            );
        }
        Ok(Archive { file, len, members })
    }

    /// The member named `name` (its path inside the archive).
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// A reader of a member's uncompressed bytes, at most `limit` of them.
    pub fn reader(&mut self, m: &Member, limit: u64) -> Result<Box<dyn Read + '_>> {
        self.file.seek(SeekFrom::Start(m.local_header))?;
        let mut header = [0u8; 30];
        self.file
            .read_exact(&mut header)
            .context("the zip is truncated")?;
        if u32_at(&header, 0)? != 0x0403_4b50 {
            bail!("{}: a damaged local header", m.name);
        }
        let skip = u64::from(u16_at(&header, 26)?) + u64::from(u16_at(&header, 28)?);
        let start = m.local_header + 30 + skip;
        if start
            .checked_add(m.compressed)
            .is_none_or(|end| end > self.len)
        {
            bail!("{}: the member lies outside the file", m.name);
        }
        self.file.seek(SeekFrom::Start(start))?;
        let raw = (&mut self.file).take(m.compressed);
        Ok(match m.method {
            0 => Box::new(raw.take(limit)),
            8 => Box::new(flate2::read::DeflateDecoder::new(raw).take(limit)),
            other => bail!("{}: compression method {other} is not supported", m.name),
        })
    }

    /// A member's bytes, refused past `limit`.
    pub fn read(&mut self, m: &Member, limit: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.reader(m, limit + 1)?
            .read_to_end(&mut out)
            .with_context(|| format!("reading {} from the zip", m.name))?;
        if out.len() as u64 > limit {
            bail!("{} is larger than {limit} bytes", m.name);
        }
        Ok(out)
    }
}
