//! The one rule for editing a live link, used by the node plugin, the sidecar and the
//! volume plugin alike. The difference between what is on disk (and the link's record,
//! the plan it was last given) and a new plan is split into
//!
//! - steps applied live, each atomic and harmless to members holding the objects:
//!   creating a new object, `fchmod`/`fchown` of one, growing a region (`fallocate`,
//!   never a truncate), removing one (holders keep their descriptors), and, in
//!   [`crate::materialize`], a tmpfs remount with another `size=`/`nr_inodes=`;
//! - pending changes, which would break holders: a region made smaller, a channel of
//!   another kind, a semaphore with another ABI or initial value, a name taken by an
//!   object members made. The link keeps serving the live form; the change is made by
//!   the first materialization with no member (`exclusive`), by replacing the object.
//!
//! Every step is idempotent: a run killed between two steps is finished by the next.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, unlinkat};

use crate::fs::{remove_tree_at, unescape_mountinfo};
use crate::materialize::{MaterializeError, sys};
use crate::quantity::format_bytes;
use crate::validate::{LinkPlan, ObjectKind, ObjectPlan, Problem, SEM_BYTES};

/// What one object of a plan (or of the record, for a removed one) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step<'p> {
    /// It does not exist: make it.
    Create(&'p ObjectPlan),
    /// Only its mode or owner differ.
    Attrs(&'p ObjectPlan),
    /// A region to grow to the plan's size (then given mode and owner).
    Grow(&'p ObjectPlan),
    /// A pending change made now that no member holds the link: whatever is at the
    /// object's name (and at `old`, the record's file name of it) goes, then it is made.
    Replace {
        /// The object as planned.
        obj: &'p ObjectPlan,
        /// The file name the record had for it, when it differs (another ABI).
        old: Option<String>,
    },
    /// An object the record has and the plan no longer has.
    Remove(ObjectPlan),
}

impl Step<'_> {
    /// The file name the step is about.
    pub(crate) fn file_name(&self) -> String {
        match self {
            Step::Create(o) | Step::Attrs(o) | Step::Grow(o) | Step::Replace { obj: o, .. } => {
                o.file_name()
            }
            Step::Remove(o) => o.file_name(),
        }
    }
}

/// What an existing link needs to serve a plan.
#[derive(Debug, Default)]
pub(crate) struct Diff<'p> {
    /// What to do, in plan order, removals last.
    pub steps: Vec<Step<'p>>,
    /// Objects that match already.
    pub kept: Vec<String>,
    /// Changes that wait for the link to have no member, each naming its field.
    pub pending: Vec<Problem>,
    /// The objects as the link serves them once the steps are done: the plan's, with
    /// every pending one in its live form (or left out when it has none).
    pub objects: Vec<ObjectPlan>,
}

