//! Making one object of a link: directories, the tmpfs mount, the private directory,
//! and a declared object made aside and renamed into place.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags, openat, renameat2};
use nix::mount::{MsFlags, mount};
use nix::sys::stat::{Mode, SFlag, fchmod, mkdirat, mknodat};
use nix::sys::statfs::{TMPFS_MAGIC, fstatfs};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

use super::ownership::{Ownership, write_acl};
use super::{
    MaterializeError, Preallocate, StorageMode, Store, acl_support, preallocating, removing, sys,
};
use crate::fs::{
    PRIVATE_DIR, RemoveError, dir_is_empty, is_mount_point, open_dir_at, remove_tree_at,
};
use crate::model::spec::SemaphoreAbi;
use crate::model::validate::{LinkPlan, ObjectKind, ObjectPlan, SEM_BYTES};

/// Where a made object goes: to a free name, or over a member's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    New,
    Over,
}

/// The exact bytes `sem_open` of the given libc expects for a process-shared semaphore.
pub fn semaphore_bytes(initial: u32, abi: SemaphoreAbi) -> [u8; SEM_BYTES as usize] {
    let mut b = [0u8; SEM_BYTES as usize];
    b[0..4].copy_from_slice(&initial.to_le_bytes());
    if abi == SemaphoreAbi::Glibc {
        // glibc: a 64-bit word (value low, waiters high), then `private`, which is
        // FUTEX_SHARED (128) for a semaphore made by sem_open.
        b[8..12].copy_from_slice(&128u32.to_le_bytes());
    }
    b
}

impl Store {
    pub(super) fn ensure_dir(
        &self,
        parent: BorrowedFd<'_>,
        name: &str,
        display: impl Fn() -> String,
    ) -> Result<OwnedFd, MaterializeError> {
        match mkdirat(parent, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => {
                return Err(MaterializeError::Sys {
                    path: display(),
                    op: "mkdir",
                    errno,
                });
            }
        }
        match open_dir_at(parent, name) {
            Ok(fd) => Ok(fd),
            Err(Errno::ELOOP | Errno::ENOTDIR) => Err(MaterializeError::Refused {
                path: display(),
                message: "exists and is not a directory (symlinks are never followed)".into(),
            }),
            Err(errno) => Err(MaterializeError::Sys {
                path: display(),
                op: "open",
                errno,
            }),
        }
    }

    /// In tmpfs mode: false when the link is already its tmpfs, true when it is an empty
    /// directory to mount on; refuses anything else. In a plain directory: always false.
    pub(super) fn needs_mount(
        &self,
        ns: BorrowedFd<'_>,
        link: BorrowedFd<'_>,
        lp: impl Fn() -> String + Copy,
    ) -> Result<bool, MaterializeError> {
        if self.mode != StorageMode::Tmpfs {
            return Ok(false);
        }
        if sys(is_mount_point(ns, link), lp, "stat")? {
            let fs = sys(fstatfs(link), lp, "statfs")?;
            if fs.filesystem_type() != TMPFS_MAGIC {
                return Err(MaterializeError::Refused {
                    path: lp(),
                    message: "is a mount point that is not a tmpfs; not ipclink's".into(),
                });
            }
            return Ok(false);
        }
        if !sys(dir_is_empty(link), lp, "readdir")? {
            return Err(MaterializeError::Refused {
                path: lp(),
                message:
                    "exists, is not an ipclink tmpfs and is not empty; refusing to mount over it"
                        .into(),
            });
        }
        Ok(true)
    }

    pub(super) fn mount_tmpfs(
        &self,
        dir: BorrowedFd<'_>,
        plan: &LinkPlan,
        lp: impl Fn() -> String,
    ) -> Result<(), MaterializeError> {
        // Mount on the descriptor (through its /proc magic link), so the target is exactly
        // the directory we opened with O_NOFOLLOW, whatever happens to the path meanwhile.
        let target = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let data = format!(
            "size={},nr_inodes={},mode={:04o},uid={},gid={}",
            plan.size_limit, plan.nr_inodes, plan.root.mode, plan.root.uid, plan.root.gid
        );
        sys(
            mount(
                Some("ipclink"),
                target.as_str(),
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(data.as_str()),
            ),
            lp,
            "mount tmpfs",
        )
    }

