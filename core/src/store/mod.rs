//! Safe materialization of a [`LinkPlan`] under a base directory this process owns.
//!
//! Every path step is one validated DNS label opened with `O_NOFOLLOW` relative to a
//! descriptor; objects are made in the link's private directory (`.ipclink`, this
//! process's own, 0700), given owner, mode and ACL through their descriptor, then
//! renamed into place with `RENAME_NOREPLACE` (or exchanged with an entry a member made
//! at the name), so a member never sees a half-made object. A live link changes by the
//! rule of [`crate::store::live`].

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, OFlag, fallocate};
use nix::mount::{MntFlags, umount2};
use nix::sys::stat::{Mode, fchmod};
use nix::sys::statfs::{TMPFS_MAGIC, fstatfs};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

use crate::fs::{empty_dir, is_mount_point, open_dir_at, remove_tree_at};
mod create;
mod error;
pub mod live;
pub(crate) mod ownership;
mod record;
mod resize;

use create::Place;
pub use create::semaphore_bytes;
pub(crate) use error::sys;
pub use error::{MaterializeError, PreallocateError};
use error::{acl_support, preallocating, removing};
use live::Step;
pub use record::Record;
use resize::{Resize, tmpfs_size};

use crate::model::quantity::format_bytes;
use crate::model::validate::{LinkPlan, ObjectKind, ObjectPlan, Problem, Problems};

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

/// The base directory under which links are materialized as `<namespace>/<name>/`.
#[derive(Debug)]
pub struct Store {
    pub(crate) base: OwnedFd,
    pub(crate) base_path: PathBuf,
    mode: StorageMode,
    apply_owner: bool,
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

    /// The base directory the store was opened on.
    pub fn base_path(&self) -> &Path {
        &self.base_path
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
    /// fits; none of that disturbs a member holding an object. What would ([`crate::store::live`])
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
                live::remove_entry(link_fd.as_fd(), private.as_fd(), name)
                    .map_err(|e| removing(e, at))
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
        live::unpin_objects(link_fd.as_fd(), &d.objects, plan.root.allows_create())
            .map_err(|(name, e)| removing(e, || format!("{}/{name}", lp())))?;
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

    /// Brings a link back to `plan` as if made now: everything in its directory goes
    /// (regions members grew or filled, semaphores mid-protocol, what members made) and
    /// the declared objects are made afresh. The directory itself stays, and so does its
    /// mount (a tmpfs, or the Compose volume the link is made in). Only for a link no
    /// process holds: a holder keeps the old objects, which nobody else sees any more.
    /// A link that does not exist is made.
    pub fn reset(&self, plan: &LinkPlan) -> Result<Outcome, MaterializeError> {
        let link_path = self.link_path(&plan.namespace, &plan.name);
        let lp = || link_path.display().to_string();
        match self.open_link(&plan.namespace, &plan.name) {
            Err(Errno::ENOENT) => {}
            opened => {
                let link = sys(opened, lp, "open")?;
                empty_dir(link.as_fd()).map_err(|e| removing(e, lp))?;
                let ns = sys(self.open_namespace(&plan.namespace), lp, "open")?;
                remove_record(ns.as_fd(), &plan.name, lp)?;
            }
        }
        self.apply(plan, &InProcess, true)
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
        remove_record(ns_fd.as_fd(), name, lp)?;
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

/// Removes the record of link `name` from its namespace directory `ns`; none is fine.
fn remove_record(
    ns: BorrowedFd<'_>,
    name: &str,
    lp: impl Fn() -> String,
) -> Result<(), MaterializeError> {
    match unlinkat(
        ns,
        format!(".{name}.json").as_str(),
        UnlinkatFlags::NoRemoveDir,
    ) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(MaterializeError::Sys {
            path: lp(),
            op: "remove record",
            errno,
        }),
    }
}
