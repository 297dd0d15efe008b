//! The one rule for editing a live link, used by the node plugin, the sidecar and the
//! volume plugin alike. The difference between what is on disk (and the link's record,
//! the plan it was last given) and a new plan is split into
//!
//! - steps applied live, each atomic and harmless to members holding the objects:
//!   creating a new object, `fchmod`/`fchown` of one, growing a region (`fallocate`,
//!   never a truncate), removing one (holders keep their descriptors), and, in
//!   [`crate::store`], a tmpfs remount with another `size=`/`nr_inodes=`;
//! - pending changes, which would break holders: a region made smaller, a channel of
//!   another kind, a semaphore with another ABI or initial value, a name taken by an
//!   object members made. The link keeps serving the live form; the change is made by
//!   the first materialization with no member (`exclusive`), by replacing the object.
//!
//! Every step is idempotent: a run killed between two steps is finished by the next.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat, renameat2};
use nix::mount::{MntFlags, umount2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, unlinkat};

use crate::fs::{RemoveError, TMP_PREFIX, open_path_at, remove_tree_at, unescape_mountinfo};
use crate::model::validate::{LinkPlan, ObjectKind, ObjectPlan};
use crate::store::ownership::{Ownership, read_acl, write_acl};

mod rule;

pub use rule::{Diff, Entry, EntryKind, Step, steps};
use rule::{identity_change, same_object};

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Whether the entry `file` of `link` is an object ipclink made at that name.
fn made_here(link: BorrowedFd<'_>, file: &str) -> bool {
    open_path_at(link, file).is_ok_and(|fd| crate::store::ownership::made_at(fd.as_fd(), file))
}

/// Whether mode, owner or ACL of the entry `file` (its `st`) differ from the object's.
fn attrs_differ(
    link: BorrowedFd<'_>,
    obj: &ObjectPlan,
    st: &FileStat,
    owners: Owners,
) -> nix::Result<bool> {
    let want = Ownership::of(obj, owners.guarded);
    if st.st_mode & 0o7777 != want.mode {
        return Ok(true);
    }
    if !owners.apply {
        return Ok(false);
    }
    if st.st_uid != want.uid || st.st_gid != want.gid {
        return Ok(true);
    }
    let fd = open_path_at(link, obj.file_name().as_str())?;
    Ok(read_acl(fd.as_fd())? != want.acl)
}

/// How owners are applied: `apply` when this process can give files away (root);
/// `guarded` when, besides, members may write to the root, so declared objects are
/// root's own with the spec's owner in their ACL ([`crate::store::ownership`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owners {
    pub apply: bool,
    pub guarded: bool,
}

impl Owners {
    /// How owners are applied to the objects of `plan`.
    pub(crate) fn of(plan: &LinkPlan, apply: bool) -> Self {
        Owners {
            apply,
            guarded: apply && plan.root.allows_create(),
        }
    }
}

/// The kind of the entry `st` describes.
pub(crate) fn entry_kind(st: &FileStat) -> EntryKind {
    let t = file_type(st);
    if t == SFlag::S_IFREG {
        EntryKind::File(st.st_size as u64)
    } else if t == SFlag::S_IFIFO {
        EntryKind::Fifo
    } else if t == SFlag::S_IFDIR {
        EntryKind::Dir
    } else if t == SFlag::S_IFLNK {
        EntryKind::Symlink
    } else {
        EntryKind::Special
    }
}

/// Compares the link `link` (its record's plan `old`, when it has one) with `plan`.
/// `exclusive`: no member holds the link, so pending changes become replacements.
pub(crate) fn diff<'p>(
    link: BorrowedFd<'_>,
    plan: &'p LinkPlan,
    old: Option<&LinkPlan>,
    apply_owner: bool,
    exclusive: bool,
) -> nix::Result<Diff<'p>> {
    let entries = found(link, plan, old, apply_owner)?;
    Ok(steps(plan, old, &entries, apply_owner, exclusive))
}

/// Reads, for each object of `plan` in order, what is at its name in `link`: the
/// system-call half of the rule.
pub(crate) fn found(
    link: BorrowedFd<'_>,
    plan: &LinkPlan,
    old: Option<&LinkPlan>,
    apply_owner: bool,
) -> nix::Result<Vec<Option<Entry>>> {
    let owners = Owners::of(plan, apply_owner);
    let open_root = plan.root.allows_create() || old.is_some_and(|o| o.root.allows_create());
    let mut entries = Vec::with_capacity(plan.objects.len());
    for obj in &plan.objects {
        let file = obj.file_name();
        let st = match fstatat(link, file.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => {
                entries.push(None);
                continue;
            }
            Err(e) => return Err(e),
        };
        let kind = entry_kind(&st);
        let before = old.and_then(|o| o.objects.iter().find(|p| same_object(p, obj)));
        let made_here = before.is_some() || !(open_root && apply_owner) || made_here(link, &file);
        // Read only where `steps` looks at it: a kept object of its kind, not resized.
        let resized = match (&obj.kind, kind) {
            (ObjectKind::Shm { size }, EntryKind::File(live)) => live != *size,
            _ => false,
        };
        let attrs_differ = made_here
            && before.and_then(|b| identity_change(b, obj)).is_none()
            && kind.matches(&obj.kind)
            && !resized
            && attrs_differ(link, obj, &st, owners)?;
        entries.push(Some(Entry {
            kind,
            made_here,
            attrs_differ,
        }));
    }
    Ok(entries)
}

