//! How materialization fails, and the helpers that name the object a system call
//! failed on.

use nix::errno::Errno;

use crate::fs::RemoveError;
use crate::model::validate::Problems;

/// Why materialization or teardown failed.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    /// A system call failed.
    #[error("{path}: {op} failed: {errno}")]
    Sys {
        /// Display path of the object.
        path: String,
        /// What was attempted.
        op: &'static str,
        /// The error.
        errno: Errno,
    },
    /// Existing objects differ from the plan; nothing was changed.
    #[error("the link exists with different objects; nothing was changed:\n{0}")]
    Conflicts(Problems),
    /// A region's pages could not be allocated where they are charged.
    #[error("{path}: cannot preallocate: {message}")]
    Preallocate {
        /// Display path of the region.
        path: String,
        /// Why, naming the memory limit when it was too small.
        message: String,
        /// Whether a memory limit was too small (the caller's resources are exhausted).
        out_of_memory: bool,
    },
    /// Something on disk is not what ipclink made; it is left alone.
    #[error("{path}: {message}")]
    Refused {
        /// Display path.
        path: String,
        /// Why.
        message: String,
    },
}

/// Why a region's pages could not be allocated.
#[derive(Debug, thiserror::Error)]
pub enum PreallocateError {
    /// `fallocate` failed (ENOSPC: the link's tmpfs is full).
    #[error("{0}")]
    Sys(Errno),
    /// The memory the pages are charged to (a member pod's limit) cannot hold them.
    #[error("{0}")]
    OutOfMemory(String),
    /// The allocation could not be run where it is charged.
    #[error("{0}")]
    Failed(String),
}

/// A preallocation's failure as the error of the region at `at`.
pub(super) fn preallocating(
    r: Result<(), PreallocateError>,
    at: impl Fn() -> String,
) -> Result<(), MaterializeError> {
    r.map_err(|e| match e {
        PreallocateError::Sys(errno) => MaterializeError::Sys {
            path: at(),
            op: "preallocate",
            errno,
        },
        PreallocateError::OutOfMemory(message) => MaterializeError::Preallocate {
            path: at(),
            message,
            out_of_memory: true,
        },
        PreallocateError::Failed(message) => MaterializeError::Preallocate {
            path: at(),
            message,
            out_of_memory: false,
        },
    })
}

pub(crate) fn sys<T>(
    r: nix::Result<T>,
    path: impl FnOnce() -> String,
    op: &'static str,
) -> Result<T, MaterializeError> {
    r.map_err(|errno| MaterializeError::Sys {
        path: path(),
        op,
        errno,
    })
}

/// A [`RemoveError`] under the link at `lp`.
pub(super) fn removing(e: RemoveError, lp: impl Fn() -> String) -> MaterializeError {
    match e {
        RemoveError::Sys { op, errno } => MaterializeError::Sys {
            path: lp(),
            op,
            errno,
        },
        RemoveError::OtherMount(_) | RemoveError::Budget(_) | RemoveError::StillMounted(_) => {
            MaterializeError::Refused {
                path: lp(),
                message: e.to_string(),
            }
        }
    }
}

/// An error of setting an ACL, named when the filesystem has no ACLs.
pub(super) fn acl_support(e: MaterializeError) -> MaterializeError {
    match e {
        MaterializeError::Sys {
            path,
            errno: Errno::EOPNOTSUPP,
            ..
        } => MaterializeError::Refused {
            path,
            message: "the filesystem has no POSIX ACLs (a tmpfs needs CONFIG_TMPFS_POSIX_ACL): a link members may create objects in (allowCreate) guards its declared objects with one".into(),
        },
        e => e,
    }
}