    /// Opens the link's private directory ([`PRIVATE_DIR`]), making it first: objects
    /// are made there and renamed into place, and what is removed goes there first. It
    /// must be this process's own 0700 directory on the link's filesystem, so that no
    /// member can create, rename or remove names in it. An entry a member made at the
    /// name (in a root members may write to, before ipclink made its own) is renamed
    /// aside, kept for the member, once.
    pub(super) fn private_dir(
        &self,
        link: BorrowedFd<'_>,
        lp: impl Fn() -> String + Copy,
    ) -> Result<OwnedFd, MaterializeError> {
        let at = || format!("{}/{PRIVATE_DIR}", lp());
        for attempt in 0..2 {
            match mkdirat(link, PRIVATE_DIR, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(errno) => return sys(Err(errno), at, "mkdir"),
            }
            let ours = match open_dir_at(link, PRIVATE_DIR) {
                Err(Errno::ELOOP | Errno::ENOTDIR) => None,
                r => {
                    let fd = sys(r, at, "open")?;
                    let st = sys(nix::sys::stat::fstat(fd.as_fd()), at, "stat")?;
                    let link_dev = sys(nix::sys::stat::fstat(link), lp, "stat")?.st_dev;
                    (st.st_uid == Uid::effective().as_raw()
                        && st.st_mode & 0o7777 == 0o700
                        && st.st_dev == link_dev)
                        .then_some(fd)
                }
            };
            if let Some(fd) = ours {
                return Ok(fd);
            }
            if attempt == 0 {
                // A name the member cannot have made beforehand: the time, in nanoseconds.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let aside = (0..16)
                    .map(|n| format!("{PRIVATE_DIR}-member-{:x}", now + n))
                    .find(|to| {
                        renameat2(
                            link,
                            PRIVATE_DIR,
                            link,
                            to.as_str(),
                            RenameFlags::RENAME_NOREPLACE,
                        )
                        .is_ok()
                    });
                if let Some(to) = aside {
                    tracing::warn!(link = %lp(), aside = %to, "a member had made the link's private directory name: renamed its entry aside");
                }
            }
        }
        Err(MaterializeError::Refused {
            path: at(),
            message: "a member made this name, which ipclink keeps for itself, and it could not be renamed aside".into(),
        })
    }

