//! Descriptor-only filesystem helpers: every step opens one name relative to a directory
//! descriptor with `O_NOFOLLOW`, so no symlink planted on the way is ever followed. The
//! materializer, the probes, the CSI node's state and the volume plugin's state all use
//! these.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use nix::NixPath;
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fstat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Prefix of names ipclink uses while building an object or a file; never a DNS label,
/// so it cannot clash with a declared object.
pub const TMP_PREFIX: &str = ".ipclink-tmp-";

/// Why [`remove_tree_at`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// A system call failed.
    #[error("{op} failed: {errno}")]
    Sys {
        /// What was attempted.
        op: &'static str,
        /// The error.
        errno: Errno,
    },
    /// A directory below is another mount: it is not entered.
    #[error("{0} is another mount; not entered, left alone")]
    OtherMount(String),
}

fn sys<T>(r: nix::Result<T>, op: &'static str) -> Result<T, RemoveError> {
    r.map_err(|errno| RemoveError::Sys { op, errno })
}

/// Opens `name` under `dir` as a directory, never following a symlink.
pub fn open_dir_at<P: ?Sized + NixPath>(dir: BorrowedFd<'_>, name: &P) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Names in a directory (not `.` and `..`), skipping names that are not UTF-8.
pub fn list_names(dir: BorrowedFd<'_>) -> Vec<String> {
    let Ok(dup) = open_dir_at(dir, ".") else {
        return Vec::new();
    };
    let Ok(mut d) = Dir::from_fd(dup) else {
        return Vec::new();
    };
    d.iter()
        .flatten()
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
        .filter(|n| n != "." && n != "..")
        .collect()
}

/// Every entry of a directory but `.` and `..`, as raw names.
fn entries(dir: BorrowedFd<'_>) -> nix::Result<Vec<CString>> {
    let mut d = Dir::from_fd(open_dir_at(dir, ".")?)?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        if !matches!(entry.file_name().to_bytes(), b"." | b"..") {
            names.push(entry.file_name().to_owned());
        }
    }
    Ok(names)
}

/// Replaces `name` in `dir` atomically and durably: a temporary file (a stale one from a
/// crash is removed first), fsync, rename over `name`, fsync of the directory. A crash
/// leaves the old file or the new one, never a torn one.
pub fn write_atomic_at(dir: BorrowedFd<'_>, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = format!("{TMP_PREFIX}{name}");
    let _ = unlinkat(dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    let fd = openat(
        dir,
        tmp.as_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )?;
    let file = File::from(fd);
    file.write_all_at(bytes, 0)?;
    file.sync_all()?;
    nix::fcntl::renameat(dir, tmp.as_str(), dir, name)?;
    nix::unistd::fsync(dir)?;
    Ok(())
}

/// Whether `dir` is the root of another mount than `parent`, its parent directory.
pub fn is_mount_point(parent: BorrowedFd<'_>, dir: BorrowedFd<'_>) -> nix::Result<bool> {
    Ok(fstat(parent)?.st_dev != fstat(dir)?.st_dev)
}

/// Whether `dir` holds nothing but `.` and `..`.
pub fn dir_is_empty(dir: BorrowedFd<'_>) -> nix::Result<bool> {
    let mut d = Dir::from_fd(open_dir_at(dir, ".")?)?;
    for entry in d.iter() {
        if !matches!(entry?.file_name().to_bytes(), b"." | b"..") {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes the temporaries (names starting with [`TMP_PREFIX`]) a crash left in `dir`.
pub fn remove_leftovers(dir: BorrowedFd<'_>) -> Result<(), RemoveError> {
    for name in sys(entries(dir), "readdir")? {
        if name.to_bytes().starts_with(TMP_PREFIX.as_bytes()) {
            remove_tree_at(dir, name.as_c_str())?;
        }
    }
    Ok(())
}

/// Removes `name` under `dir` and, if it is a directory on the same filesystem, all it
/// holds. Symlinks are removed, never followed; other mounts are never entered.
pub fn remove_tree_at<P: ?Sized + NixPath + std::fmt::Debug>(
    dir: BorrowedFd<'_>,
    name: &P,
) -> Result<(), RemoveError> {
    // O_DIRECTORY fails with ENOTDIR before any open(2) side effect, so a fifo is never
    // opened here.
    match open_dir_at(dir, name) {
        Err(Errno::ENOENT) => Ok(()),
        Err(Errno::ENOTDIR | Errno::ELOOP) => {
            match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(errno) => Err(RemoveError::Sys {
                    op: "unlink",
                    errno,
                }),
            }
        }
        Err(errno) => Err(RemoveError::Sys { op: "open", errno }),
        Ok(child) => {
            if sys(is_mount_point(dir, child.as_fd()), "stat")? {
                return Err(RemoveError::OtherMount(format!("{name:?}")));
            }
            for n in sys(entries(child.as_fd()), "readdir")? {
                remove_tree_at(child.as_fd(), n.as_c_str())?;
            }
            match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(errno) => Err(RemoveError::Sys { op: "rmdir", errno }),
            }
        }
    }
}

/// A `/proc/self/mountinfo` path with its octal escapes (`\040` for a space) decoded.
pub fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::unescape_mountinfo;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/var/lib/a\040b/x"), "/var/lib/a b/x");
        assert_eq!(
            unescape_mountinfo(r"/tab\011and\134slash"),
            "/tab\tand\\slash"
        );
        assert_eq!(unescape_mountinfo(r"/plain\04"), r"/plain\04");
    }
}
