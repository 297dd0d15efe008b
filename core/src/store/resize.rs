//! A live link's tmpfs given another `size=` and `nr_inodes=` by a remount, which every
//! bind of it (each member's mount) sees at once; a smaller size waits while the link's
//! use does not fit it.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sys::statvfs::fstatvfs;

use crate::model::quantity::format_bytes;
use crate::model::validate::{LinkPlan, Problem};
use crate::store::{MaterializeError, StorageMode, Store, sys};

/// What a remount for a new size did.
#[derive(Debug)]
pub(crate) enum Resize {
    /// The size was right already.
    Same,
    /// Remounted now.
    Done,
    /// A smaller size that the link's use does not fit yet: the live size and inodes.
    Waits {
        size: u64,
        inodes: u64,
        problem: Problem,
    },
}

/// A tmpfs's `size=` in bytes and its `nr_inodes=`.
pub(crate) fn tmpfs_size(link: BorrowedFd<'_>) -> nix::Result<(u64, u64)> {
    let vfs = fstatvfs(link)?;
    Ok((vfs.blocks() * vfs.fragment_size(), vfs.files()))
}

impl Store {
    /// Gives the link's tmpfs the plan's `size=` and `nr_inodes=` by a remount, which
    /// every bind of it (each member's mount) sees at once. A smaller size waits while
    /// the link's use does not fit it. With `grow_only`, a shrink is not tried (`None`):
    /// the objects that free space go first.
    pub(crate) fn resize(
        &self,
        link: BorrowedFd<'_>,
        plan: &LinkPlan,
        grow_only: bool,
        lp: impl Fn() -> String + Copy,
    ) -> Result<Option<Resize>, MaterializeError> {
        if self.mode() != StorageMode::Tmpfs {
            return Ok(Some(Resize::Same));
        }
        let vfs = sys(fstatvfs(link), lp, "statvfs")?;
        let frag = vfs.fragment_size();
        let (size, inodes) = (vfs.blocks() * frag, vfs.files());
        if (size, inodes) == (plan.size_limit, plan.nr_inodes) {
            return Ok(Some(Resize::Same));
        }
        if grow_only && (plan.size_limit < size || plan.nr_inodes < inodes) {
            return Ok(None);
        }
        let used = (vfs.blocks() - vfs.blocks_free()) * frag;
        let used_inodes = vfs.files() - vfs.files_free();
        let waits = |why: String| {
            Ok(Some(Resize::Waits {
                size,
                inodes,
                problem: Problem::new(
                    "spec.sizeLimit",
                    format!(
                        "the link is a tmpfs of {}; the spec wants {}, and {why}: it applies when the use fits or the last member has left the link",
                        format_bytes(size),
                        format_bytes(plan.size_limit)
                    ),
                ),
            }))
        };
        if used > plan.size_limit {
            return waits(format!("{} of it is in use", format_bytes(used)));
        }
        if used_inodes > plan.nr_inodes {
            return waits(format!(
                "{used_inodes} files are in it, more than the {} it would take",
                plan.nr_inodes
            ));
        }
        let target = format!("/proc/self/fd/{}", link.as_raw_fd());
        let data = format!("size={},nr_inodes={}", plan.size_limit, plan.nr_inodes);
        match mount(
            None::<&str>,
            target.as_str(),
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(data.as_str()),
        ) {
            Ok(()) => Ok(Some(Resize::Done)),
            // Members wrote between the look and the remount.
            Err(Errno::EINVAL | Errno::EBUSY) => waits("its use grew meanwhile".into()),
            Err(errno) => Err(MaterializeError::Sys {
                path: lp(),
                op: "remount tmpfs",
                errno,
            }),
        }
    }
}