    /// Binds a Unix socket of this process at `file` in the root of link
    /// `namespace/name`: bound in the link's private directory under a name of its own,
    /// made connectable by every member (0666: who may ask is the listener's to decide),
    /// then renamed into place over what was there (the socket an earlier run left, or a
    /// member's file; a member's directory there is first renamed aside, kept whole, as
    /// for the private directory). `file` must not be a DNS label, so that it is never a
    /// declared object's name.
    pub fn bind_socket(
        &self,
        namespace: &str,
        name: &str,
        file: &str,
    ) -> std::io::Result<std::os::unix::net::UnixListener> {
        static BOUND: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let lp = || self.link_path(namespace, name).display().to_string();
        let link = self.open_link(namespace, name)?;
        let private = self
            .private_dir(link.as_fd(), lp)
            .map_err(std::io::Error::other)?;
        let n = BOUND.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = format!("bind-{}-{n}.sock", std::process::id());
        match unlinkat(private.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        // Only this process writes in its private directory: the path has no symlink a
        // member could have put there.
        let path = format!("/proc/self/fd/{}/{tmp}", private.as_raw_fd());
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        let placed = std::fs::set_permissions(
            &path,
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .and_then(|()| {
            match nix::fcntl::renameat(private.as_fd(), tmp.as_str(), link.as_fd(), file) {
                Err(Errno::EISDIR | Errno::ENOTEMPTY | Errno::EEXIST) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos());
                    let aside = format!("{file}-member-{now:x}");
                    renameat2(
                        link.as_fd(),
                        file,
                        link.as_fd(),
                        aside.as_str(),
                        RenameFlags::RENAME_NOREPLACE,
                    )?;
                    tracing::warn!(link = %lp(), %aside, "a member had made a name ipclink keeps for itself: renamed its entry aside");
                    nix::fcntl::renameat(private.as_fd(), tmp.as_str(), link.as_fd(), file)
                }
                r => r,
            }
            .map_err(std::io::Error::from)
        });
        if let Err(e) = placed {
            let _ = unlinkat(private.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(e);
        }
        Ok(listener)
    }

    /// Makes `obj` in `private` with its owner, mode and ACL ([`Ownership`]), then
    /// renames it into `link`: never over an existing name ([`Place::New`]), or in
    /// exchange for the entry a member made there ([`Place::Over`]), which is removed
    /// then (its holders keep it).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create(
        &self,
        link: BorrowedFd<'_>,
        private: BorrowedFd<'_>,
        obj: &ObjectPlan,
        owners: super::live::Owners,
        alloc: &dyn Preallocate,
        place: Place,
        lp: impl Fn() -> String,
    ) -> Result<(), MaterializeError> {
        let file = obj.file_name();
        let tmp = file.as_str();
        let at = || format!("{}/{file}", lp());
        // What an earlier removal left at this name (a member kept adding to it) waits
        // elsewhere.
        sys(crate::fs::rename_aside(private, tmp), at, "rename aside")?;
        let excl =
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(0o600);
        let fd = match obj.kind {
            ObjectKind::Shm { size } => {
                let fd = sys(openat(private, tmp, excl, mode), at, "create")?;
                // Allocate every page now: a member never takes SIGBUS on first touch,
                // and ENOSPC shows up here instead of in a member.
                if let Err(e) = preallocating(alloc.preallocate(fd.as_fd(), size), at) {
                    let _ = unlinkat(private, tmp, UnlinkatFlags::NoRemoveDir);
                    return Err(e);
                }
                fd
            }
            ObjectKind::Semaphore { initial, abi } => {
                let fd = sys(openat(private, tmp, excl, mode), at, "create")?;
                // Its page is allocated where regions' are (a member pod's memory), so
                // that a link's semaphores are not charged to this process.
                if let Err(e) = preallocating(alloc.preallocate(fd.as_fd(), SEM_BYTES), at) {
                    let _ = unlinkat(private, tmp, UnlinkatFlags::NoRemoveDir);
                    return Err(e);
                }
                let file = File::from(fd);
                file.write_all_at(&semaphore_bytes(initial, abi), 0)
                    .map_err(|e| MaterializeError::Sys {
                        path: at(),
                        op: "write semaphore",
                        errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                    })?;
                OwnedFd::from(file)
            }
            ObjectKind::Queue { .. } => {
                let params = obj.kind.queue_params().expect("a queue");
                let fd = sys(openat(private, tmp, excl, mode), at, "create")?;
                // Every page now, where regions' go (a member pod's memory); then the
                // layout, marked ready last.
                if let Err(e) = preallocating(alloc.preallocate(fd.as_fd(), params.file_size()), at)
                {
                    let _ = unlinkat(private, tmp, UnlinkatFlags::NoRemoveDir);
                    return Err(e);
                }
                let file = File::from(fd);
                if let Err(e) = ipclink_queue::format(&file, params) {
                    let _ = unlinkat(private, tmp, UnlinkatFlags::NoRemoveDir);
                    return Err(MaterializeError::Sys {
                        path: at(),
                        op: "lay out queue",
                        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc_eio())),
                    });
                }
                OwnedFd::from(file)
            }
            ObjectKind::Fifo => {
                sys(mknodat(private, tmp, SFlag::S_IFIFO, mode, 0), at, "mkfifo")?;
                // The read end of a fifo nobody else can name yet: opening it is harmless.
                sys(
                    openat(
                        private,
                        tmp,
                        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    ),
                    at,
                    "open fifo",
                )?
            }
            ObjectKind::Socket => {
                sys(
                    mkdirat(private, tmp, Mode::from_bits_truncate(0o700)),
                    at,
                    "mkdir",
                )?;
                sys(open_dir_at(private, tmp), at, "open")?
            }
        };
        let want = Ownership::of(obj, owners.guarded);
        if owners.apply {
            sys(
                fchown(
                    fd.as_fd(),
                    Some(Uid::from_raw(want.uid)),
                    Some(Gid::from_raw(want.gid)),
                ),
                at,
                "chown",
            )?;
        }
        sys(
            fchmod(fd.as_fd(), Mode::from_bits_truncate(want.mode)),
            at,
            "chmod",
        )?;
        if want.acl.is_some() {
            sys(write_acl(fd.as_fd(), want.acl.as_deref()), at, "set ACL").map_err(acl_support)?;
        }
        if owners.apply {
            sys(
                crate::store::ownership::mark_made(fd.as_fd(), &file),
                at,
                "mark as made",
            )?;
        }
        drop(fd);
        let flags = match place {
            Place::New => RenameFlags::RENAME_NOREPLACE,
            Place::Over => RenameFlags::RENAME_EXCHANGE,
        };
        match renameat2(private, tmp, link, file.as_str(), flags) {
            Ok(()) if place == Place::Over => {
                // The member's entry is now `private/tmp`, out of every member's path.
                match remove_tree_at(private, tmp) {
                    Ok(()) => Ok(()),
                    Err(RemoveError::Budget(_)) => {
                        sys(crate::fs::rename_aside(private, tmp), at, "rename aside")
                    }
                    Err(e) => Err(removing(e, at)),
                }
            }
            Ok(()) => Ok(()),
            // The member's entry went meanwhile: the name is free.
            Err(Errno::ENOENT) if place == Place::Over => sys(
                renameat2(
                    private,
                    tmp,
                    link,
                    file.as_str(),
                    RenameFlags::RENAME_NOREPLACE,
                ),
                at,
                "rename into place",
            ),
            Err(errno) => sys(Err(errno), at, "rename into place"),
        }
    }
}

/// EIO, for an error that carries no errno.
fn libc_eio() -> i32 {
    nix::libc::EIO
}