/// Opens the object `obj` of `link` without any open(2) side effect (`O_PATH`) and
/// checks it is still of its kind.
fn open_object(link: BorrowedFd<'_>, obj: &ObjectPlan) -> nix::Result<OwnedFd> {
    let fd = open_path_at(link, obj.file_name().as_str())?;
    if !entry_kind(&fstat(fd.as_fd())?).matches(&obj.kind) {
        return Err(Errno::EEXIST);
    }
    Ok(fd)
}

/// Gives the object the plan's mode and, when `owners.apply`, owner and ACL
/// ([`Ownership`]), through a descriptor (a FIFO is never opened for reading or
/// writing). The order never widens access on the way: an object changing owner, or
/// losing its ACL, loses every permission first; an ACL to add is written before the
/// mode.
pub(crate) fn set_attrs(link: BorrowedFd<'_>, obj: &ObjectPlan, owners: Owners) -> nix::Result<()> {
    let want = Ownership::of(obj, owners.guarded);
    let fd = open_object(link, obj)?;
    let st = fstat(fd.as_fd())?;
    if owners.apply && (st.st_uid != want.uid || st.st_gid != want.gid) {
        // Its owner may rewrite its mode and ACL until it is no longer the owner: every
        // permission is taken first, then the ownership, and the ACL is read after.
        chmod_object(fd.as_fd(), 0)?;
        fchownat(
            fd.as_fd(),
            "",
            Some(Uid::from_raw(want.uid)),
            Some(Gid::from_raw(want.gid)),
            AtFlags::AT_EMPTY_PATH,
        )?;
    }
    let acl = if owners.apply {
        Some(read_acl(fd.as_fd())?).filter(|have| *have != want.acl)
    } else {
        None
    };
    match (&want.acl, &acl) {
        (Some(_), Some(_)) => write_acl(fd.as_fd(), want.acl.as_deref())?,
        // An ACL to drop: no permission meanwhile, so neither its entries (under the
        // new mode's mask) nor its mask (as the group bits) grant anything.
        (None, Some(_)) => {
            chmod_object(fd.as_fd(), 0)?;
            write_acl(fd.as_fd(), None)?;
        }
        _ => {}
    }
    // Stat again after an ACL was written: it set the permission bits.
    if fstat(fd.as_fd())?.st_mode & 0o7777 != want.mode {
        chmod_object(fd.as_fd(), want.mode)?;
    }
    Ok(())
}

/// chmod(2) of the descriptor's magic link: exactly the object opened, and O_PATH
/// descriptors are not taken by fchmod(2) on every kernel.
fn chmod_object(fd: BorrowedFd<'_>, mode: u32) -> nix::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))
}

