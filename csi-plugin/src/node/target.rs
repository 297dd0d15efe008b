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
    mount(
        Some(magic(link).as_str()),
        magic(&tfd).as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| errno("bind mount", e))?;
    // The bind copies the flags of the link's tmpfs mount (nosuid, nodev, noexec); only
    // read-only needs a remount, of the new mount, reached by opening the target again.
    if readonly {
        let mounted = open_target(&parent, &name)?
            .ok_or_else(|| CsiError::Internal(format!("{} vanished", path.display())))?;
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC;
        if let Err(e) = mount(
            None::<&str>,
            magic(&mounted).as_str(),
            None::<&str>,
            flags,
            None::<&str>,
        ) {
            let _ = umount2(magic(&mounted).as_str(), MntFlags::MNT_DETACH);
            return Err(errno("remount read-only", e));
        }
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
