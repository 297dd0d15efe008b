//! Why a command failed, and the exit code that tells the shell.

use ipclink_core::{MaterializeError, Problems};

/// Why a command failed; [`Error::exit_code`] tells the shell.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is wrong; nothing was changed.
    #[error("{0}")]
    Invalid(Problems),
    /// The links on disk differ from the files; nothing was changed.
    #[error(transparent)]
    Materialize(#[from] MaterializeError),
    /// A running sidecar answered that it is not ready (`ready`), with its reason.
    #[error("not ready: {0}")]
    NotReady(String),
    /// A link is in use, so it was left as it is (`reset`).
    #[error("{0}")]
    InUse(String),
    /// The endpoint could not be served.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl Error {
    /// 2 for input that was refused with nothing changed, 3 for a link left alone
    /// because it is in use, 1 for anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid(_) | Error::Materialize(MaterializeError::Conflicts(_)) => 2,
            Error::InUse(_) => 3,
            _ => 1,
        }
    }
}
