//! State files: written to a temporary name, fsynced, renamed over the old one, and the
//! directory fsynced, so a crash leaves either the old or the new file, never a torn one.

use std::fs::File;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Reads a JSON state file; `Ok(None)` when it does not exist, `Err` when it is corrupt.
pub fn load_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, Unreadable> {
    let unreadable = |e: Box<dyn std::error::Error + Send + Sync>| Unreadable {
        path: path.display().to_string(),
        source: e,
    };
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(unreadable(e.into())),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| unreadable(e.into())),
    }
}

/// A state file that exists but cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct Unreadable {
    /// The file.
    pub path: String,
    /// Why: the read's or the parser's error.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Replaces a JSON state file atomically and durably (see
/// [`ipclink_core::fs::write_atomic_at`]).
pub fn save_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let dir = File::open(path.parent().unwrap_or(Path::new(".")))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other(format!("{}: no file name", path.display())))?;
    let body = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    ipclink_core::fs::write_atomic_at(std::os::fd::AsFd::as_fd(&dir), name, &body)
}
