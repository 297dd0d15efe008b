//! One error type for every CSI call, mapped to its gRPC code in one place.

use tonic::{Code, Status};

/// Why a CSI call failed.
#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    /// A field is missing or malformed; nothing was changed.
    #[error("{field}: {message}")]
    Invalid {
        /// Request field.
        field: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// No such volume or link.
    #[error("{0}")]
    NotFound(String),
    /// The pod may not mount this link.
    #[error("{0}")]
    Denied(String),
    /// The same name or target exists with different properties.
    #[error("{0}")]
    AlreadyExists(String),
    /// The system is not in a state that allows the call (e.g. a non-empty target).
    #[error("{0}")]
    Precondition(String),
    /// More than the link allows.
    #[error("{0}")]
    OutOfRange(String),
    /// The node's or the pod's budget cannot hold the link.
    #[error("{0}")]
    Exhausted(String),
    /// The same (volume, target) is being worked on by another call.
    #[error("{0}")]
    Busy(String),
    /// Not supported by this plugin.
    #[error("{0}")]
    Unsupported(String),
    /// A dependency (the Kubernetes API) cannot be reached now; the CO retries.
    #[error("{0}")]
    Unavailable(String),
    /// A system call or state write failed.
    #[error("{0}")]
    Internal(String),
}

impl CsiError {
    /// An `InvalidArgument` for `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        CsiError::Invalid {
            field,
            message: message.into(),
        }
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            CsiError::Invalid { .. } => Code::InvalidArgument,
            CsiError::NotFound(_) => Code::NotFound,
            CsiError::Denied(_) => Code::PermissionDenied,
            CsiError::AlreadyExists(_) => Code::AlreadyExists,
            CsiError::Precondition(_) => Code::FailedPrecondition,
            CsiError::OutOfRange(_) => Code::OutOfRange,
            CsiError::Exhausted(_) => Code::ResourceExhausted,
            CsiError::Busy(_) => Code::Aborted,
            CsiError::Unsupported(_) => Code::InvalidArgument,
            CsiError::Unavailable(_) => Code::Unavailable,
            CsiError::Internal(_) => Code::Internal,
        }
    }
}

impl From<CsiError> for Status {
    fn from(e: CsiError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<ipclink_core::MaterializeError> for CsiError {
    fn from(e: ipclink_core::MaterializeError) -> Self {
        match e {
            ipclink_core::MaterializeError::Conflicts(p) => CsiError::Precondition(p.to_string()),
            e @ ipclink_core::MaterializeError::Preallocate {
                out_of_memory: true,
                ..
            } => CsiError::Exhausted(e.to_string()),
            other => CsiError::Internal(other.to_string()),
        }
    }
}
