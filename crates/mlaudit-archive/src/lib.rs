//! The cold tier: a prefix of the log as C2SP tlog-tiles (<https://c2sp.org/tlog-tiles>) on
//! object storage — S3 and S3-compatible servers, Google Cloud Storage, Azure Blob Storage or a
//! local directory — through the `object_store` crate.
//!
//! **Layout** (every name below the archive URL's prefix; `<N>[.p/<W>]` as the spec spells it):
//!
//! | object | content |
//! |---|---|
//! | `checkpoint` | the latest archived signed checkpoint (a C2SP signed note), verbatim |
//! | `tile/<L>/<N>[.p/<W>]` | hash tiles: the tree hashes of level `8·L`, 32 bytes each |
//! | `tile/entries/<N>[.p/<W>]` | entry bundles: entry headers (leaf preimages), `u16` length-prefixed |
//! | `payload/<N>[.p/<W>]` | payload bundles beside them ([`layout::PayloadBundle`]) |
//! | `checkpoints/<size>` | every checkpoint the archive was ever extended to |
//!
//! **Invariants**
//! * Every object but `checkpoint` is written create-only ([`object_store::PutMode::Create`]):
//!   an object that already exists with identical bytes counts as written, with other bytes it
//!   is an error ([`ArchiveError::Conflict`]) and nothing is overwritten, so two writers can
//!   never replace history. The one exception: removing payloads ([`remove`]) writes a payload
//!   bundle again with those payloads marked absent, and changes nothing else.
//! * `checkpoint` is replaced last, after every tile and bundle its tree covers is stored, and
//!   only by a checkpoint of a larger tree that the log proves consistent with it; an
//!   interrupted run therefore leaves the previous archive intact and complete, and running
//!   it again finishes the job (the objects already written count as written).
//! * An archive verifies alone, with only the log's verifier key ([`verify::verify`]).
//! * Payloads are the only data ever removed (payload expiry and erasure): a leaf commits to
//!   its payload's SHA-256, never to the payload, so every proof stays valid without it.

pub mod cold;
pub mod layout;
mod location;
pub mod read;
pub mod remove;
pub mod verify;
pub mod write;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions};
use std::sync::Arc;

pub use location::ArchiveUrl;

/// Objects transferred at once.
pub(crate) const CONCURRENCY: usize = 16;

/// What went wrong with an archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The archive URL is not one mlaudit can use.
    #[error("archive URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// The object store failed (network, credentials, permissions).
    #[error("{object}: {source}")]
    Backend {
        object: String,
        #[source]
        source: object_store::Error,
    },
    /// A create-only write found other bytes under the name.
    #[error("{object} already exists with other bytes: the archive holds another log, or another writer wrote it; nothing was overwritten")]
    Conflict { object: String },
    /// An object is missing, damaged or inconsistent with the rest: verification failed.
    #[error("{object}: {problem}")]
    Invalid { object: String, problem: String },
    /// The archive and the log disagree.
    #[error("{0}")]
    Diverged(String),
    #[error(transparent)]
    Store(#[from] mlaudit_store::StoreError),
    #[error(transparent)]
    Tile(#[from] mlaudit_store::tiles::TileError),
    #[error("starting the archive's I/O runtime: {0}")]
    Runtime(std::io::Error),
    #[error("compressing a payload bundle: {0}")]
    Compress(std::io::Error),
}

impl ArchiveError {
    /// Whether this is a verification failure (tampering, damage or divergence) rather than an
    /// operational error.
    pub fn is_verification_failure(&self) -> bool {
        matches!(
            self,
            ArchiveError::Invalid { .. }
                | ArchiveError::Diverged(_)
                | ArchiveError::Conflict { .. }
        )
    }

    pub(crate) fn invalid(object: impl Into<String>, problem: impl Into<String>) -> ArchiveError {
        ArchiveError::Invalid {
            object: object.into(),
            problem: problem.into(),
        }
    }
}

/// Opens `note`, stored in the archive as `object`, with the log's verifier key.
pub(crate) fn open_note(
    object: &str,
    note: &str,
    verifier: &mlaudit_core::note::NoteVerifier,
) -> Result<mlaudit_core::note::Checkpoint, ArchiveError> {
    mlaudit_core::note::open_checkpoint(verifier, note).map_err(|e| {
        ArchiveError::invalid(
            object,
            format!("does not verify with the key {}: {e}", verifier.name()),
        )
    })
}

/// Whether a create-only write stored the object or found it already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    Written,
    AlreadyThere,
}

/// An open archive: an object store, the prefix the archive lives under, and an I/O runtime.
pub struct Archive {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: ArchiveUrl,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive").field("url", &self.url).finish()
    }
}

