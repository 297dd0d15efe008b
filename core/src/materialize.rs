//! Safe materialization of a [`LinkPlan`] under a base directory this process owns.
//!
//! Every path step is one validated DNS label opened with `O_NOFOLLOW` relative to a
//! descriptor; objects are made in the link's private directory (`.ipclink`, this
//! process's own, 0700), given owner, mode and ACL through their descriptor, then
//! renamed into place with `RENAME_NOREPLACE` (or exchanged with an entry a member made
//! at the name), so a member never sees a half-made object. A live link changes by the
//! rule of [`crate::live`].

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, OFlag, RenameFlags, fallocate, openat, renameat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, fchmod, mkdirat, mknodat};
use nix::sys::statfs::{TMPFS_MAGIC, fstatfs};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

use crate::fs::{
    PRIVATE_DIR, RemoveError, dir_is_empty, empty_dir, is_mount_point, open_dir_at, remove_tree_at,
};
use crate::live::{self, Step};
use crate::ownership::{Ownership, write_acl};
use crate::quantity::format_bytes;
pub use crate::record::Record;
use crate::resize::{Resize, tmpfs_size};
use crate::spec::SemaphoreAbi;
use crate::validate::{LinkPlan, ObjectKind, ObjectPlan, Problem, Problems, SEM_BYTES};

/// Where a link's objects live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageMode {
    /// One tmpfs per link with `size=`, `nr_inodes=`, `nosuid,nodev,noexec` (needs root).
    Tmpfs,
    /// A plain directory: sizes are not enforced (for unprivileged local use).
    PlainDir,
}

impl StorageMode {
    /// Tmpfs as root, a plain directory otherwise.
    pub fn default_for_user() -> Self {
        if Uid::effective().is_root() {
            StorageMode::Tmpfs
        } else {
            StorageMode::PlainDir
        }
    }
}

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

/// How a new shared-memory region gets its pages. A tmpfs page is charged to the memory
/// cgroup of the task that first touches it, so where this runs decides whose memory
/// limit the region counts against.
pub trait Preallocate {
    /// Allocates every page of `file` (a new, empty region) up to `size` bytes.
    fn preallocate(&self, file: BorrowedFd<'_>, size: u64) -> Result<(), PreallocateError>;
}

/// Allocates in this process: the pages are charged to its own memory cgroup.
#[derive(Debug, Clone, Copy, Default)]
pub struct InProcess;

impl Preallocate for InProcess {
    fn preallocate(&self, file: BorrowedFd<'_>, size: u64) -> Result<(), PreallocateError> {
        fallocate(file, FallocateFlags::empty(), 0, size as i64).map_err(PreallocateError::Sys)
    }
}

/// What a run of [`Store::materialize`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Objects created now, by file name.
    pub created: Vec<String>,
    /// Objects that already matched the plan and were left as they are.
    pub kept: Vec<String>,
    /// Objects changed live: mode, owner, a region grown, or (with no member) replaced.
    pub changed: Vec<String>,
    /// Objects removed because the plan no longer has them.
    pub removed: Vec<String>,
    /// Whether the tmpfs was remounted with another size now.
    pub resized: bool,
    /// Whether a tmpfs was mounted now.
    pub mounted: bool,
    /// Changes that wait until no member holds the link, each naming its field.
    pub pending: Vec<Problem>,
    /// The link as it serves now (the plan, with pending changes in their live form);
    /// this is what the link's record holds.
    pub applied: LinkPlan,
}

impl Outcome {
    /// Logs what a materialization of `plan` changed (at info) and what waits (at warn).
    pub fn log(&self, plan: &LinkPlan) {
        let (namespace, link) = (plan.namespace.as_str(), plan.name.as_str());
        if !self.changed.is_empty() || !self.removed.is_empty() || self.resized {
            tracing::info!(
                namespace,
                link,
                created = ?self.created,
                changed = ?self.changed,
                removed = ?self.removed,
                resized = self.resized,
                "live link changed to its spec"
            );
        }
        for p in &self.pending {
            tracing::warn!(namespace, link, field = %p.field, "change pending: {}", p.message);
        }
    }
}

