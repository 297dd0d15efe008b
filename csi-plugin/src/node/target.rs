//! Publish targets: opened without following any symlink, checked before anything is
//! created, bind-mounted and unmounted through descriptors (`/proc/self/fd/N`), the
//! kubelet's own `doSafeOpen` discipline.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use ipclink_core::fs::{dir_is_empty, is_mount_point};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::error::CsiError;

fn errno(what: &str, e: Errno) -> CsiError {
    CsiError::Internal(format!("{what}: {e}"))
}

/// The `/proc` path of a descriptor, which the mount calls take instead of a path.
fn magic(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Opens the parent of `target` without following any symlink on the way.
fn open_parent(target: &Path) -> Result<(OwnedFd, String), CsiError> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CsiError::invalid("target_path", "has no final name"))?
        .to_owned();
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(nix::fcntl::AT_FDCWD, parent, how) {
        Ok(fd) => Ok((fd, name)),
        Err(Errno::ELOOP) => Err(CsiError::invalid("target_path", "goes through a symlink")),
        Err(Errno::ENOENT) => Err(CsiError::NotFound(format!(
            "the parent of {} does not exist",
            target.display()
        ))),
        Err(Errno::ENOTDIR) => Err(CsiError::invalid(
            "target_path",
            "a parent is not a directory",
        )),
        Err(e) => Err(errno("open target parent", e)),
    }
}

/// Opens `name` under `parent` as a directory, never following a symlink; `None` when
/// it does not exist.
fn open_target(parent: &OwnedFd, name: &str) -> Result<Option<OwnedFd>, CsiError> {
    match openat(
        parent.as_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(Errno::ELOOP) => Err(CsiError::invalid("target_path", "is a symlink")),
        Err(Errno::ENOTDIR) => Err(CsiError::invalid(
            "target_path",
            "exists and is not a directory",
        )),
        Err(e) => Err(errno("open target", e)),
    }
}

/// A publish target, opened without following symlinks and checked before anything is
/// created; [`bind`] then uses these descriptors.
#[derive(Debug)]
pub struct Target {
    parent: OwnedFd,
    name: String,
    /// The existing directory, if any (empty, or a mount point).
    dir: Option<OwnedFd>,
}

/// Refuses, changing nothing, a target that is not absent, an empty directory, or a mount
/// point (which [`bind`] then checks is this link's).
pub fn check_target_dir(target: &Path) -> Result<Target, CsiError> {
    let (parent, name) = open_parent(target)?;
    let dir = open_target(&parent, &name)?;
    if let Some(fd) = &dir
        && !is_mount_point(parent.as_fd(), fd.as_fd()).map_err(|e| errno("stat", e))?
        && !dir_is_empty(fd.as_fd()).map_err(|e| errno("read target", e))?
    {
        return Err(CsiError::Precondition(format!(
            "{} exists and is not empty",
            target.display()
        )));
    }
    Ok(Target { parent, name, dir })
}

/// Bind-mounts the link at the checked target (read-only when asked); a target that is
/// already this link's mount is left as it is.
pub fn bind(link: &OwnedFd, target: Target, path: &Path, readonly: bool) -> Result<(), CsiError> {
    let Target { parent, name, dir } = target;
    let tfd = match dir {
        Some(fd) => fd,
        None => {
            match mkdirat(
                parent.as_fd(),
                name.as_str(),
                Mode::from_bits_truncate(0o750),
            ) {
                Ok(()) => {}
                // Made by someone else since the check: it is checked like any other.
                Err(Errno::EEXIST) => return bind(link, check_target_dir(path)?, path, readonly),
                Err(e) => return Err(errno("create target", e)),
            }
            open_target(&parent, &name)?
                .ok_or_else(|| CsiError::Internal(format!("{} vanished", path.display())))?
        }
    };
    if is_mount_point(parent.as_fd(), tfd.as_fd()).map_err(|e| errno("stat", e))? {
        // Mounted already: ours if it is this link (a crash between the mount and the
        // state write), otherwise something else that is left alone.
        let here = fstat(tfd.as_fd()).map_err(|e| errno("stat", e))?.st_dev;
        if here == fstat(link.as_fd()).map_err(|e| errno("stat", e))?.st_dev {
            let ro = nix::sys::statvfs::fstatvfs(&tfd)
                .map_err(|e| errno("statvfs", e))?
                .flags()
                .contains(nix::sys::statvfs::FsFlags::ST_RDONLY);
            if readonly && !ro {
                return Err(CsiError::Precondition(format!(
                    "{} holds this link read-write, and this publication must be read-only; unpublish it first",
                    path.display()
                )));
            }
            return Ok(());
        }
        return Err(CsiError::Precondition(format!(
            "{} is already a mount point",
            path.display()
        )));
    }
    // One mount per publication, never recursive: nothing is mounted below a link's
    // root (ownership, not mounts, guards declared objects: ipclink_core::store::ownership),
    // and the pins of links ipclink 0.1 made are not copied into pods.
    if readonly {
        return bind_read_only(link, &tfd);
    }
    mount(
        Some(magic(link).as_str()),
        magic(&tfd).as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| errno("bind mount", e))?;
    // The bind copies the flags of the link's tmpfs mount (nosuid, nodev, noexec).
    Ok(())
}