/// A channel and a semaphore may share a name; their files never do.
fn same_object(a: &ObjectPlan, b: &ObjectPlan) -> bool {
    a.name == b.name
        && matches!(a.kind, ObjectKind::Semaphore { .. })
            == matches!(b.kind, ObjectKind::Semaphore { .. })
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Whether the entry on disk is of the object's type.
fn type_matches(kind: &ObjectKind, st: &FileStat) -> bool {
    let t = file_type(st);
    match kind {
        ObjectKind::Shm { .. } => t == SFlag::S_IFREG,
        ObjectKind::Semaphore { .. } => t == SFlag::S_IFREG && st.st_size as u64 == SEM_BYTES,
        ObjectKind::Fifo => t == SFlag::S_IFIFO,
        ObjectKind::Socket => t == SFlag::S_IFDIR,
    }
}

/// Whether mode or owner of the entry differ from the object's.
fn attrs_differ(obj: &ObjectPlan, st: &FileStat, apply_owner: bool) -> bool {
    st.st_mode & 0o7777 != obj.mode
        || (apply_owner && (st.st_uid != obj.uid || st.st_gid != obj.gid))
}

fn kind_name(kind: &ObjectKind) -> String {
    match kind {
        ObjectKind::Shm { size } => format!("shm of {}", format_bytes(*size)),
        ObjectKind::Semaphore { initial, abi } => {
            format!("semaphore (abi {}, initial {initial})", abi.as_str())
        }
        other => other.as_str().to_owned(),
    }
}

/// Why the record's object cannot become the planned one under holders, if it cannot.
fn identity_change(old: &ObjectPlan, new: &ObjectPlan) -> Option<(String, String)> {
    let field = match (&old.kind, &new.kind) {
        (ObjectKind::Shm { .. }, ObjectKind::Shm { .. })
        | (ObjectKind::Fifo, ObjectKind::Fifo)
        | (ObjectKind::Socket, ObjectKind::Socket) => return None,
        (
            ObjectKind::Semaphore { initial: a, abi: x },
            ObjectKind::Semaphore { initial: b, abi: y },
        ) => {
            if x != y {
                format!("{}.abi", new.field)
            } else if a != b {
                format!("{}.initial", new.field)
            } else {
                return None;
            }
        }
        _ => format!("{}.kind", new.field),
    };
    Some((
        field,
        format!(
            "{} is a live {}; the spec wants a {}",
            new.name,
            kind_name(&old.kind),
            kind_name(&new.kind)
        ),
    ))
}

const WAITS: &str =
    "it cannot change under running members and applies when the last member has left the link";

/// Compares the link `link` (its record's plan `old`, when it has one) with `plan`.
/// `exclusive`: no member holds the link, so pending changes become replacements.
pub(crate) fn diff<'p>(
    link: BorrowedFd<'_>,
    plan: &'p LinkPlan,
    old: Option<&LinkPlan>,
    apply_owner: bool,
    exclusive: bool,
) -> nix::Result<Diff<'p>> {
    let mut d = Diff::default();
    let was = |obj: &ObjectPlan| old.and_then(|o| o.objects.iter().find(|p| same_object(p, obj)));
    for obj in &plan.objects {
        let file = obj.file_name();
        let before = was(obj);
        let stat = match fstatat(link, file.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(e),
        };
        // Why this object must wait, if it must: (field, message, its live form).
        let mut wait: Option<(String, String, Option<ObjectPlan>)> = None;
        if let Some((field, message)) = before.and_then(|b| identity_change(b, obj)) {
            wait = Some((field, message, before.cloned()));
        } else if let Some(st) = &stat {
            if !type_matches(&obj.kind, st) {
                let message = format!(
                    "{file} exists as {} that {}; the spec wants a {}",
                    describe_type(st),
                    if before.is_some() {
                        "ipclink made"
                    } else {
                        "a member made"
                    },
                    kind_name(&obj.kind)
                );
                wait = Some((format!("{}.kind", obj.field), message, before.cloned()));
            } else if let ObjectKind::Shm { size } = obj.kind
                && (st.st_size as u64) > size
            {
                let live = st.st_size as u64;
                let message = format!(
                    "{} is a live region of {}; the spec wants {} and a region is never made smaller under its holders",
                    obj.name,
                    format_bytes(live),
                    format_bytes(size)
                );
                let mut was_obj = before.cloned().unwrap_or_else(|| obj.clone());
                was_obj.kind = ObjectKind::Shm { size: live };
                wait = Some((format!("{}.size", obj.field), message, Some(was_obj)));
            }
        }
        match (wait, stat) {
            (Some(_), _) if exclusive => {
                let old_name = before.map(ObjectPlan::file_name).filter(|n| *n != file);
                d.steps.push(Step::Replace { obj, old: old_name });
                d.objects.push(obj.clone());
            }
            (Some((field, message, live)), _) => {
                d.pending
                    .push(Problem::new(field, format!("{message}: {WAITS}")));
                d.objects.extend(live);
            }
            (None, None) => {
                d.steps.push(Step::Create(obj));
                d.objects.push(obj.clone());
            }
            (None, Some(st)) => {
                let grow =
                    matches!(obj.kind, ObjectKind::Shm { size } if (st.st_size as u64) < size);
                if grow {
                    d.steps.push(Step::Grow(obj));
                } else if attrs_differ(obj, &st, apply_owner) {
                    d.steps.push(Step::Attrs(obj));
                } else {
                    d.kept.push(file);
                }
                d.objects.push(obj.clone());
            }
        }
    }
    if let Some(old) = old {
        for gone in old
            .objects
            .iter()
            .filter(|o| !plan.objects.iter().any(|p| same_object(p, o)))
        {
            d.steps.push(Step::Remove(gone.clone()));
        }
    }
    Ok(d)
}

fn describe_type(st: &FileStat) -> &'static str {
    let t = file_type(st);
    if t == SFlag::S_IFREG {
        "a file"
    } else if t == SFlag::S_IFIFO {
        "a fifo"
    } else if t == SFlag::S_IFDIR {
        "a directory"
    } else if t == SFlag::S_IFLNK {
        "a symlink"
    } else {
        "a special file"
    }
}