/// Opens a region for growing: read-write, never truncated, checked to be a regular file.
pub(crate) fn open_region(link: BorrowedFd<'_>, obj: &ObjectPlan) -> nix::Result<OwnedFd> {
    let fd = openat(
        link,
        obj.file_name().as_str(),
        OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    if file_type(&fstat(fd.as_fd())?) != SFlag::S_IFREG {
        return Err(Errno::EEXIST);
    }
    Ok(fd)
}

/// Removes the entry `name` of `link`: first a pin ipclink 0.1 made (a bind mount onto
/// itself, on which removal fails with EBUSY), then the file; a directory (members
/// write in a socket channel's) is first renamed into the link's `private` directory,
/// so the name is free at once and no member can reach the tree by path while it is
/// removed.
/// Members that hold it keep their descriptors and mappings. Gone already is fine.
pub(crate) fn remove_entry(
    link: BorrowedFd<'_>,
    private: BorrowedFd<'_>,
    name: &str,
) -> Result<(), RemoveError> {
    let fd = match open_path_at(link, name) {
        Err(Errno::ENOENT) => return Ok(()),
        Err(errno) => return Err(RemoveError::Sys { op: "open", errno }),
        Ok(fd) => fd,
    };
    unpin_if_pinned(link, fd.as_fd(), name)?;
    // A hard link a member keeps to it must not carry ipclink's mark back in.
    crate::store::ownership::unmark(fd.as_fd()).map_err(|errno| RemoveError::Sys {
        op: "remove mark",
        errno,
    })?;
    let is_dir =
        file_type(&fstat(fd.as_fd()).map_err(|errno| RemoveError::Sys { op: "stat", errno })?)
            == SFlag::S_IFDIR;
    drop(fd);
    if is_dir {
        let aside = format!("{TMP_PREFIX}removed-{name}");
        crate::fs::rename_aside(private, aside.as_str()).map_err(|errno| RemoveError::Sys {
            op: "rename aside",
            errno,
        })?;
        match renameat2(
            link,
            name,
            private,
            aside.as_str(),
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {}
            Err(Errno::ENOENT) => return Ok(()),
            Err(errno) => {
                return Err(RemoveError::Sys {
                    op: "rename aside",
                    errno,
                });
            }
        }
        // Past the budget (a member keeps adding entries through a descriptor it holds)
        // the rest stays aside, out of every member's path; the next apply goes on.
        match remove_tree_at(private, aside.as_str()) {
            Ok(()) => Ok(()),
            Err(RemoveError::Budget(_)) => crate::fs::rename_aside(private, aside.as_str())
                .map_err(|errno| RemoveError::Sys {
                    op: "rename aside",
                    errno,
                }),
            Err(e) => Err(e),
        }
    } else {
        match unlinkat(link, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(errno) => Err(RemoveError::Sys {
                op: "unlink",
                errno,
            }),
        }
    }
}

/// Detaches the pin of the entry `name` of `link` (held by `fd`), if it has one: a bind
/// mount onto itself that ipclink 0.1 made for each declared object of a link
/// members may write to. Ownership protects those objects now ([`crate::store::ownership`]).
fn unpin_if_pinned(
    link: BorrowedFd<'_>,
    fd: BorrowedFd<'_>,
    name: &str,
) -> Result<(), RemoveError> {
    let mount = |fd| mount_id(fd).map_err(|e| RemoveError::io("read fdinfo", &e));
    if mount(fd)? != mount(link)? {
        let dev = fstat(link)
            .map_err(|errno| RemoveError::Sys { op: "stat", errno })?
            .st_dev;
        unpin(dev, name)?;
    }
    Ok(())
}

/// Detaches the pins ipclink 0.1 made of the objects `objects` of `link` (a link made
/// then and still mounted is guarded by ownership once applied again). In a link
/// members may create in (`guarded`), an object still owned by a member (a pending
/// change kept its live form) keeps its pin: only root's ownership guards its name.
pub(crate) fn unpin_objects(
    link: BorrowedFd<'_>,
    objects: &[ObjectPlan],
    guarded: bool,
) -> Result<(), (String, RemoveError)> {
    for obj in objects {
        let name = obj.file_name();
        match open_path_at(link, name.as_str()) {
            Err(Errno::ENOENT) => {}
            Err(errno) => return Err((name, RemoveError::Sys { op: "open", errno })),
            Ok(fd) => {
                let owner = match fstat(fd.as_fd()) {
                    Ok(st) => st.st_uid,
                    Err(errno) => return Err((name, RemoveError::Sys { op: "stat", errno })),
                };
                if !guarded || owner == 0 {
                    unpin_if_pinned(link, fd.as_fd(), &name).map_err(|e| (name.clone(), e))?;
                }
            }
        }
    }
    Ok(())
}

/// Detaches every mount of this mount namespace whose root is the entry `name` of the
/// link's filesystem `dev`: its pin, and the pin's copy under each publication made
/// while publications bound the link recursively. A mount point in this namespace
/// cannot be removed (EBUSY); those of member pods' namespaces go with the removal.
fn unpin(dev: u64, name: &str) -> Result<(), RemoveError> {
    let want_dev = format!(
        "{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    let want_root = format!("/{name}");
    // Copies of a copy stack up; each round detaches the topmost mount at each point.
    for _ in 0..16 {
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| RemoveError::io("read mountinfo", &e))?;
        let points: Vec<String> = info
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(2) == Some(&want_dev.as_str()) && f.get(3) == Some(&want_root.as_str()))
                    .then(|| unescape_mountinfo(f.get(4).copied().unwrap_or_default()))
            })
            .collect();
        if points.is_empty() {
            return Ok(());
        }
        for p in points.iter().rev() {
            match umount2(p.as_str(), MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => {}
                Err(errno) => return Err(RemoveError::Sys { op: "unpin", errno }),
            }
        }
    }
    Err(RemoveError::StillMounted(name.to_owned()))
}

/// A test hook standing in for `kill -9` in the middle of a live change
/// ([`crate::fault`]: `kill-after-steps=N`).
pub(crate) fn killed_after(done: usize) {
    if crate::fault::is(crate::fault::Fault::KillAfterSteps(done)) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// The id of the mount a descriptor is on (`mnt_id` of `/proc/self/fdinfo`).
pub(crate) fn mount_id(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no mnt_id in fdinfo"))
}