/// The new mount API's flags and attributes (linux/mount.h).
mod api {
    pub const OPEN_TREE_CLONE: u32 = 1;
    pub const AT_EMPTY_PATH: u32 = 0x1000;
    pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
    pub const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
    pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
    pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
    pub const MOUNT_ATTR_NODEV: u64 = 0x4;
    pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

    /// `struct mount_attr`.
    #[repr(C)]
    pub struct MountAttr {
        pub attr_set: u64,
        pub attr_clr: u64,
        pub propagation: u64,
        pub userns_fd: u64,
    }
}

/// Mounts a read-only clone of the link at the target directory `tfd`: the clone is made
/// read-only while detached, then moved into place, so it is read-only from its first
/// moment everywhere it propagates (the kubelet's and the runtime's mount namespaces). A
/// bind remounted read-only afterwards would be read-only only in this mount namespace:
/// a remount does not propagate, and a container would get the link read-write.
#[allow(unsafe_code)]
fn bind_read_only(link: &OwnedFd, tfd: &OwnedFd) -> Result<(), CsiError> {
    use std::os::fd::FromRawFd;
    let empty = c"";
    // SAFETY: open_tree(2) with a valid descriptor and an empty C string; it returns a
    // new descriptor this function then owns, or -1.
    let tree = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_open_tree,
            link.as_raw_fd(),
            empty.as_ptr(),
            api::OPEN_TREE_CLONE | api::AT_EMPTY_PATH | nix::libc::O_CLOEXEC as u32,
        )
    };
    if tree < 0 {
        return Err(errno(
            "open_tree (read-only mounts need Linux 5.12 or later)",
            Errno::last(),
        ));
    }
    // SAFETY: `tree` is the new descriptor open_tree returned.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let attr = api::MountAttr {
        attr_set: api::MOUNT_ATTR_RDONLY
            | api::MOUNT_ATTR_NOSUID
            | api::MOUNT_ATTR_NODEV
            | api::MOUNT_ATTR_NOEXEC,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr(2) on the detached tree with a valid attribute struct of the
    // size passed.
    let set = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            api::AT_EMPTY_PATH,
            &attr as *const api::MountAttr,
            std::mem::size_of::<api::MountAttr>(),
        )
    };
    if set < 0 {
        return Err(errno(
            "mount_setattr (read-only mounts need Linux 5.12 or later)",
            Errno::last(),
        ));
    }
    // SAFETY: move_mount(2) of the detached tree onto the target directory, both valid
    // descriptors, with empty C strings for their paths.
    let moved = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            tfd.as_raw_fd(),
            empty.as_ptr(),
            api::MOVE_MOUNT_F_EMPTY_PATH | api::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if moved < 0 {
        return Err(errno("move_mount", Errno::last()));
    }
    Ok(())
}

/// Unmounts `target` if it is a mount point and removes it if empty. A target that is
/// gone is fine (idempotent).
pub fn unbind(target: &Path, ours: bool) -> Result<(), CsiError> {
    let (parent, name) = match open_parent(target) {
        Ok(p) => p,
        Err(CsiError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    let Some(tfd) = open_target(&parent, &name)? else {
        return Ok(());
    };
    let is_mount = is_mount_point(parent.as_fd(), tfd.as_fd()).map_err(|e| errno("stat", e))?;
    if is_mount {
        if !ours {
            return Err(CsiError::NotFound(format!(
                "{} is a mount ipclink did not make",
                target.display()
            )));
        }
        umount2(magic(&tfd).as_str(), MntFlags::MNT_DETACH).map_err(|e| errno("unmount", e))?;
    }
    drop(tfd);
    match unlinkat(parent.as_fd(), name.as_str(), UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT | Errno::ENOTEMPTY | Errno::EEXIST) => Ok(()),
        Err(e) => Err(errno("remove target", e)),
    }
}