/// A preallocation's failure as the error of the region at `at`.
fn preallocating(
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

/// The base directory under which links are materialized as `<namespace>/<name>/`.
#[derive(Debug)]
pub struct Store {
    pub(crate) base: OwnedFd,
    pub(crate) base_path: PathBuf,
    mode: StorageMode,
    apply_owner: bool,
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
fn removing(e: RemoveError, lp: impl Fn() -> String) -> MaterializeError {
    match e {
        RemoveError::Sys { op, errno } => MaterializeError::Sys {
            path: lp(),
            op,
            errno,
        },
        RemoveError::OtherMount(_) | RemoveError::Budget(_) => MaterializeError::Refused {
            path: lp(),
            message: e.to_string(),
        },
    }
}

/// Where a made object goes: to a free name, or over a member's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    New,
    Over,
}

/// An error of setting an ACL, named when the filesystem has no ACLs.
fn acl_support(e: MaterializeError) -> MaterializeError {
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
    /// Opens (creating if needed, mode 0755) the base directory. The base path comes from
    /// the operator of the machine, not from a spec.
    pub fn open(base: &Path, mode: StorageMode) -> Result<Self, MaterializeError> {
        let display = || base.display().to_string();
        std::fs::create_dir_all(base).map_err(|e| MaterializeError::Sys {
            path: display(),
            op: "create base directory",
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })?;
        let base_fd = sys(
            nix::fcntl::open(
                base,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            ),
            display,
            "open base directory",
        )?;
        Ok(Store {
            base: base_fd,
            base_path: base.to_path_buf(),
            mode,
            apply_owner: Uid::effective().is_root(),
        })
    }

    /// The storage mode in use.
    pub fn mode(&self) -> StorageMode {
        self.mode
    }

    /// Whether owners from the spec are applied (only root can give files away).
    pub fn applies_owner(&self) -> bool {
        self.apply_owner
    }

    /// The base directory's descriptor.
    pub fn base_fd(&self) -> BorrowedFd<'_> {
        self.base.as_fd()
    }

    /// Display path of a link directory (for messages and for users; never opened by path).
    pub fn link_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.base_path.join(namespace).join(name)
    }

    /// Opens the namespace directory of a link.
    pub fn open_namespace(&self, namespace: &str) -> nix::Result<OwnedFd> {
        open_dir_at(self.base.as_fd(), namespace)
    }

    /// Opens the root directory of a materialized link (the tmpfs root when mounted).
    pub fn open_link(&self, namespace: &str, name: &str) -> nix::Result<OwnedFd> {
        let ns = self.open_namespace(namespace)?;
        open_dir_at(ns.as_fd(), name)
    }

    /// Makes the link serve `plan` (see [`Store::apply`]) as a link some member may hold:
    /// changes that would break holders stay pending. Regions are preallocated in this
    /// process.
    pub fn materialize(&self, plan: &LinkPlan) -> Result<Outcome, MaterializeError> {
        self.apply(plan, &InProcess, false)
    }

    /// Makes the link serve `plan` and records what it serves. A new link is made from
    /// nothing. On a live one, what is missing is made, mode and owner are set through
    /// descriptors, regions grow (never shrink), objects the record has and the plan no
    /// longer has are removed and the tmpfs is remounted with the new size when its use
    /// fits; none of that disturbs a member holding an object. What would ([`crate::live`])
    /// is left in its live form and reported as pending, unless `exclusive` (no member
    /// holds the link): then the object is replaced. New regions' pages are allocated by
    /// `alloc` (for example charged to the first member's memory cgroup).
    pub fn apply(
        &self,
        plan: &LinkPlan,
        alloc: &dyn Preallocate,
        exclusive: bool,
    ) -> Result<Outcome, MaterializeError> {
        let link_path = self.link_path(&plan.namespace, &plan.name);
        let lp = || link_path.display().to_string();
        let mut outcome = Outcome::default();

        let ns_fd = self.ensure_dir(self.base.as_fd(), &plan.namespace, || {
            self.base_path.join(&plan.namespace).display().to_string()
        })?;
        let mut link_fd = self.ensure_dir(ns_fd.as_fd(), &plan.name, lp)?;
        if self.needs_mount(ns_fd.as_fd(), link_fd.as_fd(), lp)? {
            self.mount_tmpfs(link_fd.as_fd(), plan, lp)?;
            link_fd = sys(open_dir_at(ns_fd.as_fd(), plan.name.as_str()), lp, "open")?;
            outcome.mounted = true;
        }
        let private = self.private_dir(link_fd.as_fd(), lp)?;
        // What a crash or an earlier removal left there; a later apply tries again.
        if let Err(e) = empty_dir(private.as_fd()) {
            tracing::warn!(link = %lp(), error = %e, "cannot empty the link's private directory");
        }
        let old = self.read_record(ns_fd.as_fd(), &plan.name).map(|r| r.plan);
        let d = sys(
            live::diff(
                link_fd.as_fd(),
                plan,
                old.as_ref(),
                self.apply_owner,
                exclusive,
            ),
            lp,
            "inspect",
        )?;
        let owners = live::Owners::of(plan, self.apply_owner);
        // A larger tmpfs before objects grow, a smaller one after they shrank or went.
        let first = self.resize(link_fd.as_fd(), plan, true, lp)?;
        // A root members may write to opens only once the objects are guarded; one that
        // closes does so before they are given back to their owners.
        if !plan.root.allows_create() {
            self.apply_root(link_fd.as_fd(), plan, lp)?;
        }
        let made = |obj: &ObjectPlan, place: Place| {
            self.create(
                link_fd.as_fd(),
                private.as_fd(),
                obj,
                owners,
                alloc,
                place,
                lp,
            )
        };
        for (done, step) in d.steps.iter().enumerate() {
            let file = step.file_name();
            let at = || format!("{}/{file}", lp());
            let remove = |name: &str| {
                live::remove_entry(link_fd.as_fd(), private.as_fd(), name).map_err(|message| {
                    MaterializeError::Refused {
                        path: at(),
                        message,
                    }
                })
            };
            match step {
                Step::Create(obj) => {
                    made(obj, Place::New)?;
                    outcome.created.push(file);
                }
                Step::Supplant(obj) => {
                    made(obj, Place::Over)?;
                    tracing::warn!(
                        link = %lp(),
                        object = %crate::report::printable(&file),
                        "a member had made an object at the name of a declared one: replaced it (its holders keep theirs)"
                    );
                    outcome.changed.push(file);
                }
                Step::Attrs(obj) | Step::Grow(obj) => {
                    if let (Step::Grow(_), ObjectKind::Shm { size }) = (step, obj.kind) {
                        let fd = sys(live::open_region(link_fd.as_fd(), obj), at, "open")?;
                        preallocating(alloc.preallocate(fd.as_fd(), size), at)?;
                    }
                    sys(
                        live::set_attrs(link_fd.as_fd(), obj, owners),
                        at,
                        "chmod/chown/acl",
                    )
                    .map_err(acl_support)?;
                    outcome.changed.push(file);
                }
                Step::Replace { obj, old } => {
                    for name in std::iter::once(&file).chain(old) {
                        remove(name)?;
                    }
                    made(obj, Place::New)?;
                    outcome.changed.push(file);
                }
                Step::Remove(_) => {
                    remove(&file)?;
                    outcome.removed.push(file);
                }
            }
            live::killed_after(done + 1);
        }
        let size = match first {
            Some(done) => done,
            None => self
                .resize(link_fd.as_fd(), plan, false, lp)?
                .unwrap_or(Resize::Same),
        };
        if plan.root.allows_create() {
            self.apply_root(link_fd.as_fd(), plan, lp)?;
        }
        // A link made by ipclink 0.1 has a pin (a mount) per object; ownership guards
        // them here.
        live::unpin_objects(link_fd.as_fd(), &d.objects, plan.root.allows_create()).map_err(
            |message| MaterializeError::Refused {
                path: lp(),
                message,
            },
        )?;
        outcome.kept = d.kept;
        outcome.pending = d.pending;
        let mut applied = LinkPlan {
            objects: d.objects,
            ..plan.clone()
        };
        match size {
            Resize::Done => outcome.resized = true,
            Resize::Same => {}
            Resize::Waits {
                size,
                inodes,
                problem,
            } => {
                applied.size_limit = size;
                applied.nr_inodes = inodes;
                outcome.pending.push(problem);
            }
        }
        self.write_record(&applied, &outcome.pending, &plan.digest())?;
        outcome.applied = applied;
        Ok(outcome)
    }

    /// Gives the link's root the mode and owner of `plan.root` (a live change of
    /// `allowCreate` lands here); the objects in it are not touched.
    fn apply_root(
        &self,
        link: BorrowedFd<'_>,
        plan: &LinkPlan,
        lp: impl Fn() -> String + Copy,
    ) -> Result<(), MaterializeError> {
        let st = sys(nix::sys::stat::fstat(link), lp, "stat")?;
        let root = plan.root;
        if self.apply_owner && (st.st_uid != root.uid || st.st_gid != root.gid) {
            sys(
                fchown(
                    link,
                    Some(Uid::from_raw(root.uid)),
                    Some(Gid::from_raw(root.gid)),
                ),
                lp,
                "chown link root",
            )?;
        }
        if st.st_mode & 0o7777 != root.mode {
            sys(
                fchmod(link, Mode::from_bits_truncate(root.mode)),
                lp,
                "chmod link root",
            )?;
        }
        Ok(())
    }

    /// Checks an existing link against `plan` without changing anything: Ok when the link
    /// does not exist yet or `plan` only adds objects to it. Anything else a live link
    /// would need (an object's mode, owner or size, a removal, a pending change, another
    /// tmpfs size) is a conflict naming its field: what `--strict` refuses.
    pub fn check(&self, plan: &LinkPlan) -> Result<(), MaterializeError> {
        let link_path = self.link_path(&plan.namespace, &plan.name);
        let lp = || link_path.display().to_string();
        let link = match self.open_link(&plan.namespace, &plan.name) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(MaterializeError::Refused {
                    path: lp(),
                    message: "exists and is not a directory (symlinks are never followed)".into(),
                });
            }
            Err(errno) => {
                return Err(MaterializeError::Sys {
                    path: lp(),
                    op: "open",
                    errno,
                });
            }
        };
        let ns = sys(self.open_namespace(&plan.namespace), lp, "open")?;
        let unmounted = self.needs_mount(ns.as_fd(), link.as_fd(), lp)?;
        let old = self.read_record(ns.as_fd(), &plan.name).map(|r| r.plan);
        let d = sys(
            live::diff(link.as_fd(), plan, old.as_ref(), self.apply_owner, false),
            lp,
            "inspect",
        )?;
        let mut conflicts = d.pending;
        for step in &d.steps {
            let (field, what) = match step {
                Step::Create(_) => continue,
                Step::Attrs(o) => (o.field.clone(), "mode or owner differ"),
                Step::Grow(o) => (format!("{}.size", o.field), "the region is smaller"),
                Step::Replace { obj, .. } => (obj.field.clone(), "it would be replaced"),
                Step::Supplant(o) => (
                    o.field.clone(),
                    "a member made an object at its name; it would be replaced",
                ),
                Step::Remove(o) => (o.field.clone(), "the spec no longer has it"),
            };
            conflicts.push(Problem::new(
                field,
                format!("{} on the live link: {what}", step.file_name()),
            ));
        }
        if !unmounted && self.mode == StorageMode::Tmpfs {
            let (size, inodes) = sys(tmpfs_size(link.as_fd()), lp, "statvfs")?;
            if size != plan.size_limit {
                conflicts.push(Problem::new(
                    "spec.sizeLimit",
                    format!(
                        "the link is mounted with size {}, the spec wants {}",
                        format_bytes(size),
                        format_bytes(plan.size_limit)
                    ),
                ));
            }
            // More inodes are given live; fewer than members may use are not.
            if inodes > plan.nr_inodes {
                conflicts.push(Problem::new(
                    "spec.channels",
                    format!(
                        "the link is mounted with nr_inodes={inodes}, the spec's channels give it {}",
                        plan.nr_inodes
                    ),
                ));
            }
        }
        if conflicts.is_empty() {
            Ok(())
        } else {
            Err(MaterializeError::Conflicts(Problems(conflicts)))
        }
    }

    fn ensure_dir(
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
    fn needs_mount(
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

    fn mount_tmpfs(
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
    fn private_dir(
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

    /// Makes `obj` in `private` with its owner, mode and ACL ([`Ownership`]), then
    /// renames it into `link`: never over an existing name ([`Place::New`]), or in
    /// exchange for the entry a member made there ([`Place::Over`]), which is removed
    /// then (its holders keep it).
    #[allow(clippy::too_many_arguments)]
    fn create(
        &self,
        link: BorrowedFd<'_>,
        private: BorrowedFd<'_>,
        obj: &ObjectPlan,
        owners: live::Owners,
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
                crate::ownership::mark_made(fd.as_fd(), &file),
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

    /// Removes a link: unmounts its tmpfs (lazily, so members that still hold descriptors
    /// keep working) or removes its plain directory tree without following any symlink.
    /// Removing a link that does not exist is not an error.
    pub fn teardown(&self, namespace: &str, name: &str) -> Result<(), MaterializeError> {
        let lp = || self.link_path(namespace, name).display().to_string();
        let ns_fd = match self.open_namespace(namespace) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(()),
            Err(errno) => {
                return Err(MaterializeError::Sys {
                    path: lp(),
                    op: "open",
                    errno,
                });
            }
        };
        match open_dir_at(ns_fd.as_fd(), name) {
            Err(Errno::ENOENT) => {}
            Err(errno) => {
                return Err(MaterializeError::Sys {
                    path: lp(),
                    op: "open",
                    errno,
                });
            }
            Ok(link) => {
                if sys(is_mount_point(ns_fd.as_fd(), link.as_fd()), lp, "stat")? {
                    let fs = sys(fstatfs(link.as_fd()), lp, "statfs")?;
                    if fs.filesystem_type() != TMPFS_MAGIC {
                        return Err(MaterializeError::Refused {
                            path: lp(),
                            message:
                                "is a mount point that is not a tmpfs; not ipclink's, left alone"
                                    .into(),
                        });
                    }
                    let target = format!("/proc/self/fd/{}", link.as_raw_fd());
                    sys(
                        umount2(target.as_str(), MntFlags::MNT_DETACH),
                        lp,
                        "unmount",
                    )?;
                }
                drop(link);
                remove_tree_at(ns_fd.as_fd(), name).map_err(|e| removing(e, lp))?;
            }
        }
        let record = format!(".{name}.json");
        match unlinkat(ns_fd.as_fd(), record.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(errno) => {
                return Err(MaterializeError::Sys {
                    path: lp(),
                    op: "remove record",
                    errno,
                });
            }
        }
        // The namespace directory goes when its last link goes.
        drop(ns_fd);
        match unlinkat(self.base.as_fd(), namespace, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOTEMPTY | Errno::EEXIST | Errno::ENOENT) => Ok(()),
            Err(errno) => Err(MaterializeError::Sys {
                path: lp(),
                op: "rmdir",
                errno,
            }),
        }
    }
}
