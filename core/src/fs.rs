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
use nix::fcntl::{OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{Mode, fstat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Prefix of the temporary names ipclink uses in directories only it writes to (a file
/// written atomically, a directory being removed); never a DNS label.
pub const TMP_PREFIX: &str = ".ipclink-tmp-";

/// The directory in each link's root that only ipclink writes to (its own, mode 0700):
/// objects are made there and renamed into place, and what is removed goes there first.
/// A DNS label never starts with a dot, so it cannot clash with a declared object.
pub const PRIVATE_DIR: &str = ".ipclink";

/// The socket in the root of a link with a server member on which the node plugin tells
/// that server which pod is on the other end of a connection (`ipclink-csi`'s
/// `node::peer`). Not a DNS label either.
pub const PEER_SOCKET: &str = ".ipclink-peer";

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
    /// The tree took more system calls than allowed (a member keeps adding entries);
    /// what is left stays, and a later removal goes on from there.
    #[error("still not empty after {0} system calls; left for a later removal")]
    Budget(usize),
    /// A pin (a bind mount of the entry onto itself) is still there after every round
    /// of detaching.
    #[error("{0} is still mounted after 16 rounds of detaching")]
    StillMounted(String),
}

impl RemoveError {
    /// `op` failed with the I/O error `e` (EIO when it carries no errno).
    pub fn io(op: &'static str, e: &std::io::Error) -> RemoveError {
        RemoveError::Sys {
            op,
            errno: e.raw_os_error().map_or(Errno::EIO, Errno::from_raw),
        }
    }
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

/// Opens `name` under `dir` without any open(2) side effect (`O_PATH`: a FIFO's reader
/// is not woken, nothing is read), never following a symlink.
pub fn open_path_at<P: ?Sized + NixPath>(dir: BorrowedFd<'_>, name: &P) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Names in a directory (not `.` and `..`), skipping names that are not UTF-8.
pub fn list_names(dir: BorrowedFd<'_>) -> Vec<String> {
    list_names_whole(dir).0
}

/// [`list_names`], and whether that is every name: false when the directory could not
/// be read to its end or a name was skipped for not being UTF-8.
pub fn list_names_whole(dir: BorrowedFd<'_>) -> (Vec<String>, bool) {
    let Ok(dup) = open_dir_at(dir, ".") else {
        return (Vec::new(), false);
    };
    let Ok(mut d) = Dir::from_fd(dup) else {
        return (Vec::new(), false);
    };
    let mut whole = true;
    let mut names = Vec::new();
    for entry in d.iter() {
        match entry.map(|e| e.file_name().to_str().map(str::to_owned)) {
            Ok(Ok(n)) if n == "." || n == ".." => {}
            Ok(Ok(n)) => names.push(n),
            Ok(Err(_)) => whole = false,
            Err(_) => {
                whole = false;
                break;
            }
        }
    }
    (names, whole)
}

/// Names one listing of [`entries`] returns at most (a member may fill a directory with
/// millions): callers that remove what they list list again until nothing is left.
pub const MAX_LISTING: usize = 1 << 16;

/// The entries of a directory but `.` and `..`, as raw names: at most [`MAX_LISTING`].
fn entries(dir: BorrowedFd<'_>) -> nix::Result<Vec<CString>> {
    let mut d = Dir::from_fd(open_dir_at(dir, ".")?)?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        if !matches!(entry.file_name().to_bytes(), b"." | b"..") {
            names.push(entry.file_name().to_owned());
            if names.len() == MAX_LISTING {
                break;
            }
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

/// Removes the temporaries (names starting with [`TMP_PREFIX`]) a crash left in `dir`, a
/// directory only this process writes to.
pub fn remove_leftovers(dir: BorrowedFd<'_>) -> Result<(), RemoveError> {
    for name in sys(entries(dir), "readdir")? {
        if name.to_bytes().starts_with(TMP_PREFIX.as_bytes()) {
            remove_tree_at(dir, name.as_c_str())?;
        }
    }
    Ok(())
}

/// Renames `name` in `dir`, a directory only this process writes to, to a fresh name
/// starting with [`TMP_PREFIX`]: `name` is free again while what it held (a tree a
/// member keeps adding to) waits for a later removal. Gone already is fine.
pub fn rename_aside<P: ?Sized + NixPath>(dir: BorrowedFd<'_>, name: &P) -> nix::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    for _ in 0..1024 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let to = format!("{TMP_PREFIX}left-{}-{n}", std::process::id());
        match renameat2(dir, name, dir, to.as_str(), RenameFlags::RENAME_NOREPLACE) {
            Ok(()) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::EEXIST)
}

/// Removes every entry of `dir` (not `dir` itself), as [`remove_tree_at`] does, within
/// one [`REMOVE_BUDGET`] for them all (each entry taking at least one): what is left
/// then stays for a later call.
pub fn empty_dir(dir: BorrowedFd<'_>) -> Result<(), RemoveError> {
    let mut budget = REMOVE_BUDGET;
    loop {
        // At most MAX_LISTING names a listing: a directory a member filled is emptied a
        // listing at a time.
        let names = sys(entries(dir), "readdir")?;
        if names.is_empty() {
            return Ok(());
        }
        for name in names {
            budget = budget
                .checked_sub(1)
                .ok_or(RemoveError::Budget(REMOVE_BUDGET))?;
            remove_tree_within(dir, name.as_c_str(), &mut budget)?;
        }
    }
}

/// System calls one removal makes at most. A tree is bounded by its filesystem's
/// inodes (a link's tmpfs has at most a few thousand), so this is reached only while a
/// member keeps adding entries as fast as they are removed; what is left then stays
/// out of every member's path, for a later removal.
pub const REMOVE_BUDGET: usize = 1 << 18;

/// Removes `name` under `dir` and, if it is a directory on the same filesystem, all it
/// holds. Symlinks are removed, never followed; other mounts are never entered.
///
/// A member can write the tree, so nothing here recurses or keeps a descriptor per
/// level: every directory found below the top one is first lifted into the top one
/// (renamed there under a fresh name), then emptied of its other entries and removed.
/// Depth costs nothing, two descriptors are open at a time, and the work is bounded by
/// [`REMOVE_BUDGET`] system calls.
pub fn remove_tree_at<P: ?Sized + NixPath + std::fmt::Debug>(
    dir: BorrowedFd<'_>,
    name: &P,
) -> Result<(), RemoveError> {
    let mut budget = REMOVE_BUDGET;
    remove_tree_within(dir, name, &mut budget)
}

/// [`remove_tree_at`] within the system calls `budget` has left, taking those it makes.
fn remove_tree_within<P: ?Sized + NixPath + std::fmt::Debug>(
    dir: BorrowedFd<'_>,
    name: &P,
    budget: &mut usize,
) -> Result<(), RemoveError> {
    // O_DIRECTORY fails with ENOTDIR before any open(2) side effect, so a fifo is never
    // opened here.
    let top = match open_dir_at(dir, name) {
        Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::ENOTDIR | Errno::ELOOP) => return unlink_entry(dir, name),
        Err(errno) => return Err(RemoveError::Sys { op: "open", errno }),
        Ok(top) => top,
    };
    if sys(is_mount_point(dir, top.as_fd()), "stat")? {
        return Err(RemoveError::OtherMount(format!("{name:?}")));
    }
    let mut lift = Lift {
        top: top.as_fd(),
        budget,
        next: 0,
    };
    loop {
        let names = lift.entries(top.as_fd())?;
        if names.is_empty() {
            lift.tick()?;
            match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => return Ok(()),
                // A member added an entry since the listing: list again, within the
                // budget (past it the caller sets the rest aside).
                Err(Errno::ENOTEMPTY) => continue,
                Err(errno) => return Err(RemoveError::Sys { op: "rmdir", errno }),
            }
        }
        for n in names {
            lift.clear(&n)?;
        }
    }
}

/// Unlinks a non-directory; gone already is fine.
fn unlink_entry<P: ?Sized + NixPath>(dir: BorrowedFd<'_>, name: &P) -> Result<(), RemoveError> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(RemoveError::Sys {
            op: "unlink",
            errno,
        }),
    }
}

/// The state of one [`remove_tree_at`]: the directory whose children are being removed
/// and the system calls left.
struct Lift<'a, 'b> {
    top: BorrowedFd<'a>,
    budget: &'b mut usize,
    next: u64,
}

impl Lift<'_, '_> {
    /// Counts one system call against the budget.
    fn tick(&mut self) -> Result<(), RemoveError> {
        *self.budget = self
            .budget
            .checked_sub(1)
            .ok_or(RemoveError::Budget(REMOVE_BUDGET))?;
        Ok(())
    }

    /// The names in `dir`, counted as one call.
    fn entries(&mut self, dir: BorrowedFd<'_>) -> Result<Vec<CString>, RemoveError> {
        self.tick()?;
        sys(entries(dir), "readdir")
    }

    /// Removes the child `name` of the top directory: a file at once; a directory after
    /// its subdirectories were lifted into the top one and its files unlinked.
    fn clear(&mut self, name: &CString) -> Result<(), RemoveError> {
        self.tick()?;
        let child = match open_dir_at(self.top, name.as_c_str()) {
            Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::ENOTDIR | Errno::ELOOP) => return unlink_entry(self.top, name.as_c_str()),
            Err(errno) => return Err(RemoveError::Sys { op: "open", errno }),
            Ok(fd) => fd,
        };
        if sys(is_mount_point(self.top, child.as_fd()), "stat")? {
            return Err(RemoveError::OtherMount(format!("{name:?}")));
        }
        for n in self.entries(child.as_fd())? {
            self.tick()?;
            match unlinkat(child.as_fd(), n.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(Errno::EISDIR) => self.lift(child.as_fd(), &n)?,
                Err(errno) => {
                    return Err(RemoveError::Sys {
                        op: "unlink",
                        errno,
                    });
                }
            }
        }
        drop(child);
        self.tick()?;
        match unlinkat(self.top, name.as_c_str(), UnlinkatFlags::RemoveDir) {
            // Not empty: a member added an entry meanwhile; the next round takes it.
            Ok(()) | Err(Errno::ENOENT | Errno::ENOTEMPTY) => Ok(()),
            Err(errno) => Err(RemoveError::Sys { op: "rmdir", errno }),
        }
    }

    /// Renames the directory `name` of `parent` into the top directory under a name not
    /// taken there.
    fn lift(&mut self, parent: BorrowedFd<'_>, name: &CString) -> Result<(), RemoveError> {
        loop {
            self.tick()?;
            let to = format!("{TMP_PREFIX}lift-{}", self.next);
            self.next += 1;
            let flags = RenameFlags::RENAME_NOREPLACE;
            match renameat2(parent, name.as_c_str(), self.top, to.as_str(), flags) {
                Ok(()) | Err(Errno::ENOENT) => return Ok(()),
                Err(Errno::EEXIST) => continue,
                // A mount point cannot be renamed: another mount is never entered.
                Err(Errno::EBUSY) => return Err(RemoveError::OtherMount(format!("{name:?}"))),
                Err(errno) => {
                    return Err(RemoveError::Sys {
                        op: "rename",
                        errno,
                    });
                }
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
