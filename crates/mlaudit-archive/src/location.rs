//! Archive URLs: which object store, and the prefix the archive lives under.

use crate::ArchiveError;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use std::sync::Arc;

/// Environment variables passed to the object store builders (lower-cased, as their
/// configuration keys are): credentials, endpoints, regions, `AWS_ALLOW_HTTP`,
/// `AWS_CONDITIONAL_PUT`, ….
const ENV_PREFIXES: [&str; 4] = ["AWS_", "GOOGLE_", "AZURE_", "OBJECT_STORE_"];

/// A parsed archive URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveUrl {
    text: String,
    url: url::Url,
}

impl std::fmt::Display for ArchiveUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl ArchiveUrl {
    /// Accepts `s3://bucket[/prefix]` (also `s3a://`), `gs://bucket[/prefix]`,
    /// `az://container[/prefix]` (also `azure://`, `abfs://`, `abfss://`) and `file:///path`.
    pub fn parse(text: &str) -> Result<ArchiveUrl, ArchiveError> {
        let bad = |reason: &str| ArchiveError::Url {
            url: text.to_owned(),
            reason: reason.to_owned(),
        };
        let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        match url.scheme() {
            "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(bad("names no bucket or container"));
                }
            }
            "file" => {
                if url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(bad("a file URL names a local path: file:///path"));
                }
                if url.path().len() <= 1 {
                    return Err(bad("names no directory"));
                }
            }
            other => {
                return Err(bad(&format!(
                    "scheme {other:?} is not an archive backend (s3, gs, az or file)"
                )))
            }
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad(
                "takes no query or fragment: settings come from the environment",
            ));
        }
        Ok(ArchiveUrl {
            text: text.to_owned(),
            url,
        })
    }

    /// The local directory of a `file://` archive.
    pub fn local_dir(&self) -> Option<std::path::PathBuf> {
        (self.url.scheme() == "file")
            .then(|| self.url.to_file_path().ok())
            .flatten()
    }

    pub(crate) fn connect(&self) -> Result<(Arc<dyn ObjectStore>, ObjectPath), ArchiveError> {
        let bad = |reason: String| ArchiveError::Url {
            url: self.text.clone(),
            reason,
        };
        if let Some(dir) = self.local_dir() {
            // Rooted at `/` so that opening creates nothing: directories appear with the first
            // object written.
            let text = dir
                .to_str()
                .ok_or_else(|| bad("the path is not UTF-8".into()))?;
            let prefix =
                ObjectPath::parse(text.trim_start_matches('/')).map_err(|e| bad(e.to_string()))?;
            return Ok((Arc::new(LocalFileSystem::new()), prefix));
        }
        let options = std::env::vars().filter_map(|(k, v)| {
            ENV_PREFIXES
                .iter()
                .any(|p| k.starts_with(p))
                .then(|| (k.to_ascii_lowercase(), v))
        });
        let (store, prefix) =
            object_store::parse_url_opts(&self.url, options).map_err(|e| bad(e.to_string()))?;
        Ok((Arc::from(store), prefix))
    }
}