/// Opens the object `obj` of `link` without any open(2) side effect (`O_PATH`) and
/// checks it is still of its kind.
fn open_object(link: BorrowedFd<'_>, obj: &ObjectPlan) -> nix::Result<OwnedFd> {
    let fd = openat(
        link,
        obj.file_name().as_str(),
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    if !type_matches(&obj.kind, &fstat(fd.as_fd())?) {
        return Err(Errno::EEXIST);
    }
    Ok(fd)
}

/// Gives the object the plan's mode and, with `apply_owner`, owner, through a
/// descriptor (a FIFO is never opened for reading or writing).
pub(crate) fn set_attrs(
    link: BorrowedFd<'_>,
    obj: &ObjectPlan,
    apply_owner: bool,
) -> nix::Result<()> {
    let fd = open_object(link, obj)?;
    let st = fstat(fd.as_fd())?;
    if apply_owner && (st.st_uid != obj.uid || st.st_gid != obj.gid) {
        fchownat(
            fd.as_fd(),
            "",
            Some(Uid::from_raw(obj.uid)),
            Some(Gid::from_raw(obj.gid)),
            AtFlags::AT_EMPTY_PATH,
        )?;
    }
    if st.st_mode & 0o7777 != obj.mode {
        // chmod(2) of the descriptor's magic link: exactly the object opened, and
        // O_PATH descriptors are not taken by fchmod(2) on every kernel.
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(obj.mode))
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    }
    Ok(())
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

/// Removes the entry `name` of `link`: its pin first (a bind mount onto itself, which
/// would make the removal fail with EBUSY), then the file or the directory tree.
/// Members that hold it keep their descriptors and mappings. Gone already is fine.
pub(crate) fn remove_entry(link: BorrowedFd<'_>, name: &str) -> Result<(), String> {
    let fd = match openat(
        link,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(format!("open: {e}")),
        Ok(fd) => fd,
    };
    let pinned = mount_id(fd.as_fd()).map_err(|e| e.to_string())?
        != mount_id(link).map_err(|e| e.to_string())?;
    if pinned {
        let dev = fstat(link).map_err(|e| format!("stat: {e}"))?.st_dev;
        unpin(dev, name)?;
    }
    let is_dir = file_type(&fstat(fd.as_fd()).map_err(|e| format!("stat: {e}"))?) == SFlag::S_IFDIR;
    drop(fd);
    if is_dir {
        remove_tree_at(link, name).map_err(|e| e.to_string())
    } else {
        match unlinkat(link, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(format!("unlink: {e}")),
        }
    }
}

/// Detaches every mount of this mount namespace whose root is the entry `name` of the
/// link's filesystem `dev`: its pin, and the pin's copy under each publication (a
/// publication binds the link recursively). A mount point in this namespace cannot be
/// removed (EBUSY); those of member pods' namespaces go with the removal.
fn unpin(dev: u64, name: &str) -> Result<(), String> {
    let want_dev = format!(
        "{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    let want_root = format!("/{name}");
    // Copies of a copy stack up; each round detaches the topmost mount at each point.
    for _ in 0..16 {
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("read mountinfo: {e}"))?;
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
                Err(e) => return Err(format!("unpin {p}: {e}")),
            }
        }
    }
    Err(format!("unpin {name}: still mounted after 16 rounds"))
}

/// A test hook standing in for `kill -9` in the middle of a live change: with
/// `IPCLINK_TEST_KILL_AFTER_STEPS=N` in its environment, the process kills itself
/// with SIGKILL once `N` steps of a change are done.
pub(crate) fn killed_after(done: usize) {
    if let Ok(v) = std::env::var("IPCLINK_TEST_KILL_AFTER_STEPS")
        && v.parse() == Ok(done)
    {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Pins a declared object in a link members may write to: a bind mount of the object onto
/// itself. The sticky root keeps members from removing one another's objects; a mount
/// point keeps everyone, the object's own owner included, from removing or replacing a
/// declared one (`unlink`, `rename` and `rmdir` of a mount point fail with EBUSY in
/// every mount namespace that sees the mount, and publications bind the link
/// recursively). Already pinned objects are left as they are.
pub(crate) fn pin(
    link: BorrowedFd<'_>,
    obj: &ObjectPlan,
    lp: impl Fn() -> String,
) -> Result<(), MaterializeError> {
    let file = obj.file_name();
    let at = || format!("{}/{file}", lp());
    // O_PATH: no open(2) side effects (a FIFO is not opened for reading or writing).
    let fd = sys(
        openat(
            link,
            file.as_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        at,
        "open",
    )?;
    let io = |op: &'static str| {
        let at = at();
        move |e: std::io::Error| MaterializeError::Sys {
            path: at,
            op,
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        }
    };
    if mount_id(fd.as_fd()).map_err(io("read fdinfo"))?
        != mount_id(link).map_err(io("read fdinfo"))?
    {
        return Ok(());
    }
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    sys(
        mount(
            Some(path.as_str()),
            path.as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ),
        at,
        "pin (bind onto itself)",
    )
}

/// The id of the mount a descriptor is on (`mnt_id` of `/proc/self/fdinfo`).
pub(crate) fn mount_id(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no mnt_id in fdinfo"))
}