impl Archive {
    /// Opens the archive at `url` (`s3://bucket/prefix`, `gs://…`, `az://…`, `file:///path`);
    /// credentials and endpoints come from the environment variables `object_store` reads.
    pub fn open(url: &str) -> Result<Archive, ArchiveError> {
        let url = ArchiveUrl::parse(url)?;
        let (store, prefix) = url.connect()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mlaudit-archive")
            .enable_all()
            .build()
            .map_err(ArchiveError::Runtime)?;
        Ok(Archive {
            rt,
            store,
            prefix,
            url,
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &ArchiveUrl {
        &self.url
    }

    pub(crate) fn path(&self, name: &str) -> ObjectPath {
        name.split('/')
            .fold(self.prefix.clone(), |p, part| p.child(part))
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Reads one object; `None` if it does not exist. An object larger than any object of
    /// its kind can be ([`layout::max_object_bytes`]) is refused before it is read.
    pub(crate) async fn fetch(&self, name: &str) -> Result<Option<Bytes>, ArchiveError> {
        let backend = |source| ArchiveError::Backend {
            object: name.to_owned(),
            source,
        };
        match self.store.get(&self.path(name)).await {
            Ok(got) if got.meta.size > layout::max_object_bytes(name) => {
                Err(ArchiveError::invalid(
                    name,
                    format!(
                        "is {} bytes, more than an object of its kind can hold ({})",
                        got.meta.size,
                        layout::max_object_bytes(name)
                    ),
                ))
            }
            Ok(got) => got.bytes().await.map(Some).map_err(backend),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    /// Reads one object that must exist.
    pub(crate) async fn fetch_required(&self, name: &str) -> Result<Bytes, ArchiveError> {
        self.fetch(name)
            .await?
            .ok_or_else(|| ArchiveError::invalid(name, "missing from the archive"))
    }

    /// Writes `bytes` under `name` unless it exists; identical existing bytes count as written.
    pub(crate) async fn put_create(&self, name: &str, bytes: Bytes) -> Result<Put, ArchiveError> {
        let path = self.path(name);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self.store.put_opts(&path, bytes.clone().into(), opts).await {
            Ok(_) => Ok(Put::Written),
            Err(object_store::Error::AlreadyExists { .. }) => {
                match self.fetch(name).await? {
                    Some(existing) if existing == bytes => Ok(Put::AlreadyThere),
                    _ => Err(ArchiveError::Conflict {
                        object: name.to_owned(),
                    }),
                }
            }
            Err(object_store::Error::NotImplemented) => Err(ArchiveError::Backend {
                object: name.to_owned(),
                source: object_store::Error::Generic {
                    store: "archive",
                    source: "the backend cannot write create-only (conditional put); for S3 set AWS_CONDITIONAL_PUT=etag".into(),
                },
            }),
            Err(source) => Err(ArchiveError::Backend {
                object: name.to_owned(),
                source,
            }),
        }
    }

    /// Replaces `name`: the `checkpoint`, and a payload bundle losing payloads ([`remove`]).
    pub(crate) async fn put_overwrite(&self, name: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        self.store
            .put(&self.path(name), bytes.into())
            .await
            .map(|_| ())
            .map_err(|source| ArchiveError::Backend {
                object: name.to_owned(),
                source,
            })
    }

    /// The names of the objects under `dir/` (one level: `checkpoints`).
    pub(crate) async fn list(&self, dir: &str) -> Result<Vec<String>, ArchiveError> {
        use futures_util::TryStreamExt;
        let base = self.path(dir);
        let objects: Vec<_> =
            self.store
                .list(Some(&base))
                .try_collect()
                .await
                .map_err(|source| ArchiveError::Backend {
                    object: format!("{dir}/"),
                    source,
                })?;
        Ok(objects
            .into_iter()
            .filter_map(|o| {
                o.location
                    .prefix_match(&base)
                    .and_then(|mut parts| parts.next().map(|p| p.as_ref().to_owned()))
            })
            .collect())
    }

    /// Writes (or replaces) one object that is not part of the archive's layout, such as a
    /// warehouse export's files.
    pub fn put_file(&self, name: &str, bytes: Vec<u8>) -> Result<(), ArchiveError> {
        self.block_on(self.put_overwrite(name, Bytes::from(bytes)))
    }

    /// The latest archived checkpoint note, if the archive holds any.
    pub fn checkpoint_note(&self) -> Result<Option<String>, ArchiveError> {
        self.block_on(async {
            match self.fetch(layout::CHECKPOINT).await? {
                None => Ok(None),
                Some(b) => String::from_utf8(b.to_vec())
                    .map(Some)
                    .map_err(|_| ArchiveError::invalid(layout::CHECKPOINT, "not UTF-8")),
            }
        })
    }
}
